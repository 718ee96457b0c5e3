"""`bajas check` against the real stack: the session's dev server, PostgreSQL and SMTP sink.

Each test gets a panel database of its own (in the session's PostgreSQL), so the
hosting servers and resources that it lists are the test's alone.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio
from pydantic import SecretStr
from temporalio.testing import WorkflowEnvironment

from bajas.codec import new_payload_key
from bajas.config import Settings
from bajas.dev.binaries import find_binary
from starter.check import CheckLine, Outcome, run_check
from tests.conftest import Stack
from tests.helpers import assert_eventually, free_port, new_id
from tests.helpers.panel import Panel
from tests.helpers.processes import migrated_pool
from tests.test_cli import bajas
from worker import build_worker

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def panel_db(pg_url: str) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    """A migrated panel database of the test's own: (its URL, a pool on it)."""
    name = f"check_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_url)
    await conn.execute(f"create database {name}")
    await conn.close()
    url = urlunsplit(urlsplit(pg_url)._replace(path=f"/{name}"))
    pool = await migrated_pool(url, max_size=4)
    yield url, pool
    await pool.close()


def deployed(stack: Stack, database_url: str) -> Settings:
    """The stack's settings with a production's secrets and the test's own database."""
    return stack.settings.model_copy(
        update={
            "database_url": database_url,
            "panel_api_token": SecretStr(secrets.token_urlsafe(32)),
            "panel_session_secret": SecretStr(secrets.token_urlsafe(32)),
            "payload_keys": SecretStr(new_payload_key("2026-01")),
            "codec_server_token": SecretStr(secrets.token_urlsafe(32)),
        }
    )


async def service_on(pool: asyncpg.Pool, stack: Stack, server: str | None) -> int:
    svc = await Panel(pool, stack.settings.hosting_root, stack.settings.mail_root).service(
        files=0, mailboxes=0
    )
    await pool.execute("update services set server = $2 where id = $1", svc.service_id, server)
    return svc.service_id


async def add_resource(pool: asyncpg.Pool, service_id: int, kind: str, name: str) -> None:
    await pool.execute(
        "insert into service_resources (id, service_id, kind, name) values ($1, $2, $3, $4)",
        new_id(),
        service_id,
        kind,
        name,
    )


def lines_of(found: list[CheckLine], outcome: Outcome) -> list[str]:
    return [str(line) for line in found if line.outcome is outcome]


@pytest.fixture
def temporal_address(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> str:
    """TEMPORAL_ADDRESS of the session's dev server, as envconfig reads it."""
    address = stack.client.service_client.config.target_host
    for name in ("TEMPORAL_PROFILE", "TEMPORAL_API_KEY", "TEMPORAL_TLS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TEMPORAL_ADDRESS", address)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", stack.client.namespace)
    return address


async def test_a_complete_deploy_passes_every_check(
    stack: Stack,
    temporal_address: str,
    panel_db: tuple[str, asyncpg.Pool],
    tmp_path: Path,
) -> None:
    url, pool = panel_db
    settings = deployed(stack, url)
    service = await service_on(pool, stack, "web-ok")
    await add_resource(pool, service, "backup_directory", str(tmp_path / "backups" / "site"))
    (tmp_path / "backups").mkdir()
    env = {"BACKUP_ROOT": str(tmp_path / "backups")}
    async with build_worker(stack.client, settings, stack.pool, node="web-ok"):

        async def all_pass() -> list[CheckLine]:
            found = await run_check(settings, env=env)
            assert not lines_of(found, Outcome.FAIL), found
            return found

        found = await assert_eventually(all_pass, "every check passing")
        # on the hosting server: its own queue, with no panel database at all
        on_node = await run_check(settings.model_copy(update={"database_url": None}), "web-ok")
    assert not lines_of(on_node, Outcome.FAIL), on_node
    assert [line.what for line in on_node if line.outcome is Outcome.OK] == [
        "Temporal",
        "namespace",
        "search attributes",
        f"pollers of {settings.temporal_task_queue}-node-web-ok",
        "PAYLOAD_KEYS",
    ]
    passed = "\n".join(lines_of(found, Outcome.OK))
    for what in (
        f"Temporal: reached at {temporal_address} (no TLS)",
        "namespace: default",
        "search attributes: ServiceId, CustomerId, CancellationState, SlaAtRisk registered",
        f"pollers of {settings.temporal_task_queue}:",
        f"pollers of {settings.temporal_task_queue}-node-web-ok:",
        "PostgreSQL: reached",
        "migrations: current",
        "SMTP:",
        "CODE_HMAC_KEY: set and strong",
        "PANEL_API_TOKEN: set and strong",
        "PANEL_SESSION_SECRET: set and strong",
        "PAYLOAD_KEYS: 1 key, new payloads under '2026-01'",
        "CODEC_SERVER_TOKEN: set and strong",
        "resources backup_directory on the central workers: 1 listed, settings usable",
    ):
        assert what in passed, passed


async def test_a_node_nobody_polls_and_an_unset_kind_setting_fail(
    stack: Stack, temporal_address: str, panel_db: tuple[str, asyncpg.Pool]
) -> None:
    url, pool = panel_db
    await service_on(pool, stack, "web-gone")
    await add_resource(pool, await service_on(pool, stack, None), "php_fpm_pool", "sitio.conf")
    failed = lines_of(await run_check(deployed(stack, url), env={}), Outcome.FAIL)
    queue = f"{stack.settings.temporal_task_queue}-node-web-gone"
    assert failed == [
        "FAIL  resources php_fpm_pool on the central workers: PHP_FPM_POOL_DIR is not set;"
        " PHP_FPM_RELOAD is not set",
        f"FAIL  pollers of {queue}: no worker polls it: start `bajas worker --node web-gone`"
        f" on hosting server web-gone (TEMPORAL_TASK_QUEUE {stack.settings.temporal_task_queue})",
    ]


async def test_a_namespace_without_the_search_attributes_fails(
    stack: Stack, panel_db: tuple[str, asyncpg.Pool], monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_binary("temporal"), dev_server_log_level="error"
    )
    try:
        monkeypatch.setenv("TEMPORAL_ADDRESS", bare.client.service_client.config.target_host)
        found = await run_check(deployed(stack, panel_db[0]), env={})
    finally:
        await bare.shutdown()
    [search_attributes] = [line for line in found if line.what == "search attributes"]
    assert search_attributes.outcome is Outcome.FAIL
    assert "namespace default lacks ServiceId (Keyword), CustomerId (Keyword)" in str(
        search_attributes
    )


async def test_the_command_names_a_wrong_database_url_and_a_weak_secret(stack: Stack) -> None:
    port = free_port()
    run = await bajas(
        stack,
        "check",
        "--role",
        "worker",
        "--role",
        "api",
        DATABASE_URL=f"postgresql://bajas@127.0.0.1:{port}/panel",
        SMTP_HOST=stack.settings.smtp_host,
        SMTP_PORT=str(stack.settings.smtp_port),
        CODE_HMAC_KEY=secrets.token_urlsafe(32),
        PANEL_API_TOKEN="abcdefghijklmnopqrstuvwxyz",
        PANEL_SESSION_SECRET=secrets.token_urlsafe(32),
    )
    assert run.code == 1, run
    assert "Traceback" not in run.out + run.err, run
    failed = [line for line in run.out.splitlines() if line.startswith("FAIL")]
    assert failed == [
        f"FAIL  PostgreSQL: cannot reach PostgreSQL at 127.0.0.1:{port} (DATABASE_URL)",
        "FAIL  PANEL_API_TOKEN: PANEL_API_TOKEN is too predictable to be a secret: use a"
        " random value, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
    ], run
    assert "ok    Temporal: reached at" in run.out, run
