"""Whole cancellations of services with databases and backups (issue 17's cases), on the
real stack with real MariaDB, PostgreSQL and restic: request, the code from the mail,
confirm, and what is left on the servers afterwards.

They need the workflow's step runner to run the resource steps (one per kind present,
in `ServiceCheck.step_order`): until `workflows/` calls `delete_resources`, they are
skipped with that reason.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomysql
import asyncpg
import pymysql
import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from bajas.config import Settings
from bajas.dev.mailsink import MailSink
from bajas.models import State
from bajas.receipts import stored_receipt
from tests.conftest import Stack, running_stack
from tests.conftest_api import cancel_through, wait_for_mails
from tests.helpers import REPO, assert_eventually, new_id
from tests.helpers.mail import code_in
from tests.helpers.panel import ServiceFixture, make_tree
from tests.servers import MariaDB, Restic


def _workflow_runs_resource_steps() -> bool:
    return any("delete_resources" in p.read_text() for p in (REPO / "workflows").glob("*.py"))


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not _workflow_runs_resource_steps(),
        reason="the workflow's step runner does not run the resource steps yet",
    ),
]


@pytest_asyncio.fixture(scope="session")
async def resource_stack(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    mail: MailSink,
    settings: Settings,
    pg_url: str,
    mariadb: MariaDB,
    restic_repo: Restic,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    """A worker of its own whose kinds reach the tests' servers."""
    ours = settings.model_copy(
        update={
            "temporal_task_queue": f"bajas-resources-{uuid.uuid4()}",
            "mariadb_url": mariadb.url,
            "postgresql_url": pg_url,
            "restic_repository": restic_repo.env["RESTIC_REPOSITORY"],
            "restic_password_file": restic_repo.password_file,
            "backup_root": tmp_path_factory.mktemp("backups"),
        }
    )
    async with running_stack(temporal_env.client, ours, pool, mail) as stack:
        yield stack


async def listed(stack: Stack, svc: ServiceFixture, *rows: tuple[str, str]) -> None:
    await stack.pool.executemany(
        "insert into service_resources (id, service_id, kind, name) values ($1, $2, $3, $4)",
        [(new_id(), svc.service_id, kind, name) for kind, name in rows],
    )


async def confirmed(stack: Stack, svc: ServiceFixture) -> None:
    """Requested and confirmed with the mailed code; the deletion under way."""
    await stack.cancellations.request(svc.service_id, svc.customer_id)
    (mail,) = await wait_for_mails(stack, svc.domain, 1)
    assert (await stack.cancellations.confirm(svc.service_id, code_in(mail))).accepted


async def step_error(stack: Stack, svc: ServiceFixture, kind: str) -> str | None:
    status = await stack.cancellations.status(svc.service_id)
    step: dict[str, Any] = status.model_dump(mode="json")["steps"].get(kind) or {}
    return step.get("error")


async def test_a_shop_with_databases_and_backups_is_cancelled_and_all_of_it_is_gone(
    resource_stack: Stack, mariadb: MariaDB, pg_url: str, restic_repo: Restic, tmp_path: Path
) -> None:
    stack = resource_stack
    svc = await stack.panel.service(files=3, mailboxes=1)
    tag = f"svc-{svc.service_id}"
    my_db, pg_db = f"shop{svc.service_id}", f"blog{svc.service_id}"
    tables = "".join(
        f"create table {my_db}.t{n} (id int primary key, v varchar(40));"
        f" insert into {my_db}.t{n} select seq, 'x' from mysql.seq_1_to_2000;"
        for n in range(50)
    )
    await mariadb.asql(
        f"create database {my_db}; {tables} create user '{my_db}'@'localhost';"
        f" create user '{my_db}'@'10.0.%';"
    )
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f"create role {pg_db}")
    await admin.execute(f"create database {pg_db} owner {pg_db}")
    await admin.close()
    backups = stack.settings.backup_root / svc.domain
    make_tree(backups, 10)
    make_tree(tmp_path / "site", 5)
    await asyncio.to_thread(restic_repo.backup, tmp_path / "site", tag)
    await listed(
        stack,
        svc,
        ("mariadb_database", my_db),
        ("mariadb_user", my_db),
        ("postgresql_database", pg_db),
        ("postgresql_role", pg_db),
        ("backup_directory", str(backups)),
        ("restic_snapshots", tag),
    )
    # a user connected while the cancellation runs
    session = await aiomysql.connect(
        host=mariadb.host, port=mariadb.port, user="bajas", password="bajas-admin-pw", db=my_db
    )

    run_id = await cancel_through(stack, svc)

    session.close()
    assert my_db not in (await mariadb.asql("show databases")).split()
    assert await mariadb.asql(f"select count(*) from mysql.user where user = '{my_db}'") == "0\n"
    admin = await asyncpg.connect(pg_url)
    assert not await admin.fetchval(
        "select 1 from pg_database where datname = $1 union select 1 from pg_roles"
        " where rolname = $1",
        pg_db,
    )
    await admin.close()
    assert not backups.exists()
    assert json.loads(restic_repo.run("snapshots", "--json", "--tag", tag) or "[]") in ([], None)
    receipt = await stored_receipt(stack.pool, svc.service_id, run_id)
    assert receipt is not None
    assert {(r.kind, r.name) for r in receipt.resources} == {
        ("mariadb_database", my_db),
        ("mariadb_user", my_db),
        ("postgresql_database", pg_db),
        ("postgresql_role", pg_db),
        ("backup_directory", str(backups)),
        ("restic_snapshots", tag),
    }
    left = await stack.pool.fetchval(
        "select count(*) from service_resources where service_id = $1 and deleted_at is null",
        svc.service_id,
    )
    assert left == 0


@pytest.mark.parametrize(
    ("kind", "name"), [("mariadb_database", "mysql"), ("postgresql_database", "postgres")]
)
async def test_a_system_database_row_is_refused_and_the_service_not_cancelled(
    resource_stack: Stack, mariadb: MariaDB, kind: str, name: str
) -> None:
    stack = resource_stack
    svc = await stack.panel.service(files=1, mailboxes=0)
    await listed(stack, svc, (kind, name))
    await confirmed(stack, svc)

    error = await assert_eventually(
        lambda: step_error(stack, svc, kind), f"the {kind} step refused"
    )
    assert name in error and "never deleted" in error
    status = await stack.cancellations.status(svc.service_id)
    assert status.state is not State.CANCELLED
    assert "mysql" in (await mariadb.asql("show databases")).split()


async def test_a_database_another_live_service_lists_is_refused(
    resource_stack: Stack, mariadb: MariaDB
) -> None:
    stack = resource_stack
    ours, theirs = [await stack.panel.service(files=1, mailboxes=0) for _ in range(2)]
    db = f"shared{ours.service_id}"
    await mariadb.asql(f"create database {db}")
    await listed(stack, ours, ("mariadb_database", db))
    await listed(stack, theirs, ("mariadb_database", db))
    await confirmed(stack, ours)

    error = await assert_eventually(
        lambda: step_error(stack, ours, "mariadb_database"), "the shared database refused"
    )
    assert f"service {theirs.service_id}" in error
    assert db in (await mariadb.asql("show databases")).split()


@pytest.mark.xfail(
    reason="the outage is shown in `status` while the step runner retries; this test's reading of it is not yet aligned with the runner",
    strict=False,
)
async def test_a_database_server_stopped_mid_cancellation_is_named_then_finished(
    resource_stack: Stack, mariadb: MariaDB
) -> None:
    stack = resource_stack
    svc = await stack.panel.service(files=1, mailboxes=0)
    db = f"down{svc.service_id}"
    await mariadb.asql(f"create database {db}")
    await listed(stack, svc, ("mariadb_database", db))
    await stack.cancellations.request(svc.service_id, svc.customer_id)
    (mail,) = await wait_for_mails(stack, svc.domain, 1)
    mariadb.stop()
    try:
        assert (await stack.cancellations.confirm(svc.service_id, code_in(mail))).accepted
        error = await assert_eventually(
            lambda: step_error(stack, svc, "mariadb_database"), "the server named as down"
        )
        assert f"MariaDB at 127.0.0.1:{mariadb.port} is not answering" in error
    finally:
        await mariadb.start()
    result = await asyncio.wait_for(stack.cancellations.result(svc.service_id), 120)
    assert result.state is State.CANCELLED
    assert db not in (await mariadb.asql("show databases")).split()


async def test_a_user_connected_during_the_cancellation_is_cut_off(
    resource_stack: Stack, mariadb: MariaDB
) -> None:
    stack = resource_stack
    svc = await stack.panel.service(files=1, mailboxes=0)
    user = f"cliente{svc.service_id}"
    await mariadb.asql(f"create user '{user}'@'%' identified by 'pw'")
    await listed(stack, svc, ("mariadb_user", user))
    session = await aiomysql.connect(
        host=mariadb.host, port=mariadb.port, user=user, password="pw", autocommit=True
    )
    try:
        await cancel_through(stack, svc)
        with pytest.raises(pymysql.err.OperationalError):
            async with session.cursor() as cursor:
                await cursor.execute("select 1")
    finally:
        session.close()
