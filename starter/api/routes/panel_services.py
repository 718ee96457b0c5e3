"""The panel's "Servicios": each service, its state, and the steps of a cancellation.

Pages answer GET; every action is a POST form with the session's CSRF token that ends
in a redirect (303) to the service's page, where a flash message says what happened.
The last copy is downloaded here too, by the signed-in customer only.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from bajas import texts
from bajas.config import Settings
from bajas.limits import (
    BAD_CONTACT_DATA,
    Refusal,
    is_limit_rejection,
    request_refusal,
    resend_refusal,
)
from bajas.models import (
    CODE_LENGTH,
    MAX_REASON_CHARS,
    ArchiveState,
    Effective,
    ReasonCode,
    State,
    StepStatus,
    archive_file_name,
    is_well_formed_code,
)
from bajas.receipts import stored_receipt
from starter.api import store
from starter.api.cancellations import (
    archive_link_of,
    billing_preview,
    services_with_cancellations,
    status_of,
)
from starter.api.deps import (
    AppStateDep,
    ClientDep,
    CsrfDep,
    PanelServiceDep,
    PoolDep,
    SettingsDep,
    SignedInDep,
)
from starter.api.edge import path_for
from starter.api.errors import panel_not_found
from starter.api.panel_ui import ServiceCard, flash, local_time, render
from starter.api.security import token_matches
from starter.client import CancellationError, CancellationNotFound
from workflows.rules import term_end

router = APIRouter(prefix="/panel", include_in_schema=False)

BAD_CONTACT_TEXT = (
    "No podemos enviarle el código de confirmación porque los datos de contacto de su cuenta "
    "tienen un error. Comuníquese con soporte; la baja no se inició."
)


def _to_service(request: Request, service: store.Service) -> RedirectResponse:
    return RedirectResponse(path_for(request, "service", sid=service.id), status_code=303)


async def _with_mailboxes(pool: PoolDep, cards: list[ServiceCard]) -> list[ServiceCard]:
    """Pending cards say again, next to the red button, which mailboxes will go."""
    found = await store.mailbox_addresses(pool, [c.service.id for c in cards if c.pending])
    return [
        dataclasses.replace(c, mailboxes=tuple(found[c.service.id])) if c.service.id in found else c
        for c in cards
    ]


async def _card(pool: PoolDep, cancellations: ClientDep, service: store.Service) -> ServiceCard:
    """The service with its latest cancellation, running or ended."""
    latest = (await store.latest_requests(pool, [service.id])).get(service.id)
    if latest is None:
        return ServiceCard(service, None)
    status = await status_of(cancellations, service)
    if status is None:
        return ServiceCard(service, None)
    if status.state.is_final:
        return ServiceCard(service, None, ended=status)
    copy = await archive_link_of(cancellations, service) if status.archive else None
    return (await _with_mailboxes(pool, [ServiceCard(service, status, copy=copy)]))[0]


@router.get("/", response_class=HTMLResponse, name="services")
async def services(
    request: Request, customer: SignedInDep, pool: PoolDep, cancellations: ClientDep
) -> Response:
    """ "Servicios": every service of the signed-in customer with its state."""
    pairs = await services_with_cancellations(pool, cancellations, customer.id)
    cards = await _with_mailboxes(pool, [ServiceCard(s, status) for s, status in pairs])
    return render(
        request,
        "services.html",
        {
            "customer": customer,
            "cards": cards,
            "refresh": any(c.deprovisioning for c in cards),
        },
    )


@router.get("/servicios/{sid}", response_class=HTMLResponse, name="service")
async def service_page(
    request: Request,
    customer: SignedInDep,
    service: PanelServiceDep,
    pool: PoolDep,
    cancellations: ClientDep,
) -> Response:
    """One service: its state, the code form while pending, progress while deprovisioning,
    the receipt once cancelled."""
    card = await _card(pool, cancellations, service)
    if service.status == "cancelled":
        card = dataclasses.replace(card, receipt=await stored_receipt(pool, service.id))
    return render(
        request,
        "service.html",
        {
            "customer": customer,
            "card": card,
            "refresh": card.deprovisioning or card.copy_state == ArchiveState.BUILDING.value,
            "code_length": CODE_LENGTH,
        },
    )


@router.get("/servicios/{sid}/baja", response_class=HTMLResponse, name="request_preview")
async def request_preview(
    request: Request,
    customer: SignedInDep,
    service: PanelServiceDep,
    pool: PoolDep,
    cancellations: ClientDep,
    settings: SettingsDep,
) -> Response:
    """What a cancellation would delete and cost, before it is requested."""
    card = await _card(pool, cancellations, service)
    if not card.can_request:
        return _to_service(request, service)
    end = term_end(service.expires_on, settings.business_tz)
    return render(
        request,
        "request_preview.html",
        {
            "customer": customer,
            "card": card,
            "mailboxes": (await store.mailbox_addresses(pool, [service.id])).get(service.id, []),
            "preview": billing_preview(service, settings),
            # "al final del período" only while that is still ahead
            "term_end": end if end > datetime.now(UTC) else None,
            "max_reason": MAX_REASON_CHARS,
        },
    )


NOT_STARTED = "La baja no se inició."


def _request_choices(
    effective: str, reason_code: str, reason: str
) -> tuple[Effective, ReasonCode | None, str | None] | str:
    """The form's "cuándo" and "motivo", or what is wrong with them (in Spanish)."""
    try:
        when = Effective(effective or Effective.NOW)
    except ValueError:
        return f"Elija cuándo se borra: ahora o al final del período. {NOT_STARTED}"
    try:
        code = ReasonCode(reason_code) if reason_code else None
    except ValueError:
        return f"Elija el motivo de la lista. {NOT_STARTED}"
    # Browsers send a textarea's line breaks as CRLF but count them as one character.
    text = reason.replace("\r\n", "\n").strip() or None
    if text is not None and len(text) > MAX_REASON_CHARS:
        return (
            f"El comentario puede tener hasta {MAX_REASON_CHARS} caracteres "
            f"(el suyo tiene {len(text)}). {NOT_STARTED}"
        )
    return when, code, text


def _refusal_text(refusal: Refusal, settings: Settings) -> str:
    until = local_time(refusal.until, settings.business_tz) if refusal.until else None
    return refusal.text_es(until)


@router.post("/servicios/{sid}/baja", dependencies=[CsrfDep], name="request_cancellation")
async def request_cancellation(
    request: Request,
    customer: SignedInDep,
    service: PanelServiceDep,
    cancellations: ClientDep,
    pool: PoolDep,
    rt: AppStateDep,
    effective: Annotated[str, Form()] = "",
    reason_code: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
) -> Response:
    """ "Solicitar baja del servicio": start it (or meet the one in progress), with when
    and why from the form."""
    if service.status == "cancelled":
        flash(request, "Este servicio ya está dado de baja.", "error")
        return _to_service(request, service)
    choices = _request_choices(effective, reason_code, reason)
    if isinstance(choices, str):
        flash(request, choices, "error")
        return RedirectResponse(
            path_for(request, "request_preview", sid=service.id), status_code=303
        )
    when, code, text = choices
    refusal = await request_refusal(pool, rt.limits, service.id, customer.id, attach_allowed=True)
    if refusal is not None:
        flash(request, _refusal_text(refusal, rt.settings), "error")
        return _to_service(request, service)
    try:
        answer = await cancellations.request(
            service.id,
            customer.id,
            requested_by="panel",
            reason=text,
            reason_code=code,
            effective=when,
        )
    except CancellationError:
        flash(request, "No pudimos registrar la solicitud. Inténtelo de nuevo.", "error")
        return _to_service(request, service)
    state = answer.status.state
    rejection = answer.status.rejection_reason
    if state is State.AWAITING_CONFIRMATION and answer.status.code_sent:
        flash(
            request,
            "Le enviamos un código de confirmación por correo. "
            "Ingréselo abajo para confirmar la baja.",
            "ok",
        )
    elif state is State.AWAITING_CONFIRMATION:
        flash(
            request,
            "Registramos la solicitud, pero el código de confirmación todavía no salió. "
            "Vuelva a esta página en unos minutos.",
        )
    elif state is State.REJECTED and is_limit_rejection(rejection):
        # The worker's own check, a moment after ours (another request in between).
        flash(request, "Por seguridad, la baja no puede solicitarse ahora. Inténtelo más tarde.")
    elif state is State.REJECTED and rejection and rejection.startswith(BAD_CONTACT_DATA):
        flash(request, BAD_CONTACT_TEXT, "error")
    elif state is State.REJECTED:
        flash(request, "No se puede dar de baja este servicio.", "error")
    elif state.is_final:
        flash(request, "La solicitud anterior acaba de terminar. Vuelva a solicitar la baja.")
    return _to_service(request, service)


@router.post("/servicios/{sid}/confirmar", dependencies=[CsrfDep], name="confirm_cancellation")
async def confirm_cancellation(
    request: Request,
    service: PanelServiceDep,
    cancellations: ClientDep,
    codigo: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """ "Confirmar baja del servicio" with the code; a wrong one says the attempts left."""
    code = "".join(codigo.split())
    if not is_well_formed_code(code):
        flash(request, f"El código de confirmación tiene {CODE_LENGTH} dígitos.", "error")
        return _to_service(request, service)
    try:
        result = await cancellations.confirm(service.id, code)
    except CancellationNotFound:
        flash(request, "No hay una solicitud de baja pendiente para este servicio.", "error")
        return _to_service(request, service)
    except CancellationError:
        await _no_longer_awaiting(request, service, cancellations)
        return _to_service(request, service)
    if result.accepted and result.state is State.SCHEDULED:
        flash(
            request,
            "Baja confirmada y programada para el final del período. Hasta entonces el sitio "
            "y el correo siguen funcionando; le avisaremos por correo cuando se complete.",
            "ok",
        )
    elif result.accepted:
        flash(
            request,
            "Baja confirmada. Se completará dentro de las 24 horas; le avisaremos por correo.",
            "ok",
        )
    elif result.state is State.LOCKED:
        flash(
            request,
            "Código incorrecto. No quedan intentos: la solicitud quedó bloqueada. "
            "Puede solicitar la baja de nuevo.",
            "error",
        )
    elif result.state is State.AWAITING_CONFIRMATION:
        flash(
            request,
            f"Código incorrecto o vencido; intentos restantes: {result.attempts_left}.",
            "error",
        )
    else:
        await _no_longer_awaiting(request, service, cancellations)
    return _to_service(request, service)


async def _no_longer_awaiting(
    request: Request, service: store.Service, cancellations: ClientDep
) -> None:
    """A code for a request that no longer waits for one: most often a stale tab whose
    cancellation was confirmed meanwhile, which is news to tell calmly, not an error."""
    status = await status_of(cancellations, service)
    if status is None or status.confirmed_at is None:
        flash(request, "La solicitud de baja ya no espera un código.", "error")
    elif status.state is State.CANCELLED:
        flash(request, "Esta baja ya estaba confirmada: el servicio está dado de baja.")
    elif status.state is State.SCHEDULED:
        flash(
            request, "Esta baja ya estaba confirmada y está programada para el final del período."
        )
    else:
        flash(request, "Esta baja ya estaba confirmada y se está completando.")


@router.post("/servicios/{sid}/reenviar", dependencies=[CsrfDep], name="resend_code")
async def resend_code(
    request: Request,
    customer: SignedInDep,
    service: PanelServiceDep,
    cancellations: ClientDep,
    pool: PoolDep,
    rt: AppStateDep,
) -> Response:
    """ "Reenviar código": a new code by mail; the previous one stops working."""
    refusal = await resend_refusal(pool, rt.limits, service.id, customer.id)
    if refusal is not None:
        flash(request, _refusal_text(refusal, rt.settings), "error")
        return _to_service(request, service)
    try:
        result = await cancellations.resend(service.id)
    except CancellationError:
        flash(request, "No se puede enviar un código nuevo ahora.", "error")
        return _to_service(request, service)
    flash(
        request,
        "Le enviamos un código nuevo por correo; el anterior ya no sirve. "
        f"Reenvíos disponibles: {result.resends_left}.",
        "ok",
    )
    return _to_service(request, service)


@router.post("/servicios/{sid}/desistir", dependencies=[CsrfDep], name="withdraw_cancellation")
async def withdraw_cancellation(
    request: Request, customer: SignedInDep, service: PanelServiceDep, cancellations: ClientDep
) -> Response:
    """ "Desistir": drop a cancellation still awaiting its code or scheduled."""
    try:
        withdrawn = await cancellations.withdraw(service.id, by="panel")
    except CancellationError:
        flash(request, "Ya no se puede desistir de esta baja.", "error")
        return _to_service(request, service)
    if withdrawn.steps.billing.status is StepStatus.DONE:  # closed before the debit
        flash(
            request,
            "Desistió de la baja: el sitio y el correo siguen funcionando. "
            + texts.billing_stays_closed(service.expires_on),
            "ok",
        )
    else:
        flash(request, "Desistió de la baja. El servicio sigue como estaba.", "ok")
    return _to_service(request, service)


@router.post("/servicios/{sid}/copia", dependencies=[CsrfDep], name="request_archive")
async def request_archive(
    request: Request, customer: SignedInDep, service: PanelServiceDep, cancellations: ClientDep
) -> Response:
    """ "Pedir una copia": the site and the mail in one file to download, before the deletion."""
    try:
        await cancellations.request_archive(service.id, customer.id)
    except CancellationError:
        flash(request, "Ya no se puede pedir una copia de este servicio.", "error")
        return _to_service(request, service)
    flash(
        request,
        "Estamos preparando la copia del sitio y del correo. Cuando esté lista, "
        "el enlace para descargarla aparece en esta página.",
        "ok",
    )
    return _to_service(request, service)


@router.get("/servicios/{sid}/copia/{token}", name="download_archive")
async def download_archive(
    service: PanelServiceDep, cancellations: ClientDep, settings: SettingsDep, token: str
) -> Response:
    """The last copy, streamed to the signed-in customer whose service it is, while its
    link works; anything else is the same 404."""
    link = await archive_link_of(cancellations, service)
    if (
        link is None
        or not token_matches(token, link.token)
        or link.archive.state is not ArchiveState.READY
    ):
        raise panel_not_found()
    path = settings.archive_root / archive_file_name(link.token)
    if not path.is_file():
        raise panel_not_found()
    day = datetime.now(UTC).strftime("%Y%m%d")
    return FileResponse(
        path,
        media_type="application/zstd",
        filename=f"copia-{service.domain}-{day}.tar.zst",
        headers={"Cache-Control": "no-store"},
    )
