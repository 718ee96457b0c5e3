"""Session fixtures: the real stack is started once, on demand, and stopped at the end.

`--workflow-environment` chooses the Temporal server (tests/helpers/temporal.py):

    pytest                                          # workflow logic on the time-skipping
                                                    # server, the real stack on a local one
    pytest --workflow-environment=local             # both on one local dev server
    pytest --workflow-environment=127.0.0.1:7233    # both on an existing server

Tests marked `time_skipping` need the test server's clock and are skipped on any
other. An existing server must know the search attributes ServiceId, CustomerId and
CancellationState (Keyword) and SlaAtRisk (Bool): they are added if the server allows
it, else `temporal operator search-attribute create --name ServiceId --type Keyword`
and so on, once. PostgreSQL, the SMTP sink and the roots are always the session's own.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from bajas.config import Settings
from bajas.dev.mailsink import MailSink
from starter.client import CancellationClient
from tests.helpers.mail import MailServer, serving_mail
from tests.helpers.panel import Panel
from tests.helpers.processes import Postgres, migrated_pool
from tests.helpers.temporal import Environments
from tests.servers import mariadb, restic_repo  # noqa: F401  (session fixtures)
from worker import build_worker


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--workflow-environment",
        default=None,
        help="time-skipping, local, or host:port of an existing server (default: the"
        " time-skipping server for the workflow-logic tests, a local dev server for the"
        " real stack; see tests/conftest.py)",
    )


@pytest_asyncio.fixture(scope="session")
async def environments(request: pytest.FixtureRequest) -> AsyncIterator[Environments]:
    envs = Environments(request.config.getoption("--workflow-environment"))
    yield envs
    await envs.shutdown()


@pytest_asyncio.fixture
async def env(request: pytest.FixtureRequest, environments: Environments) -> WorkflowEnvironment:
    """The workflow-logic tests' server; a fresh task queue and workflow id per test are theirs."""
    env = await environments.logic()
    if request.node.get_closest_marker("time_skipping") and not env.supports_time_skipping:
        pytest.skip("needs the time-skipping test server's clock")
    return env


@pytest_asyncio.fixture(scope="session")
async def temporal_env(environments: Environments) -> WorkflowEnvironment:
    """The real stack's server: a local dev server, or the one given."""
    return await environments.real()


@pytest.fixture(scope="session")
def pg() -> Iterator[Postgres]:
    # Outside pytest-of-<user> and --basetemp: see Postgres.
    base = Path(tempfile.mkdtemp(prefix="bajas-pg-"))
    server = Postgres(base / "data")
    yield server
    server.cleanup()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url(pg: Postgres) -> str:
    return pg.url


@pytest_asyncio.fixture(scope="session")
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await migrated_pool(pg_url, max_size=20)
    yield p
    await p.close()


@pytest.fixture(scope="session")
def mail_server() -> Iterator[MailServer[MailSink]]:
    with serving_mail(MailSink()) as server:
        yield server


@pytest.fixture(scope="session")
def mail(mail_server: MailServer[MailSink]) -> MailSink:
    return mail_server.sink


@pytest.fixture(scope="session")
def roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("roots")
    (base / "www").mkdir()
    (base / "mail").mkdir()
    return base / "www", base / "mail"


@pytest.fixture(scope="session")
def archive_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ARCHIVE_ROOT of the session's workers and API (one machine: one volume)."""
    return tmp_path_factory.mktemp("archives")


@pytest.fixture
def panel(pool: asyncpg.Pool, roots: tuple[Path, Path]) -> Panel:
    return Panel(pool, *roots)


@pytest.fixture(scope="session")
def settings(
    pg_url: str, mail_server: MailServer[MailSink], roots: tuple[Path, Path], archive_root: Path
) -> Settings:
    return Settings(
        temporal_task_queue=f"bajas-test-{uuid.uuid4()}",
        database_url=pg_url,
        smtp_host=mail_server.host,
        smtp_port=mail_server.port,
        hosting_root=roots[0],
        mail_root=roots[1],
        archive_root=archive_root,
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
    """The real worker on the real server, PostgreSQL and SMTP sink."""
    async with running_stack(temporal_env.client, settings, pool, mail) as running:
        yield running


@asynccontextmanager
async def running_stack(
    client: Client, settings: Settings, pool: asyncpg.Pool, mail: MailSink
) -> AsyncIterator[Stack]:
    """A real worker configured by `settings`, polling for the block."""
    worker = build_worker(client, settings, pool)
    task = asyncio.create_task(worker.run())
    yield Stack(
        client=client,
        cancellations=CancellationClient(client, settings.temporal_task_queue),
        pool=pool,
        mail=mail,
        settings=settings,
        panel=Panel(pool, settings.hosting_root, settings.mail_root),
    )
    await worker.shutdown()
    await task
