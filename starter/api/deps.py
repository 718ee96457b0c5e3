"""Annotated dependencies shared by the routers: settings, pool, client, who is asking."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

import asyncpg
from fastapi import Depends, Form, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.templating import Jinja2Templates
from temporalio.client import Client

from bajas.config import Settings
from bajas.dev.mailsink import MailSink
from bajas.limits import Limits
from starter.api import sessions, store
from starter.api.edge import path_for
from starter.api.errors import PanelError, PanelRedirect, panel_not_found
from starter.api.security import token_matches
from starter.client import CancellationClient


@dataclass
class AppState:
    """What the app runs on; the lifespan fills in what create_app was not given."""

    settings: Settings
    token: str
    templates: Jinja2Templates
    # argon2 checks allowed at once (SIGN_IN_CONCURRENCY)
    clave_slots: asyncio.Semaphore
    client: Client | None = None
    pool: asyncpg.Pool | None = None
    mail_sink: MailSink | None = None

    @property
    def limits(self) -> Limits:
        return Limits.from_settings(self.settings)

    @property
    def cancellations(self) -> CancellationClient:
        assert self.client is not None, "the app's lifespan has not run"
        return CancellationClient(self.client, self.settings.temporal_task_queue)


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.bajas
    return state


AppStateDep = Annotated[AppState, Depends(app_state)]


def _settings(rt: AppStateDep) -> Settings:
    return rt.settings


def _pool(rt: AppStateDep) -> asyncpg.Pool:
    assert rt.pool is not None, "the app's lifespan has not run"
    return rt.pool


def _cancellations(rt: AppStateDep) -> CancellationClient:
    return rt.cancellations


SettingsDep = Annotated[Settings, Depends(_settings)]
PoolDep = Annotated[asyncpg.Pool, Depends(_pool)]
ClientDep = Annotated[CancellationClient, Depends(_cancellations)]


# ---- the HTTP API ------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="PANEL_API_TOKEN")


def require_token(
    rt: AppStateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Constant-time check of `Authorization: Bearer $PANEL_API_TOKEN`."""
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing bearer token: send Authorization: Bearer $PANEL_API_TOKEN",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not token_matches(credentials.credentials, rt.token):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="invalid bearer token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


async def _api_customer(cid: int, pool: PoolDep) -> store.Customer:
    customer = await store.customer(pool, cid)
    if customer is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"customer {cid} not found")
    return customer


async def _api_service(cid: int, sid: int, pool: PoolDep) -> store.Service:
    """The panel database decides ownership before anything reaches Temporal."""
    service = await store.owned_service(pool, cid, sid)
    if service is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"service {sid} not found for customer {cid}"
        )
    return service


CustomerDep = Annotated[store.Customer, Depends(_api_customer)]
ServiceDep = Annotated[store.Service, Depends(_api_service)]


# ---- the customer panel ------------------------------------------------------------------


async def session_customer(request: Request, pool: asyncpg.Pool) -> store.Customer | None:
    """The customer of the cookie's server-side session, while it lives."""
    customer_id = await sessions.customer_of(pool, request.session.get("sid"))
    return await store.customer(pool, customer_id) if customer_id is not None else None


async def _signed_in(request: Request, pool: PoolDep) -> store.Customer:
    customer = await session_customer(request, pool)
    if customer is None:
        request.session.pop("sid", None)
        raise PanelRedirect(path_for(request, "sign_in_form"))
    return customer


SignedInDep = Annotated[store.Customer, Depends(_signed_in)]


async def _panel_service(sid: int, customer: SignedInDep, pool: PoolDep) -> store.Service:
    service = await store.owned_service(pool, customer.id, sid)
    if service is None:
        raise panel_not_found()
    return service


PanelServiceDep = Annotated[store.Service, Depends(_panel_service)]


def check_csrf(request: Request, csrf_token: Annotated[str, Form()] = "") -> None:
    """Every panel form carries the session's token in a hidden field."""
    expected = request.session.get("csrf")
    if not expected or not csrf_token or not token_matches(csrf_token, expected):
        raise PanelError(
            403,
            "Formulario vencido",
            "El formulario venció o no es válido. Vuelva a la página e inténtelo de nuevo.",
        )


CsrfDep = Depends(check_csrf)
