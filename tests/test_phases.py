"""Runs joined by continue-as-new (issue 16): the boundaries, the hand-over, a step that
keeps failing, and the resource kinds' steps, on the time-skipping server with fake
activities under the real names."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, Worker

from bajas.models import (
    CancellationInput,
    Effective,
    ResourceContext,
    ResourceRef,
    RetryInput,
    State,
    StepOrder,
    StepStatus,
    WithdrawInput,
)
from tests import fakes, test_workflow_logic
from tests.fakes import FakeActivities, accepted_check, code_for
from tests.helpers.temporal import start_local
from tests.test_workflow_logic import (
    Harness,
    confirm_code,
    past,
    result_of,
    scheduled_for,
    status,
    wait_status,
)
from worker import central_workers
from workflows.cancellation import ServiceCancellation
from workflows.sandbox import workflow_runner
from workflows.search_attributes import (
    RELEASE,
    node_task_queue,
    release_queue,
    workflow_id_for,
)
from workflows.steps import ATTEMPTS_PER_RUN

# the harness of the workflow-logic tests: fakes on a fresh queue, time skipping
h = test_workflow_logic.h


async def runs_of(handle: WorkflowHandle[Any, Any]) -> list[int]:
    """The event count of each run of the chain, first to last."""
    counts, run_id = [], handle.first_execution_run_id or handle.result_run_id
    client = handle._client
    while run_id is not None:
        history = await client.get_workflow_handle(handle.id, run_id=run_id).fetch_history()
        counts.append(len(history.events))
        last = history.events[-1]
        continued = last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        attributes = last.workflow_execution_continued_as_new_event_attributes
        run_id = attributes.new_execution_run_id if continued else None
    return counts


@pytest.mark.time_skipping
async def test_a_step_failing_for_30_days_hands_over_and_finishes_once_fixed(
    h: Harness,
) -> None:
    """A file made immutable for a month: no run's history grows past its bound, the
    status keeps the attempts and the error across the runs, and `retry` after the fix
    finishes the deletion at once."""
    f = h.fakes
    f.files_failures = 10**6
    handle = await h.start()
    assert (await confirm_code(handle, code_for(1))).state is State.DEPROVISIONING
    await wait_status(handle, lambda s: s.steps.files.attempts >= 2)
    await h.env.sleep(timedelta(days=30))
    st = await status(handle)
    assert st.state is State.DEPROVISIONING and st.sla_at_risk
    assert st.steps.files.attempts > ATTEMPTS_PER_RUN
    assert st.steps.files.error and "PermissionError" in st.steps.files.error
    assert st.steps.mailboxes.status is StepStatus.DONE
    f.files_failures = 0
    await handle.signal(ServiceCancellation.retry, RetryInput(by="operator"))
    assert (await result_of(handle)).state is State.CANCELLED
    counts = await runs_of(handle)
    print(f"30 days of a failing step: {len(counts)} runs, events {counts}")
    assert len(counts) > 1 and max(counts) <= 10_000
    assert f.notice_kinds().count("sla_at_risk") == 1  # one alert, whatever the runs


@pytest.mark.time_skipping
@pytest.mark.parametrize("when", ["scheduled", "after_billing_eve"])
async def test_a_scheduled_run_crosses_its_boundaries_and_can_be_withdrawn_at_each(
    h: Harness, when: str
) -> None:
    """The confirmation for the end of the term and the debit's eve each start a new run;
    a withdrawal after either ends the cancellation as it did in one run."""
    f = h.fakes
    handle, _, st = await scheduled_for(h, "20th")
    assert st.billing_closes_at is not None and st.effective_at is not None
    if when == "after_billing_eve":
        await past(h, st.billing_closes_at)
        await wait_status(handle, lambda s: s.steps.billing.status is StepStatus.DONE)
    answer = await handle.execute_update(
        ServiceCancellation.withdraw_cancellation, WithdrawInput(by="customer")
    )
    assert answer.state is State.WITHDRAWN
    assert (await result_of(handle)).state is State.WITHDRAWN
    st = await status(handle)
    billed = when == "after_billing_eve"
    assert (st.steps.billing.status is StepStatus.DONE) is billed
    assert f.notice_kinds() == (["withdrawn"] if billed else [])
    assert f.events() == ["confirmed", "withdrawn"]
    assert [e.event for e in st.timeline][:4] == [
        "requested",
        "code_sent",
        "confirmed",
        "scheduled",
    ]
    assert len(await runs_of(handle)) == (3 if billed else 2)


@pytest.mark.time_skipping
async def test_a_scheduled_run_deletes_in_a_run_of_its_own_within_its_budget(h: Harness) -> None:
    """Confirmed, the debit's eve, the end of the term: four runs, each short."""
    handle, _, st = await scheduled_for(h, "20th")
    assert (await result_of(handle)).state is State.CANCELLED
    counts = await runs_of(handle)
    print(f"scheduled cancellation: events per run {counts}")
    assert len(counts) == 4 and sum(counts) < 200


@pytest.mark.parametrize("message", ["signal", "update"])
async def test_a_withdrawal_during_the_hand_over_is_not_lost(h: Harness, message: str) -> None:
    """The withdrawal lands while the run audits its confirmation, just before it hands
    over: the handler runs in this run or in the next, never in neither."""
    f = h.fakes
    f.held_transition = "confirmed"
    handle = await h.start(effective=Effective.END_OF_TERM)
    await wait_status(handle, lambda s: s.code_sent)
    update = asyncio.ensure_future(confirm_code(handle, code_for(1)))
    await asyncio.wait_for(f.transition_held.wait(), timeout=10)
    if message == "signal":
        await handle.signal(ServiceCancellation.withdraw, WithdrawInput(by="customer"))
    else:
        withdrawn = asyncio.ensure_future(
            handle.execute_update(
                ServiceCancellation.withdraw_cancellation, WithdrawInput(by="customer")
            )
        )
    f.transition_gate.set()
    # The run handing over cannot close while a message is unhandled: the server refuses
    # its continue-as-new, and the task runs again with the withdrawal in it (which may
    # then come before the code's check, when both landed in one task).
    assert (await update).state in (State.SCHEDULED, State.WITHDRAWN)
    if message == "update":
        assert (await withdrawn).state is State.WITHDRAWN
    assert (await result_of(handle)).state is State.WITHDRAWN
    assert f.events()[-1] == "withdrawn"
    assert f.deprovisioning_calls() == []
    assert f.inputs("send_notice") == []


async def test_resource_kinds_run_as_steps_on_their_servers(h: Harness) -> None:
    """A database on its server's node and a cron entry on the central workers: each kind
    is a step of its own, after the files, its failures retried like any step."""
    f = h.fakes
    f.resource_failures = 1
    resources = [
        ResourceRef(id=1, kind="database", name="tienda", server="db01"),
        ResourceRef(id=2, kind="database", name="blog", server="db01"),
        ResourceRef(id=3, kind="cron", name="backup.sh"),
    ]
    f.check = accepted_check(
        resources=resources,
        resource_context=ResourceContext(service_id=h.service_id, domain="ejemplo.com.ar"),
        step_order=[
            StepOrder(step="billing"),
            StepOrder(step="mailboxes", after=["billing"]),
            StepOrder(step="files", after=["billing"]),
            StepOrder(step="database", after=["files"]),
            StepOrder(step="cron", after=["billing"]),
        ],
    )
    async with Worker(
        h.env.client,
        task_queue=node_task_queue(h.task_queue, "db01"),
        activities=f.resource_activities(),
    ):
        handle = await h.start()
        await wait_status(handle, lambda s: s.inventory is not None and bool(s.inventory.resources))
        assert (await confirm_code(handle, code_for(1))).accepted
        assert (await result_of(handle)).state is State.CANCELLED
    st = await status(handle)
    assert list(st.steps.root) == ["billing", "mailboxes", "files", "database", "cron"]
    database, cron = st.steps["database"], st.steps["cron"]
    assert (database.status, database.done, database.total) == (StepStatus.DONE, 2, 2)
    assert (cron.status, cron.done, cron.total) == (StepStatus.DONE, 1, 1)
    assert database.attempts + cron.attempts == 3  # one failed attempt, retried
    assert st.inventory is not None and {r.name for r in st.inventory.resources} == {
        "tienda",
        "blog",
        "backup.sh",
    }
    names = f.names()
    assert names.index("preflight_resources") < names.index("close_billing")
    deleted = [c.input for c in f.calls if c.name == "delete_resources"]
    assert {(d.kind, d.server) for d in deleted} == {("database", "db01"), ("cron", None)}
    database_at = min(
        i
        for i, c in enumerate(f.calls)
        if c.name == "delete_resources" and c.input.kind == "database"
    )
    assert names.index("delete_files") < database_at
    assert fakes.FILES == st.steps.files.done


@pytest.mark.time_skipping
async def test_a_run_started_by_an_earlier_release_moves_at_its_first_boundary(
    h: Harness,
) -> None:
    """Started by a client of release 8 (no `release`, the configured queue): it runs the
    path release 8 recorded, and at its first boundary goes on, continued, on this
    release's queue, which no release 8 worker polls."""
    f = h.fakes
    handle = await h.env.client.start_workflow(
        ServiceCancellation.run,
        CancellationInput(service_id=h.service_id, customer_id=7, effective=Effective.END_OF_TERM),
        id=workflow_id_for(h.service_id),
        task_queue=h.task_queue,
    )
    h.handles.append(handle)
    await wait_status(handle, lambda s: s.code_sent)
    assert (await confirm_code(handle, code_for(1))).state is State.SCHEDULED
    assert (await result_of(handle)).state is State.CANCELLED
    assert len(await runs_of(handle)) >= 2
    described = await handle.describe()
    assert described.task_queue == release_queue(h.task_queue)
    assert f.events()[:2] == ["confirmed", "term_ended"]


async def test_a_cluster_with_low_history_limits_is_honoured() -> None:
    """On a dev server that suggests continuing at 100 events and terminates a run at
    200, a step failing 25 times (far past 200 events in one run) is not terminated:
    the runs hand over when the server says so, and the step finishes once it works."""
    limits = ["limit.historyCount.suggestContinueAsNew=100", "limit.historyCount.error=200"]
    env = await start_local(
        dev_server_extra_args=[arg for limit in limits for arg in ("--dynamic-config-value", limit)]
    )
    try:
        f = FakeActivities(files_retry_delays=[timedelta(milliseconds=200)] * 25)
        queue = f"limits-{uuid.uuid4()}"
        async with central_workers(
            env.client,
            queue,
            workflows=[ServiceCancellation],
            activities=f.activities(),
            workflow_runner=workflow_runner(),
        ):
            handle = await env.client.start_workflow(
                ServiceCancellation.run,
                CancellationInput(service_id=1, customer_id=7, release=RELEASE),
                id=f"limits-{uuid.uuid4()}",
                task_queue=release_queue(queue),
            )
            await wait_status(handle, lambda s: s.code_sent)
            assert (await confirm_code(handle, code_for(1))).accepted
            result = await asyncio.wait_for(handle.result(), timeout=120)
        assert result.state is State.CANCELLED
        counts = await runs_of(handle)
        print(f"limits 100/200: events per run {counts}")
        assert len(counts) > 1 and max(counts) < 200
        assert len(f.inputs("delete_files")) == 26
    finally:
        await env.shutdown()


@pytest.mark.time_skipping
async def test_a_withdrawal_during_an_early_billing_attempt_shows_what_it_committed(
    h: Harness,
) -> None:
    """Issue 16 item 7: the customer withdraws while billing closes at the debit's eve.
    The attempt is never cancelled under way: it ends, `status` says billing is closed,
    and the customer is told it stays closed; no further attempt runs."""
    f = h.fakes
    f.billing_gate = asyncio.Event()
    handle, _, st = await scheduled_for(h, "20th")
    assert st.billing_closes_at is not None
    await past(h, st.billing_closes_at, by=timedelta(milliseconds=500))
    await asyncio.wait_for(f.billing_started.wait(), timeout=10)
    await handle.signal(ServiceCancellation.withdraw, WithdrawInput(by="customer"))
    f.billing_gate.set()
    assert (await result_of(handle)).state is State.WITHDRAWN
    st = await status(handle)
    assert st.steps.billing.status is StepStatus.DONE
    assert len(f.inputs("close_billing")) == 1
    assert f.notice_kinds() == ["withdrawn"]
    assert f.events() == ["confirmed", "withdrawn"]


async def test_a_status_query_during_the_code_check_leaves_a_history_that_replays(
    h: Harness,
) -> None:
    """Issue 16 item 7: `status` asked while `verify_code` runs. The check is an activity
    whose result is an event of its own, so no query can move it to another task."""
    f = h.fakes
    f.verify_gate = asyncio.Event()
    handle = await h.start()
    await wait_status(handle, lambda s: s.code_sent)
    confirming = asyncio.ensure_future(confirm_code(handle, code_for(1)))
    await asyncio.wait_for(f.verify_started.wait(), timeout=10)
    for _ in range(5):
        assert (await status(handle)).state is State.AWAITING_CONFIRMATION
    f.verify_gate.set()
    assert (await confirming).accepted
    assert (await result_of(handle)).state is State.CANCELLED
    replayer = Replayer(
        workflows=[ServiceCancellation],
        data_converter=pydantic_data_converter,
        workflow_runner=workflow_runner(),
    )
    replayed = await replayer.replay_workflow(
        await handle.fetch_history(), raise_on_replay_failure=False
    )
    assert replayed.replay_failure is None


async def test_a_business_error_of_the_service_check_rejects_the_request(h: Harness) -> None:
    """Issue 19 item 1: an error no retry can fix (e.g. the service's resources cannot be
    ordered) ends the request `rejected` with its reason, instead of retrying forever."""
    h.fakes.check_refusal = "the resource kinds' order has a cycle: database, cron"
    handle = await h.start()
    result = await result_of(handle)
    assert result.state is State.REJECTED
    assert result.rejection_reason == "the resource kinds' order has a cycle: database, cron"
    assert h.fakes.names() == ["check_service"]
