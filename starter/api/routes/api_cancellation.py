"""The cancellation of one service: request, confirm, resend, withdraw, status (contract 5),
and the receipt once it is done, and its last copy (contract 8).

Every route first finds the service in the panel database as this customer's (404
otherwise, the same for a missing service and a stranger's), then talks to Temporal.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Query, Response
from fastapi.responses import PlainTextResponse
from temporalio.client import WorkflowFailureError
from temporalio.service import RPCError

from bajas import texts
from bajas.limits import is_limit_rejection, request_refusal, resend_refusal
from bajas.models import ArchiveStatus, CancellationStatus, Receipt, State
from bajas.receipts import stored_receipt
from starter.api import store
from starter.api.cancellations import billing_preview, cancellation_view, status_of
from starter.api.deps import (
    AppStateDep,
    ClientDep,
    PoolDep,
    ServiceDep,
    SettingsDep,
    require_token,
)
from starter.api.errors import ApiError
from starter.api.schemas import (
    CancellationView,
    ConfirmAnswer,
    ConfirmBody,
    ErrorBody,
    RequestBody,
    ResendAnswer,
)
from starter.client import CancellationClient, CancellationError, CancellationNotFound

router = APIRouter(
    prefix="/api/customers/{cid}/services/{sid}/cancellation",
    tags=["cancellation"],
    dependencies=[Depends(require_token)],
    responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)

# A request that meets a run just ending (locked, expired) waits for it, then starts anew.
REQUEST_ATTEMPTS = 3


def _no_cancellation(service: store.Service) -> ApiError:
    return ApiError(404, f"no cancellation for service {service.id}")


async def _refusal(
    cancellations: CancellationClient, service: store.Service, what: str, err: Exception
) -> ApiError:
    """404 when the service never had a cancellation, else 409 with where it stands now."""
    status = await status_of(cancellations, service)
    if status is None:
        return _no_cancellation(service)
    if status.state.is_final:
        reason = f"the cancellation has ended ({status.state.value})"
    else:
        reason = str(err).removeprefix("cannot withdraw: ")
    return ApiError.conflict(f"{what}: {reason}", status)


@router.post(
    "",
    status_code=202,
    response_model=CancellationView,
    responses={409: {"model": ErrorBody}, 429: {"model": ErrorBody}},
)
async def request_cancellation(
    service: ServiceDep,
    cancellations: ClientDep,
    settings: SettingsDep,
    pool: PoolDep,
    rt: AppStateDep,
    response: Response,
    body: Annotated[RequestBody | None, Body()] = None,
) -> CancellationView:
    """Request the cancellation; a repeated request answers the one in progress; 429 after
    too many wrong codes or requests (docs/SECURITY.md)."""
    if service.status == "cancelled":
        raise ApiError(409, f"service {service.id} is already cancelled")
    refusal = await request_refusal(
        pool, rt.limits, service.id, service.customer_id, attach_allowed=True
    )
    if refusal is not None:
        raise ApiError.too_many(refusal)
    body = body or RequestBody()
    for _ in range(REQUEST_ATTEMPTS):
        try:
            answer = await cancellations.request(
                service.id,
                service.customer_id,
                requested_by=body.requested_by,
                reason=body.reason,
                reason_code=body.reason_code,
                effective=body.effective,
            )
        except CancellationNotFound as err:
            raise _no_cancellation(service) from err
        except CancellationError as err:
            raise await _refusal(cancellations, service, "cannot request", err) from err
        status = answer.status
        if status.state is State.REJECTED and is_limit_rejection(status.rejection_reason):
            raise ApiError.too_many(status.rejection_reason or "")
        if status.state is State.REJECTED:
            raise ApiError.conflict(
                f"the cancellation was rejected: {status.rejection_reason}", status
            )
        if not status.state.is_final:
            break
        # The run we met is just ending: let it close, then start a fresh one.
        await _wait_closed(cancellations, service.id)
    else:
        raise ApiError.conflict("the previous cancellation is still closing; try again", status)
    response.headers["Location"] = (
        f"/api/customers/{service.customer_id}/services/{service.id}/cancellation"
    )
    view = cancellation_view(status, service, settings)
    if view.billing_preview is None:
        view.billing_preview = billing_preview(service, settings)
    return view.model_copy(update={"run_id": answer.run_id})


async def _wait_closed(cancellations: CancellationClient, service_id: int) -> None:
    try:
        await asyncio.wait_for(cancellations.result(service_id), timeout=10)
    except (TimeoutError, CancellationError, WorkflowFailureError, RPCError):
        await asyncio.sleep(0.2)  # any end (or none) will do: the next start decides


@router.get("", response_model=CancellationView)
async def cancellation_status(
    service: ServiceDep, cancellations: ClientDep, settings: SettingsDep
) -> CancellationView:
    """The `status` query of the service's latest cancellation."""
    status = await status_of(cancellations, service)
    if status is None:
        raise _no_cancellation(service)
    return cancellation_view(status, service, settings)


@router.post(
    "/confirm",
    response_model=ConfirmAnswer,
    responses={409: {"model": ErrorBody}},
)
async def confirm_cancellation(
    service: ServiceDep, body: ConfirmBody, cancellations: ClientDep
) -> ConfirmAnswer:
    """Check the code synchronously (`confirm_code` update); 422 with attempts_left if wrong."""
    try:
        result = await cancellations.confirm(service.id, body.code)
    except CancellationError as err:
        raise await _refusal(cancellations, service, "the code cannot be taken", err) from err
    if not result.accepted:
        detail = "wrong or expired confirmation code"
        if result.state is State.LOCKED:
            detail += "; too many wrong codes, the cancellation is locked"
        elif result.state is not State.AWAITING_CONFIRMATION:
            detail = f"the cancellation is {result.state.value}, not awaiting confirmation"
        raise ApiError(422, detail, state=result.state, attempts_left=result.attempts_left)
    return ConfirmAnswer(**result.model_dump())


@router.post(
    "/resend",
    response_model=ResendAnswer,
    responses={409: {"model": ErrorBody}, 429: {"model": ErrorBody}},
)
async def resend_code(
    service: ServiceDep, cancellations: ClientDep, pool: PoolDep, rt: AppStateDep
) -> ResendAnswer:
    """Mail a new code; the previous one stops working; 429 after too many codes."""
    refusal = await resend_refusal(pool, rt.limits, service.id, service.customer_id)
    if refusal is not None:
        raise ApiError.too_many(refusal)
    try:
        result = await cancellations.resend(service.id)
    except CancellationError as err:
        if is_limit_rejection(str(err)):
            raise ApiError.too_many(str(err)) from err
        raise await _refusal(cancellations, service, "a new code cannot be sent", err) from err
    return ResendAnswer(**result.model_dump())


@router.delete(
    "",
    response_model=CancellationView,
    responses={409: {"model": ErrorBody}},
)
async def withdraw_cancellation(
    service: ServiceDep, cancellations: ClientDep, settings: SettingsDep
) -> CancellationView:
    """Withdraw a cancellation still awaiting its code (state becomes withdrawn)."""
    current = await status_of(cancellations, service)
    if current is None:
        raise _no_cancellation(service)
    try:
        status: CancellationStatus = await cancellations.withdraw(service.id, by="api")
    except CancellationError as err:
        raise await _refusal(cancellations, service, "cannot withdraw", err) from err
    return cancellation_view(status, service, settings)


@router.get(
    "/receipt",
    response_model=Receipt,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def cancellation_receipt(
    service: ServiceDep,
    pool: PoolDep,
    settings: SettingsDep,
    format_: Annotated[
        Literal["json", "text"],
        Query(alias="format", description="`text`: the receipt as the final mail words it"),
    ] = "json",
) -> Receipt | Response:
    """Once cancelled, the receipt (JSON, or plain text with ?format=text); 404 before."""
    receipt = await stored_receipt(pool, service.id)
    if receipt is None:
        raise ApiError(404, f"no receipt for service {service.id}: it is not cancelled")
    if format_ == "text":
        return PlainTextResponse(texts.receipt_text(receipt, settings.business_tz) + "\n")
    return receipt


@router.post(
    "/archive",
    status_code=202,
    response_model=ArchiveStatus,
    responses={409: {"model": ErrorBody}},
)
async def request_archive(service: ServiceDep, cancellations: ClientDep) -> ArchiveStatus:
    """Start building the last copy of the site and mailboxes; 409 once the deletion has
    started or while a copy is building or ready. The customer downloads it in the panel."""
    if await status_of(cancellations, service) is None:
        raise _no_cancellation(service)
    try:
        return await cancellations.request_archive(service.id, service.customer_id)
    except CancellationError as err:
        raise await _refusal(cancellations, service, "cannot make a copy", err) from err


@router.get("/archive", response_model=ArchiveStatus)
async def archive_status(service: ServiceDep, cancellations: ClientDep) -> ArchiveStatus:
    """The last copy: building (bytes so far), ready until expires_at, failed or expired."""
    status = await status_of(cancellations, service)
    if status is None:
        raise _no_cancellation(service)
    if status.archive is None:
        raise ApiError(404, f"no copy was asked for in the cancellation of service {service.id}")
    return status.archive
