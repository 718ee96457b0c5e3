"""The FastAPI application: HTTP API under /api, customer panel under /panel/, dev mail viewer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import compile_path
from temporalio.client import Client
from temporalio.service import RPCError

from bajas.config import Settings
from bajas.db import create_pool
from bajas.dev.mailsink import MailSink
from bajas.temporal_client import connect
from starter.api import edge, store
from starter.api.deps import AppState, app_state, session_customer
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
    api_index,
    api_services,
    dev_mail,
    panel_auth,
    panel_services,
    root,
)
from starter.api.schemas import ErrorBody
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
    async def page_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response: Response = await call_next(request)
        if _is_page(request):
            for name, value in PAGE_HEADERS.items():
                response.headers.setdefault(name, value)
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    edge.install(app, settings)

    for router in (root.router, api_index.router, api_services.router, api_cancellation.router):
        app.include_router(router)
    app.include_router(panel_auth.router)
    app.include_router(panel_services.router)
    if mail_sink is not None:
        app.include_router(dev_mail.router)
    app.mount("/panel/static", StaticFiles(directory=STATIC_DIR), name="static")
    _install_error_handlers(app)
    _install_tracing(app)
    return app


def _install_tracing(app: FastAPI) -> None:
    """A server span per request when tracing is on (bajas.tracing): the Temporal client's
    spans, and so the workflow's and its activities', join its trace."""
    from bajas import tracing

    provider = tracing.provider()
    if provider is not None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)


def _is_page(request: Request) -> bool:
    return request.url.path.startswith(("/panel", "/dev"))


async def _signed_in(request: Request) -> store.Customer | None:
    """Who is signed in, for the header of an error page; None when that cannot be told."""
    pool = app_state(request).pool
    if pool is None:
        return None
    with contextlib.suppress(OSError, asyncpg.PostgresError):
        return await session_customer(request, pool)
    return None


async def _error_page(request: Request, status_code: int, title: str, message: str) -> Response:
    return render(
        request,
        "error.html",
        {
            "title": title,
            "message": message,
            "status_code": status_code,
            "customer": await _signed_in(request),
        },
        status_code=status_code,
    )


def _allowed_methods(request: Request) -> str | None:
    """Every method of this API path, as the schema lists them: a 405 from Starlette names
    only the methods of the first route that matched the path."""
    path = request.scope["path"]
    for template, operations in request.app.openapi()["paths"].items():
        if compile_path(template)[0].fullmatch(path):
            methods = {method.upper() for method in operations}
            if "GET" in methods:
                methods.add("HEAD")
            return ", ".join(sorted(methods))
    return None


def _api_error(status_code: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    body = ErrorBody(detail=detail).model_dump(mode="json", exclude_none=True)
    return JSONResponse(body, status_code, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return JSONResponse(
            exc.body.model_dump(mode="json", exclude_none=True), exc.status_code, exc.headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
        if _is_page(request):
            if exc.status_code == 404:
                err = panel_not_found()
                return await _error_page(request, 404, err.title, err.message)
            page = await _error_page(request, exc.status_code, "Error", str(exc.detail))
            page.headers.update(headers)
            return page
        if exc.status_code == 400:
            # FastAPI's one 400: a body it could not decode (not UTF-8, nested too deep).
            # The schema documents 422 for every malformed request, so answer that.
            return _api_error(422, "invalid request: the body is not valid JSON")
        return _api_error(exc.status_code, str(exc.detail), headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if _is_page(request):
            err = panel_not_found()
            return await _error_page(request, 404, err.title, err.message)
        errors = list(exc.errors())
        return JSONResponse(
            {"detail": validation_message(errors), "errors": _jsonable(errors)}, 422
        )

    @app.exception_handler(PanelRedirect)
    async def redirect(request: Request, exc: PanelRedirect) -> Response:
        return RedirectResponse(exc.url, status_code=303)

    @app.exception_handler(PanelError)
    async def panel_error(request: Request, exc: PanelError) -> Response:
        return await _error_page(request, exc.status_code, exc.title, exc.message)

    @app.exception_handler(TemporalUnavailable)
    @app.exception_handler(RPCError)
    async def unavailable(request: Request, exc: Exception) -> Response:
        if _is_page(request):
            return await _error_page(
                request,
                503,
                "Servicio no disponible",
                "No pudimos consultar el estado de las bajas. Inténtelo en unos minutos.",
            )
        return _api_error(503, f"Temporal is not available: {exc}")


def _jsonable(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pydantic's errors without `input` and `ctx`, which may hold what JSON cannot carry."""
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in errors
    ]
