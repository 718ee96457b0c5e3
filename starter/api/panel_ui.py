"""The panel's words and page rendering: states, steps, flash messages, the CSRF token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from bajas import texts
from bajas.models import (
    ArchiveLink,
    ArchiveState,
    CancellationStatus,
    State,
    StepProgress,
    StepStatus,
)
from starter.api import store
from starter.api.edge import from_loopback, template_path_for
from starter.api.security import new_csrf_token

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

SERVICE_STATES = {"active": "activo", "suspended": "suspendido", "cancelled": "dado de baja"}
PENDING = "baja pendiente de confirmación"
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
class ServiceCard:
    """A service as the panel shows it: its state in the provider's words and what can be done."""

    service: store.Service
    status: CancellationStatus | None
    ended: CancellationStatus | None = None
    # What confirming would delete, said again next to the button (while pending).
    mailboxes: tuple[str, ...] = ()
    # The link of the last copy of a cancellation in progress (its token).
    copy: ArchiveLink | None = None

    @property
    def state_label(self) -> str:
        if self.service.status == "cancelled":
            return SERVICE_STATES["cancelled"]
        if self.status is not None and self.status.state is State.AWAITING_CONFIRMATION:
            return PENDING
        if self.status is not None and self.status.state is State.DEPROVISIONING:
            return IN_PROGRESS
        return SERVICE_STATES.get(self.service.status, self.service.status)

    @property
    def state_css(self) -> str:
        return {
            SERVICE_STATES["cancelled"]: "cancelled",
            PENDING: "pending",
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
        return ENDED_NOTES.get(self.ended.state)

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


def count_of(n: int, one: str, many: str) -> str:
    """ "1 buzón", "2 buzones": Spanish plurals are not always one more letter."""
    return f"{n} {one if n == 1 else many}"


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
    templates.env.filters["date_es"] = date_es
    templates.env.globals["url_for"] = template_path_for
    templates.env.filters["count_of"] = count_of
    templates.env.filters["byte_size"] = texts.byte_size
    return templates


def render(
    request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200
) -> HTMLResponse:
    templates: Jinja2Templates = request.app.state.bajas.templates
    return templates.TemplateResponse(request, name, context or {}, status_code=status_code)
