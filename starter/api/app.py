"""The FastAPI application: HTTP API under /api, customer panel under /panel/, dev mail viewer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from temporalio.client import Client
from temporalio.service import RPCError

from bajas.config import Settings
from bajas.db import create_pool
from bajas.dev.mailsink import MailSink
from bajas.temporal_client import connect
from starter.api import edge
from starter.api.deps import AppState
from starter.api.errors import (
    ApiError,
    PanelError,
    PanelRedirect,
    TemporalUnavailable,
    panel_not_found,
    validation_message,
)
from starter.api.panel_ui import STATIC_DIR, make_templates, render
from starter.api.routes import (
    api_cancellation,
    api_services,
    dev_mail,
    panel_auth,
    panel_services,
    root,
)
from starter.api.security import api_token, session_secret

SESSION_COOKIE = "bajas_panel"
SESSION_MAX_AGE = 8 * 3600
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'none'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def create_app(
    settings: Settings,
    *,
    client: Client | None = None,
    pool: asyncpg.Pool | None = None,
    mail_sink: MailSink | None = None,
) -> FastAPI:
    """Build the app; what is not handed in (client, pool) the lifespan connects itself.

    Raises ConfigError when PANEL_API_TOKEN is missing or weak, or PANEL_SESSION_SECRET is
    (outside `bajas dev`).
    `mail_sink` is given only by `bajas dev`: it mounts the mail viewer at /dev/mail.
    """
    rt = AppState(
        settings=settings,
        token=api_token(settings),
        templates=make_templates(),
        clave_slots=asyncio.Semaphore(settings.sign_in_concurrency),
        client=client,
        pool=pool,
        mail_sink=mail_sink,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_client = rt.client is None
        own_pool = rt.pool is None
        if own_client:
            rt.client = await connect()
        if own_pool:
            rt.pool = await create_pool(
                settings.require_database_url(), max_size=settings.db_pool_max
            )
        try:
            yield
        finally:
            if own_pool and rt.pool is not None:
                await rt.pool.close()
                rt.pool = None
            if own_client:
                rt.client = None

    app = FastAPI(
        title="bajas",
        summary="Cancellation (baja) of hosting services, carried out by Temporal",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/openapi.json" if settings.docs_public() else None,
        docs_url="/api/docs" if settings.docs_public() else None,
        redoc_url=None,
    )
    app.state.bajas = rt
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_secret(settings),
        session_cookie=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE,
        same_site="lax",
    )

    @app.middleware("http")
    async def page_headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response: Response = await call_next(request)
        if _is_page(request):
            for name, value in PAGE_HEADERS.items():
                response.headers.setdefault(name, value)
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    edge.install(app, settings)

    for router in (root.router, api_services.router, api_cancellation.router):
        app.include_router(router)
    app.include_router(panel_auth.router)
    app.include_router(panel_services.router)
    if mail_sink is not None:
        app.include_router(dev_mail.router)
    app.mount("/panel/static", StaticFiles(directory=STATIC_DIR), name="static")
    _install_error_handlers(app)
    return app


def _is_page(request: Request) -> bool:
    return request.url.path.startswith(("/panel", "/dev"))


def _error_page(request: Request, status_code: int, title: str, message: str) -> Response:
    return render(
        request,
        "error.html",
        {"title": title, "message": message, "status_code": status_code},
        status_code=status_code,
    )


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return JSONResponse(
            exc.body.model_dump(mode="json", exclude_none=True), exc.status_code, exc.headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _is_page(request):
            if exc.status_code == 404:
                err = panel_not_found()
                return _error_page(request, 404, err.title, err.message)
            return _error_page(request, exc.status_code, "Error", str(exc.detail))
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if _is_page(request):
            err = panel_not_found()
            return _error_page(request, 404, err.title, err.message)
        errors = list(exc.errors())
        return JSONResponse(
            {"detail": validation_message(errors), "errors": _jsonable(errors)}, 422
        )

    @app.exception_handler(PanelRedirect)
    async def redirect(request: Request, exc: PanelRedirect) -> Response:
        return RedirectResponse(exc.url, status_code=303)

    @app.exception_handler(PanelError)
    async def panel_error(request: Request, exc: PanelError) -> Response:
        return _error_page(request, exc.status_code, exc.title, exc.message)

    @app.exception_handler(TemporalUnavailable)
    @app.exception_handler(RPCError)
    async def unavailable(request: Request, exc: Exception) -> Response:
        if _is_page(request):
            return _error_page(
                request,
                503,
                "Servicio no disponible",
                "No pudimos consultar el estado de las bajas. Inténtelo en unos minutos.",
            )
        return JSONResponse({"detail": f"Temporal is not available: {exc}"}, 503)


def _jsonable(errors: list[dict[str, object]]) -> list[dict[str, object]]:
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}  # type: ignore[call-overload]
        for e in errors
    ]
