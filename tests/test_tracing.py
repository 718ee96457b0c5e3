"""Traces and bajas's own metrics (docs/RUNBOOK.md): one trace joins the API request, the
workflow and its activities; a finished cancellation is counted by state and by what
it deleted; a failing step shows until its next attempt starts.

The real stack with the API in process; spans go to an in-memory exporter, metrics to
the Prometheus endpoint of a runtime of the test's own.
"""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import SecretStr
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from bajas import tracing
from bajas.metrics import BajasMetrics
from bajas.models import State
from bajas.temporal_client import connect
from starter.api.app import create_app
from starter.client import CancellationClient
from tests.conftest import Stack
from tests.conftest_api import wait_for_mails
from tests.helpers import assert_eventually, free_port
from tests.helpers.mail import code_in
from tests.test_api import base
from worker import build_worker
from workflows.search_attributes import workflow_id_for

pytestmark = pytest.mark.integration

TOKEN = "tracing-token-" + uuid.uuid4().hex


class Scraped:
    """bajas's metrics on a runtime of their own, read as Prometheus scrapes them."""

    def __init__(self) -> None:
        self.port = free_port()
        runtime = Runtime(
            telemetry=TelemetryConfig(
                metrics=PrometheusConfig(bind_address=f"127.0.0.1:{self.port}")
            )
        )
        self.metrics = BajasMetrics(runtime.metric_meter)
        self._runtime = runtime

    def samples(self, name: str) -> dict[str, float]:
        """Each sample of `name`, by its label text."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        return {
            labels.removeprefix(name): float(value)
            for line in text.splitlines()
            if line.startswith(name + "{")
            for labels, _, value in [line.rpartition(" ")]
        }


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    tracing.setup("bajas-test", spans)
    yield spans
    tracing.shutdown()


async def test_one_trace_joins_the_request_the_workflow_and_its_activities(
    stack: Stack, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", stack.client.service_client.config.target_host)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", stack.client.namespace)
    settings = stack.settings.model_copy(
        update={
            "temporal_task_queue": f"tracing-{uuid.uuid4()}",
            "panel_api_token": SecretStr(TOKEN),
            "panel_session_secret": SecretStr("tracing-session-" + uuid.uuid4().hex),
        }
    )
    client = await connect(settings)  # as the worker, the API and the CLI connect
    scraped = Scraped()
    svc = await stack.panel.service(files=4, mailboxes=1)
    app = create_app(settings, client=client, pool=stack.pool)
    async with (
        build_worker(client, settings, stack.pool, metrics=scraped.metrics),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://bajas.test",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as http,
    ):
        assert (await http.post(base(svc), json={})).status_code == 202
        (mail,) = await wait_for_mails(stack, svc.domain, 1)
        r = await http.post(base(svc) + "/confirm", json={"code": code_in(mail)})
        assert r.json()["accepted"] is True, r.text
        cancellations = CancellationClient(client, settings.temporal_task_queue)
        result = await asyncio.wait_for(cancellations.result(svc.service_id), 30)
        assert result.state is State.CANCELLED

    spans = exporter.get_finished_spans()
    [request] = [
        s
        for s in spans
        if s.kind is SpanKind.SERVER
        and s.name.startswith("POST ")
        and s.name.endswith("/cancellation")
    ]
    assert request.context is not None
    joined = {s.name for s in spans if s.context and s.context.trace_id == request.context.trace_id}
    for name in (
        "RunWorkflow:ServiceCancellation",
        "RunActivity:check_service",
        "RunActivity:issue_code",
        "RunActivity:delete_files",
        "RunActivity:finish_cancellation",
    ):
        assert name in joined, sorted(joined)

    cancelled = scraped.samples("bajas_cancellations_total")
    assert any('state="cancelled"' in labels for labels in cancelled), cancelled
    files = scraped.samples("bajas_deleted_items_total")
    assert any('kind="files"' in labels and value >= 4 for labels, value in files.items()), files


def test_a_failing_step_shows_until_its_next_attempt_starts() -> None:
    scraped = Scraped()
    scraped.metrics.step_failed("service-cancellation-7", "delete_files")
    scraped.metrics.step_failed("service-cancellation-8", "delete_files")
    assert scraped.samples("bajas_steps_failing") == {
        '{service_name="temporal-core-sdk",step="delete_files"}': 2
    }
    scraped.metrics.step_started("service-cancellation-7", "delete_files")
    assert list(scraped.samples("bajas_steps_failing").values()) == [1]


async def test_a_run_past_its_sla_is_counted_at_risk(stack: Stack) -> None:
    """A service on a hosting server whose worker is down: its deletion cannot start,
    and once SLA_LIMIT has passed the run counts as at risk."""
    settings = stack.settings.model_copy(
        update={
            "temporal_task_queue": f"sla-{uuid.uuid4()}",
            "sla_limit": timedelta(seconds=2),
            "archive_deadline": timedelta(seconds=1),
        }
    )
    svc = await stack.panel.service(files=1, mailboxes=0)
    await stack.pool.execute(
        "update services set server = $2 where id = $1", svc.service_id, f"down-{uuid.uuid4()}"
    )
    scraped = Scraped()
    cancellations = CancellationClient(stack.client, settings.temporal_task_queue)
    await scraped.metrics.refresh(stack.client)
    before = sum(scraped.samples("bajas_runs_at_sla_risk").values())  # other tests' runs
    async with build_worker(stack.client, settings, stack.pool, metrics=scraped.metrics):
        await cancellations.request(svc.service_id, svc.customer_id)
        (mail,) = await wait_for_mails(stack, svc.domain, 1)
        assert (await cancellations.confirm(svc.service_id, code_in(mail))).accepted

        async def at_risk() -> bool:
            await scraped.metrics.refresh(stack.client)
            return sum(scraped.samples("bajas_runs_at_sla_risk").values()) > before

        await assert_eventually(at_risk, "the run counted at SLA risk")
        await stack.client.get_workflow_handle(workflow_id_for(svc.service_id)).terminate()
