"""Development only: read what the SMTP sink received (the confirmation codes) in the browser.

Only from this machine (127.0.0.1 / ::1), even when `bajas dev --host` listens wider.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from bajas.dev.mailsink import MailSink
from starter.api.deps import AppStateDep
from starter.api.edge import from_loopback
from starter.api.errors import PanelError, panel_not_found
from starter.api.panel_ui import render

router = APIRouter(prefix="/dev/mail", include_in_schema=False)


def _sink(request: Request, rt: AppStateDep) -> MailSink:
    if rt.mail_sink is None or not from_loopback(request):
        raise PanelError(404, "No disponible", "El visor de correo solo existe en desarrollo.")
    return rt.mail_sink


@router.get("", response_class=HTMLResponse, name="dev_mail")
async def mail_list(request: Request, rt: AppStateDep) -> Response:
    """Every message the sink holds, newest first."""
    sink = _sink(request, rt)
    messages = list(enumerate(sink.messages))[::-1]
    return render(request, "dev_mail.html", {"messages": messages})


@router.get("/{n}", response_class=HTMLResponse, name="dev_mail_message")
async def mail_message(request: Request, n: int, rt: AppStateDep) -> Response:
    """One message: headers and plain-text body."""
    sink = _sink(request, rt)
    if not 0 <= n < len(sink.messages):
        raise panel_not_found()
    return render(request, "dev_mail_message.html", {"n": n, "message": sink.messages[n]})
