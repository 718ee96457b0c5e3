"""What operators read from a running worker: JSON logs with the ids of every
activity, the SDK's Prometheus metrics, and a clean exit on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import urllib.request
import uuid
from typing import Any

from bajas.models import State
from starter.client import CancellationClient
from tests.conftest import Stack
from tests.helpers import free_port
from tests.helpers.mail import code_in, mails_about
from tests.test_cli import stack_env

ACTIVITIES = {
    "check_service",
    "issue_code",
    "verify_code",
    "record_transition",
    "take_inventory",
    "preflight_paths",
    "close_billing",
    "delete_mailboxes",
    "delete_files",
    "finish_cancellation",
    "send_notice",
}


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return answer.read().decode()


async def test_worker_logs_json_exposes_metrics_and_drains_on_sigterm(stack: Stack) -> None:
    queue = f"observability-{uuid.uuid4()}"
    metrics_port = free_port()
    env = stack_env(
        stack,
        TEMPORAL_TASK_QUEUE=queue,
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(stack.settings.smtp_port),
        HOSTING_ROOT=str(stack.settings.hosting_root),
        MAIL_ROOT=str(stack.settings.mail_root),
        CODE_HMAC_KEY=stack.settings.code_hmac_key.get_secret_value(),  # type: ignore[union-attr]
        METRICS_PORT=str(metrics_port),
        LOG_FORMAT="json",
    )
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "worker.py",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        svc = await stack.panel.service(payment_method="auto_debit")
        client = CancellationClient(stack.client, queue)
        answer = await client.request(svc.service_id, svc.customer_id)
        assert answer.status.code_sent
        code = code_in(mails_about(stack.mail, svc.domain)[-1])
        assert (await client.confirm(svc.service_id, code)).accepted
        result = await asyncio.wait_for(client.result(svc.service_id), 30)
        assert result.state is State.CANCELLED

        text = await asyncio.to_thread(_metrics, metrics_port)
        assert "temporal_workflow_completed" in text
        assert "temporal_activity_execution_latency" in text
        assert f'task_queue="{queue}"' in text
        # bajas's own, beside the SDK's (bajas/metrics.py)
        assert 'bajas_cancellations_total{billing_outcome="' in text
        assert 'bajas_deleted_items_total{kind="files"' in text
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(worker.communicate(), 40)
    assert worker.returncode == 0, err.decode()[-2000:]

    entries: list[dict[str, Any]] = []
    for line in err.decode().splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    mine = [
        e
        for e in entries
        if e.get("logger") == "bajas.activity" and e.get("service_id") == svc.service_id
    ]
    assert {e["activity"] for e in mine} == ACTIVITIES
    for entry in mine:
        assert entry["workflow_id"] == f"service-cancellation-{svc.service_id}"
        assert entry["run_id"] == answer.run_id
        assert entry["level"] in ("INFO", "WARNING")
