"""The last copy's databases: each database the panel lists for the service is in the
archive as `databases/NAME.sql`, dumped by its kind on the real servers (the session's
PostgreSQL, the tests' MariaDB), and a dump longer than a piece goes in as pieces that
join back into the whole."""

from __future__ import annotations

import secrets
import tarfile
import threading
import uuid
from pathlib import Path
from typing import BinaryIO

import asyncpg
import pytest
from temporalio.testing import ActivityEnvironment

from activities.archive import ArchiveActivities
from activities.archive_databases import DatabaseDump, dump_databases
from activities.kinds import load_kinds
from bajas.models import ArchiveInput, ResourceContext, ResourceRef
from tests.helpers import new_id
from tests.helpers.panel import Panel
from tests.servers import MariaDB
from tests.test_archive import extract

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_the_copy_holds_each_database_as_an_sql_dump(
    pool: asyncpg.Pool, pg_url: str, mariadb: MariaDB, tmp_path: Path
) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "mail").mkdir()
    panel = Panel(pool, tmp_path / "www", tmp_path / "mail")
    svc = await panel.service(files=2, mailboxes=0)
    pg_db, my_db = f"tienda_{uuid.uuid4().hex[:8]}", f"blog_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(f"create database {pg_db}")
        conn = await asyncpg.connect(pg_url, database=pg_db)
        await conn.execute("create table pedidos (id int); insert into pedidos values (4242)")
        await conn.close()
        await mariadb.asql(
            f"create database {my_db}; create table {my_db}.entradas (titulo text);"
            f" insert into {my_db}.entradas values ('hola mundo');"
        )
        await pool.executemany(
            "insert into service_resources (id, service_id, kind, name) values ($1, $2, $3, $4)",
            [
                (new_id(), svc.service_id, "postgresql_database", pg_db),
                (new_id(), svc.service_id, "mariadb_database", my_db),
                (new_id(), svc.service_id, "mariadb_user", "nadie"),
            ],
        )
        kinds = load_kinds({"POSTGRESQL_URL": pg_url, "MARIADB_URL": mariadb.url})
        archives = tmp_path / "archives"
        activities = ArchiveActivities(
            pool, panel.hosting_root, panel.mail_root, archives, kinds=kinds
        )
        token = secrets.token_urlsafe(32)
        await ActivityEnvironment().run(
            activities.build_archive,
            ArchiveInput(service_id=svc.service_id, customer_id=svc.customer_id, token=token),
        )

        manifest = extract(archives / f"{token}.tar.zst", tmp_path / "out")
        top = tmp_path / "out" / svc.domain
        pg_sql = (top / "databases" / f"{pg_db}.sql").read_text()
        my_sql = (top / "databases" / f"{my_db}.sql").read_text()
        assert "CREATE TABLE public.pedidos" in pg_sql and "4242" in pg_sql
        assert "CREATE TABLE `entradas`" in my_sql and "hola mundo" in my_sql
        assert sorted(p["folder"] for p in manifest["parts"] if "bytes" in p) == sorted(
            [f"databases/{pg_db}.sql", f"databases/{my_db}.sql"]
        )
        assert len(list((top / "databases").iterdir())) == 2
    finally:
        await admin.execute(f"drop database if exists {pg_db} with (force)")
        await admin.close()


def test_a_dump_longer_than_a_piece_goes_in_pieces_that_join_into_it(
    pg_url: str, tmp_path: Path
) -> None:
    kind = load_kinds({"POSTGRESQL_URL": pg_url})["postgresql_database"]
    # Dumping changes nothing: template1 (never deleted) is a database every server has.
    dump = DatabaseDump(
        kind,
        ResourceRef(id=1, kind="postgresql_database", name="template1"),
        ResourceContext(service_id=1, domain="x.test"),
    )
    entries: list[tuple[str, bytes]] = []

    def add(info: tarfile.TarInfo, data: BinaryIO) -> None:
        body = data.read()
        assert len(body) == info.size
        entries.append((info.name, body))

    manifest = dump_databases([dump], add, "sitio", tmp_path, threading.Event(), piece=1000)

    names = [name for name, _ in entries]
    assert len(names) > 1 and names == [
        f"sitio/databases/template1.sql.{n:03d}" for n in range(1, len(names) + 1)
    ]
    assert all(len(body) == 1000 for _, body in entries[:-1])
    whole = b"".join(body for _, body in entries)
    assert b"PostgreSQL database dump complete" in whole
    assert manifest == [
        {
            "folder": "databases/template1.sql",
            "bytes": len(whole),
            "pieces": [n.rsplit("/", 1)[1] for n in names],
            "join": "cat template1.sql.* > template1.sql",
        }
    ]
