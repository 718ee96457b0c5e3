"""The step runner: the deprovisioning as a list of named steps in the order the service
check gives (billing first, then mailboxes, files and one step per resource kind), each
run attempt by attempt until its check proves it done."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from enum import Enum

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutType

with workflow.unsafe.imports_passed_through():
    from activities.billing import BillingActivities
    from activities.files import FilesActivities
    from activities.mailboxes import MailboxActivities
    from activities.panel_db import PanelDbActivities
    from activities.resources import ResourceActivities
    from activities.safety import PreflightActivities
    from bajas.models import (
        BillingInput,
        DeprovisionInput,
        FilesInput,
        PreflightInput,
        ResourceRecordInput,
        ResourceStepInput,
        ResourceStepResult,
        State,
        Step,
        StepInput,
        StepOrder,
        StepResult,
        StepStatus,
    )
    from workflows import rules
    from workflows.confirmation import WALK_LIMIT
    from workflows.failures import (
        backoff,
        cancelled,
        left_behind,
        one_line,
        path_refusal,
        timed_out,
    )
    from workflows.last_copy import LastCopy
    from workflows.patches import moves_open_run
    from workflows.state import RETRY, SHORT

# A step's attempts are run here, one activity execution each, since the workflow
# cannot see retries done by the server: every failure then shows at once in `status`.
ONE_ATTEMPT = RetryPolicy(maximum_attempts=1)
# How long one attempt of each step may take; billing is a short local activity.
STEP_TIMEOUTS = {
    Step.BILLING: SHORT,
    Step.MAILBOXES: timedelta(minutes=30),
    Step.FILES: timedelta(hours=6),
}
RESOURCE_TIMEOUT = timedelta(hours=1)
STEP_SUMMARIES = {
    Step.BILLING: "close billing",
    Step.MAILBOXES: "delete mailboxes",
    Step.FILES: "delete the site's files",
}
# A failing step hands the run over to a continued one after this many attempts in one
# run (about 11 events each), or sooner when the server suggests it.
ATTEMPTS_PER_RUN = 200
# The order of runs recorded before `step_order`, and of services without resources.
DEFAULT_ORDER = [
    StepOrder(step=Step.BILLING.value),
    StepOrder(step=Step.MAILBOXES.value, after=[Step.BILLING.value]),
    StepOrder(step=Step.FILES.value, after=[Step.BILLING.value]),
]


class StepEnd(Enum):
    DONE = "done"
    # stopped between attempts: the customer withdrew while billing closed early
    STOPPED = "stopped"
    # too many attempts for one run: the next run goes on with them
    HANDED_OVER = "handed_over"


class StepRunner(LastCopy):
    """Runs the steps; the phases decide when."""

    def _step_order(self) -> list[StepOrder]:
        service = self.service
        return service.step_order if service is not None and service.step_order else DEFAULT_ORDER

    async def _run_steps(self) -> StepEnd:
        """Every step not done yet, each once the steps before it are done; HANDED_OVER
        when one of them handed over (the others ran as far as they could)."""
        tasks: dict[str, asyncio.Task[StepEnd]] = {}

        async def one(entry: StepOrder) -> StepEnd:
            for before in entry.after:
                end = await tasks[before]
                if end is not StepEnd.DONE:
                    return end
            if self.steps.add(entry.step).status is StepStatus.DONE:
                return StepEnd.DONE
            if entry.step == Step.BILLING:
                return await (self.billing_task or self._close_billing())
            await self._settle_archive()
            return await self._run_step(entry.step, self._step_input(entry.step))

        for entry in self._step_order():
            self.steps.add(entry.step)
            tasks[entry.step] = asyncio.ensure_future(one(entry))
        ends = [await task for task in tasks.values()]
        return next((end for end in ends if end is not StepEnd.DONE), StepEnd.DONE)

    def _settle_archive(self) -> asyncio.Task[None]:
        """One wait for a copy being built, whichever step asks first."""
        if self.settled is None:
            self.settled = asyncio.ensure_future(self._archive_settled())
        return self.settled

    def _close_billing(self, stop: Callable[[], bool] = lambda: False) -> asyncio.Task[StepEnd]:
        """The billing step with the effects the outcome decided at the confirmation."""
        outcome = self.billing_outcome
        assert outcome is not None  # set at the confirmation
        arg = BillingInput(
            service_id=self.input.service_id,
            customer_id=self.input.customer_id,
            outcome=outcome,
            revoke_mandate=rules.revokes_mandate(outcome),
            void_renewal_invoices=rules.voids_renewal_invoices(outcome),
            preflight=not self.patches.inventory_and_preflight,
        )
        self.billing_task = asyncio.ensure_future(self._run_step(Step.BILLING, arg, stop))
        return self.billing_task

    def _step_input(self, step: str) -> StepInput:
        ids = {"service_id": self.input.service_id, "customer_id": self.input.customer_id}
        if step == Step.FILES:
            return FilesInput(**ids)
        if step == Step.MAILBOXES:
            return DeprovisionInput(**ids)
        service = self.service
        assert service is not None and service.resource_context is not None
        return ResourceStepInput(
            **ids,
            kind=step,
            resources=[r for r in service.resources if r.kind == step],
            context=service.resource_context,
        )

    async def _run_step(
        self, step: str, arg: StepInput, stop: Callable[[], bool] = lambda: False
    ) -> StepEnd:
        """Run one step until it is done and record each attempt in `steps`.

        One activity execution per attempt, so each failure shows at once in `status`,
        the Web UI and the SLA alert; the next attempt follows after a backoff, for as
        long as the cause lasts. A refused path waits for an operator's `retry`. `stop`
        is asked between attempts, never during one: an attempt always ends and counts.
        """
        progress = self.steps.add(step)
        tried_here = 0
        while True:
            if stop():
                progress.status = StepStatus.PENDING
                self._publish()
                return StepEnd.STOPPED
            progress.attempts += 1
            tried_here += 1
            progress.status = StepStatus.RUNNING
            progress.detail = None
            self._publish()
            result, failure, server = await self._try(step, arg)
            if result is not None and (result.verified or not self.patches.inventory_and_preflight):
                progress.finish(result)
                self._note(f"{step}_done")
                self._publish()
                return StepEnd.DONE
            if failure is not None and cancelled(failure):
                raise failure  # the workflow is being cancelled: not a failed attempt
            refusal = path_refusal(failure)
            if refusal is not None:
                if await self._await_retry(step, refusal):
                    continue
                return StepEnd.STOPPED
            if failure is None:  # e.g. a worker of an older version, without the checks
                progress.error = f"NotVerified: the {step} step ended without its check"
            else:
                progress.error = self._error_line(failure, server)
                arg = arg.resumed(left_behind(failure))
            progress.failing_since = progress.failing_since or workflow.now()
            self._publish()
            workflow.logger.warning(
                "%s: attempt %d failed: %s", step, progress.attempts, progress.error
            )
            if stop():
                continue
            if self._hands_over(step, tried_here):
                return StepEnd.HANDED_OVER
            await self._wait_before_retrying(step, progress.attempts, failure, stop)

    def _hands_over(self, step: str, tried_here: int) -> bool:
        """After a failed attempt: whether the next ones go on in a new run. A run of an
        earlier release moves at a failed deletion step's attempt (not billing's: a
        local activity, after which a patch could fall in another task on replay)."""
        if not self.patches.phases:
            attempts = self.steps[step].attempts
            return step != Step.BILLING and moves_open_run(f"{step}#{attempts}")
        return tried_here >= ATTEMPTS_PER_RUN or workflow.info().is_continue_as_new_suggested()

    async def _wait_before_retrying(
        self, step: str, attempts: int, failure: BaseException | None, stop: Callable[[], bool]
    ) -> None:
        progress = self.steps[step]
        failing_for = workflow.now() - (progress.failing_since or workflow.now())
        wait = backoff(attempts, failing_for, failure)
        summary = f"{step}: next attempt in {wait}"
        if not self.patches.phases:
            await workflow.sleep(wait, summary=summary)
            return
        # An operator's `retry` (the cause fixed) starts the next attempt at once.
        self.retry_requested = False
        try:
            await workflow.wait_condition(
                lambda: self.retry_requested or stop(), timeout=wait, timeout_summary=summary
            )
        except TimeoutError:
            pass

    async def _try(
        self, step: str, arg: StepInput
    ) -> tuple[StepResult | None, BaseException | None, str | None]:
        """One attempt: its result, or its failure and the server it failed on."""
        server = self.service.server if self.service else None
        try:
            if isinstance(arg, ResourceStepInput):
                return await self._resource_attempt(arg), None, None
            return await self._attempt(step, arg), None, server
        except _ResourceServerFailed as err:
            return None, err.__cause__, err.server
        except (ActivityError, ApplicationError) as err:
            return None, err, server

    async def _attempt(self, step: str, arg: StepInput) -> StepResult:
        """One execution of a step's activity: billing is a short local one, after the
        preflights on the data's servers; the deletions run there and heartbeat."""
        attempt = self.steps[step].attempts
        summary = f"{STEP_SUMMARIES[Step(step)]}, attempt {attempt}"
        if isinstance(arg, BillingInput):
            if self.patches.inventory_and_preflight:
                await self._on_server(
                    self._server(),
                    PreflightActivities.preflight_paths,
                    PreflightInput(service_id=arg.service_id, customer_id=arg.customer_id),
                    start_to_close_timeout=WALK_LIMIT,
                    retry_policy=ONE_ATTEMPT,
                    summary=f"check the paths before billing, attempt {attempt}",
                )
            groups = self._resource_groups()
            for group in groups:
                # shared with a live service: judged centrally, where the panel is
                await workflow.execute_local_activity_method(
                    PanelDbActivities.check_shared_resources,
                    group,
                    start_to_close_timeout=SHORT,
                    retry_policy=ONE_ATTEMPT,
                    summary=f"check no live service shares the resources, attempt {attempt}",
                )
            for group in groups:
                await self._on_server(
                    group.server,
                    ResourceActivities.preflight_resources,
                    group,
                    start_to_close_timeout=WALK_LIMIT,
                    retry_policy=ONE_ATTEMPT,
                    summary=f"check the resources before billing, attempt {attempt}",
                )
            return await workflow.execute_local_activity_method(
                BillingActivities.close_billing,
                arg,
                start_to_close_timeout=STEP_TIMEOUTS[Step.BILLING],
                retry_policy=ONE_ATTEMPT,
                summary=summary,
            )
        activity = (
            FilesActivities.delete_files
            if step == Step.FILES
            else MailboxActivities.delete_mailboxes
        )
        return await self._on_server(
            self._server(),
            activity,
            arg,
            start_to_close_timeout=STEP_TIMEOUTS[Step(step)],
            retry_policy=ONE_ATTEMPT,
            summary=summary,
        )

    async def _resource_attempt(self, arg: ResourceStepInput) -> ResourceStepResult:
        """One attempt of a resource kind's step: `delete_resources` once per server
        holding resources of the kind, on that server's node (or the central workers)."""
        attempt = self.steps[arg.kind].attempts
        done = ResourceStepResult(verified=True)
        servers = sorted({r.server or "" for r in arg.resources})
        for server in servers:
            group = arg.model_copy(
                update={
                    "server": server or None,
                    "resources": [r for r in arg.resources if (r.server or "") == server],
                }
            )
            try:
                result = await self._on_server(
                    group.server,
                    ResourceActivities.delete_resources,
                    group,
                    start_to_close_timeout=RESOURCE_TIMEOUT,
                    retry_policy=ONE_ATTEMPT,
                    summary=f"delete {arg.kind} on {server or 'the central workers'}, "
                    f"attempt {attempt}",
                )
            except (ActivityError, ApplicationError) as err:
                raise _ResourceServerFailed(group.server) from err
            # the node has no panel database: `deleted_at` and the receipt's line, here
            await workflow.execute_local_activity_method(
                PanelDbActivities.record_resources,
                ResourceRecordInput(
                    service_id=arg.service_id,
                    customer_id=arg.customer_id,
                    kind=arg.kind,
                    server=group.server,
                    resources=result.resources,
                ),
                start_to_close_timeout=SHORT,
                retry_policy=RETRY,
                summary=f"record {arg.kind} deleted",
            )
            done.resources += result.resources
            done.verified = done.verified and result.verified
        return done

    def _error_line(self, err: BaseException, server: str | None) -> str:
        """A failed attempt in one line; a node that took no task is named."""
        line = one_line(err)
        if server and timed_out(err, TimeoutType.SCHEDULE_TO_START):
            return f"node {server} is not answering ({line})"
        return line

    async def _await_retry(self, step: str, refusal: ApplicationError) -> bool:
        """Show the refused path and wait for an operator's `retry` (True) or for the
        customer's withdrawal (False, while scheduled). The refusal names the step
        whose path is unsafe: billing's preflight refuses for the others."""
        refused_step = str(refusal.details[0]) if refusal.details else step
        refused = self.steps.add(refused_step)
        if refused_step != step:
            self.steps[step].status = StepStatus.PENDING
            self.steps[step].detail = f"waiting for the {refused_step} step's path to be fixed"
        refused.status = StepStatus.REFUSED
        refused.detail = refusal.message
        # contract section 9: the refused step's `error` names the resource (or path)
        refused.error = refusal.message
        self.retry_requested = False
        self._publish()
        workflow.logger.warning("step %s refused: %s", refused_step, refusal.message)
        self.awaiting_retry = True
        await workflow.wait_condition(lambda: self.retry_requested or self.state is State.WITHDRAWN)
        self.awaiting_retry = False
        if refused_step != step:
            refused.status = StepStatus.PENDING
            refused.detail = None
            refused.error = None
        return self.retry_requested


class _ResourceServerFailed(Exception):
    """An attempt of a resource step failed on `server`; the cause is the failure."""

    def __init__(self, server: str | None) -> None:
        super().__init__(server)
        self.server = server
