"""deploy/roles.sql and deploy/grants.sql on the embedded PostgreSQL: each role does its
work and no more.

A panel database of its own: bajas_migrate migrates it, the worker runs a whole
cancellation as bajas_worker, the API and the panel serve it as bajas_api, and the
writes outside their work are refused.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import pytest_asyncio
from argon2 import PasswordHasher
from pydantic import SecretStr

from bajas.db import create_pool, migrate_url
from bajas.models import State
from starter.api.app import create_app
from starter.check import Outcome, run_check
from starter.client import CancellationClient
from tests.conftest import Stack
from tests.conftest_api import wait_for_mails
from tests.helpers import REPO
from tests.helpers.mail import code_in
from tests.helpers.panel import Panel
from tests.panel_http import CLAVE, WRONG_ANSWER, WRONG_CLAVE, sign_in, signed_in, try_sign_in
from tests.test_api import base
from worker import build_worker

pytestmark = pytest.mark.integration

TOKEN = "grants-token-" + uuid.uuid4().hex


@dataclass
class Roles:
    """The test's panel database: a pool per role, and the database owner's pool."""

    owner: asyncpg.Pool
    worker: asyncpg.Pool
    api: asyncpg.Pool
    urls: dict[str, str]


def _as(url: str, role: str, database: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}", path=f"/{database}"))


@pytest_asyncio.fixture(scope="module")
async def roles(pg_url: str) -> AsyncIterator[Roles]:
    database = f"grants_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f"create database {database}")
    await admin.close()
    owner_url = urlunsplit(urlsplit(pg_url)._replace(path=f"/{database}"))
    owner = await asyncpg.connect(owner_url)
    await owner.execute((REPO / "deploy" / "roles.sql").read_text())
    await owner.close()
    migrate = _as(pg_url, "bajas_migrate", database)
    await migrate_url(migrate)
    conn = await asyncpg.connect(migrate)
    await conn.execute((REPO / "deploy" / "grants.sql").read_text())
    await conn.close()
    urls = {role: _as(pg_url, f"bajas_{role}", database) for role in ("worker", "api")}
    found = Roles(
        owner=await create_pool(owner_url, max_size=5),
        worker=await create_pool(urls["worker"], max_size=5),
        api=await create_pool(urls["api"], max_size=5),
        urls=urls,
    )
    yield found
    for pool in (found.owner, found.worker, found.api):
        await pool.close()


async def test_the_worker_and_the_api_do_their_work_on_their_grants(
    stack: Stack, roles: Roles
) -> None:
    settings = stack.settings.model_copy(
        update={
            "temporal_task_queue": f"grants-{uuid.uuid4()}",
            "panel_api_token": SecretStr(TOKEN),
            "panel_session_secret": SecretStr("grants-session-" + uuid.uuid4().hex),
        }
    )
    panel = Panel(roles.owner, stack.settings.hosting_root, stack.settings.mail_root)
    svc = await panel.service(files=3, mailboxes=1, payment_method="auto_debit")
    number = await roles.owner.fetchval(
        "update customers set password_hash = $2 where id = $1 returning number",
        svc.customer_id,
        PasswordHasher().hash(CLAVE),
    )
    app = create_app(settings, client=stack.client, pool=roles.api)
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://bajas.test",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    cancellations = CancellationClient(stack.client, settings.temporal_task_queue)
    async with build_worker(stack.client, settings, roles.worker), http:
        r = await http.post(base(svc), json={"reason": "grants"})
        assert r.status_code == 202, r.text
        (mail,) = await wait_for_mails(stack, svc.domain, 1)
        r = await http.post(base(svc) + "/confirm", json={"code": code_in(mail)})
        assert r.json()["accepted"] is True, r.text
        result = await asyncio.wait_for(cancellations.result(svc.service_id), 30)
        assert result.state is State.CANCELLED, result
        r = await http.get(base(svc) + "/receipt")
        assert r.status_code == 200, r.text
        r = await http.get(f"/api/customers/{svc.customer_id}/services")
        assert r.json()["services"][0]["status"] == "cancelled", r.text
        # the panel: a wrong clave is counted, the right one opens a session
        del http.headers["Authorization"]
        assert WRONG_ANSWER in (await try_sign_in(http, number, WRONG_CLAVE)).text
        await sign_in(http, number, CLAVE)
        assert signed_in(await http.get("/panel/", follow_redirects=True))
    assert (
        await roles.owner.fetchval("select status from services where id = $1", svc.service_id)
        == "cancelled"
    )


@pytest.mark.parametrize(
    ("role", "statement"),
    [
        ("worker", "select password_hash from customers"),
        ("worker", "update customers set email = 'x@example.test'"),
        ("worker", "update services set expires_on = now()"),
        ("worker", "delete from bajas.confirmation_codes"),
        ("worker", "select * from bajas.panel_sessions"),
        ("worker", "create table bajas.mine (id int)"),
        ("api", "update services set status = 'cancelled'"),
        ("api", "insert into bajas.audit_trail (run_id) values ('x')"),
        ("api", "select * from bajas.confirmation_codes"),
        ("api", "update customers set password_hash = null"),
        ("api", "delete from bajas.cancellation_requests"),
    ],
)
async def test_writes_and_reads_beyond_the_work_are_refused(
    roles: Roles, role: str, statement: str
) -> None:
    pool: asyncpg.Pool = getattr(roles, role)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pool.execute(statement)


@pytest.mark.parametrize("role", ["worker", "api"])
async def test_bajas_check_reads_the_migrations_as_either_role(
    stack: Stack, roles: Roles, role: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", stack.client.service_client.config.target_host)
    settings = stack.settings.model_copy(update={"database_url": roles.urls[role]})
    found = {line.what: line for line in await run_check(settings, env={})}
    assert found["migrations"].outcome is Outcome.OK, found["migrations"]
