"""The demo's resources for `bajas dev` (contract section 9): the shop tiendadeana.com
(service 102) gets a PostgreSQL database and its role on the embedded server, a folder
of backups under BACKUP_ROOT and, when Debian's `mariadbd` is installed (`apt-get install
mariadb-server`), a MariaDB database and its user on a MariaDB that `bajas dev` starts
with its data under ./.bajas/mariadb.

Made once, like the rest of the demo: what exists is left alone, and nothing is made for
a service that is already cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
from pydantic import SecretStr

from bajas.config import Settings

SHOP = 102
SHOP_DOMAIN = "tiendadeana.com"
DB = "tiendadeana"
# service_resources ids of the demo: SHOP * 100 + n
RESOURCE_IDS = {
    "postgresql_database": SHOP * 100 + 1,
    "postgresql_role": SHOP * 100 + 2,
    "backup_directory": SHOP * 100 + 3,
    "mariadb_database": SHOP * 100 + 4,
    "mariadb_user": SHOP * 100 + 5,
}
_SOCKET_MAX = 100  # a unix socket's path must fit in 108 bytes


def mariadbd() -> str | None:
    return shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin")


@contextlib.asynccontextmanager
async def demo_resources(
    state: Path, settings: Settings, pool: asyncpg.Pool, embedded_pg: bool
) -> AsyncIterator[Settings]:
    """The demo's resources made (once), MariaDB running when it is installed; yields the
    settings the worker's kinds then use."""
    update: dict[str, object] = {"backup_root": settings.backup_root.resolve()}
    if embedded_pg and settings.postgresql_url is None:
        update["postgresql_url"] = SecretStr(settings.require_database_url())
    async with contextlib.AsyncExitStack() as stack:
        if mariadbd() is not None and settings.mariadb_url is None:
            update["mariadb_url"] = SecretStr(await stack.enter_async_context(mariadb(state)))
        settings = settings.model_copy(update=update)
        await load_resources(settings, pool)
        yield settings


async def load_resources(settings: Settings, pool: asyncpg.Pool) -> None:
    live = await pool.fetchval("select status <> 'cancelled' from services where id = $1", SHOP)
    if not live:
        return
    rows = []
    if settings.postgresql_url is not None:
        await _postgresql(settings.postgresql_url.get_secret_value())
        rows += [("postgresql_database", DB), ("postgresql_role", DB)]
    backups = settings.backup_root / SHOP_DOMAIN
    await asyncio.to_thread(_backups, backups)
    rows.append(("backup_directory", str(backups)))
    if settings.mariadb_url is not None:
        await _mariadb(settings.mariadb_url.get_secret_value())
        rows += [("mariadb_database", f"{DB}_wp"), ("mariadb_user", f"{DB}_wp")]
    await pool.executemany(
        "insert into service_resources (id, service_id, kind, name) values ($1, $2, $3, $4)"
        " on conflict do nothing",
        [(RESOURCE_IDS[kind], SHOP, kind, name) for kind, name in rows],
    )


async def _postgresql(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        if not await conn.fetchval("select 1 from pg_roles where rolname = $1", DB):
            await conn.execute(f"create role {DB} login password 'tienda-demo'")
        if not await conn.fetchval("select 1 from pg_database where datname = $1", DB):
            await conn.execute(f"create database {DB} owner {DB}")
            shop = await asyncpg.connect(url, database=DB)
            try:
                await shop.execute(
                    f"set role {DB}; create table pedidos (id serial primary key,"
                    " cliente text, total numeric); insert into pedidos (cliente, total)"
                    " select 'cliente ' || n, n * 10 from generate_series(1, 500) n"
                )
            finally:
                await shop.close()
    finally:
        await conn.close()


async def _mariadb(url: str) -> None:
    socket = parse_qs(urlsplit(url).query)["unix_socket"][0]
    statements = (
        f"create database if not exists {DB}_wp;"
        f" create user if not exists '{DB}_wp'@'localhost' identified by 'tienda-demo';"
        f" grant all on {DB}_wp.* to '{DB}_wp'@'localhost';"
        f" create table if not exists {DB}_wp.wp_posts (id int primary key, post_title text);"
        f" insert ignore into {DB}_wp.wp_posts select seq, concat('Entrada ', seq)"
        " from mysql.seq_1_to_200;"
    )
    await asyncio.to_thread(
        subprocess.run,
        ["mariadb", "--no-defaults", f"--socket={socket}", "-uroot"],
        input=statements,
        text=True,
        check=True,
        capture_output=True,
    )


def _backups(folder: Path) -> None:
    """Three nightly copies of the shop, made once."""
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        copy = folder / day
        if not copy.exists():
            copy.mkdir(parents=True)
            (copy / "sitio.tar").write_bytes(bytes(range(256)) * 64)
            (copy / "base.sql").write_text("-- copia de la base de la tienda\n")


@contextlib.asynccontextmanager
async def mariadb(state: Path) -> AsyncIterator[str]:
    """Debian's mariadbd with its data in `state`/mariadb, on a unix socket only (no TCP
    port to collide with); yields its MARIADB_URL (root over the socket)."""
    datadir = state / "mariadb"
    socket = state / "mariadb.sock"
    if len(str(socket)) > _SOCKET_MAX:
        socket = Path(tempfile.gettempdir()) / f"bajas-dev-mariadb-{abs(hash(state))}.sock"
    root = ["--user=root"] if _is_root() else []
    if not (datadir / "mysql").exists():
        await asyncio.to_thread(
            subprocess.run,
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *root,
            ],
            check=True,
            capture_output=True,
        )
    with open(state / "mariadb.log", "ab") as log:
        server = await asyncio.create_subprocess_exec(
            mariadbd() or "mariadbd",
            "--no-defaults",
            *root,
            f"--datadir={datadir}",
            f"--socket={socket}",
            "--skip-networking",
            f"--pid-file={state / 'mariadb.pid'}",
            "--skip-log-bin",
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        for _ in range(300):
            if socket.exists() or server.returncode is not None:
                break
            await asyncio.sleep(0.1)
        if not socket.exists():
            raise RuntimeError(f"mariadbd did not start: see {state / 'mariadb.log'}")
        yield f"mysql://root@localhost/?unix_socket={socket}"
    finally:
        if server.returncode is None:
            server.terminate()
            try:
                await asyncio.wait_for(server.wait(), 30)
            except TimeoutError:
                server.kill()
                await server.wait()


def _is_root() -> bool:
    return os.geteuid() == 0
