"""Connections to the panel database and the migrations that prepare it."""

from __future__ import annotations

from importlib import resources

import asyncpg

MIGRATION_LOCK = 0x6A6A_5F62  # advisory lock: two `bajas migrate` at once take turns


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset on release (a round trip per use): bajas leaves no session
    state behind, and its transactions roll back by themselves on error."""


async def create_pool(dsn: str, *, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=max_size, command_timeout=30, reset=_keep_session
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
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
