"""The bare baseline: a workflow of the same shape as a cancellation, doing nothing.

One activity (the code would be mailed here), a wait for the `confirm` signal, then
three activities (billing, then mailboxes and files side by side). Its activities
return at once, so what it costs is Temporal's own work: history, tasks, polling.

Run its worker as `python -m bench.baseline` with TEMPORAL_ADDRESS and
TEMPORAL_TASK_QUEUE set, as the benchmark does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

WORKFLOW_TYPE = "BaselineCancellation"
SHORT = timedelta(seconds=30)


@dataclass
class BaselineInput:
    service_id: int


@dataclass
class BaselineResult:
    state: str
    service_id: int


@activity.defn(name="baseline_issue_code")
async def issue_code(data: BaselineInput) -> None:
    return None


@activity.defn(name="baseline_close_billing")
async def close_billing(data: BaselineInput) -> None:
    return None


@activity.defn(name="baseline_delete_mailboxes")
async def delete_mailboxes(data: BaselineInput) -> None:
    return None


@activity.defn(name="baseline_delete_files")
async def delete_files(data: BaselineInput) -> None:
    return None


ACTIVITIES = [issue_code, close_billing, delete_mailboxes, delete_files]


@workflow.defn(name=WORKFLOW_TYPE)
class BaselineCancellation:
    @workflow.init
    def __init__(self, data: BaselineInput) -> None:
        self.code_sent = False
        self.confirmed = False

    @workflow.run
    async def run(self, data: BaselineInput) -> BaselineResult:
        await workflow.execute_activity(issue_code, data, start_to_close_timeout=SHORT)
        self.code_sent = True
        await workflow.wait_condition(lambda: self.confirmed, timeout=timedelta(days=1))
        await workflow.execute_activity(close_billing, data, start_to_close_timeout=SHORT)
        await asyncio.gather(
            workflow.execute_activity(delete_mailboxes, data, start_to_close_timeout=SHORT),
            workflow.execute_activity(delete_files, data, start_to_close_timeout=SHORT),
        )
        return BaselineResult(state="cancelled", service_id=data.service_id)

    @workflow.signal(name="confirm")
    def confirm(self, code: str) -> None:
        self.confirmed = True

    @workflow.update(name="confirm_code")
    def confirm_code(self, code: str) -> bool:
        self.confirmed = True
        return True

    @workflow.update
    async def wait_for_code(self) -> bool:
        await workflow.wait_condition(lambda: self.code_sent)
        return True


# --- the client side, the same protocol as starter.client.CancellationClient ------------------


async def request(
    client: Client, task_queue: str, workflow_id: str, service_id: int
) -> WorkflowHandle[BaselineCancellation, BaselineResult]:
    """Update-with-start, answered once the first activity is done (as `request` does)."""
    start = WithStartWorkflowOperation(
        BaselineCancellation.run,
        BaselineInput(service_id=service_id),
        id=workflow_id,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )
    await client.execute_update_with_start_workflow(
        BaselineCancellation.wait_for_code, start_workflow_operation=start
    )
    return await start.workflow_handle()


async def confirm(handle: WorkflowHandle[BaselineCancellation, BaselineResult]) -> bool:
    """Synchronous, through an update (as `CancellationClient.confirm` does)."""
    return await handle.execute_update(BaselineCancellation.confirm_code, "000000")


# --- its worker ---------------------------------------------------------------------------------


async def _run_worker() -> None:
    import os
    import signal

    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.worker import Worker

    from bajas.config import Settings
    from workflows.sandbox import workflow_runner

    client = await Client.connect(
        os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"),
        namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"),
        data_converter=pydantic_data_converter,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task_queue = os.environ["TEMPORAL_TASK_QUEUE"]
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[BaselineCancellation],
        activities=ACTIVITIES,
        # the same runner as the bajas worker beside it (WORKFLOW_SANDBOX), for a fair ratio
        workflow_runner=workflow_runner(sandboxed=Settings().workflow_sandbox),
        max_concurrent_activities=int(os.environ.get("MAX_CONCURRENT_ACTIVITIES", "50")),
        graceful_shutdown_timeout=timedelta(seconds=10),
    ):
        # the line worker.py logs, that the harness waits for
        print(f"worker polling task queue {task_queue}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(_run_worker())
