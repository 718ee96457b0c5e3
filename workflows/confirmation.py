"""The confirmation: the inventory beside the code mail, the code (issue, resend,
check) under one lock, and the window's expiry."""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, TimeoutType

with workflow.unsafe.imports_passed_through():
    from activities.codes import CodeActivities
    from activities.inventory import InventoryActivities
    from activities.resources import ResourceActivities
    from bajas.models import (
        MAX_WRONG_CODES,
        AcceptedService,
        ConfirmResult,
        Effective,
        InventoryInput,
        IssueCodeInput,
        IssueCodeResult,
        State,
        VerifyCodeInput,
        VerifyCodeResult,
        WithdrawInput,
    )
    from workflows import rules
    from workflows.failures import one_line, timed_out
    from workflows.state import RETRY, RunState

# The code mail waits this long at most for the inventory.
INVENTORY_WAIT = timedelta(seconds=3)
# One walk of a service's trees without deleting (the inventory, the preflight).
WALK_LIMIT = timedelta(hours=1)


class Confirmation(RunState):
    """From the code mail to a valid code, a withdrawal, a lock-out or the expiry."""

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
            verdict = await self._verify(
                VerifyCodeInput(
                    generation=current.generation, code=code, service_id=self.input.service_id
                )
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
                if self.patches.audit_wrong_codes:
                    wrong = MAX_WRONG_CODES - self.attempts_left
                    await self._transition(f"code_rejected:{wrong}", None)
            self._publish()
            return self._confirm_result(verdict.accepted)

    async def _verify(self, check: VerifyCodeInput) -> VerifyCodeResult:
        """Check a typed code against its stored hash. A regular activity since `phases`:
        as a local one, a `status` query landing while it ran could close the workflow
        task between the confirmation timer and its result, and that history did not
        replay (docs/VERSIONING.md, v5). A regular activity's result is an event."""
        return await self._short(
            CodeActivities.verify_code,
            check,
            summary="check a submitted code",
            local=not self.patches.phases,
        )

    def _accept(self, at: datetime) -> None:
        """The code was right: the deletion starts now, or is scheduled for the end of term."""
        assert self.service is not None  # a code exists only for an accepted service
        self.confirmed_at = at
        self.effective_at = rules.effective_at(
            Effective.END_OF_TERM if self._end_of_term() else Effective.NOW,
            at,
            self.service.expires_on,
            self.service.business_tz,
        )
        self._note("confirmed", at)
        self._set_state(State.SCHEDULED if self.effective_at > at else State.DEPROVISIONING)

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
                result = await self._on_server(
                    self._server(),
                    InventoryActivities.take_inventory,
                    InventoryInput(
                        service_id=self.input.service_id, customer_id=self.input.customer_id
                    ),
                    start_to_close_timeout=WALK_LIMIT,
                    retry_policy=RETRY,
                    summary="count what the cancellation deletes",
                )
                inventory = result.inventory
                for group in self._resource_groups():
                    counted = await self._on_server(
                        group.server,
                        ResourceActivities.inventory_resources,
                        group,
                        start_to_close_timeout=WALK_LIMIT,
                        retry_policy=RETRY,
                        summary=f"count the resources on {group.server or 'the central workers'}",
                    )
                    inventory.resources += counted.resources
            except ActivityError as err:
                if timed_out(err, TimeoutType.SCHEDULE_TO_START):
                    continue
                workflow.logger.warning("inventory not taken: %s", one_line(err))
                return
            self.inventory = inventory
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
