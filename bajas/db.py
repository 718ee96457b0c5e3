"""Connections to the panel database and the migrations that prepare it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg

from bajas.config import ConfigError, Unreachable

MIGRATION_LOCK = 0x6A6A_5F62  # advisory lock: two `bajas migrate` at once take turns
CONNECT_TIMEOUT = 10.0
T = TypeVar("T")


def database_address(dsn: str) -> str:
    """host:port of a PostgreSQL URL, for messages (never its user or password)."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "an unreadable address"
    hostport = parts.netloc.rpartition("@")[2]
    if not hostport:
        socket_dir = parse_qs(parts.query).get("host", ["the local socket"])[0]
        return socket_dir
    if not hostport.endswith("]") and ":" not in hostport.split(",")[-1]:
        hostport += ":5432"
    return hostport


async def _reaching(dsn: str, opening: Callable[[], Awaitable[T]]) -> T:
    """Open a connection or pool; failures end as one line naming DATABASE_URL."""
    try:
        return await opening()
    except (OSError, asyncpg.CannotConnectNowError) as err:  # refused, unknown host, timeout
        reason = None if isinstance(err, ConnectionRefusedError) else _reason(err)
        raise Unreachable("PostgreSQL", database_address(dsn), "DATABASE_URL", reason) from None
    except asyncpg.PostgresError as err:  # reached, but refused: login, database name
        raise ConfigError(
            f"PostgreSQL at {database_address(dsn)} (DATABASE_URL): {_reason(err)}"
        ) from None
    except (asyncpg.InterfaceError, ValueError) as err:  # a DSN asyncpg cannot read
        raise ConfigError(f"DATABASE_URL: {_reason(err)}") from None


def _reason(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection (migrations, one-shot commands)."""
    return await _reaching(dsn, lambda: asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT))


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset on release (a round trip per use): bajas leaves no session
    state behind, and its transactions roll back by themselves on error."""


async def create_pool(dsn: str, *, max_size: int = 10) -> asyncpg.Pool:
    """The process's pool; its first connection is opened here, so an unreachable server
    is reported at start (Unreachable) and not at the first query."""
    pool = await _reaching(
        dsn,
        lambda: asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=max_size,
            command_timeout=30,
            reset=_keep_session,
            timeout=CONNECT_TIMEOUT,
        ),
    )
    assert pool is not None
    return pool


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("bajas") / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name, p.read_text(encoding="utf-8")) for p in files]


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations not yet applied; returns their names. Never drops data."""
    applied_now: list[str] = []
    await conn.execute("select pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            """
            create schema if not exists bajas;
            create table if not exists bajas.schema_migrations (
                name text primary key, applied_at timestamptz not null default now());
            """
        )
        done = {r["name"] for r in await conn.fetch("select name from bajas.schema_migrations")}
        for name, sql in migration_files():
            if name in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("insert into bajas.schema_migrations (name) values ($1)", name)
            applied_now.append(name)
    finally:
        await conn.execute("select pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied_now


async def migrate_url(dsn: str) -> list[str]:
    conn = await connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
