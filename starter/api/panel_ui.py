"""The panel's words and page rendering: states, steps, flash messages, the CSRF token."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from bajas import texts
from bajas.models import (
    ArchiveLink,
    ArchiveState,
    BillingOutcome,
    CancellationStatus,
    Effective,
    Receipt,
    State,
    StepProgress,
    StepStatus,
)
from starter.api import store
from starter.api.edge import from_loopback, template_path_for
from starter.api.security import new_csrf_token
from workflows.rules import auto_debit_cutoff, debit_cutoff

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

SERVICE_STATES = {"active": "activo", "suspended": "suspendido", "cancelled": "dado de baja"}
PENDING = "baja pendiente de confirmación"
SCHEDULED = "baja programada"
IN_PROGRESS = "baja en curso"

STEP_NAMES = {
    "billing": "Facturación",
    "mailboxes": "Buzones de correo",
    "files": "Archivos del sitio",
}
STEP_STATES = {
    StepStatus.PENDING: "pendiente",
    StepStatus.RUNNING: "en curso",
    StepStatus.DONE: "terminado",
    StepStatus.REFUSED: "detenido: lo revisa un operador",
    StepStatus.FAILED: "con error: lo revisa un operador",
}
STEP_UNITS = {"mailboxes": "buzones", "files": "archivos"}
PAYMENT_METHODS = {"auto_debit": "débito automático", "manual": "pago manual"}
REVOKED_DEBIT = "débito automático revocado"

# The moments of a cancellation's timeline (TimelineEvent.event), in the customer's words;
# "scheduled" names the date too (`timeline`).
TIMELINE_TEXTS = {
    "requested": "Solicitud de baja",
    "code_sent": "Código de confirmación enviado por correo",
    "code_resent": "Código nuevo enviado por correo",
    "confirmed": "Baja confirmada",
    "scheduled": "Programada para el final del período",
    "deprovisioning": "Comenzó el borrado",
    "billing_done": "Facturación cerrada",
    "mailboxes_done": "Buzones de correo borrados",
    "files_done": "Archivos del sitio borrados",
    "cancelled": "Servicio dado de baja",
    "withdrawn": "Usted desistió de la baja",
    "expired": "La solicitud venció sin ser confirmada",
    "locked": "Solicitud bloqueada por demasiados códigos incorrectos",
    "rejected": "La solicitud no pudo procesarse",
}

ENDED_NOTES = {
    State.EXPIRED: "La solicitud de baja anterior venció sin ser confirmada.",
    State.WITHDRAWN: "Usted desistió de la solicitud de baja anterior.",
    State.LOCKED: (
        "La solicitud de baja anterior quedó bloqueada por demasiados códigos incorrectos."
    ),
    State.REJECTED: "La solicitud de baja anterior no pudo procesarse.",
}


@dataclass(frozen=True)
class StepLine:
    name: str
    status: str
    css: str
    count: str


@dataclass(frozen=True)
class TimelineLine:
    at: datetime
    text: str


def timeline(status: CancellationStatus | None, tz_name: str) -> list[TimelineLine]:
    """The cancellation from its request to its end, each moment with its time."""
    if status is None:
        return []
    lines = []
    for event in status.timeline:
        text = TIMELINE_TEXTS.get(event.event, event.event)
        if event.event == State.SCHEDULED and status.effective_at is not None:
            text += f": {texts.working_until(status.effective_at, tz_name)}"
        lines.append(TimelineLine(at=event.at, text=text))
    return lines


@dataclass(frozen=True)
class ServiceCard:
    """A service as the panel shows it: its state in the provider's words and what can be done."""

    service: store.Service
    status: CancellationStatus | None
    ended: CancellationStatus | None = None
    # What confirming would delete, said again next to the button (while pending).
    mailboxes: tuple[str, ...] = ()
    # The receipt of the finished cancellation (on the service's own page).
    receipt: Receipt | None = None
    # The link of the last copy of a cancellation in progress (its token).
    copy: ArchiveLink | None = None

    @property
    def state_label(self) -> str:
        if self.service.status == "cancelled":
            return SERVICE_STATES["cancelled"]
        if self.status is not None and self.status.state is State.AWAITING_CONFIRMATION:
            return PENDING
        if self.status is not None and self.status.state is State.SCHEDULED:
            return SCHEDULED
        if self.status is not None and self.status.state is State.DEPROVISIONING:
            return IN_PROGRESS
        return SERVICE_STATES.get(self.service.status, self.service.status)

    @property
    def state_css(self) -> str:
        return {
            SERVICE_STATES["cancelled"]: "cancelled",
            PENDING: "pending",
            SCHEDULED: "scheduled",
            IN_PROGRESS: "progress",
            "activo": "active",
            "suspendido": "suspended",
        }.get(self.state_label, "other")

    @property
    def payment_label(self) -> str:
        """How the service is paid, as it stands: a revoked mandate no longer debits."""
        method = self.service.payment_method
        if method == "auto_debit" and self.service.debit_mandate == "revoked":
            return REVOKED_DEBIT
        return PAYMENT_METHODS.get(method, method)

    @property
    def can_request(self) -> bool:
        return self.service.status != "cancelled" and self.status is None

    @property
    def pending(self) -> bool:
        return self.status is not None and self.status.state is State.AWAITING_CONFIRMATION

    @property
    def deprovisioning(self) -> bool:
        return self.status is not None and self.status.state is State.DEPROVISIONING

    @property
    def scheduled(self) -> bool:
        return self.status is not None and self.status.state is State.SCHEDULED

    @property
    def term_end(self) -> datetime | None:
        """While pending or scheduled, the end of the term the deletion will wait for."""
        st = self.status
        if st is None or st.effective is not Effective.END_OF_TERM or st.effective_at is None:
            return None
        if st.state is State.AWAITING_CONFIRMATION and st.effective_at <= datetime.now(UTC):
            return None  # the term is over: a confirmation deletes at once
        return (
            st.effective_at if st.state in (State.AWAITING_CONFIRMATION, State.SCHEDULED) else None
        )

    def billing_note(self, tz_name: str) -> str | None:
        """While scheduled: when billing closes ahead of the deletion, or that it has."""
        st = self.status
        if st is None or st.state is not State.SCHEDULED:
            return None
        if st.steps.billing.status is StepStatus.DONE:
            return texts.BILLING_CLOSED_EARLY
        closes_at, deletion = st.billing_closes_at, st.effective_at
        if closes_at is None or deletion is None or closes_at >= deletion:
            return None
        return texts.billing_closes_early(closes_at, debit_cutoff(self.service.expires_on), tz_name)

    @property
    def cancellation(self) -> CancellationStatus | None:
        """The cancellation the timeline tells: the running one, or the last ended."""
        return self.status or self.ended

    @property
    def copy_state(self) -> str | None:
        """building, ready, failed or expired; None when no copy was asked for."""
        archive = self.status.archive if self.status is not None else None
        return archive.state.value if archive is not None else None

    @property
    def can_request_copy(self) -> bool:
        """Until the deletion starts, and while no copy is building or ready."""
        return self.pending and self.copy_state not in (
            ArchiveState.BUILDING.value,
            ArchiveState.READY.value,
        )

    @property
    def ended_note(self) -> str | None:
        if self.ended is None or self.service.status == "cancelled":
            return None
        note = ENDED_NOTES.get(self.ended.state)
        if note and self.ended.steps.billing.status is StepStatus.DONE:  # withdrawn after it
            return f"{note} {texts.billing_stays_closed(self.service.expires_on)}"
        return note

    @property
    def done_summary(self) -> str | None:
        """What the finished cancellation did, for a service now "dado de baja"."""
        ended = self.ended
        if ended is None or ended.state is not State.CANCELLED or ended.billing_outcome is None:
            return None
        files = ended.steps.files.done
        mailboxes = ended.steps.mailboxes.done
        return (
            f"Se borraron {count_of(files, 'archivo', 'archivos')} del sitio y "
            f"{count_of(mailboxes, 'buzón', 'buzones')} de correo. "
            f"Facturación: {texts.outcome_text(ended.billing_outcome)}"
        )

    @property
    def inventory_line(self) -> str | None:
        """What confirming deletes ("Se eliminarán 12.431 archivos (1,8 GB) y …"), or
        "contando…" while it is counted; None when no cancellation is under way."""
        if not (self.pending or self.deprovisioning):
            return None
        assert self.status is not None
        return texts.inventory_line(self.status.inventory)

    def key_dates(self, tz_name: str, outcome: BillingOutcome | None = None) -> list[str]:
        """When the service ends, the last day to avoid the next automatic debit (while
        confirming can still avoid it) and when the deletion will be done. `outcome`: the
        billing preview, where no cancellation has been requested yet."""
        status = self.status
        if status is not None:
            outcome = status.billing_outcome or status.billing_preview
        avoidable = outcome is BillingOutcome.DEBIT_CANCELLED and (
            status is None or status.confirmed_at is None
        )
        cutoff = auto_debit_cutoff(self.service.expires_on, self.service.payment_method)
        return texts.key_dates(
            expires_on=self.service.expires_on,
            debit_cutoff=cutoff if avoidable else None,
            confirmed_at=status.confirmed_at if status is not None else None,
            tz_name=tz_name,
        )

    @property
    def steps(self) -> list[StepLine]:
        if self.status is None:
            return []
        lines = []
        for name, label in STEP_NAMES.items():
            step: StepProgress = getattr(self.status.steps, name)
            lines.append(
                StepLine(
                    name=label,
                    status=STEP_STATES.get(step.status, step.status.value),
                    css=step.status.value,
                    count=_count(name, step),
                )
            )
        return lines


def _count(name: str, step: StepProgress) -> str:
    if step.status is StepStatus.PENDING:
        return ""
    if name == "billing":
        return f"facturas y débitos cerrados: {step.done}" if step.status is StepStatus.DONE else ""
    unit = STEP_UNITS[name]
    if step.total is not None:
        return f"{step.done} de {step.total} {unit}"
    return f"{step.done} {unit}" if step.done or step.status is StepStatus.DONE else ""


count_of = texts.count_of


def flash(request: Request, text: str, kind: str = "info") -> None:
    """A message for the next page, kept in the signed cookie: readable by whoever holds
    it, so never personal data (no e-mail address).

    Assigned, never appended in place: the session is saved only when one of its keys is
    set, so a message added to one not shown yet would be lost.
    """
    request.session["flash"] = [*request.session.get("flash", []), {"text": text, "kind": kind}]


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = new_csrf_token()
    return str(token)


def _context(request: Request) -> dict[str, Any]:
    rt = request.app.state.bajas
    return {
        "csrf_token": csrf_token(request),
        "flashes": request.session.pop("flash", []),
        "dev_mail": rt.mail_sink is not None and from_loopback(request),
        "business_tz": rt.settings.business_tz,
    }


def local_time(value: Any, tz_name: str, seconds: bool = False) -> str:
    """A time in the one form of bajas/texts.py, with its zone."""
    return texts.local_time(value, tz_name, seconds=seconds) if value is not None else ""


def date_es(value: Any) -> str:
    return texts.short_date(value) if value is not None else ""


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=TEMPLATES_DIR, context_processors=[_context])
    templates.env.filters["local_time"] = local_time
    templates.env.filters["long_time"] = texts.long_time
    templates.env.filters["working_until"] = texts.working_until
    templates.env.filters["date_es"] = date_es
    templates.env.globals["timeline"] = timeline
    templates.env.globals["reason_labels"] = texts.REASON_LABELS
    templates.env.globals["url_for"] = template_path_for
    templates.env.filters["count_of"] = count_of
    templates.env.filters["receipt_text"] = texts.receipt_text
    templates.env.filters["byte_size"] = texts.byte_size
    return templates


def render(
    request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200
) -> HTMLResponse:
    templates: Jinja2Templates = request.app.state.bajas.templates
    return templates.TemplateResponse(request, name, context or {}, status_code=status_code)
