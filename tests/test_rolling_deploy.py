"""A rolling deploy from the previous release (the `main` commit before the phases) to
this one, on the real stack: the previous release's worker runs from a checkout of its
commit, this release's workers beside it, while cancellations start, confirm, cross
their first boundary and end; then the old worker stops, as a rolling deploy does.

What must hold: no workflow task fails anywhere, and no run on this release's queue
(new runs and continued ones) is ever run by the previous release's worker.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from bajas.models import CancellationInput, CancellationResult, Effective, State
from starter.client import CancellationClient
from tests.conftest import Stack
from tests.helpers import assert_eventually
from tests.helpers.mail import code_in, mails_about
from tests.helpers.processes import REPO, Process, clean_env, worker_env
from worker import build_worker
from workflows.search_attributes import WORKFLOW_TYPE, release_queue, workflow_id_for

pytestmark = pytest.mark.integration

# The release before the phases: `main` when they were written.
PREVIOUS_RELEASE = "ee1a64a"


def checkout(commit: str, into: Path) -> Path:
    """The files of `commit`, read from this repository (no work tree is registered)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.skip(f"commit {commit} is not in this clone: {archive.stderr.decode().strip()}")
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


@pytest_asyncio.fixture
async def previous_worker(stack: Stack, tmp_path: Path) -> AsyncIterator[tuple[Process, str]]:
    """The previous release's worker, polling a queue of its own for this test."""
    code = checkout(PREVIOUS_RELEASE, tmp_path / "previous")
    queue = f"bajas-rolling-{uuid.uuid4().hex[:12]}"
    address = stack.client.service_client.config.target_host
    settings = stack.settings.model_copy(update={"temporal_task_queue": queue})
    env = {**worker_env(settings, address), "PYTHONPATH": str(code)}
    worker = Process(
        "previous release's worker",
        [sys.executable, "worker.py"],
        log_path=tmp_path / "previous-worker.log",
        env=clean_env(env),
        cwd=code,
    )
    worker.start()
    try:
        await worker.wait_for_log(f"worker polling task queue {queue}", timeout=60)
        yield worker, queue
    finally:
        worker.stop(timeout=10)


async def start_as_previous_client(
    stack: Stack, queue: str, service_id: int, customer_id: int, effective: Effective
) -> None:
    """What the previous release's client does: the configured queue, no `release`."""
    await stack.client.start_workflow(
        WORKFLOW_TYPE,
        CancellationInput(service_id=service_id, customer_id=customer_id, effective=effective),
        id=workflow_id_for(service_id),
        task_queue=queue,
        result_type=CancellationResult,
    )


async def code_for(stack: Stack, domain: str) -> str:
    mails = await assert_eventually(
        lambda: [m for m in mails_about(stack.mail, domain) if "es: " in m.body],
        f"a code mail for {domain}",
        timeout=30,
    )
    return code_in(mails[0])


async def chain(handle: WorkflowHandle[Any, Any]) -> list[tuple[str, list[Any]]]:
    """Each run of the workflow: its task queue and its events."""
    described = await handle.describe()
    runs, run_id = [], described.raw_description.workflow_execution_info.first_run_id
    while run_id:
        history = await handle._client.get_workflow_handle(handle.id, run_id=run_id).fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        runs.append((started.task_queue.name, list(history.events)))
        last = history.events[-1]
        run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return runs


async def test_a_rolling_deploy_from_the_previous_release(
    stack: Stack, previous_worker: tuple[Process, str]
) -> None:
    old, queue = previous_worker
    tz = ZoneInfo(stack.settings.business_tz)
    tomorrow: date = datetime.now(tz).date() + timedelta(days=1)
    services = [await stack.panel.service(files=3, mailboxes=1) for _ in range(3)]
    scheduled = [await stack.panel.service(expires_on=tomorrow) for _ in range(3)]
    client = CancellationClient(stack.client, queue)
    # 1. only the previous release runs: two requests of its clients
    await start_as_previous_client(
        stack, queue, services[0].service_id, services[0].customer_id, Effective.NOW
    )
    await start_as_previous_client(
        stack, queue, scheduled[0].service_id, scheduled[0].customer_id, Effective.END_OF_TERM
    )
    codes = {
        svc.service_id: await code_for(stack, svc.domain) for svc in (services[0], scheduled[0])
    }
    # 2. this release's workers join; requests come from both releases' clients
    settings = stack.settings.model_copy(update={"temporal_task_queue": queue})
    new = build_worker(stack.client, settings, stack.pool)
    running = asyncio.create_task(new.run())
    try:
        await start_as_previous_client(
            stack, queue, services[1].service_id, services[1].customer_id, Effective.NOW
        )
        await client.request(services[2].service_id, services[2].customer_id)
        for svc in scheduled[1:]:
            await client.request(svc.service_id, svc.customer_id, effective=Effective.END_OF_TERM)
        for svc in (services[1], services[2], *scheduled[1:]):
            codes[svc.service_id] = await code_for(stack, svc.domain)
        for service_id, code in codes.items():
            assert (await client.confirm(service_id, code)).accepted
        # 3. the previous release's worker stops; this release goes on with everything
        assert old.stop(timeout=30) == 0
        for svc in services:
            assert (await client.result(svc.service_id)).state is State.CANCELLED
        for svc in scheduled:
            await assert_eventually(
                _in_state(client, svc.service_id, State.SCHEDULED), "scheduled", timeout=30
            )
            assert (await client.withdraw(svc.service_id, by="customer")).state is State.WITHDRAWN
            assert (await client.result(svc.service_id)).state is State.WITHDRAWN
    finally:
        await new.shutdown()
        await running

    old_identity = f"{old.pid}@"
    took_part = False
    continued = 0
    for svc in (*services, *scheduled):
        runs = await chain(client.handle(svc.service_id))
        continued += len(runs) - 1
        print(svc.service_id, [(q.rsplit("-", 1)[-1], len(events)) for q, events in runs])
        for run_queue, events in runs:
            kinds = [e.event_type for e in events]
            assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in kinds, (svc.service_id, kinds)
            by_old = any(
                e.workflow_task_completed_event_attributes.identity.startswith(old_identity)
                for e in events
                if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
            )
            took_part = took_part or by_old
            assert not (by_old and run_queue == release_queue(queue)), (svc.service_id, run_queue)
    assert took_part, "the previous release's worker ran no workflow task"
    assert continued >= 2  # this release's scheduled runs handed over at their confirmation


def _in_state(
    client: CancellationClient, service_id: int, state: State
) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return (await client.status(service_id)).state is state

    return probe
