"""The `ServiceCancellation` workflow: request, code, confirmation, deprovisioning.

The code itself never enters this workflow: `issue_code` makes and mails it, and
`verify_code` checks what the customer typed against its keyed hash.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    FailureError,
    TimeoutType,
)
from temporalio.exceptions import TimeoutError as AttemptTimeout

with workflow.unsafe.imports_passed_through():
    from activities.archive import ArchiveActivities
    from activities.billing import BillingActivities
    from activities.codes import CodeActivities
    from activities.errors import PATH_REFUSED
    from activities.files import FilesActivities
    from activities.inventory import InventoryActivities
    from activities.mail import (
        KIND_CANCELLED,
        KIND_LOCKED,
        KIND_SLA_AT_RISK,
        KIND_WITHDRAWN,
        NoticeActivities,
    )
    from activities.mailboxes import MailboxActivities
    from activities.panel_db import PanelDbActivities
    from activities.safety import PreflightActivities
    from bajas.models import (
        MAX_RESENDS,
        MAX_WRONG_CODES,
        AcceptedService,
        ArchiveInput,
        ArchiveLink,
        ArchiveRequest,
        ArchiveState,
        ArchiveStatus,
        BillingInput,
        BillingOutcome,
        CancellationInput,
        CancellationResult,
        CancellationStatus,
        ConfirmInput,
        ConfirmResult,
        DeprovisionInput,
        Effective,
        FilesInput,
        FinishInput,
        Inventory,
        InventoryInput,
        IssueCodeInput,
        IssueCodeResult,
        NoticeInput,
        PreflightInput,
        ResendInput,
        ResendResult,
        RetryInput,
        ServiceCheckInput,
        State,
        Step,
        StepInput,
        StepResult,
        Steps,
        StepStatus,
        TimelineEvent,
        TransitionInput,
        VerifyCodeInput,
        WithdrawInput,
        is_archive_token,
        is_well_formed_code,
    )
    from workflows import rules
    from workflows.search_attributes import (
        CANCELLATION_STATE,
        CUSTOMER_ID,
        SERVICE_ID,
        SLA_AT_RISK,
        WORKFLOW_TYPE,
        node_task_queue,
    )

RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=[PATH_REFUSED],
)
SHORT = timedelta(seconds=30)
# Patch ids (docs/VERSIONING.md): each guards a change to the commands a run issues.
AUDIT_WRONG_CODES = "audit-wrong-codes"
MAIL_AS_ACTIVITY = "mail-as-activity"
LOCK_NOTICE = "lock-notice"
END_OF_TERM = "end-of-term"
# The inventory before the code mail, the path preflight as its own step before
# billing, and every step's check required before it counts as done.
INVENTORY_AND_PREFLIGHT = "inventory-and-preflight"
LAST_COPY = "last-copy"
# While scheduled, billing closes before the debit of the 1st when the outcome cancels it.
END_OF_TERM_BILLING = "end-of-term-billing"
# A dead worker is noticed this fast during a deletion; progress reaches the server
# about every 0.8 of it (the SDK throttles heartbeats).
HEARTBEAT = timedelta(seconds=10)
# A step's attempts are run by `_step`, one activity execution each, since the workflow
# cannot see retries done by the server: every failure then shows at once in `status`.
ONE_ATTEMPT = RetryPolicy(maximum_attempts=1)
# The code mail waits this long at most for the inventory.
INVENTORY_WAIT = timedelta(seconds=3)
# One walk of a service's trees without deleting (the inventory, the preflight).
WALK_LIMIT = timedelta(hours=1)
# The wait before the next attempt of a failing step: doubling, capped near a minute.
FIRST_BACKOFF = timedelta(seconds=1)
MAX_BACKOFF = timedelta(seconds=60)
# An error line stays readable whatever it quotes.
ERROR_CHARS = 300
QUOTED_PATH = re.compile(r"'(/[^']*)'")
ATTEMPT_TIMEOUTS = {
    TimeoutType.HEARTBEAT: (
        f"the worker stopped answering (no heartbeat for {HEARTBEAT.seconds} s)"
    ),
    TimeoutType.START_TO_CLOSE: "the attempt ran past its time limit",
    TimeoutType.SCHEDULE_TO_START: "no worker took the attempt",
}

T = TypeVar("T")
# An activity method of a deprovisioning step, e.g. `FilesActivities.delete_files`.
StepActivity = Callable[[Any, Any], Awaitable[StepResult]]
# How long one attempt of each step may take, and what the Web UI calls it. Billing
# is a short local activity; the deletions heartbeat.
STEP_TIMEOUTS = {
    Step.BILLING: SHORT,
    Step.MAILBOXES: timedelta(minutes=30),
    Step.FILES: timedelta(hours=6),
}
STEP_SUMMARIES = {
    Step.BILLING: "close billing",
    Step.MAILBOXES: "delete mailboxes",
    Step.FILES: "delete the site's files",
}
# One attempt at the last copy; before the confirmation nothing else bounds it.
ARCHIVE_TIMEOUT = timedelta(hours=12)
ARCHIVE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    maximum_attempts=3,
    non_retryable_error_types=[PATH_REFUSED],
)


@workflow.defn(name=WORKFLOW_TYPE)
class ServiceCancellation:
    """One cancellation of one service, from the request to the last deleted file."""

    @workflow.init
    def __init__(self, data: CancellationInput) -> None:
        self.input = data
        self.state = State.AWAITING_CONFIRMATION
        self.requested_at = workflow.now()
        # Set once the service check has accepted the request.
        self.service: AcceptedService | None = None
        self.rejection_reason: str | None = None
        # The code out by mail; a resend replaces it.
        self.code: IssueCodeResult | None = None
        self.attempts_left = MAX_WRONG_CODES
        self.resends_left = MAX_RESENDS
        self.confirmed_at: datetime | None = None
        self.billing_outcome: BillingOutcome | None = None
        self.finished_at: datetime | None = None
        self.steps = Steps()
        self.sla_at_risk = False
        # When the deletion starts, set at the confirmation (rules.effective_at).
        self.effective_at: datetime | None = None
        # The billing step when it ran ahead of the deletion, while scheduled.
        self.early_billing: asyncio.Task[None] | None = None
        self.timeline = [TimelineEvent(event="requested", at=self.requested_at)]
        self.retry_requested = False
        self.withdrawn_by: str | None = None
        # Checking a code, sending a new one and expiring the window each read and
        # change the current code across an activity: one at a time.
        self.code_lock = asyncio.Lock()
        self.audit_wrong_codes = False
        self.mail_as_activity = False
        self.end_of_term = False
        self.billing_before_debit = False
        # What confirming deletes, once counted; the counting runs beside the code.
        self.inventory: Inventory | None = None
        self.inventory_task: asyncio.Task[None] | None = None
        self.checked = False
        # The last copy (`request_archive`): its token, the build, and the task that
        # keeps it until it expires or goes with the rest.
        self.last_copy = False
        self.archive: ArchiveStatus | None = None
        self.archive_input: ArchiveInput | None = None
        self.archive_build: workflow.ActivityHandle[Any] | None = None
        self.archive_work: asyncio.Task[None] | None = None
        self.archive_released = False

    @workflow.run
    async def run(self, data: CancellationInput) -> CancellationResult:
        # Every patch is decided here, before the first command: a `patched()` asked
        # later, after a local activity, can fall in another workflow task on replay.
        self.audit_wrong_codes = workflow.patched(AUDIT_WRONG_CODES)
        self.mail_as_activity = workflow.patched(MAIL_AS_ACTIVITY)
        lock_notice = workflow.patched(LOCK_NOTICE)
        # Runs recorded before it carry no `effective`: they all confirm for `now`.
        self.end_of_term = workflow.patched(END_OF_TERM) and data.effective is Effective.END_OF_TERM
        self.checked = workflow.patched(INVENTORY_AND_PREFLIGHT)
        self.last_copy = workflow.patched(LAST_COPY)
        self.billing_before_debit = workflow.patched(END_OF_TERM_BILLING)
        workflow.upsert_search_attributes(
            [
                SERVICE_ID.value_set(str(data.service_id)),
                CUSTOMER_ID.value_set(str(data.customer_id)),
                CANCELLATION_STATE.value_set(self.state.value),
                SLA_AT_RISK.value_set(False),
            ]
        )
        check = await workflow.execute_local_activity_method(
            PanelDbActivities.check_service,
            ServiceCheckInput(
                service_id=data.service_id,
                customer_id=data.customer_id,
                requested_by=data.requested_by,
                reason=data.reason,
                effective=data.effective,
                reason_code=data.reason_code,
            ),
            start_to_close_timeout=SHORT,
            retry_policy=RETRY,
            summary="check the service",
        )
        service = check.accepted_service()
        if service is None:
            self.rejection_reason = check.rejection_reason
            self._set_state(State.REJECTED)
            return await self._result()

        self.service = service
        if self.checked:
            self.inventory_task = asyncio.ensure_future(self._take_inventory())
            await self._await_inventory()
        if self.state is State.AWAITING_CONFIRMATION:  # not withdrawn during the check
            async with self.code_lock:
                await self._issue_code(service, self.requested_at + service.confirmation_window)

        confirmed_at = await self._await_confirmation()
        if confirmed_at is None:  # expired, withdrawn or locked
            await self._transition(self.state.value, self.state)
            if lock_notice and self.state is State.LOCKED:
                await self._notice(KIND_LOCKED)  # "alguien intentó dar de baja…"
            return await self._result()

        self.billing_outcome = self._outcome_at(service, confirmed_at)
        if not await self._until_effective():  # withdrawn while scheduled
            return await self._result()
        assert self.effective_at is not None  # set with the confirmation
        await self._deprovision_within_sla(service, self.effective_at, self.billing_outcome)
        return await self._result()

    # ---- signals ----------------------------------------------------------------------

    @workflow.signal(name="confirm")
    async def confirm(self, data: ConfirmInput | None = None) -> None:
        """The code as the contract's signal: a malformed one is ignored, a wrong one counts."""
        if data is None or not is_well_formed_code(data.code):
            workflow.logger.info("confirm signal with a malformed code ignored")
            return
        await self._confirm(data.code)

    @workflow.signal(name="withdraw")
    def withdraw(self, data: WithdrawInput | None = None) -> None:
        """The customer changed their mind; ignored once deprovisioning or ended."""
        if not self.state.withdrawable:
            workflow.logger.info("withdraw ignored in state %s", self.state)
            return
        self._withdraw(data)

    @workflow.signal(name="retry")
    def retry(self, data: RetryInput | None = None) -> None:
        """After an operator fixes a refused path in the panel database."""
        self.retry_requested = True

    # ---- updates ----------------------------------------------------------------------

    @workflow.update(name="confirm_code")
    async def confirm_code(self, data: ConfirmInput | None = None) -> ConfirmResult:
        """The code, answered: whether it was accepted and how many tries are left."""
        if data is None:  # the validator refuses it; this only satisfies the type
            raise ApplicationError("the confirmation code must be exactly 6 digits")
        return await self._confirm(data.code)

    @confirm_code.validator
    def _check_confirm_code(self, data: ConfirmInput | None = None) -> None:
        if data is None or not is_well_formed_code(data.code):
            raise ValueError("the confirmation code must be exactly 6 digits")
        if self.state is not State.AWAITING_CONFIRMATION:
            raise ValueError(f"this cancellation is not awaiting confirmation (state {self.state})")

    @workflow.update(name="resend_code")
    async def resend_code(self, data: ResendInput | None = None) -> ResendResult:
        """A new code by mail: the old one stops working and the window starts again."""
        async with self.code_lock:
            service = self.service
            if (
                service is None
                or self.state is not State.AWAITING_CONFIRMATION
                or self.resends_left <= 0
            ):
                raise ApplicationError("a new code cannot be sent now", type="ResendRefused")
            self.resends_left -= 1
            expires_at = workflow.now() + service.confirmation_window
            await self._issue_code(service, expires_at)
            return ResendResult(code_expires_at=expires_at, resends_left=self.resends_left)

    @resend_code.validator
    def _check_resend(self, data: ResendInput | None = None) -> None:
        if self.state is not State.AWAITING_CONFIRMATION:
            raise ValueError(f"this cancellation is not awaiting confirmation (state {self.state})")
        if self.resends_left <= 0:
            raise ValueError(f"no resends left (at most {MAX_RESENDS})")
        if self.service is None:
            raise ValueError("the service check has not finished yet")

    @workflow.update(name="withdraw_cancellation")
    def withdraw_cancellation(self, data: WithdrawInput | None = None) -> CancellationStatus:
        """The `withdraw` signal as an update, so the caller learns at once whether it
        took and where the cancellation stands, without polling."""
        self._withdraw(data)
        return self.status()

    @withdraw_cancellation.validator
    def _check_withdraw(self, data: WithdrawInput | None = None) -> None:
        if not self.state.withdrawable:
            raise ValueError(f"cannot withdraw: the cancellation is {self.state.value}")

    @workflow.update(name="request_archive")
    def request_archive(self, data: ArchiveRequest) -> ArchiveStatus:
        """The last copy of the site and mailboxes, built where they are; the panel
        offers its link once it is ready."""
        assert self.service is not None  # the validator saw to it
        generation = self.archive_input.generation + 1 if self.archive_input else 1
        self.archive_input = ArchiveInput(
            service_id=self.input.service_id,
            customer_id=self.input.customer_id,
            token=data.token,
            generation=generation,
        )
        self.archive = ArchiveStatus(state=ArchiveState.BUILDING)
        self.archive_work = asyncio.create_task(
            self._keep_archive(self.service, self.archive, self.archive_input)
        )
        self._publish()
        return self.archive.model_copy()

    @request_archive.validator
    def _check_request_archive(self, data: ArchiveRequest) -> None:
        if not self.last_copy:
            raise ValueError("this cancellation started before copies could be asked for")
        if data.customer_id != self.input.customer_id:
            raise ValueError("not this customer's cancellation")
        if not is_archive_token(data.token):
            raise ValueError("the token must be 43 characters of secrets.token_urlsafe(32)")
        if self.state is State.DEPROVISIONING or self.state.is_final:
            raise ValueError(f"no copy once the deletion has started (state {self.state})")
        if self.service is None:
            raise ValueError("the service check has not finished yet")
        if self.archive is not None and self.archive.state in (
            ArchiveState.BUILDING,
            ArchiveState.READY,
        ):
            raise ValueError(f"a copy is already {self.archive.state.value}")
        if self.archive_work is not None and not self.archive_work.done():
            raise ValueError("the previous copy is still being deleted")

    @workflow.update(name="wait_for_code")
    async def wait_for_code(self) -> CancellationStatus:
        """For update-with-start: answers once the code mail has left or the request ended."""
        await workflow.wait_condition(
            lambda: self.code is not None or self.state is not State.AWAITING_CONFIRMATION
        )
        return self.status()

    # ---- the queries ------------------------------------------------------------------

    @workflow.query(name="status")
    def status(self) -> CancellationStatus:
        """Where the cancellation stands: what the panel and operators read."""
        service = self.service
        return CancellationStatus(
            state=self.state,
            service_id=self.input.service_id,
            customer_id=self.input.customer_id,
            requested_by=self.input.requested_by,
            domain=service.domain if service else None,
            attempts_left=self.attempts_left,
            resends_left=self.resends_left,
            code_sent=self.code is not None,
            code_expires_at=self.code.expires_at if self.code else None,
            requested_at=self.requested_at,
            confirmed_at=self.confirmed_at,
            finished_at=self.finished_at,
            billing_preview=self._outcome_at(service, self.requested_at) if service else None,
            billing_outcome=self.billing_outcome,
            rejection_reason=self.rejection_reason,
            sla_at_risk=self.sla_at_risk,
            steps=self.steps.model_copy(deep=True),
            effective=self.input.effective,
            effective_at=self.effective_at or self._planned_term_end(),
            billing_closes_at=self._billing_closes_at(),
            reason_code=self.input.reason_code,
            timeline=[e.model_copy() for e in self.timeline],
            inventory=self.inventory,
            archive=self.archive.model_copy() if self.archive else None,
        )

    @workflow.query(name="archive_link")
    def archive_link(self) -> ArchiveLink | None:
        """The copy's token with its state, for the panel to offer and check the link;
        kept out of `status`, which every operator tool reads."""
        if self.archive is None or self.archive_input is None:
            return None
        return ArchiveLink(
            customer_id=self.input.customer_id,
            token=self.archive_input.token,
            archive=self.archive.model_copy(),
        )

    # ---- the confirmation ---------------------------------------------------------------

    async def _await_confirmation(self) -> datetime | None:
        """Wait for a valid code, a withdrawal, a lock-out or the end of the code's
        window (a resend moves it); the instant of the confirmation, or None."""
        while self.state is State.AWAITING_CONFIRMATION and self.code is not None:
            left = max(self.code.expires_at - workflow.now(), timedelta(seconds=1))
            try:
                await workflow.wait_condition(
                    lambda: self.state is not State.AWAITING_CONFIRMATION,
                    timeout=left,
                    timeout_summary="confirmation window",
                )
            except TimeoutError:
                # A verification under way finishes first; a resend may have moved the end.
                async with self.code_lock:
                    if (
                        self.state is State.AWAITING_CONFIRMATION
                        and workflow.now() >= self.code.expires_at
                    ):
                        self._set_state(State.EXPIRED)
        return self.confirmed_at

    async def _confirm(self, code: str) -> ConfirmResult:
        received_at = workflow.now()
        # A code may be typed before this run has recorded that its mail left.
        await workflow.wait_condition(
            lambda: self.code is not None or self.state is not State.AWAITING_CONFIRMATION
        )
        async with self.code_lock:
            current = self.code
            if (
                current is None
                or self.state is not State.AWAITING_CONFIRMATION
                or received_at >= current.expires_at
            ):
                return self._confirm_result(False)
            verdict = await workflow.execute_local_activity_method(
                CodeActivities.verify_code,
                VerifyCodeInput(
                    generation=current.generation, code=code, service_id=self.input.service_id
                ),
                start_to_close_timeout=SHORT,
                retry_policy=RETRY,
                summary="check a submitted code",
            )
            if self.state is not State.AWAITING_CONFIRMATION:  # withdrawn meanwhile
                return self._confirm_result(False)
            if verdict.accepted:
                self._accept(received_at)
            else:
                self.attempts_left -= 1
                if self.attempts_left <= 0:
                    self._set_state(State.LOCKED)
                # Added after v1: runs recorded before it replay without this step.
                if self.audit_wrong_codes:
                    wrong = MAX_WRONG_CODES - self.attempts_left
                    await self._transition(f"code_rejected:{wrong}", None)
            self._publish()
            return self._confirm_result(verdict.accepted)

    def _accept(self, at: datetime) -> None:
        """The code was right: the deletion starts now, or is scheduled for the end of term."""
        assert self.service is not None  # a code exists only for an accepted service
        self.confirmed_at = at
        self.effective_at = rules.effective_at(
            Effective.END_OF_TERM if self.end_of_term else Effective.NOW,
            at,
            self.service.expires_on,
            self.service.business_tz,
        )
        self._note("confirmed", at)
        self._set_state(State.SCHEDULED if self.effective_at > at else State.DEPROVISIONING)

    async def _until_effective(self) -> bool:
        """Audit the confirmation; when scheduled, wait (site and mail working) until
        `effective_at`, on a durable timer. Billing closes first where the debit the
        outcome cancels would reach the bank before (`_billing_closes_at`). False when the
        customer withdrew meanwhile."""
        if self.state is State.DEPROVISIONING:
            await self._transition("confirmed", State.DEPROVISIONING)
            return True
        assert self.effective_at is not None and self.billing_outcome is not None
        until = {"effective_at": self.effective_at.isoformat()}
        await self._transition("confirmed", State.SCHEDULED, details=until)
        billing_at = self._billing_closes_at()
        if (
            billing_at is not None
            and billing_at < self.effective_at
            and await self._scheduled_until(billing_at, "billing closes before the debit")
        ):
            # Runs beside the wait; the deprovisioning awaits it instead of a second run.
            self.early_billing = asyncio.ensure_future(self._close_billing(self.billing_outcome))
        await self._scheduled_until(self.effective_at, "end of term")
        if self.state is State.WITHDRAWN:
            await self._transition("withdrawn", State.WITHDRAWN, State.SCHEDULED)
            if self.early_billing is not None and not self.early_billing.done():
                self.early_billing.cancel()  # a failed or refused attempt changed nothing
            if self.steps.billing.status is StepStatus.DONE:
                await self._notice(KIND_WITHDRAWN)  # the site stays; billing stays closed
            return False
        self._set_state(State.DEPROVISIONING)
        await self._transition("term_ended", State.DEPROVISIONING, State.SCHEDULED, details=until)
        return True

    async def _scheduled_until(self, at: datetime, summary: str) -> bool:
        """Wait on a durable timer until `at`; True when still `scheduled` then."""
        try:
            await workflow.wait_condition(
                lambda: self.state is not State.SCHEDULED,
                timeout=max(at - workflow.now(), timedelta(seconds=1)),
                timeout_summary=summary,
            )
        except TimeoutError:
            pass
        return self.state is State.SCHEDULED

    def _close_billing(self, outcome: BillingOutcome) -> Coroutine[Any, Any, None]:
        """The billing step with the effects the outcome decided at the confirmation."""
        service_id, customer_id = self.input.service_id, self.input.customer_id
        return self._step(
            Step.BILLING,
            BillingActivities.close_billing,
            BillingInput(
                service_id=service_id,
                customer_id=customer_id,
                outcome=outcome,
                revoke_mandate=rules.revokes_mandate(outcome),
                void_renewal_invoices=rules.voids_renewal_invoices(outcome),
                preflight=not self.checked,
            ),
        )

    def _billing_closes_at(self) -> datetime | None:
        """When the billing step runs (rules.billing_closes_at), once confirmed; runs
        recorded before `end-of-term-billing` close it with the deletion."""
        service, outcome, confirmed_at, effective_at = (
            self.service,
            self.billing_outcome,
            self.confirmed_at,
            self.effective_at,
        )
        if service is None or outcome is None or confirmed_at is None or effective_at is None:
            return None
        if not self.billing_before_debit:
            return effective_at
        return rules.billing_closes_at(
            outcome, confirmed_at, effective_at, service.expires_on, service.business_tz
        )

    def _planned_term_end(self) -> datetime | None:
        """Before the confirmation, when an `end_of_term` deletion would start."""
        service = self.service
        if not self.end_of_term or service is None:
            return None
        return rules.term_end(service.expires_on, service.business_tz)

    def _confirm_result(self, accepted: bool) -> ConfirmResult:
        return ConfirmResult(accepted=accepted, attempts_left=self.attempts_left, state=self.state)

    def _withdraw(self, data: WithdrawInput | None) -> None:
        self.withdrawn_by = (data.by if data else None) or "withdraw"
        self._set_state(State.WITHDRAWN)

    async def _issue_code(self, service: AcceptedService, expires_at: datetime) -> None:
        """Mail a new code; the caller holds `code_lock`, so no check runs meanwhile."""
        generation = (self.code.generation if self.code else 0) + 1
        await self._mail_step(
            CodeActivities.issue_code,
            IssueCodeInput(
                service_id=self.input.service_id,
                customer_id=self.input.customer_id,
                generation=generation,
                expires_at=expires_at,
                billing_preview=self._outcome_at(service, self.requested_at),
                debit_cutoff=rules.auto_debit_cutoff(service.expires_on, service.payment_method),
                term_end=self._term_end_ahead(),
                inventory=self.inventory,
                counting=self._counting(),
            ),
            summary=f"mail confirmation code #{generation}",
        )
        self.code = IssueCodeResult(generation=generation, expires_at=expires_at)
        self._note("code_sent" if generation == 1 else "code_resent")
        self._publish()

    def _term_end_ahead(self) -> datetime | None:
        """The end of term a confirmed deletion would wait for, if still ahead."""
        planned = self._planned_term_end()
        return planned if planned is not None and planned > workflow.now() else None

    # ---- the inventory --------------------------------------------------------------

    async def _take_inventory(self) -> None:
        """Count what confirming deletes, on the server that holds it. A node that takes
        no task is asked again; any other failure leaves the inventory unknown (an unsafe
        path is refused by the preflight after the confirmation)."""
        while True:
            try:
                result = await self._on_node(
                    InventoryActivities.take_inventory,
                    InventoryInput(
                        service_id=self.input.service_id, customer_id=self.input.customer_id
                    ),
                    start_to_close_timeout=WALK_LIMIT,
                    retry_policy=RETRY,
                    summary="count what the cancellation deletes",
                )
            except ActivityError as err:
                if _timed_out(err, TimeoutType.SCHEDULE_TO_START):
                    continue
                workflow.logger.warning("inventory not taken: %s", _one_line(err))
                return
            self.inventory = result.inventory
            self._publish()
            return

    async def _await_inventory(self) -> None:
        """A few seconds for the inventory, so the code mail can carry it; a large site
        is still being counted after them, and the mail says so."""
        task = self.inventory_task
        try:
            await workflow.wait_condition(
                lambda: (
                    self.inventory is not None
                    or (task is not None and task.done())
                    or self.state is not State.AWAITING_CONFIRMATION
                ),
                timeout=INVENTORY_WAIT,
                timeout_summary="inventory, before the code mail",
            )
        except TimeoutError:
            pass

    def _counting(self) -> bool:
        task = self.inventory_task
        return self.inventory is None and task is not None and not task.done()

    def _stop_inventory(self) -> None:
        if self.inventory_task is not None and not self.inventory_task.done():
            self.inventory_task.cancel()

    # ---- deprovisioning -----------------------------------------------------------------

    async def _deprovision_within_sla(
        self, service: AcceptedService, started_at: datetime, outcome: BillingOutcome
    ) -> None:
        """The 24-hour promise counts from `started_at`, the `effective_at` of the run."""
        work = asyncio.ensure_future(self._deprovision(outcome))
        deadline = started_at + service.sla_limit
        try:
            await workflow.wait_condition(
                work.done,
                timeout=max(deadline - workflow.now(), timedelta(seconds=1)),
                timeout_summary="24-hour promise",
            )
        except TimeoutError:
            await self._raise_sla_alert()
        await work

    async def _deprovision(self, outcome: BillingOutcome) -> None:
        """Billing first, then mailboxes and files side by side, then the final mark."""
        service_id, customer_id = self.input.service_id, self.input.customer_id
        target = DeprovisionInput(service_id=service_id, customer_id=customer_id)
        # Closed already while scheduled (or still closing): not run a second time.
        await (self.early_billing or self._close_billing(outcome))
        await self._archive_settled()
        await asyncio.gather(
            self._step(Step.MAILBOXES, MailboxActivities.delete_mailboxes, target),
            self._step(
                Step.FILES,
                FilesActivities.delete_files,
                FilesInput(service_id=service_id, customer_id=customer_id),
            ),
        )
        await self._archive_gone()
        await workflow.execute_local_activity_method(
            PanelDbActivities.finish_cancellation,
            FinishInput(
                service_id=service_id,
                customer_id=customer_id,
                billing_outcome=outcome,
                files_deleted=self.steps.files.done,
                mailboxes_deleted=self.steps.mailboxes.done,
            ),
            start_to_close_timeout=SHORT,
            retry_policy=RETRY,
            summary="mark the service cancelled",
        )
        self._set_state(State.CANCELLED)
        await self._notice(KIND_CANCELLED)

    async def _step(self, step: Step, activity: StepActivity, arg: StepInput) -> None:
        """Run one deprovisioning step to its end and record its result in `steps`.

        One activity execution per attempt, so each failure shows at once in `status`,
        the Web UI and the SLA alert; the next attempt follows after a capped backoff,
        for as long as the cause lasts. A refused path waits for an operator's `retry`.
        """
        progress = self.steps[step]
        while True:
            progress.attempts += 1
            progress.status = StepStatus.RUNNING
            progress.detail = None
            self._publish()
            try:
                result = await self._attempt(step, activity, arg)
                if self.checked and not result.verified:  # e.g. a worker of an older version
                    raise ApplicationError(
                        f"the {step} step ended without its check", type="NotVerified"
                    )
            except (ActivityError, ApplicationError) as err:
                if any(isinstance(c, CancelledError) for c in _causes(err)):
                    raise  # the workflow is being cancelled: not a failed attempt
                refusal = _path_refusal(err)
                if refusal is not None:
                    await self._await_retry(step, refusal)
                    continue
                progress.error = self._error_line(err)
                arg = arg.resumed(_left_behind(err))
                self._publish()
                workflow.logger.warning(
                    "%s: attempt %d failed: %s", step, progress.attempts, progress.error
                )
                backoff = _backoff(progress.attempts, err)
                await workflow.sleep(backoff, summary=f"{step}: next attempt in {backoff}")
                continue
            progress.finish(result)
            self._publish()
            return

    async def _attempt(self, step: Step, activity: StepActivity, arg: StepInput) -> StepResult:
        """One execution of a step's activity: billing is a short local one, after the
        path preflight on the data's server; the deletions run there and heartbeat."""
        attempt = self.steps[step].attempts
        summary = f"{STEP_SUMMARIES[step]}, attempt {attempt}"
        if step is Step.BILLING:
            if self.checked:
                await self._on_node(
                    PreflightActivities.preflight_paths,
                    PreflightInput(service_id=arg.service_id, customer_id=arg.customer_id),
                    start_to_close_timeout=WALK_LIMIT,
                    retry_policy=ONE_ATTEMPT,
                    summary=f"check the paths before billing, attempt {attempt}",
                )
            return await workflow.execute_local_activity_method(
                activity,
                arg,
                start_to_close_timeout=STEP_TIMEOUTS[step],
                retry_policy=ONE_ATTEMPT,
                summary=summary,
            )
        return await self._on_node(
            activity,
            arg,
            start_to_close_timeout=STEP_TIMEOUTS[step],
            retry_policy=ONE_ATTEMPT,
            summary=summary,
        )

    def _node_queue(self) -> str | None:
        """The task queue of the steps that read or delete the service's files and
        mailboxes: its server's node worker (`bajas worker --node`), or None (this
        workflow's queue, the central workers) when the service names no server."""
        server = self.service.server if self.service else None
        return node_task_queue(workflow.info().task_queue, server) if server else None

    async def _on_node(
        self,
        activity: Callable[[Any, Any], Awaitable[T]],
        arg: object,
        *,
        start_to_close_timeout: timedelta,
        retry_policy: RetryPolicy,
        summary: str,
    ) -> T:
        """Run a step that touches the service's data where the data is. A node that is
        down holds only this service's steps: its task waits NODE_WAIT (a few minutes,
        from the service check) for a worker, then fails as not taken (`status` names
        the node) and is asked again."""
        service = self.service
        if service is None:  # never: these steps follow the service check
            raise ApplicationError("a node step before the service check")
        return await workflow.execute_activity_method(
            activity,
            arg,
            task_queue=self._node_queue(),
            start_to_close_timeout=start_to_close_timeout,
            schedule_to_start_timeout=service.node_wait,
            heartbeat_timeout=HEARTBEAT,
            retry_policy=retry_policy,
            summary=summary,
        )

    def _error_line(self, err: BaseException) -> str:
        """A failed attempt in one line; a node that took no task is named."""
        line = _one_line(err)
        server = self.service.server if self.service else None
        if server and _timed_out(err, TimeoutType.SCHEDULE_TO_START):
            return f"node {server} is not answering ({line})"
        return line

    async def _await_retry(self, step: Step, refusal: ApplicationError) -> None:
        """Show the refused path and wait for an operator's `retry`. The refusal names
        the step whose path is unsafe: billing's preflight refuses for files or mailboxes."""
        refused_step = Step(refusal.details[0]) if refusal.details else step
        refused = self.steps[refused_step]
        if refused_step is not step:
            self.steps[step].status = StepStatus.PENDING
            self.steps[step].detail = f"waiting for the {refused_step} step's path to be fixed"
        refused.status = StepStatus.REFUSED
        refused.detail = refusal.message
        self.retry_requested = False
        self._publish()
        workflow.logger.warning("step %s refused: %s", refused_step, refusal.message)
        await workflow.wait_condition(lambda: self.retry_requested)
        if refused_step is not step:
            refused.status = StepStatus.PENDING
            refused.detail = None

    # ---- the last copy -----------------------------------------------------------------

    async def _keep_archive(
        self, service: AcceptedService, archive: ArchiveStatus, target: ArchiveInput
    ) -> None:
        """Build the copy on the node that holds the data, keep it until its link expires
        or the data goes (`_archive_gone`), then delete it; a failed build leaves none."""
        queue = self._node_queue()
        self.archive_build = workflow.start_activity_method(
            ArchiveActivities.build_archive,
            target,
            task_queue=queue,
            start_to_close_timeout=ARCHIVE_TIMEOUT,
            heartbeat_timeout=HEARTBEAT,
            retry_policy=ARCHIVE_RETRY,
            # a build being stopped must stop writing before its file is deleted
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=f"build last copy #{target.generation}",
        )
        try:
            built = await self.archive_build
        except ActivityError as err:
            archive.state = ArchiveState.FAILED
            workflow.logger.warning("last copy #%d failed: %s", target.generation, _one_line(err))
        else:
            archive.state = ArchiveState.READY
            archive.bytes = built.bytes
            archive.expires_at = self._archive_expiry(service)
            self._publish()
            try:
                await workflow.wait_condition(
                    lambda: self.archive_released,
                    timeout=max(archive.expires_at - workflow.now(), timedelta(seconds=1)),
                    timeout_summary="last copy's link expires",
                )
            except TimeoutError:
                pass
            archive.state = ArchiveState.EXPIRED
            archive.expires_at = min(archive.expires_at, workflow.now())
        self._publish()
        await workflow.execute_activity_method(
            ArchiveActivities.delete_archive,
            target,
            task_queue=queue,
            start_to_close_timeout=SHORT,
            retry_policy=RETRY,
            summary=f"delete last copy #{target.generation}",
        )

    def _archive_expiry(self, service: AcceptedService) -> datetime:
        """ARCHIVE_TTL from now, but never past the deletion: at the latest, the SLA
        after the confirmation, or after the last moment to confirm."""
        start = self.confirmed_at or (self.code.expires_at if self.code else workflow.now())
        return min(workflow.now() + service.archive_ttl, start + service.sla_limit)

    async def _archive_settled(self) -> None:
        """Before the deletion: a copy still being built gets until ARCHIVE_DEADLINE after
        the confirmation, well within the 24 hours; then it is stopped and fails."""
        archive, service = self.archive, self.service
        if archive is None or archive.state is not ArchiveState.BUILDING or service is None:
            return
        deadline = (self.confirmed_at or workflow.now()) + service.archive_deadline
        try:
            await workflow.wait_condition(
                lambda: archive.state is not ArchiveState.BUILDING,
                timeout=max(deadline - workflow.now(), timedelta(seconds=1)),
                timeout_summary="deadline of the last copy",
            )
        except TimeoutError:
            workflow.logger.warning("last copy not built by its deadline: stopped")
            assert self.archive_build is not None
            self.archive_build.cancel()
            await workflow.wait_condition(lambda: archive.state is not ArchiveState.BUILDING)

    async def _archive_gone(self) -> None:
        """The copy goes with the rest (a build still running is stopped first); after
        this no archive of this run is left on disk."""
        if self.archive_work is None:
            return
        self.archive_released = True
        if self.archive_build is not None and not self.archive_build.done():
            self.archive_build.cancel()
        await self.archive_work

    async def _raise_sla_alert(self) -> None:
        self.sla_at_risk = True
        workflow.upsert_search_attributes([SLA_AT_RISK.value_set(True)])
        self._publish()
        await self._transition("sla_at_risk", None, State.DEPROVISIONING)
        await self._notice(KIND_SLA_AT_RISK, self._problems())

    # ---- activities used in several places ------------------------------------------------

    async def _transition(
        self,
        event: str,
        to_state: State | None,
        from_state: State | None = None,
        *,
        details: Mapping[str, int | str | bool | None] | None = None,
    ) -> None:
        actor = self.withdrawn_by if to_state is State.WITHDRAWN else None
        await workflow.execute_local_activity_method(
            PanelDbActivities.record_transition,
            TransitionInput(
                event=event,
                service_id=self.input.service_id,
                customer_id=self.input.customer_id,
                actor=actor or self.input.requested_by,
                from_state=from_state or State.AWAITING_CONFIRMATION,
                to_state=to_state,
                billing_outcome=self.billing_outcome,
                details={"attempts_left": self.attempts_left, **(details or {})},
            ),
            start_to_close_timeout=SHORT,
            retry_policy=RETRY,
            summary=f"audit: {event}",
        )

    async def _notice(self, kind: str, problems: list[str] | None = None) -> None:
        await self._mail_step(
            NoticeActivities.send_notice,
            NoticeInput(
                kind=kind,
                service_id=self.input.service_id,
                customer_id=self.input.customer_id,
                billing_outcome=self.billing_outcome,
                problems=problems or [],
                term_end=self.effective_at if self._was_scheduled() else None,
                archive=self.archive.state if self.archive else None,
            ),
            summary=f"mail: {kind}",
        )

    async def _mail_step(
        self, activity: Callable[[Any, Any], Awaitable[object]], arg: object, *, summary: str
    ) -> None:
        """A step that talks SMTP. v1/v2 ran it as a local activity, whose retries during
        a mail outage hold the workflow task and so delay every query by seconds; since
        `mail-as-activity` it is a regular activity."""
        if self.mail_as_activity:
            await workflow.execute_activity_method(
                activity, arg, start_to_close_timeout=SHORT, retry_policy=RETRY, summary=summary
            )
        else:
            await workflow.execute_local_activity_method(
                activity, arg, start_to_close_timeout=SHORT, retry_policy=RETRY, summary=summary
            )

    async def _result(self) -> CancellationResult:
        self._stop_inventory()
        await self._archive_gone()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return CancellationResult(
            state=self.state,
            billing_outcome=self.billing_outcome,
            service_id=self.input.service_id,
            rejection_reason=self.rejection_reason,
            files_deleted=self.steps.files.done,
            mailboxes_deleted=self.steps.mailboxes.done,
        )

    # ---- state shown to operators -------------------------------------------------------

    def _set_state(self, state: State) -> None:
        self.state = state
        if state.is_final and self.finished_at is None:
            self.finished_at = workflow.now()
        self._note(state.value)
        workflow.upsert_search_attributes([CANCELLATION_STATE.value_set(state.value)])
        self._publish()

    def _note(self, event: str, at: datetime | None = None) -> None:
        """A moment of the panel's timeline (no personal data: names and times only)."""
        self.timeline.append(TimelineEvent(event=event, at=at or workflow.now()))

    def _was_scheduled(self) -> bool:
        return any(e.event == State.SCHEDULED for e in self.timeline)

    def _publish(self) -> None:
        """The Web UI's "current details": state and progress, no personal data. A step
        newly done also gets its moment on the timeline here, where every change passes."""
        for step in Step:
            done = f"{step}_done"
            if self.steps[step].status is StepStatus.DONE and not any(
                e.event == done for e in self.timeline
            ):
                self._note(done)
        lines = [f"**{self.state.value}** — service {self.input.service_id}"]
        if self.state is State.AWAITING_CONFIRMATION and self.code is not None:
            lines.append(
                f"waiting for the code until {self.code.expires_at:%Y-%m-%d %H:%M} UTC, "
                f"{self.attempts_left} of {MAX_WRONG_CODES} tries left, "
                f"{self.resends_left} resends left"
            )
        if self.state is State.SCHEDULED and self.effective_at is not None:
            lines.append(f"deletion scheduled for {self.effective_at:%Y-%m-%d %H:%M} UTC")
            billing_at = self._billing_closes_at()
            early = billing_at is not None and billing_at < self.effective_at
            if early and self.steps.billing.status is StepStatus.PENDING:
                lines.append(f"billing closes {billing_at:%Y-%m-%d %H:%M} UTC, before the debit")
        if self.billing_outcome:
            lines.append(f"billing outcome: {self.billing_outcome.value}")
        if self.service is not None and self.service.server:
            lines.append(f"files and mail on node {self.service.server}")
        if self.inventory is not None:
            boxes = self.inventory.mailboxes
            lines.append(
                f"inventory: {self.inventory.files:,} files ({self.inventory.bytes:,} bytes),"
                f" {len(boxes)} mailboxes ({sum(m.messages for m in boxes):,} messages)"
            )
        for step in Step:
            progress = self.steps[step]
            if progress.status is not StepStatus.PENDING:
                lines.append(
                    f"- {step}: {progress.status.value}"
                    + (f" ({progress.detail})" if progress.detail else "")
                )
        if self.archive is not None:
            lines.append(f"- last copy: {self.archive.state.value}")
        lines += self._problems()
        if self.sla_at_risk:
            lines.append("**SLA at risk**")
        workflow.set_current_details("\n\n".join(lines))

    def _problems(self) -> list[str]:
        """A line per failing step: "files: attempt 7, PermissionError: …"."""
        return [
            f"{step}: attempt {self.steps[step].attempts}, {self.steps[step].error}"
            for step in Step
            if self.steps[step].error is not None
        ]

    @staticmethod
    def _outcome_at(service: AcceptedService, instant: datetime) -> BillingOutcome:
        """The contract's table, judged in BUSINESS_TZ at `instant`."""
        return rules.outcome_at(
            instant, service.business_tz, service.expires_on, service.payment_method
        )


def _path_refusal(err: BaseException | None) -> ApplicationError | None:
    """The PathRefused error behind `err`: wrapped in ActivityError for regular
    activities, bare for local ones."""
    while err is not None:
        if isinstance(err, ApplicationError) and err.type == PATH_REFUSED:
            return err
        err = err.cause if isinstance(err, ActivityError | ApplicationError) else None
    return None


def _causes(err: BaseException) -> list[BaseException]:
    """`err` and what caused it, down to the root."""
    chain = [err]
    while (cause := chain[-1].__cause__) is not None and cause not in chain:
        chain.append(cause)
    return chain


def _one_line(err: BaseException) -> str:
    """A failed attempt as `status` shows it: what timed out, or the root cause's type
    and message. Quoted paths keep their last name only: they can be longer than a
    screen and name a customer's domain or mailbox."""
    causes = _causes(err)
    timeout = next((e for e in causes if isinstance(e, AttemptTimeout)), None)
    if timeout is not None:
        known = ATTEMPT_TIMEOUTS.get(timeout.type) if timeout.type is not None else None
        text = known or "the attempt timed out"
    else:
        root = causes[-1]
        kind = (
            root.type if isinstance(root, ApplicationError) and root.type else type(root).__name__
        )
        text = f"{kind}: {root.message if isinstance(root, FailureError) else root}"
    text = QUOTED_PATH.sub(lambda m: f"'…/{m[1].rstrip('/').rsplit('/', 1)[-1]}'", text)
    text = " ".join(text.split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def _timed_out(err: BaseException, kind: TimeoutType) -> bool:
    return any(isinstance(e, AttemptTimeout) and e.type == kind for e in _causes(err))


def _left_behind(err: BaseException) -> Sequence[Any]:
    """What a failed attempt left for the next one: its last heartbeat when it timed
    out, else its failure's details."""
    for cause in _causes(err):
        if isinstance(cause, AttemptTimeout) and cause.last_heartbeat_details:
            return cause.last_heartbeat_details
        if isinstance(cause, ApplicationError) and cause.details:
            return cause.details
    return ()


def _backoff(attempts: int, err: BaseException) -> timedelta:
    """1 s after the first failure, doubling up to MAX_BACKOFF; longer only where the
    activity asked for it (`next_retry_delay`)."""
    asked = [
        cause.next_retry_delay
        for cause in _causes(err)
        if isinstance(cause, ApplicationError) and cause.next_retry_delay
    ]
    return asked[0] if asked else min(FIRST_BACKOFF * 2 ** min(attempts - 1, 10), MAX_BACKOFF)


__all__ = ["ServiceCancellation"]
