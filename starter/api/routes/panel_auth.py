"""Sign-in and sign-out of the customer panel: customer number and clave (argon2)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from starter.api import store
from starter.api.deps import CsrfDep, PoolDep
from starter.api.panel_ui import flash, render
from starter.api.security import new_csrf_token, verify_clave

router = APIRouter(prefix="/panel", include_in_schema=False)

WRONG = "Número de cliente o clave incorrectos."
MAX_FIELD = 512


@router.get("/ingresar", response_class=HTMLResponse, name="sign_in_form")
async def sign_in_form(request: Request) -> Response:
    """The sign-in form ("Número de cliente", "Clave", "Ingresar")."""
    if isinstance(request.session.get("customer_id"), int):
        return RedirectResponse(request.url_for("services"), status_code=303)
    return render(request, "sign_in.html", {"numero": ""})


@router.post("/ingresar", dependencies=[CsrfDep], name="sign_in")
async def sign_in(
    request: Request,
    pool: PoolDep,
    numero: Annotated[str, Form(max_length=MAX_FIELD)] = "",
    clave: Annotated[str, Form(max_length=MAX_FIELD)] = "",
) -> Response:
    """Check the clave; an unknown number and a wrong clave get the same answer."""
    found = await store.customer_for_sign_in(pool, numero) if numero.strip() else None
    matches = await verify_clave(found[1] if found else None, clave)
    if found is None or not matches:
        return render(
            request, "sign_in.html", {"numero": numero.strip(), "error": WRONG}, status_code=200
        )
    request.session.clear()
    request.session["customer_id"] = found[0]
    request.session["csrf"] = new_csrf_token()
    return RedirectResponse(request.url_for("services"), status_code=303)


@router.post("/salir", dependencies=[CsrfDep], name="sign_out")
async def sign_out(request: Request) -> Response:
    """Forget the session."""
    request.session.clear()
    flash(request, "Cerró la sesión.")
    return RedirectResponse(request.url_for("sign_in_form"), status_code=303)
