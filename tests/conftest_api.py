"""Fixtures of the API and panel tests: the app on the real stack, an HTTP client, a server.

Imported by tests/test_api.py and tests/test_panel_browser.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from bajas.config import Settings
from bajas.dev.mailsink import SunkMessage
from bajas.models import State
from starter.api.app import create_app
from tests.conftest import Stack
from tests.helpers import assert_eventually, free_port
from tests.helpers.mail import code_in, mails_about
from tests.helpers.panel import ServiceFixture

TOKEN = "test-token-" + uuid.uuid4().hex
SESSION_SECRET = "test-session-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
def api_settings(stack: Stack) -> Settings:
    return stack.settings.model_copy(
        update={
            "panel_api_token": SecretStr(TOKEN),
            "panel_session_secret": SecretStr(SESSION_SECRET),
            "api_docs": True,
            # every test signs in from 127.0.0.1: count failures per number only, in effect
            "sign_in_address_factor": 1000,
        }
    )


@pytest.fixture(scope="session")
def app(stack: Stack, api_settings: Settings) -> FastAPI:
    return create_app(api_settings, client=stack.client, pool=stack.pool, mail_sink=stack.mail)


@pytest_asyncio.fixture(scope="session")
async def api(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An authenticated client of the API, in process."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://bajas.test",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    ) as client:
        yield client


@dataclass
class Server:
    url: str


@pytest_asyncio.fixture(scope="session")
async def server(app: FastAPI) -> AsyncIterator[Server]:
    """A real uvicorn server on a free port, on the tests' event loop (the pool lives there)."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve())

    def started() -> bool:
        if task.done():
            task.result()  # its error, at once
        return uv.started

    await assert_eventually(started, "uvicorn to start", timeout=10, interval=0.05)
    yield Server(url=f"http://127.0.0.1:{port}")
    uv.should_exit = True
    await asyncio.wait_for(task, 10)


async def wait_for_mails(stack: Stack, domain: str, count: int) -> list[SunkMessage]:
    def found() -> list[SunkMessage] | None:
        mails = mails_about(stack.mail, domain)
        return mails if len(mails) >= count else None

    return await assert_eventually(found, f"{count} mails about {domain}", timeout=10)


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


async def cancel_through(stack: Stack, svc: ServiceFixture) -> str:
    """Request and confirm with the mailed code, as a customer would; the run id once the
    service is cancelled."""
    answer = await stack.cancellations.request(svc.service_id, svc.customer_id)
    assert answer.status.state is State.AWAITING_CONFIRMATION, answer.status
    (mail,) = await wait_for_mails(stack, svc.domain, 1)
    assert (await stack.cancellations.confirm(svc.service_id, code_in(mail))).accepted
    result = await asyncio.wait_for(stack.cancellations.result(svc.service_id), 30)
    assert result.state is State.CANCELLED, result
    return answer.run_id
