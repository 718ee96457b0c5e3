"""The steps that touch files and mailboxes, as the workflow runs them (fake activities,
the time-skipping server): the inventory beside the code mail, the preflight before
billing, each step's check, and the node worker of the service's server.

The harness is test_workflow_logic.py's: a worker with every fake on the test's task
queue (the central workers). A node worker here is a second worker, with fakes of its
own, on `node_task_queue(queue, server)`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from temporalio.worker import Worker

from bajas.models import ConfirmInput, State, StepStatus
from tests import fakes
from tests import test_workflow_logic as logic
from tests.fakes import FakeActivities, accepted_check, code_for
from tests.helpers import assert_eventually
from tests.test_workflow_logic import Harness, result_of, status, wait_status
from workflows.cancellation import ServiceCancellation
from workflows.search_attributes import node_task_queue

h = logic.h  # the fixture: central worker and fakes on a fresh task queue

NODE_STEPS = ("take_inventory", "preflight_paths", "delete_mailboxes", "delete_files")
DOWN = "node web03 is not answering (no worker took the attempt)"


@asynccontextmanager
async def node_worker(h: Harness, server: str) -> AsyncIterator[FakeActivities]:
    """`bajas worker --node SERVER`, with fakes of its own."""
    node = FakeActivities()
    async with Worker(
        h.env.client,
        task_queue=node_task_queue(h.task_queue, server),
        activities=[
            node.take_inventory,
            node.preflight_paths,
            node.delete_mailboxes,
            node.delete_files,
        ],
    ):
        yield node


def node_calls(f: FakeActivities) -> list[str]:
    return [n for n in f.names() if n in NODE_STEPS]


async def test_inventory_is_in_status_and_the_code_mail(h: Harness) -> None:
    handle = await h.start()
    st = await wait_status(handle, lambda s: s.code_sent)
    assert st.inventory == fakes.INVENTORY
    [issued] = h.fakes.inputs("issue_code")
    assert (issued.inventory, issued.counting) == (fakes.INVENTORY, False)
    names = h.fakes.names()
    assert names.index("take_inventory") < names.index("issue_code")
    await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    assert (await result_of(handle)).state is State.CANCELLED
    # the preflight ran once, right before billing closed
    order = [n for n in h.fakes.names() if n in ("preflight_paths", "close_billing")]
    assert order == ["preflight_paths", "close_billing"]
    assert not h.fakes.inputs("close_billing")[0].preflight
    st = await status(handle)
    assert (st.steps.billing.verified, st.steps.mailboxes.verified, st.steps.files.verified) == (
        True,
        True,
        True,
    )


async def test_a_slow_inventory_does_not_hold_the_code_mail(h: Harness) -> None:
    h.fakes.inventory_gate = asyncio.Event()  # a site of a million files
    handle = await h.start()
    st = await wait_status(handle, lambda s: s.code_sent)
    assert st.inventory is None
    [issued] = h.fakes.inputs("issue_code")
    assert (issued.inventory, issued.counting) == (None, True)  # the mail says "counting"
    h.fakes.inventory_gate.set()
    st = await wait_status(handle, lambda s: s.inventory is not None)
    assert st.inventory == fakes.INVENTORY and st.state is State.AWAITING_CONFIRMATION


async def test_a_step_whose_check_did_not_pass_is_not_done(h: Harness) -> None:
    h.fakes.files_unverified = 1  # e.g. a worker of a version without the checks
    handle = await h.start()
    await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    assert (await result_of(handle)).state is State.CANCELLED
    st = await status(handle)
    assert (st.steps.files.attempts, st.steps.files.verified) == (2, True)
    assert len(h.fakes.inputs("delete_files")) == 2
    assert h.fakes.names().count("finish_cancellation") == 1


async def test_node_steps_run_on_the_servers_queue(h: Harness) -> None:
    h.fakes.check = accepted_check(server="web03")
    async with node_worker(h, "web03") as node:
        handle = await h.start()
        await wait_status(handle, lambda s: s.code_sent)
        await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
        assert (await result_of(handle)).state is State.CANCELLED
    assert sorted(set(node_calls(node))) == sorted(NODE_STEPS)
    assert node_calls(h.fakes) == []  # the central worker ran none of them
    assert "close_billing" in h.fakes.names() and "issue_code" in h.fakes.names()


async def test_a_node_that_is_down_is_named_and_its_steps_resume(h: Harness) -> None:
    # NODE_WAIT of a second (minutes in production), the SLA alert after a few
    h.fakes.check = accepted_check(server="web03", node_wait_seconds=1, sla_limit_seconds=6)
    handle = await h.start()
    st = await wait_status(handle, lambda s: s.code_sent)
    assert st.inventory is None and h.fakes.inputs("issue_code")[0].counting
    await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))

    # No worker polls web03's queue: the preflight waits NODE_WAIT, then says why.
    st = await wait_status(handle, lambda s: s.steps.billing.error is not None)
    assert st.steps.billing.error == DOWN, st.steps
    assert st.steps.billing.status is StepStatus.RUNNING
    assert (st.steps.mailboxes.status, st.steps.files.status) == (
        StepStatus.PENDING,
        StepStatus.PENDING,
    )
    assert "close_billing" not in h.fakes.names()
    await wait_status(handle, lambda s: s.sla_at_risk, timeout=20)
    [sla] = await assert_eventually(
        lambda: [n for n in h.fakes.inputs("send_notice") if n.kind == "sla_at_risk"]
    )
    assert any(DOWN in line and line.startswith("billing: attempt") for line in sla.problems)

    # The node comes back: its steps go on from there, nothing run twice.
    async with node_worker(h, "web03") as node:
        assert (await result_of(handle)).state is State.CANCELLED
    st = await status(handle)
    assert st.steps.billing.error is None and st.steps.billing.attempts >= 2
    assert node.names().count("delete_files") == node.names().count("delete_mailboxes") == 1
    assert h.fakes.names().count("close_billing") == 1
    assert st.inventory == fakes.INVENTORY
