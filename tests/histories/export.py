"""Record one history per way a cancellation can end, for the replay tests.

    python -m tests.histories.export [--suffix v1] [--only NAME,NAME]

Runs the real workflow with the fake activities on a real dev server (short windows,
so the run takes seconds) and writes `tests/histories/<ending>[-suffix].json`. A run
that waits for the end of a term is recorded on the time-skipping test server, whose
clock jumps to it.
Re-run it after a workflow change only to add histories; keep the old files: they
are what running workflows look like.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from bajas.models import (
    ArchiveRequest,
    CancellationInput,
    CancellationStatus,
    ConfirmInput,
    Effective,
    RetryInput,
    ServiceCheck,
    StepStatus,
    WithdrawInput,
)
from tests.fakes import FakeActivities, accepted_check, code_for
from tests.helpers import assert_eventually
from tests.helpers.temporal import start_local, start_time_skipping
from worker import central_workers
from workflows.cancellation import ServiceCancellation
from workflows.rules import debit_cutoff_eve
from workflows.sandbox import workflow_runner
from workflows.search_attributes import RELEASE, release_queue, workflow_id_for

HERE = Path(__file__).parent
_ids = itertools.count(9_000_001)

# A scenario drives one run; `env` is the server it runs on (its clock moves on the
# time-skipping one).
Scenario = Callable[[WorkflowHandle, FakeActivities, WorkflowEnvironment], Awaitable[None]]


async def _status(handle: WorkflowHandle) -> CancellationStatus:
    return await handle.query("status", result_type=CancellationStatus)


async def _until(handle: WorkflowHandle, test: Callable[[CancellationStatus], bool]) -> None:
    async def there() -> bool:
        return test(await _status(handle))

    await assert_eventually(there, "the workflow to get there", timeout=15, interval=0.05)


async def cancelled(
    handle: WorkflowHandle, fakes: FakeActivities, env: WorkflowEnvironment
) -> None:
    await handle.execute_update("confirm_code", ConfirmInput(code="000000"))
    await handle.execute_update("confirm_code", ConfirmInput(code=code_for(1)))


async def resent_then_cancelled(
    handle: WorkflowHandle, fakes: FakeActivities, env: WorkflowEnvironment
) -> None:
    await _until(handle, lambda s: s.code_sent)
    await handle.execute_update("resend_code")
    await handle.signal("confirm", ConfirmInput(code=code_for(2)))


async def expired(handle: WorkflowHandle, fakes: FakeActivities, env: WorkflowEnvironment) -> None:
    return None


async def withdrawn(
    handle: WorkflowHandle, fakes: FakeActivities, env: WorkflowEnvironment
) -> None:
    await _until(handle, lambda s: s.code_sent)
    await handle.signal("withdraw", WithdrawInput(reason="cambié de idea"))


async def locked(handle: WorkflowHandle, fakes: FakeActivities, env: WorkflowEnvironment) -> None:
    for wrong in ("000001", "000002", "000003", "000004", "000005"):
        await handle.execute_update("confirm_code", ConfirmInput(code=wrong))


async def rejected(handle: WorkflowHandle, fakes: FakeActivities, env: WorkflowEnvironment) -> None:
    return None


async def refused_then_retried(
    handle: WorkflowHandle, fakes: FakeActivities, env: WorkflowEnvironment
) -> None:
    await handle.signal("confirm", ConfirmInput(code=code_for(1)))
    await _until(handle, lambda s: s.steps.files.status is StepStatus.REFUSED)
    fakes.files_refusals = 0
    await handle.signal("retry", RetryInput(by="operator"))


async def failed_then_done(
    handle: WorkflowHandle, fakes: FakeActivities, env: WorkflowEnvironment
) -> None:
    await handle.signal("confirm", ConfirmInput(code=code_for(1)))


async def sla_at_risk(
    handle: WorkflowHandle, fakes: FakeActivities, env: WorkflowEnvironment
) -> None:
    await handle.signal("confirm", ConfirmInput(code=code_for(1)))
    await _until(handle, lambda s: s.sla_at_risk)
    assert fakes.files_gate is not None
    fakes.files_gate.set()


async def scheduled_then_cancelled(
    handle: WorkflowHandle, fakes: FakeActivities, env: WorkflowEnvironment
) -> None:
    await handle.execute_update("confirm_code", ConfirmInput(code=code_for(1)))
    # awaiting the result then skips the test server's clock to the end of the term


async def scheduled_then_withdrawn(
    handle: WorkflowHandle, fakes: FakeActivities, env: WorkflowEnvironment
) -> None:
    await handle.execute_update("confirm_code", ConfirmInput(code=code_for(1)))
    await _until(handle, lambda s: s.state.value == "scheduled")
    await handle.signal("withdraw", WithdrawInput(by="customer"))


IN_A_WEEK = date.today() + timedelta(days=7)


async def billed_early_then_withdrawn(
    handle: WorkflowHandle, fakes: FakeActivities, env: WorkflowEnvironment
) -> None:
    await handle.execute_update("confirm_code", ConfirmInput(code=code_for(1)))
    [check] = fakes.returned_checks
    assert check.expires_on is not None
    eve = debit_cutoff_eve(check.expires_on, check.business_tz)
    await env.sleep(eve - await env.get_current_time() + timedelta(hours=1))
    await _until(handle, lambda s: s.steps.billing.status is StepStatus.DONE)
    await handle.signal("withdraw", WithdrawInput(by="customer"))


async def copied_then_cancelled(
    handle: WorkflowHandle, fakes: FakeActivities, env: WorkflowEnvironment
) -> None:
    await _until(handle, lambda s: s.code_sent)
    await handle.execute_update(
        "request_archive", ArchiveRequest(customer_id=7, token=secrets.token_urlsafe(32))
    )
    await _until(handle, lambda s: s.archive is not None and s.archive.state == "ready")
    await handle.signal("confirm", ConfirmInput(code=code_for(1)))


async def copy_too_late(
    handle: WorkflowHandle, fakes: FakeActivities, env: WorkflowEnvironment
) -> None:
    await _until(handle, lambda s: s.code_sent)
    await handle.execute_update(
        "request_archive", ArchiveRequest(customer_id=7, token=secrets.token_urlsafe(32))
    )
    await handle.signal("confirm", ConfirmInput(code=code_for(1)))


SCENARIOS: dict[str, tuple[Scenario, dict[str, object]]] = {
    "cancelled": (cancelled, {}),
    "resent_then_cancelled": (resent_then_cancelled, {}),
    "expired": (expired, {"check": accepted_check(confirmation_window_seconds=2)}),
    "withdrawn": (withdrawn, {}),
    "locked": (locked, {}),
    "rejected": (
        rejected,
        {"check": ServiceCheck(accepted=False, rejection_reason="unknown service")},
    ),
    "refused_then_retried": (refused_then_retried, {"files_refusals": 1}),
    # the files step fails twice (PermissionError), then works (the workflow runs the attempts)
    "failed_then_done": (failed_then_done, {"files_failures": 2}),
    "sla_at_risk": (
        sla_at_risk,
        {"check": accepted_check(sla_limit_seconds=2), "files_gate": asyncio.Event()},
    ),
    "scheduled_then_cancelled": (
        scheduled_then_cancelled,
        {"check": accepted_check(expires_on=IN_A_WEEK)},
    ),
    "scheduled_then_withdrawn": (
        scheduled_then_withdrawn,
        {"check": accepted_check(expires_on=IN_A_WEEK)},
    ),
    # issue 11.3: a last copy built, then deleted after the files
    "copied_then_cancelled": (copied_then_cancelled, {}),
    # a copy that never finishes: stopped at its deadline, the deletion goes on
    "copy_too_late": (
        copy_too_late,
        {"check": accepted_check(archive_deadline_seconds=2), "archive_gate": asyncio.Event()},
    ),
    # paid by automatic debit, expiring in a year (the fake's default): the debit of the
    # 1st is stopped at 00:00 the day before, then the deletion at the end of the term
    "billed_early_then_cancelled": (scheduled_then_cancelled, {}),
    # withdrawn after that: the site stays, billing stays closed (the `withdrawn` mail)
    "billed_early_then_withdrawn": (billed_early_then_withdrawn, {}),
}
# What a scenario's request carries besides the ids.
REQUESTS: dict[str, dict[str, Any]] = {
    "scheduled_then_cancelled": {"effective": Effective.END_OF_TERM},
    "scheduled_then_withdrawn": {"effective": Effective.END_OF_TERM},
    "billed_early_then_cancelled": {"effective": Effective.END_OF_TERM},
    "billed_early_then_withdrawn": {"effective": Effective.END_OF_TERM},
}
# Recorded on the time-skipping server: they wait for the end of a term.
SKIPPING = {
    "scheduled_then_cancelled",
    "billed_early_then_cancelled",
    "billed_early_then_withdrawn",
}


async def record(
    local: WorkflowEnvironment,
    suffix: str,
    names: list[str],
    skipping: WorkflowEnvironment | None = None,
) -> list[Path]:
    written = []
    for name in names:
        scenario, setup = SCENARIOS[name]
        if name in SKIPPING:
            assert skipping is not None, f"{name} needs the time-skipping server"
        env = skipping if name in SKIPPING and skipping is not None else local
        client_ = env.client
        # the server's clock, which the time-skipping one moves (local activities see
        # the wall clock): the fake's default expiry follows it
        fakes = FakeActivities(**setup, clock=env.get_current_time)  # type: ignore[arg-type]
        queue = f"histories-{uuid.uuid4()}"
        async with central_workers(
            client_,
            queue,
            workflows=[ServiceCancellation],
            activities=fakes.activities(),
            workflow_runner=workflow_runner(),
        ):
            service_id = next(_ids)
            handle = await client_.start_workflow(
                ServiceCancellation.run,
                CancellationInput(
                    service_id=service_id,
                    customer_id=7,
                    requested_by="panel",
                    release=RELEASE,
                    **REQUESTS.get(name, {}),
                ),
                id=f"{workflow_id_for(service_id)}-{uuid.uuid4().hex[:6]}",
                task_queue=release_queue(queue),
            )
            await scenario(handle, fakes, env)
            result = await handle.result()
        # each run of the chain: the later ones start from a continued input
        run_id: str | None = handle.first_execution_run_id or handle.result_run_id
        for number in itertools.count(1):
            history = await client_.get_workflow_handle(handle.id, run_id=run_id).fetch_history()
            run = f"-run{number}" if number > 1 else ""
            path = HERE / f"{name}{'-' + suffix if suffix else ''}{run}.json"
            path.write_text(history.to_json())
            written.append(path)
            print(f"{path.name}: {result.state.value}, {len(history.events)} events")
            last = history.events[-1]
            if not last.HasField("workflow_execution_continued_as_new_event_attributes"):
                break
            run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return written


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suffix", default="", help="appended to each file name, e.g. v1")
    parser.add_argument("--only", default="", help="comma-separated scenarios (default: all)")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    env = await start_local()
    skipping = await start_time_skipping() if SKIPPING & set(names) else None
    try:
        await record(env, args.suffix, names, skipping)
    finally:
        await env.shutdown()
        if skipping is not None:
            await skipping.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
    # A one-shot client process can abort at interpreter shutdown: leave at once.
    sys.stdout.flush()
    os._exit(0)
