"""The `ServiceCancellation` workflow: request, code, confirmation, deprovisioning.

A run goes through phases: the request and its confirmation, the wait until the end
of the term, billing closed at the debit's eve, and the deletion. Since release 9 it
continues as new at each boundary and while a step keeps failing, so that no run's
history grows large and each new run starts on the code of its day; what the next run
needs travels in `CancellationInput.carried` (docs/VERSIONING.md).

The code itself never enters this workflow: `issue_code` makes and mails it, and
`verify_code` checks what the customer typed against its keyed hash.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.panel_db import PanelDbActivities
    from bajas.models import (
        KIND_LOCKED,
        MAX_RESENDS,
        ArchiveInput,
        ArchiveLink,
        ArchiveRequest,
        ArchiveState,
        ArchiveStatus,
        CancellationInput,
        CancellationResult,
        CancellationStatus,
        ConfirmInput,
        ConfirmResult,
        Phase,
        ResendInput,
        ResendResult,
        RetryInput,
        ServiceCheckInput,
        State,
        WithdrawInput,
        is_archive_token,
        is_well_formed_code,
    )
    from workflows import handler_names as names
    from workflows.confirmation import Confirmation
    from workflows.failures import business_error
    from workflows.patches import Patches, moves_open_run
    from workflows.scheduled import Phases
    from workflows.search_attributes import (
        CANCELLATION_STATE,
        CUSTOMER_ID,
        SERVICE_ID,
        SLA_AT_RISK,
        WORKFLOW_TYPE,
        release_queue,
    )
    from workflows.state import RETRY, SHORT


@workflow.defn(name=WORKFLOW_TYPE)
class ServiceCancellation(Confirmation, Phases):
    """One cancellation of one service, from the request to the last deleted file."""

    @workflow.init
    def __init__(self, data: CancellationInput) -> None:
        super().__init__(data)

    @workflow.run
    async def run(self, data: CancellationInput) -> CancellationResult:
        self.patches = Patches.decide(phases=self._of_this_release())
        phases: dict[Phase, Callable[[], Awaitable[Phase | None]]] = {
            Phase.SCHEDULED: self._scheduled,
            Phase.BILLING_EVE: self._billing_eve,
            Phase.EFFECTIVE: self._effective,
        }
        if data.carried is None:
            phase = await self._request()
            if phase is Phase.EFFECTIVE:  # confirmed for `now`: deleting in the same run
                phase = await self._effective()
        else:
            phase = await phases[self._resume(data.carried.phase)]()
        while phase is not None:
            await self._boundary(phase)
            phase = await phases[phase]()
        return await self._result()

    async def _request(self) -> Phase | None:
        """The service check, the inventory, the code and its confirmation."""
        data = self.input
        workflow.upsert_search_attributes(
            [
                SERVICE_ID.value_set(str(data.service_id)),
                CUSTOMER_ID.value_set(str(data.customer_id)),
                CANCELLATION_STATE.value_set(self.state.value),
                SLA_AT_RISK.value_set(False),
            ]
        )
        try:
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
        except (ActivityError, ApplicationError) as err:  # a local one's failure comes bare
            refused = business_error(err)
            if refused is None:
                raise
            self.rejection_reason = refused.message  # no retry can change the answer
            self._set_state(State.REJECTED)
            return None
        service = check.accepted_service()
        if service is None:
            self.rejection_reason = check.rejection_reason
            self._set_state(State.REJECTED)
            return None

        self.service = service
        if self.patches.inventory_and_preflight:
            self.inventory_task = asyncio.ensure_future(self._take_inventory())
            await self._await_inventory()
        if self.state is State.AWAITING_CONFIRMATION:  # not withdrawn during the check
            async with self.code_lock:
                await self._issue_code(service, self.requested_at + service.confirmation_window)

        confirmed_at = await self._await_confirmation()
        if confirmed_at is None:  # expired, withdrawn or locked
            await self._transition(self.state.value, self.state)
            if self.patches.lock_notice and self.state is State.LOCKED:
                await self._notice(KIND_LOCKED)  # "alguien intentó dar de baja…"
            return None
        assert self.service is not None
        self.billing_outcome = self._outcome_at(self.service, confirmed_at)
        return await self._confirmed()

    def _resume(self, phase: Phase) -> Phase:
        """A continued run: the copy carried over is kept on as it was."""
        archive, target = self.archive, self.archive_input
        if archive is not None and target is not None and archive.state is ArchiveState.READY:
            self.archive_work = asyncio.create_task(self._kept_on(archive, target))
        self._publish()
        return phase

    def _of_this_release(self) -> bool:
        """A run started by a client of release 9 or later, on its release's queue (so no
        worker of an earlier release runs it), or a continued one. A run without either
        was started by an earlier release's client, or is an earlier release's run, and
        takes the path those recorded until its first boundary."""
        return self.input.carried is not None or self.input.release is not None

    async def _boundary(self, phase: Phase) -> None:
        """Between two phases the run continues as new; a run of an earlier release does
        so at its first boundary on this one."""
        if self.billing_task is not None and not self.billing_task.done():
            return  # billing refused, waiting for its `retry`: the deletion awaits it here
        if self.patches.phases or moves_open_run(phase.value):
            await self._continue_as_new(phase)

    async def _continue_as_new(self, phase: Phase) -> None:
        """Hand the run over: every handler finished first (a signal or update that
        lands meanwhile is seen by this run and carried), then a new run on this
        release's queue, which no worker of an earlier release polls."""
        self._stop_inventory()
        await workflow.wait_condition(self._archive_handed_over)
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(
            self.input.model_copy(update={"carried": self._carried(phase)}),
            task_queue=release_queue(workflow.info().task_queue),
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

    # ---- signals ----------------------------------------------------------------------

    @workflow.signal(name=names.CONFIRM)
    async def confirm(self, data: ConfirmInput | None = None) -> None:
        """The code as the contract's signal: a malformed one is ignored, a wrong one counts."""
        if data is None or not is_well_formed_code(data.code):
            workflow.logger.info("confirm signal with a malformed code ignored")
            return
        await self._confirm(data.code)

    @workflow.signal(name=names.WITHDRAW)
    def withdraw(self, data: WithdrawInput | None = None) -> None:
        """The customer changed their mind; ignored once deprovisioning or ended."""
        if not self.state.withdrawable:
            workflow.logger.info("withdraw ignored in state %s", self.state)
            return
        self._withdraw(data)

    @workflow.signal(name=names.RETRY)
    def retry(self, data: RetryInput | None = None) -> None:
        """After an operator fixes a refused path or the cause of a failing step."""
        self.retry_requested = True

    # ---- updates ----------------------------------------------------------------------

    @workflow.update(name=names.CONFIRM_CODE)
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

    @workflow.update(name=names.RESEND_CODE)
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

    @workflow.update(name=names.WITHDRAW_CANCELLATION)
    def withdraw_cancellation(self, data: WithdrawInput | None = None) -> CancellationStatus:
        """The `withdraw` signal as an update, so the caller learns at once whether it
        took and where the cancellation stands, without polling."""
        self._withdraw(data)
        return self.status()

    @withdraw_cancellation.validator
    def _check_withdraw(self, data: WithdrawInput | None = None) -> None:
        if not self.state.withdrawable:
            raise ValueError(f"cannot withdraw: the cancellation is {self.state.value}")

    @workflow.update(name=names.REQUEST_ARCHIVE)
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
        if not self.patches.last_copy:
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

    @workflow.update(name=names.WAIT_FOR_CODE)
    async def wait_for_code(self) -> CancellationStatus:
        """For update-with-start: answers once the code mail has left or the request ended."""
        await workflow.wait_condition(
            lambda: self.code is not None or self.state is not State.AWAITING_CONFIRMATION
        )
        return self.status()

    # ---- the queries ------------------------------------------------------------------

    @workflow.query(name=names.STATUS)
    def status(self) -> CancellationStatus:
        """Where the cancellation stands: what the panel and operators read."""
        return self._status()

    @workflow.query(name=names.ARCHIVE_LINK)
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


__all__ = ["ServiceCancellation"]
