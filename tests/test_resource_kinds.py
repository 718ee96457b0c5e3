"""The resource kinds bajas ships, through `ResourceActivities` in an ActivityEnvironment,
on real servers the tests start: MariaDB (tests/servers.py), the session's embedded
PostgreSQL, a restic repository and a BACKUP_ROOT in temporary folders.

What a provider cares about: what the inventory counts, that the deletion is proven,
that a second run changes nothing, that system databases, accounts and other services'
backups are never touched, and that a server that is down is named and retried.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import aiomysql
import asyncpg
import pymysql
import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.kinds import load_kinds
from activities.resources import ResourceActivities
from bajas.models import (
    ResourceCheckInput,
    ResourceContext,
    ResourceRef,
    ResourceStepInput,
    ResourceStepResult,
)
from tests.helpers import assert_eventually, free_port, new_id
from tests.helpers.panel import make_tree
from tests.servers import ADMIN, ADMIN_PASSWORD, MariaDB, Restic

pytestmark = pytest.mark.asyncio(loop_scope="session")


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


class Kinds:
    """The installed kinds on one worker's environment, and a service to run them for."""

    def __init__(self, env: dict[str, str]) -> None:
        self.activities = ResourceActivities(load_kinds(env))
        self.service_id = new_id()
        self.context = ResourceContext(service_id=self.service_id, domain="sitio.example.test")
        self.activity_env = ActivityEnvironment()

    def refs(self, kind: str, *names: str) -> list[ResourceRef]:
        return [ResourceRef(id=new_id(), kind=kind, name=n) for n in names]

    async def inventory(self, resources: list[ResourceRef]) -> list[tuple[int | None, int | None]]:
        found = await self.activity_env.run(
            self.activities.inventory_resources,
            ResourceCheckInput(
                service_id=self.service_id,
                customer_id=1,
                resources=resources,
                context=self.context,
            ),
        )
        return [(r.bytes, r.items) for r in found.resources]

    async def preflight(self, resources: list[ResourceRef]) -> None:
        await self.activity_env.run(
            self.activities.preflight_resources,
            ResourceCheckInput(
                service_id=self.service_id,
                customer_id=1,
                resources=resources,
                context=self.context,
            ),
        )

    async def delete(self, resources: list[ResourceRef]) -> ResourceStepResult:
        return await self.activity_env.run(
            self.activities.delete_resources,
            ResourceStepInput(
                service_id=self.service_id,
                customer_id=1,
                kind=resources[0].kind,
                resources=resources,
                context=self.context.model_copy(update={"resources": resources}),
            ),
        )


def refused(err: pytest.ExceptionInfo[ApplicationError], kind: str) -> str:
    """The refusal's message, after checking it is one the run waits on for its step."""
    assert err.value.type == "PathRefused" and err.value.non_retryable
    assert err.value.details == (kind,)
    return err.value.message


# ---- MariaDB ----


@pytest.fixture
def my(mariadb: MariaDB) -> Kinds:
    return Kinds({"MARIADB_URL": mariadb.url})


async def test_a_database_of_50_tables_and_100000_rows_is_counted_dropped_and_proven_gone(
    mariadb: MariaDB, my: Kinds
) -> None:
    db, other = unique("shop"), unique("neighbour")
    tables = "".join(
        f"create table {db}.t{n} (id int primary key, body varchar(40)) engine=innodb;"
        f" insert into {db}.t{n} select seq, repeat('x', 40) from mysql.seq_1_to_2000;"
        for n in range(50)
    )
    await mariadb.asql(f"create database {db}; create database {other}; {tables}")
    (resource,) = my.refs("mariadb_database", db)

    [(size, count)] = await my.inventory([resource])
    assert count == 50 and size is not None and size > 50 * 2000 * 40
    await my.preflight([resource])
    result = await my.delete([resource])

    assert result.verified and result.resources[0].verified
    assert (result.resources[0].bytes, result.resources[0].items) == (size, count)
    schemas = await mariadb.asql("select schema_name from information_schema.schemata")
    assert db not in schemas.split() and other in schemas.split()
    # a second run (after a crash, say) finds it gone and changes nothing
    again = await my.delete([resource])
    assert again.verified and again.resources[0].items is None
    assert other in (await mariadb.asql("show databases")).split()


async def test_a_user_connected_while_it_is_deleted_loses_its_session_and_its_login(
    mariadb: MariaDB, my: Kinds
) -> None:
    user, db = unique("u"), unique("d")
    await mariadb.asql(
        f"create database {db}; create user '{user}'@'%' identified by 'pw';"
        f" grant all on {db}.* to '{user}'@'%';"
    )
    # not on the database: only the user's step can end this session
    session = await aiomysql.connect(
        host=mariadb.host, port=mariadb.port, user=user, password="pw", autocommit=True
    )
    try:
        resources = my.refs("mariadb_database", db) + my.refs("mariadb_user", user)
        await my.delete(resources[:1])
        result = await my.delete(resources[1:])
        assert result.verified
        with pytest.raises(pymysql.err.OperationalError):
            async with session.cursor() as cursor:
                await cursor.execute("select 1")
        with pytest.raises(pymysql.err.OperationalError):
            await aiomysql.connect(host=mariadb.host, port=mariadb.port, user=user, password="pw")
    finally:
        session.close()
    assert await mariadb.asql(f"select count(*) from mysql.user where user = '{user}'") == "0\n"


async def test_a_user_on_two_hosts_is_dropped_on_both_and_a_named_host_only_there(
    mariadb: MariaDB, my: Kinds
) -> None:
    user, other = unique("u"), unique("u")
    await mariadb.asql(
        f"create user '{user}'@'localhost'; create user '{user}'@'10.0.%';"
        f" create user '{other}'@'localhost'; create user '{other}'@'10.0.%';"
    )
    [(_, hosts)] = await my.inventory(my.refs("mariadb_user", user))
    assert hosts == 2

    assert (await my.delete(my.refs("mariadb_user", user))).verified
    assert (await my.delete(my.refs("mariadb_user", f"{other}@10.0.%"))).verified

    left = await mariadb.asql(
        f"select user, host from mysql.user where user in ('{user}', '{other}')"
    )
    assert left.split("\n")[:-1] == [f"{other}\tlocalhost"]


@pytest.mark.parametrize(
    ("kind", "name", "why"),
    [
        ("mariadb_database", "mysql", "system database"),
        ("mariadb_database", "INFORMATION_SCHEMA", "system database"),
        ("mariadb_database", "shop; drop database x", "not a database name"),
        ("mariadb_user", "root", "system account"),
        ("mariadb_user", "root@localhost", "system account"),
        ("mariadb_user", "bajas@%", "bajas itself connects with"),
    ],
)
async def test_system_databases_accounts_and_odd_names_are_refused(
    mariadb: MariaDB, my: Kinds, kind: str, name: str, why: str
) -> None:
    resources = my.refs(kind, name)
    with pytest.raises(ApplicationError) as err:
        await my.preflight(resources)
    assert why in refused(err, kind) and name in err.value.message
    with pytest.raises(ApplicationError):
        await my.delete(resources)
    assert "mysql" in (await mariadb.asql("show databases")).split()
    assert await mariadb.asql("select count(*) from mysql.user where user = 'root'") != "0\n"


async def test_a_server_stopped_in_the_middle_of_the_drop_is_named_and_the_next_attempt_deletes(
    mariadb: MariaDB, my: Kinds
) -> None:
    db = unique("down")
    await mariadb.asql(
        f"create database {db}; create table {db}.t (id int); insert into {db}.t values (1);"
    )
    # A transaction of a session on no database holds the table: the DROP waits for it.
    holder = await aiomysql.connect(
        host=mariadb.host, port=mariadb.port, user=ADMIN, password=ADMIN_PASSWORD
    )
    resources = my.refs("mariadb_database", db)
    try:
        async with holder.cursor() as cursor:
            await cursor.execute("start transaction")
            await cursor.execute(f"select * from {db}.t")
        attempt = asyncio.create_task(my.delete(resources))
        await assert_eventually(
            lambda: (
                "metadata lock"
                in mariadb.sql(
                    "select group_concat(state) from information_schema.processlist"
                    " where info like 'drop database%'"
                )
            ),
            "the DROP waiting in the middle of the step",
        )
        await asyncio.to_thread(mariadb.stop)
        with pytest.raises(ApplicationError) as err:
            await attempt
        assert err.value.type == "ServerUnavailable" and not err.value.non_retryable
        assert err.value.message.startswith(f"MariaDB at 127.0.0.1:{mariadb.port} is not answering")
    finally:
        holder.close()
        if not mariadb.process.alive():
            await mariadb.start()
    assert (await my.delete(resources)).verified
    assert db not in (await mariadb.asql("show databases")).split()


async def test_a_mariadb_database_dumps_as_sql_streamed(mariadb: MariaDB, my: Kinds) -> None:
    db = unique("dump")
    await mariadb.asql(
        f"create database {db}; create table {db}.pedidos (id int); insert into {db}.pedidos"
        " values (7);"
    )
    out = io.BytesIO()
    kind = my.activities.kinds["mariadb_database"]
    written = await kind.dump(my.refs("mariadb_database", db)[0], my.context, out)
    text = out.getvalue().decode()
    assert written == len(out.getvalue()) and "CREATE TABLE `pedidos`" in text
    assert "INSERT INTO `pedidos` VALUES" in text and "(7)" in text


# ---- PostgreSQL ----


@pytest.fixture
def pgk(pg_url: str) -> Kinds:
    return Kinds({"POSTGRESQL_URL": pg_url})


@pytest_asyncio.fixture
async def admin(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """The embedded server's superuser, to make what the kinds then find."""
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


async def test_a_postgresql_database_in_use_and_its_role_are_dropped(
    pg_url: str, pgk: Kinds, admin: asyncpg.Connection
) -> None:
    db, role = unique("tienda"), unique("tienda")
    await admin.execute(f"create role {role} login password 'pw'")
    await admin.execute(f"create database {db} owner {role}")
    on_db = await asyncpg.connect(pg_url, database=db, user=role, password="pw")
    await on_db.execute("create table pedidos (id int); insert into pedidos values (1)")
    resources = pgk.refs("postgresql_database", db) + pgk.refs("postgresql_role", role)
    pgk.context = pgk.context.model_copy(update={"resources": resources})
    [(size, tables), (_, roles)] = await pgk.inventory(resources)
    assert tables == 1 and size and size > 0 and roles == 1
    await pgk.preflight(resources)  # the role owns only the service's own database

    assert (await pgk.delete(resources[:1])).verified
    assert on_db.is_closed() or await _closed(on_db)
    assert (await pgk.delete(resources[1:])).verified
    assert (await pgk.delete(resources[1:])).verified  # again: nothing left to do
    found = await admin.fetchval(
        "select count(*) from pg_database d, pg_roles r where d.datname = $1 or r.rolname = $2",
        db,
        role,
    )
    assert found == 0


async def _closed(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("select 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return True
    return False


async def test_a_role_that_owns_objects_elsewhere_is_refused_never_reassigned(
    pgk: Kinds, admin: asyncpg.Connection
) -> None:
    role, elsewhere = unique("dueno"), unique("ajena")
    try:
        await admin.execute(f"create role {role}")
        await admin.execute(f"create database {elsewhere} owner {role}")
        resources = pgk.refs("postgresql_role", role)
        with pytest.raises(ApplicationError) as err:
            await pgk.preflight(resources)
        assert "owns objects in (every database)" in refused(err, "postgresql_role") or (
            elsewhere in err.value.message
        )
        with pytest.raises(ApplicationError):
            await pgk.delete(resources)
        owner = await admin.fetchval(
            "select r.rolname from pg_database d join pg_roles r on r.oid = d.datdba"
            " where d.datname = $1",
            elsewhere,
        )
        assert owner == role
    finally:
        await admin.execute(f"drop database if exists {elsewhere}")
        await admin.execute(f"drop role if exists {role}")


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("postgresql_database", "postgres"),
        ("postgresql_database", "template1"),
        ("postgresql_role", "postgres"),
        ("postgresql_role", "pg_monitor"),
    ],
)
async def test_postgres_system_databases_and_roles_are_refused(
    pgk: Kinds, kind: str, name: str
) -> None:
    with pytest.raises(ApplicationError) as err:
        await pgk.preflight(pgk.refs(kind, name))
    assert "never deleted" in refused(err, kind)


async def test_a_postgresql_database_dumps_as_sql(
    pg_url: str, pgk: Kinds, admin: asyncpg.Connection
) -> None:
    db = unique("volcado")
    try:
        await admin.execute(f"create database {db}")
        conn = await asyncpg.connect(pg_url, database=db)
        await conn.execute(
            "create table clientes (nombre text); insert into clientes values ('ana')"
        )
        await conn.close()
        out = io.BytesIO()
        kind = pgk.activities.kinds["postgresql_database"]
        await kind.dump(pgk.refs("postgresql_database", db)[0], pgk.context, out)
        text = out.getvalue().decode()
        assert "CREATE TABLE public.clientes" in text and "ana" in text
    finally:
        await admin.execute(f"drop database if exists {db} with (force)")


# ---- restic ----


def contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def test_one_services_snapshots_are_forgotten_and_pruned_the_others_restore_intact(
    restic_repo: Restic, tmp_path: Path
) -> None:
    ours, theirs = unique("svc"), unique("svc")
    for tag, files in ((ours, 30), (theirs, 40)):
        make_tree(tmp_path / tag, files, per_dir=10)
        (tmp_path / tag / "datos.bin").write_bytes(os.urandom(200_000))
        await asyncio.to_thread(restic_repo.backup, tmp_path / tag, tag)
    await asyncio.to_thread(restic_repo.backup, tmp_path / ours, ours)
    kinds = Kinds(dict(restic_repo.env))
    resources = kinds.refs("restic_snapshots", ours)

    [(size, snapshots)] = await kinds.inventory(resources)
    assert snapshots == 2 and size is not None and size > 200_000
    result = await kinds.delete(resources)
    assert result.verified and result.resources[0].items == 2
    assert (await kinds.delete(resources)).verified  # again: nothing to forget or prune

    listed = await asyncio.to_thread(restic_repo.run, "snapshots", "--tag", ours, "--json")
    assert listed.strip() in ("[]", "null")
    restored = tmp_path / "restored"
    await asyncio.to_thread(
        restic_repo.run, "restore", "latest", "--tag", theirs, "--target", str(restored)
    )
    assert contents(restored) == contents(tmp_path / theirs)
    await asyncio.to_thread(restic_repo.run, "check")


async def test_prunes_of_several_cancellations_are_batched_within_restic_prune_within(
    restic_repo: Restic, tmp_path: Path
) -> None:
    tags = [unique("lote") for _ in range(3)]
    for tag in tags:
        make_tree(tmp_path / tag, 5)
        await asyncio.to_thread(restic_repo.backup, tmp_path / tag, tag)
    kinds = Kinds({**restic_repo.env, "RESTIC_PRUNE_WITHIN": "PT1H"})
    kind = kinds.activities.kinds["restic_snapshots"]
    kind.wait_step = 0.1  # type: ignore[attr-defined]
    state_file = restic_repo.password_file.with_name("password.prune.json")
    prunes = json.loads(state_file.read_text()).get("prunes", 0) if state_file.exists() else 0

    steps = [asyncio.create_task(kinds.delete(kinds.refs("restic_snapshots", t))) for t in tags]
    forgotten = await assert_eventually(
        lambda: (
            state_file.exists()
            and set(tags) <= set(json.loads(state_file.read_text())["forgotten"])
        ),
        "the three tags forgotten",
    )
    assert forgotten
    for tag in tags:  # forgotten, but the prune waits for the batch: not gone yet
        left = await kind.verify(kinds.refs("restic_snapshots", tag)[0], kinds.context)
        assert left is not None and "no prune has run" in left
    assert not any(step.done() for step in steps)
    # the hour passes: the first step to see it prunes once for all three
    state = json.loads(state_file.read_text())
    since = datetime.fromisoformat(state["pending_since"]) - timedelta(hours=1)
    state_file.write_text(json.dumps({**state, "pending_since": since.isoformat()}))

    results = await asyncio.gather(*steps)

    assert all(r.verified for r in results)
    assert json.loads(state_file.read_text())["prunes"] == prunes + 1
    for tag in tags:
        assert await kind.verify(kinds.refs("restic_snapshots", tag)[0], kinds.context) is None


async def test_restic_without_its_settings_is_refused_naming_the_setting() -> None:
    kinds = Kinds({})
    with pytest.raises(ApplicationError) as err:
        await kinds.preflight(kinds.refs("restic_snapshots", "svc-1"))
    assert "RESTIC_REPOSITORY is not set" in refused(err, "restic_snapshots")


# ---- backup_directory ----


async def test_a_backup_directory_is_deleted_through_the_engine_only_under_backup_root(
    tmp_path: Path,
) -> None:
    root = tmp_path / "backups"
    ours, theirs = root / "sitio" / "diarias", root / "otro"
    make_tree(ours, 25)
    make_tree(theirs, 5)
    outside = tmp_path / "fuera"
    make_tree(outside, 3)
    (root / "escape").symlink_to(outside)
    kinds = Kinds({"BACKUP_ROOT": str(root)})
    resources = kinds.refs("backup_directory", str(ours))

    [(size, files)] = await kinds.inventory(resources)
    assert files == 25 and size is not None and size > 25 * 11
    result = await kinds.delete(resources)
    assert result.verified and result.resources[0].items == 25
    assert not ours.exists() and theirs.exists()
    assert (await kinds.delete(resources)).verified

    for name in (str(root), str(outside), f"{root}/../fuera", str(root / "escape"), "backups"):
        with pytest.raises(ApplicationError) as err:
            await kinds.delete(kinds.refs("backup_directory", name))
        refused(err, "backup_directory")
    assert len(list(outside.rglob("*.html"))) == 3


async def test_a_postgresql_server_that_does_not_answer_is_named_and_retried() -> None:
    port = free_port()
    kinds = Kinds({"POSTGRESQL_URL": f"postgresql://bajas:pw@127.0.0.1:{port}/postgres"})
    with pytest.raises(ApplicationError) as err:
        await kinds.delete(kinds.refs("postgresql_database", "tienda"))
    assert err.value.type == "ServerUnavailable" and not err.value.non_retryable
    assert err.value.message.startswith(f"PostgreSQL at 127.0.0.1:{port} is not answering")
