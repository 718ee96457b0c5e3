"""The `ServiceCancellation` workflow: request, code, confirmation, deprovisioning.

The code itself never enters this workflow: `issue_code` makes and mails it, and
`verify_code` checks what the customer typed against its keyed hash.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.billing import BillingActivities
    from activities.codes import CodeActivities
    from activities.errors import PATH_REFUSED
    from activities.files import FilesActivities
    from activities.mail import KIND_CANCELLED, KIND_LOCKED, KIND_SLA_AT_RISK, NoticeActivities
    from activities.mailboxes import MailboxActivities
    from activities.panel_db import PanelDbActivities
    from bajas.models import (
        MAX_RESENDS,
        MAX_WRONG_CODES,
        BillingInput,
        BillingOutcome,
        CancellationInput,
        CancellationResult,
        CancellationStatus,
        ConfirmInput,
        ConfirmResult,
        DeprovisionInput,
        FinishInput,
        IssueCodeInput,
        NoticeInput,
        ResendInput,
        ResendResult,
        RetryInput,
        ServiceCheck,
        ServiceCheckInput,
        State,
        StepProgress,
        Steps,
        StepStatus,
        TransitionInput,
        VerifyCodeInput,
        WithdrawInput,
        is_well_formed_code,
    )
    from workflows import rules
    from workflows.search_attributes import (
        CANCELLATION_STATE,
        CUSTOMER_ID,
        SERVICE_ID,
        SLA_AT_RISK,
        WORKFLOW_TYPE,
    )

T = TypeVar("T")

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
# A dead worker is noticed this fast during a deletion; progress reaches the server
# about every 0.8 of it (the SDK throttles heartbeats).
HEARTBEAT = timedelta(seconds=10)


def _path_refusal(err: BaseException | None) -> ApplicationError | None:
    """The PathRefused error behind `err`: wrapped in ActivityError for regular
    activities, bare for local ones."""
    while err is not None:
        if isinstance(err, ApplicationError) and err.type == PATH_REFUSED:
            return err
        err = err.cause if isinstance(err, ActivityError | ApplicationError) else None
    return None


@workflow.defn(name=WORKFLOW_TYPE)
class ServiceCancellation:
    """One cancellation of one service, from the request to the last deleted file."""

    @workflow.init
    def __init__(self, data: CancellationInput) -> None:
        self.input = data
        self.state = State.AWAITING_CONFIRMATION
        self.attempts_left = MAX_WRONG_CODES
        self.resends_left = MAX_RESENDS
        self.generation = 0
        self.code_expires_at: datetime | None = None
        self.requested_at: datetime | None = None
        self.confirmed_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.check: ServiceCheck | None = None
        self.billing_preview: BillingOutcome | None = None
        self.billing_outcome: BillingOutcome | None = None
        self.sla_at_risk = False
        self.steps = Steps()
        self.retry_requested = False
        self.withdrawn_by: str | None = None
        self.code_lock = asyncio.Lock()
        self.files_deleted = 0
        self.mailboxes_deleted = 0
        self.audit_wrong_codes = False
        self.mail_as_activity = False

    # ---- the main sequence ---------------------------------------------------------

    @workflow.run
    async def run(self, data: CancellationInput) -> CancellationResult:
        # Every patch is decided here, before the first command: a `patched()` asked
        # later, after a local activity, can fall in another workflow task on replay.
        self.audit_wrong_codes = workflow.patched(AUDIT_WRONG_CODES)
        self.mail_as_activity = workflow.patched(MAIL_AS_ACTIVITY)
        lock_notice = workflow.patched(LOCK_NOTICE)
        self.requested_at = workflow.now()
        workflow.upsert_search_attributes(
            [
                SERVICE_ID.value_set(str(data.service_id)),
                CUSTOMER_ID.value_set(str(data.customer_id)),
                CANCELLATION_STATE.value_set(self.state.value),
                SLA_AT_RISK.value_set(False),
            ]
        )
        self.check = await workflow.execute_local_activity_method(
            PanelDbActivities.check_service,
            ServiceCheckInput(
                service_id=data.service_id,
                customer_id=data.customer_id,
                requested_by=data.requested_by,
                reason=data.reason,
            ),
            start_to_close_timeout=SHORT,
            retry_policy=RETRY,
            summary="check the service",
        )
        if not self.check.accepted:
            self._set_state(State.REJECTED)
            return await self._result()

        assert self.check.expires_on is not None and self.check.payment_method is not None
        self.billing_preview = self._outcome_at(self.requested_at)
        if self.state is State.AWAITING_CONFIRMATION:  # not withdrawn during the check
            async with self.code_lock:
                await self._issue_code(self.requested_at + self._window())

        await self._await_confirmation()
        if self.confirmed_at is None:
            await self._transition(self.state.value, self.state)
            if lock_notice and self.state is State.LOCKED:
                await self._notice(KIND_LOCKED)  # "alguien intentó dar de baja…"
            return await self._result()

        await self._deprovision_within_sla()
        return await self._result()

    async def _await_confirmation(self) -> None:
        """Wait for a valid code, a withdrawal, a lock-out or the end of the window."""
        while self.state is State.AWAITING_CONFIRMATION:
            assert self.code_expires_at is not None
            left = max(self.code_expires_at - workflow.now(), timedelta(seconds=1))
            try:
                await workflow.wait_condition(
                    lambda: self.state is not State.AWAITING_CONFIRMATION,
                    timeout=left,
                    timeout_summary="confirmation window",
                )
                return
            except TimeoutError:
                # A verification under way finishes first; a resend may have moved the end.
                async with self.code_lock:
                    if (
                        self.confirmed_at is None
                        and self.state is State.AWAITING_CONFIRMATION
                        and workflow.now() >= self.code_expires_at
                    ):
                        self._set_state(State.EXPIRED)

    async def _deprovision_within_sla(self) -> None:
        assert self.check is not None and self.confirmed_at is not None
        await self._transition("confirmed", State.DEPROVISIONING, State.AWAITING_CONFIRMATION)
        work = asyncio.ensure_future(self._deprovision())
        deadline = self.confirmed_at + timedelta(seconds=self.check.sla_limit_seconds)
        try:
            await workflow.wait_condition(
                work.done,
                timeout=max(deadline - workflow.now(), timedelta(seconds=1)),
                timeout_summary="24-hour promise",
            )
        except TimeoutError:
            await self._raise_sla_alert()
        await work

    async def _deprovision(self) -> None:
        """Billing first, then mailboxes and files side by side, then the final mark."""
        assert self.billing_outcome is not None
        target = DeprovisionInput(
            service_id=self.input.service_id, customer_id=self.input.customer_id
        )
        billing = await self._step(
            "billing",
            lambda: workflow.execute_local_activity_method(
                BillingActivities.close_billing,
                BillingInput(
                    service_id=self.input.service_id,
                    customer_id=self.input.customer_id,
                    outcome=self.billing_outcome,  # type: ignore[arg-type]
                ),
                start_to_close_timeout=SHORT,
                retry_policy=RETRY,
                summary=f"close billing: {self.billing_outcome}",
            ),
        )
        self.steps.billing.done = billing.invoices_voided + billing.mandates_revoked
        self.steps.billing.detail = f"{billing.invoices_voided} invoices voided, {billing.mandates_revoked} mandates revoked"
        mailboxes, files = await asyncio.gather(
            self._step(
                "mailboxes",
                lambda: workflow.execute_activity_method(
                    MailboxActivities.delete_mailboxes,
                    target,
                    start_to_close_timeout=timedelta(minutes=30),
                    heartbeat_timeout=HEARTBEAT,
                    retry_policy=RETRY,
                    summary="delete mailboxes",
                ),
            ),
            self._step(
                "files",
                lambda: workflow.execute_activity_method(
                    FilesActivities.delete_files,
                    target,
                    start_to_close_timeout=timedelta(hours=6),
                    heartbeat_timeout=HEARTBEAT,
                    retry_policy=RETRY,
                    summary="delete the site's files",
                ),
            ),
        )
        self.mailboxes_deleted = mailboxes.mailboxes_total
        self.steps.mailboxes.done = mailboxes.mailboxes_total
        self.steps.mailboxes.total = mailboxes.mailboxes_total
        self.files_deleted = files.files_deleted
        self.steps.files.done = files.files_deleted
        self.steps.files.total = files.files_deleted
        if files.resumed_from:
            self.steps.files.detail = f"resumed after {files.resumed_from} files"
        await workflow.execute_local_activity_method(
            PanelDbActivities.finish_cancellation,
            FinishInput(
                service_id=self.input.service_id,
                customer_id=self.input.customer_id,
                billing_outcome=self.billing_outcome,
                files_deleted=self.files_deleted,
                mailboxes_deleted=self.mailboxes_deleted,
            ),
            start_to_close_timeout=SHORT,
            retry_policy=RETRY,
            summary="mark the service cancelled",
        )
        self.finished_at = workflow.now()
        self._set_state(State.CANCELLED)
        await self._notice(KIND_CANCELLED)

    async def _step(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run one deprovisioning step; a refused path waits for an operator's `retry`."""
        progress: StepProgress = getattr(self.steps, name)
        while True:
            progress.status = StepStatus.RUNNING
            progress.detail = None
            self._publish()
            try:
                result = await call()
            except (ActivityError, ApplicationError) as err:
                cause = _path_refusal(err)
                if cause is None:
                    raise
                # The refusal names the step whose path is unsafe; billing's preflight
                # may refuse on behalf of files or mailboxes.
                refused_name = str(cause.details[0]) if cause.details else name
                refused: StepProgress = getattr(self.steps, refused_name, progress)
                if refused is not progress:
                    progress.status = StepStatus.PENDING
                    progress.detail = f"waiting for the {refused_name} step's path to be fixed"
                refused.status = StepStatus.REFUSED
                refused.detail = cause.message
                self.retry_requested = False
                self._publish()
                workflow.logger.warning("step %s refused: %s", refused_name, cause.message)
                await workflow.wait_condition(lambda: self.retry_requested)
                if refused is not progress:
                    refused.status = StepStatus.PENDING
                    refused.detail = None
                continue
            progress.status = StepStatus.DONE
            self._publish()
            return result

    async def _raise_sla_alert(self) -> None:
        self.sla_at_risk = True
        workflow.upsert_search_attributes([SLA_AT_RISK.value_set(True)])
        self._publish()
        await self._transition("sla_at_risk", None, State.DEPROVISIONING)
        await self._notice(KIND_SLA_AT_RISK)

    # ---- activities used in several places ----------------------------------------------

    async def _issue_code(self, expires_at: datetime) -> None:
        """Mail a new code; the caller holds `code_lock`, so no check runs meanwhile."""
        assert self.billing_preview is not None
        generation = self.generation + 1
        await self._mail_step(
            CodeActivities.issue_code,
            IssueCodeInput(
                service_id=self.input.service_id,
                customer_id=self.input.customer_id,
                generation=generation,
                expires_at=expires_at,
                billing_preview=self.billing_preview,
            ),
            summary=f"mail confirmation code #{generation}",
        )
        self.generation = generation
        self.code_expires_at = expires_at
        self._publish()

    async def _transition(
        self, event: str, to_state: State | None, from_state: State | None = None
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
                details={"attempts_left": self.attempts_left},
            ),
            start_to_close_timeout=SHORT,
            retry_policy=RETRY,
            summary=f"audit: {event}",
        )

    async def _notice(self, kind: str) -> None:
        await self._mail_step(
            NoticeActivities.send_notice,
            NoticeInput(
                kind=kind,
                service_id=self.input.service_id,
                customer_id=self.input.customer_id,
                billing_outcome=self.billing_outcome,
            ),
            summary=f"mail: {kind}",
        )

    async def _mail_step(
        self, method: Callable[..., Awaitable[T]], arg: object, *, summary: str
    ) -> T:
        """A step that talks SMTP. v1/v2 ran it as a local activity, whose retries during
        a mail outage hold the workflow task and so delay every query by seconds; since
        `mail-as-activity` it is a regular activity."""
        if self.mail_as_activity:
            return await workflow.execute_activity_method(
                method, arg, start_to_close_timeout=SHORT, retry_policy=RETRY, summary=summary
            )
        return await workflow.execute_local_activity_method(
            method, arg, start_to_close_timeout=SHORT, retry_policy=RETRY, summary=summary
        )

    async def _result(self) -> CancellationResult:
        await workflow.wait_condition(workflow.all_handlers_finished)
        return CancellationResult(
            state=self.state,
            billing_outcome=self.billing_outcome,
            service_id=self.input.service_id,
            rejection_reason=self.check.rejection_reason if self.check else None,
            files_deleted=self.files_deleted,
            mailboxes_deleted=self.mailboxes_deleted,
        )

    # ---- state shown to operators -------------------------------------------------------

    def _set_state(self, state: State) -> None:
        self.state = state
        if state.is_final and self.finished_at is None:
            self.finished_at = workflow.now()
        workflow.upsert_search_attributes([CANCELLATION_STATE.value_set(state.value)])
        self._publish()

    def _publish(self) -> None:
        """The Web UI's "current details": state and progress, no personal data."""
        lines = [f"**{self.state.value}** — service {self.input.service_id}"]
        if self.state is State.AWAITING_CONFIRMATION and self.code_expires_at:
            lines.append(
                f"waiting for the code until {self.code_expires_at:%Y-%m-%d %H:%M} UTC, "
                f"{self.attempts_left} of {MAX_WRONG_CODES} tries left, "
                f"{self.resends_left} resends left"
            )
        if self.billing_outcome:
            lines.append(f"billing outcome: {self.billing_outcome.value}")
        for name in ("billing", "mailboxes", "files"):
            step: StepProgress = getattr(self.steps, name)
            if step.status is not StepStatus.PENDING:
                lines.append(
                    f"- {name}: {step.status.value}" + (f" ({step.detail})" if step.detail else "")
                )
        if self.sla_at_risk:
            lines.append("**SLA at risk**")
        workflow.set_current_details("\n\n".join(lines))

    # ---- messages -----------------------------------------------------------------------

    def _awaiting(self) -> bool:
        return self.state is State.AWAITING_CONFIRMATION and self.confirmed_at is None

    async def _confirm(self, code: str) -> ConfirmResult:
        received_at = workflow.now()
        # A code may be typed before this run has recorded that its mail left.
        await workflow.wait_condition(lambda: self.generation > 0 or not self._awaiting())
        async with self.code_lock:
            if not self._awaiting():
                return self._confirm_result(False)
            assert self.code_expires_at is not None
            if received_at >= self.code_expires_at:
                return self._confirm_result(False)
            verdict = await workflow.execute_local_activity_method(
                CodeActivities.verify_code,
                VerifyCodeInput(
                    generation=self.generation, code=code, service_id=self.input.service_id
                ),
                start_to_close_timeout=SHORT,
                retry_policy=RETRY,
                summary="check a submitted code",
            )
            if not self._awaiting():
                return self._confirm_result(False)
            if verdict.accepted:
                self.confirmed_at = received_at
                self.billing_outcome = self._outcome_at(received_at)
                self._set_state(State.DEPROVISIONING)
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

    def _confirm_result(self, accepted: bool) -> ConfirmResult:
        return ConfirmResult(accepted=accepted, attempts_left=self.attempts_left, state=self.state)

    @workflow.signal(name="confirm")
    async def confirm(self, data: ConfirmInput | None = None) -> None:
        if data is None or not is_well_formed_code(data.code):
            workflow.logger.info("confirm signal with a malformed code ignored")
            return
        await self._confirm(data.code)

    @workflow.update(name="confirm_code")
    async def confirm_code(self, data: ConfirmInput | None = None) -> ConfirmResult:
        assert data is not None  # the validator refuses a missing code
        return await self._confirm(data.code)

    @confirm_code.validator
    def _check_confirm_code(self, data: ConfirmInput | None = None) -> None:
        if data is None or not is_well_formed_code(data.code):
            raise ValueError("the confirmation code must be exactly 6 digits")
        if not self._awaiting():
            raise ValueError(f"this cancellation is not awaiting confirmation (state {self.state})")

    @workflow.update(name="resend_code")
    async def resend_code(self, data: ResendInput | None = None) -> ResendResult:
        async with self.code_lock:
            if not self._awaiting() or self.resends_left <= 0:
                raise ApplicationError("a new code cannot be sent now", type="ResendRefused")
            self.resends_left -= 1
            await self._issue_code(workflow.now() + self._window())
            assert self.code_expires_at is not None
            return ResendResult(
                code_expires_at=self.code_expires_at, resends_left=self.resends_left
            )

    @resend_code.validator
    def _check_resend(self, data: ResendInput | None = None) -> None:
        if not self._awaiting():
            raise ValueError(f"this cancellation is not awaiting confirmation (state {self.state})")
        if self.resends_left <= 0:
            raise ValueError(f"no resends left (at most {MAX_RESENDS})")
        if self.check is None or not self.check.accepted:
            raise ValueError("the service check has not finished yet")

    @workflow.update(name="wait_for_code")
    async def wait_for_code(self) -> CancellationStatus:
        """For update-with-start: answers once the code mail has left or the request ended."""
        await workflow.wait_condition(
            lambda: self.generation > 0 or self.state is not State.AWAITING_CONFIRMATION
        )
        return self.status()

    @workflow.signal(name="withdraw")
    def withdraw(self, data: WithdrawInput | None = None) -> None:
        if not self._awaiting():
            workflow.logger.info("withdraw ignored in state %s", self.state)
            return
        self.withdrawn_by = (data.by if data else None) or "withdraw"
        self._set_state(State.WITHDRAWN)

    @workflow.signal(name="retry")
    def retry(self, data: RetryInput | None = None) -> None:
        """After an operator fixes a refused path in the panel database."""
        self.retry_requested = True

    @workflow.query(name="status")
    def status(self) -> CancellationStatus:
        return CancellationStatus(
            state=self.state,
            service_id=self.input.service_id,
            customer_id=self.input.customer_id,
            requested_by=self.input.requested_by,
            domain=self.check.domain if self.check else None,
            attempts_left=self.attempts_left,
            resends_left=self.resends_left,
            code_sent=self.generation > 0,
            code_expires_at=self.code_expires_at,
            requested_at=self.requested_at,
            confirmed_at=self.confirmed_at,
            finished_at=self.finished_at,
            billing_preview=self.billing_preview,
            billing_outcome=self.billing_outcome,
            rejection_reason=self.check.rejection_reason if self.check else None,
            sla_at_risk=self.sla_at_risk,
            steps=self.steps.model_copy(deep=True),
        )

    def _outcome_at(self, instant: datetime) -> BillingOutcome:
        """The contract's table, judged in BUSINESS_TZ at `instant`."""
        check = self.check
        assert check is not None and check.expires_on and check.payment_method
        return rules.outcome_at(instant, check.business_tz, check.expires_on, check.payment_method)

    def _window(self) -> timedelta:
        assert self.check is not None
        return timedelta(seconds=self.check.confirmation_window_seconds)


__all__ = ["ServiceCancellation"]
