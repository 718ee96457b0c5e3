"""The client library a panel backend uses: request, confirm, resend, withdraw, status.

Every call is addressed by service: the workflow id is `service-cancellation-<id>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from bajas.models import (
    ArchiveLink,
    ArchiveProgress,
    ArchiveRequest,
    ArchiveState,
    ArchiveStatus,
    CancellationInput,
    CancellationResult,
    CancellationStatus,
    ConfirmInput,
    ConfirmResult,
    Effective,
    FilesProgress,
    ReasonCode,
    ResendInput,
    ResendResult,
    State,
    StepStatus,
    WithdrawInput,
    is_well_formed_code,
    reason_refusal,
)
from workflows import handler_names as names
from workflows.search_attributes import (
    CANCELLATION_STATE,
    CUSTOMER_ID,
    RELEASE,
    SERVICE_ID,
    WORKFLOW_TYPE,
    release_queue,
    workflow_id_for,
)


class CancellationError(Exception):
    """A request the cancellation cannot take; the message is fit to show."""


class CancellationNotFound(CancellationError):
    """No cancellation for that service (or not this customer's)."""


class RequestAnswer(BaseModel):
    workflow_id: str
    run_id: str
    status: CancellationStatus


class CancellationClient:
    def __init__(self, client: Client, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue

    def handle(self, service_id: int) -> WorkflowHandle[object, CancellationResult]:
        return self.client.get_workflow_handle(
            workflow_id_for(service_id), result_type=CancellationResult
        )

    async def request(
        self,
        service_id: int,
        customer_id: int,
        *,
        requested_by: str = "panel",
        reason: str | None = None,
        reason_code: ReasonCode | None = None,
        effective: Effective = Effective.NOW,
        wait: timedelta = timedelta(seconds=15),
    ) -> RequestAnswer:
        """Start the cancellation, or attach to the one already running for the service.

        One round trip (update-with-start): answers once the code mail has left or the
        request was rejected, or after `wait` with the state as it is then. A reason
        longer than MAX_REASON_CHARS is refused here, before anything starts.
        """
        refusal = reason_refusal(reason)
        if refusal is not None:
            raise CancellationError(refusal)
        start: WithStartWorkflowOperation[Any, CancellationResult] = WithStartWorkflowOperation(
            WORKFLOW_TYPE,
            CancellationInput(
                service_id=service_id,
                customer_id=customer_id,
                requested_by=requested_by,
                reason=reason,
                effective=effective,
                reason_code=reason_code,
                release=RELEASE,
            ),
            id=workflow_id_for(service_id),
            # this release's queue: no worker of an earlier release runs the run
            task_queue=release_queue(self.task_queue),
            result_type=CancellationResult,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(SERVICE_ID, str(service_id)),
                    SearchAttributePair(CUSTOMER_ID, str(customer_id)),
                    SearchAttributePair(CANCELLATION_STATE, State.AWAITING_CONFIRMATION.value),
                ]
            ),
            static_summary=f"Baja del servicio {service_id} (cliente {customer_id})",
            # no reason here: it is the customer's, and these texts are never encrypted
            static_details=f"Requested by {requested_by}, effective {effective.value}",
        )
        try:
            status = await asyncio.wait_for(
                self.client.execute_update_with_start_workflow(
                    names.WAIT_FOR_CODE,
                    start_workflow_operation=start,
                    result_type=CancellationStatus,
                ),
                wait.total_seconds(),
            )
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            status = None  # the mail has not left yet (SMTP down?): answer what stands
        except WorkflowUpdateFailedError as err:
            raise CancellationError(_cause_message(err)) from err
        except RPCError as err:
            raise _rpc_error(err, service_id) from err
        if status is None:
            # The operation's own handle fails with the cancelled update: read it so the
            # failure is not left unobserved, and reach the run by its workflow id.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await start.workflow_handle()
            handle = self.handle(service_id)
            status = await self._query(handle)
            run_id: str | None = (await handle.describe()).run_id
        else:
            started = await start.workflow_handle()
            run_id = started.result_run_id or started.run_id
        if status.customer_id != customer_id:
            raise CancellationNotFound(f"service {service_id} not found for customer {customer_id}")
        assert run_id is not None  # a started workflow always has one
        return RequestAnswer(workflow_id=workflow_id_for(service_id), run_id=run_id, status=status)

    async def confirm(self, service_id: int, code: str) -> ConfirmResult:
        """Synchronous check through the `confirm_code` update."""
        if not is_well_formed_code(code):
            raise CancellationError("the confirmation code must be exactly 6 digits")
        try:
            return await self.handle(service_id).execute_update(
                names.CONFIRM_CODE, ConfirmInput(code=code), result_type=ConfirmResult
            )
        except WorkflowUpdateFailedError as err:
            raise CancellationError(_cause_message(err)) from err
        except RPCError as err:
            raise _rpc_error(err, service_id) from err

    async def resend(self, service_id: int) -> ResendResult:
        try:
            return await self.handle(service_id).execute_update(
                names.RESEND_CODE, ResendInput(), result_type=ResendResult
            )
        except WorkflowUpdateFailedError as err:
            raise CancellationError(_cause_message(err)) from err
        except RPCError as err:
            raise _rpc_error(err, service_id) from err

    async def withdraw(
        self, service_id: int, *, reason: str | None = None, by: str | None = None
    ) -> CancellationStatus:
        """Withdraw a cancellation still awaiting its code; later states refuse it.

        One `withdraw_cancellation` update: its validator refuses what cannot be
        withdrawn, and the answer is the status right after the withdrawal.
        """
        try:
            return await self.handle(service_id).execute_update(
                names.WITHDRAW_CANCELLATION,
                WithdrawInput(reason=reason, by=by),
                result_type=CancellationStatus,
            )
        except WorkflowUpdateFailedError as err:
            raise CancellationError(_cause_message(err)) from err
        except RPCError as err:
            if "already completed" not in err.message:
                raise _rpc_error(err, service_id) from err
            # A closed run takes no update; it no longer changes, so say how it ended.
            ended = await self._query(self.handle(service_id))
        raise CancellationError(f"cannot withdraw: the cancellation is {ended.state.value}")

    async def request_archive(self, service_id: int, customer_id: int) -> ArchiveStatus:
        """Start the last copy of the service's site and mailboxes (`request_archive`);
        refused once the deletion has started or while a copy is building or ready.
        Its token, the secret of the download link, is made here."""
        request = ArchiveRequest(customer_id=customer_id, token=secrets.token_urlsafe(32))
        try:
            return await self.handle(service_id).execute_update(
                names.REQUEST_ARCHIVE, request, result_type=ArchiveStatus
            )
        except WorkflowUpdateFailedError as err:
            raise CancellationError(_cause_message(err)) from err
        except RPCError as err:
            raise _rpc_error(err, service_id) from err

    async def archive_link(self, service_id: int, customer_id: int) -> ArchiveLink | None:
        """The last copy's token and state, if this customer's cancellation has one."""
        try:
            link = await self.handle(service_id).query(names.ARCHIVE_LINK, result_type=ArchiveLink)
        except RPCError as err:
            raise _rpc_error(err, service_id) from err
        return link if link is not None and link.customer_id == customer_id else None

    async def status(self, service_id: int) -> CancellationStatus:
        """The `status` query, with the live heartbeat progress of the files step and of
        a copy being built merged in."""
        handle = self.handle(service_id)
        status = await self._query(handle)
        building = status.archive is not None and status.archive.state is ArchiveState.BUILDING
        if status.state is State.DEPROVISIONING or building:
            await self._merge_progress(handle, status)
        return status

    async def _query(
        self, handle: WorkflowHandle[object, CancellationResult]
    ) -> CancellationStatus:
        try:
            return await handle.query(names.STATUS, result_type=CancellationStatus)
        except RPCError as err:
            raise _rpc_error(err, _service_of(handle.id)) from err

    async def _merge_progress(
        self, handle: WorkflowHandle[object, CancellationResult], status: CancellationStatus
    ) -> None:
        description = await handle.describe()
        if description.status is not WorkflowExecutionStatus.RUNNING:
            return
        for pending in description.raw_description.pending_activities:
            payloads = list(pending.heartbeat_details.payloads)
            if pending.activity_type.name == "build_archive" and payloads and status.archive:
                built = (await self.client.data_converter.decode(payloads, [ArchiveProgress]))[0]
                status.archive.bytes = built.bytes
            if pending.activity_type.name != "delete_files":
                continue
            if not payloads or status.steps.files.status is not StepStatus.RUNNING:
                continue
            # through the client's converter: the details are encrypted like any payload
            progress = (await self.client.data_converter.decode(payloads, [FilesProgress]))[0]
            status.steps.files.done = progress.deleted
            status.steps.files.total = progress.total

    async def result(self, service_id: int) -> CancellationResult:
        return await self.handle(service_id).result()


def _service_of(workflow_id: str) -> int:
    return int(workflow_id.rsplit("-", 1)[-1])


def _cause_message(err: WorkflowUpdateFailedError) -> str:
    cause: BaseException = err.cause
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return str(getattr(cause, "message", None) or cause or err)


def _rpc_error(err: RPCError, service_id: int) -> CancellationError:
    # A closed run answers NOT_FOUND too, with this message: say it has ended.
    if "already completed" in err.message:
        return CancellationError(f"the cancellation of service {service_id} has already ended")
    if err.status is RPCStatusCode.NOT_FOUND:
        return CancellationNotFound(f"no cancellation for service {service_id}")
    return CancellationError(err.message)
