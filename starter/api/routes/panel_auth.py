"""Sign-in and sign-out of the customer panel: customer number and clave (argon2), throttled
per number and per client address, into a session kept on the server."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from starter.api import sessions, store, throttle
from starter.api.deps import AppStateDep, CsrfDep, PoolDep
from starter.api.edge import client_address, path_for
from starter.api.panel_ui import flash, render
from starter.api.security import new_csrf_token, verify_clave

router = APIRouter(prefix="/panel", include_in_schema=False)

WRONG = "Número de cliente o clave incorrectos."
MAX_FIELD = 512


@router.get("/ingresar", response_class=HTMLResponse, name="sign_in_form")
async def sign_in_form(request: Request, pool: PoolDep) -> Response:
    """The sign-in form ("Número de cliente", "Clave", "Ingresar")."""
    if await sessions.customer_of(pool, request.session.get("sid")) is not None:
        return RedirectResponse(path_for(request, "services"), status_code=303)
    return render(request, "sign_in.html", {"numero": ""})


@router.post("/ingresar", dependencies=[CsrfDep], name="sign_in")
async def sign_in(
    request: Request,
    pool: PoolDep,
    rt: AppStateDep,
    numero: Annotated[str, Form(max_length=MAX_FIELD)] = "",
    clave: Annotated[str, Form(max_length=MAX_FIELD)] = "",
) -> Response:
    """Check the clave; an unknown number, a wrong clave and a throttled attempt all get
    the same answer."""
    keys = throttle.Keys.of(numero, client_address(request))
    admitted = await throttle.admit(pool, throttle.Rules.from_settings(rt.settings), keys)
    found = await store.customer_for_sign_in(pool, numero) if admitted and numero.strip() else None
    matches = admitted and await verify_clave(found[1] if found else None, clave, rt.clave_slots)
    if found is None or not matches:
        return render(
            request, "sign_in.html", {"numero": numero.strip(), "error": WRONG}, status_code=200
        )
    await throttle.succeeded(pool, keys)
    request.session.clear()
    request.session["sid"] = await sessions.open_session(pool, found[0])
    request.session["csrf"] = new_csrf_token()
    return RedirectResponse(path_for(request, "services"), status_code=303)


@router.post("/salir", dependencies=[CsrfDep], name="sign_out")
async def sign_out(request: Request, pool: PoolDep) -> Response:
    """End the session on the server: a copy of the cookie opens nothing any more."""
    await sessions.end_session(pool, request.session.get("sid"), sessions.SIGNED_OUT)
    request.session.clear()
    flash(request, "Cerró la sesión.")
    return RedirectResponse(path_for(request, "sign_in_form"), status_code=303)
