"""`mariadb_database` and `mariadb_user` (contract section 9), through aiomysql on the
account MARIADB_URL names.

aiomysql rather than asyncmy: it is pure Python on PyMySQL, so it installs on any
Python and architecture a node worker runs without a compiler, and PyMySQL speaks
Debian MariaDB's authentication plugins (`mysql_native_password`, `unix_socket`,
`ed25519`). Speed does not matter here: a handful of statements per resource.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, BinaryIO, ClassVar

import aiomysql
import pymysql

from activities.kinds.base import (
    Measure,
    Removal,
    ServerUnavailable,
)
from activities.kinds.common import ServerKind, stream_command
from bajas.models import ResourceContext, ResourceRef

URL = "MARIADB_URL"
SCHEMES = ("mysql", "mariadb")
DEFAULT_PORT = 3306
SYSTEM_DATABASES = frozenset({"mysql", "information_schema", "performance_schema", "sys"})
SYSTEM_USERS = frozenset({"root", "mysql", "mariadb.sys", "public"})
_DATABASE = re.compile(r"[A-Za-z0-9_$][A-Za-z0-9_$-]{0,63}")
_USER = re.compile(r"[A-Za-z0-9_.$-]{1,80}")
_HOST = re.compile(r"[A-Za-z0-9_.%:-]{1,255}")
# Client errors that mean the server is not there: can't connect, gone away, lost.
_DOWN = {2002, 2003, 2006, 2013, 2055}


class MariaDBKind(ServerKind):
    """What both MariaDB kinds share: the connection and the server's name in errors."""

    settings: ClassVar[tuple[str, ...]] = (URL,)
    url_setting, schemes, default_port, product = URL, SCHEMES, DEFAULT_PORT, "MariaDB"

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[aiomysql.Cursor]:
        """A cursor on the server, autocommit; a server that does not answer (now or in the
        middle of a statement) is ServerUnavailable naming it."""
        url = self.url
        where = {"unix_socket": url.socket} if url.socket else {"host": url.host or "localhost"}
        try:
            conn = await aiomysql.connect(
                **where,
                port=url.port or DEFAULT_PORT,
                user=url.user,
                password=url.password or "",
                autocommit=True,
                connect_timeout=10,
            )
        except (pymysql.err.OperationalError, OSError) as err:
            raise ServerUnavailable(f"{self.where} is not answering ({_reason(err)})") from None
        try:
            async with conn.cursor() as cursor:
                await cursor.execute("set session lock_wait_timeout = 60")
                yield cursor
        except pymysql.err.OperationalError as err:
            if err.args and err.args[0] in _DOWN:
                raise ServerUnavailable(f"{self.where} is not answering ({_reason(err)})") from None
            raise
        finally:
            conn.close()

    async def _rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self.connection() as cursor:
            await cursor.execute(sql, args)
            return list(await cursor.fetchall())


class MariaDBDatabase(MariaDBKind):
    """A database: gone when `information_schema.schemata` no longer lists it."""

    kind = "mariadb_database"
    supports_dump = True

    def name_error(self, name: str) -> str | None:
        if not _DATABASE.fullmatch(name):
            return "not a database name this kind accepts (letters, digits, _ $ -; 64 at most)"
        if name.lower() in SYSTEM_DATABASES:
            return "a system database is never deleted"
        return None

    async def inventory(self, resource: ResourceRef, context: ResourceContext) -> Measure:
        if not await self._exists(resource.name):
            return Measure()
        ((tables, size),) = await self._rows(
            "select count(*), coalesce(sum(data_length + index_length), 0)"
            " from information_schema.tables where table_schema = %s",
            resource.name,
        )
        return Measure(bytes=int(size), items=int(tables))

    async def preflight(self, resource: ResourceRef, context: ResourceContext) -> None:
        await self._rows("select 1")

    async def delete(self, resource: ResourceRef, context: ResourceContext) -> Removal:
        measure = await self.inventory(resource, context)
        async with self.connection() as cursor:
            # A session inside a transaction on it would hold the drop for ever.
            await cursor.execute(
                "select id from information_schema.processlist"
                " where db = %s and id <> connection_id()",
                (resource.name,),
            )
            for (session,) in await cursor.fetchall():
                await _kill(cursor, session)
            await cursor.execute(f"drop database if exists {_quoted(resource.name)}")
        return Removal(bytes=measure.bytes, items=measure.items)

    async def verify(self, resource: ResourceRef, context: ResourceContext) -> str | None:
        if await self._exists(resource.name):
            return f"database {resource.name} is still in information_schema.schemata"
        return None

    async def dump(self, resource: ResourceRef, context: ResourceContext, out: BinaryIO) -> int:
        """`mariadb-dump --single-transaction` streamed into `out`; the password goes in a
        private option file, never on the command line."""
        url = self.url
        lines = ["[client]", f"user={url.user}", f"password={url.password or ''}"]
        lines.append(f"socket={url.socket}" if url.socket else f"host={url.host or 'localhost'}")
        lines.append(f"port={url.port or DEFAULT_PORT}")
        fd, options = tempfile.mkstemp(prefix="bajas-dump-", suffix=".cnf")
        try:
            with os.fdopen(fd, "w") as f:
                f.write("\n".join(lines) + "\n")
            argv = [
                "mariadb-dump",
                f"--defaults-extra-file={options}",
                "--single-transaction",
                "--routines",
                "--triggers",
                "--events",
                "--quick",
                "--databases",
                resource.name,
            ]
            return await stream_command(argv, out, env={}, server=self.where)
        finally:
            os.unlink(options)

    async def _exists(self, name: str) -> bool:
        rows = await self._rows(
            "select 1 from information_schema.schemata where schema_name = %s", name
        )
        return bool(rows)


class MariaDBUser(MariaDBKind):
    """An account, `user` (every host it exists on) or `user@host`: gone when
    `mysql.user` has no row for it and no session of it is left."""

    kind = "mariadb_user"
    # The database step ends the sessions on the service's databases and drops them first.
    after = frozenset({"mariadb_database"})

    def name_error(self, name: str) -> str | None:
        user, host = _account(name)
        if not _USER.fullmatch(user) or (host is not None and not _HOST.fullmatch(host)):
            return "not an account this kind accepts (user or user@host)"
        if user.lower() in SYSTEM_USERS:
            return "a system account is never deleted"
        problem = self.configuration_error()
        if problem is None and user == self.url.user:
            return f"the account bajas itself connects with ({URL}) is never deleted"
        return None

    async def inventory(self, resource: ResourceRef, context: ResourceContext) -> Measure:
        return Measure(items=len(await self._hosts(resource.name)))

    async def preflight(self, resource: ResourceRef, context: ResourceContext) -> None:
        await self._hosts(resource.name)

    async def delete(self, resource: ResourceRef, context: ResourceContext) -> Removal:
        """Drop the account on every host it has first (no new login can start), then end
        every session it still has."""
        user, _ = _account(resource.name)
        hosts = await self._hosts(resource.name)
        async with self.connection() as cursor:
            for host in hosts:
                await cursor.execute("drop user if exists %s@%s", (user, host))
            if not await self._hosts(user):
                for session in await self._sessions(cursor, user):
                    await _kill(cursor, session)
        return Removal(items=len(hosts))

    async def verify(self, resource: ResourceRef, context: ResourceContext) -> str | None:
        user, _ = _account(resource.name)
        hosts = await self._hosts(resource.name)
        if hosts:
            return f"mysql.user still has {user} on {', '.join(hosts)}"
        if not await self._hosts(user):
            async with self.connection() as cursor:
                sessions = await self._sessions(cursor, user)
            if sessions:
                return f"{user} still has {len(sessions)} session(s)"
        return None

    async def _hosts(self, name: str) -> list[str]:
        user, host = _account(name)
        rows = await self._rows(
            "select host from mysql.user where user = %s and is_role = 'N'"
            " and (%s is null or host = %s) order by host",
            user,
            host,
            host,
        )
        return [str(r[0]) for r in rows]

    @staticmethod
    async def _sessions(cursor: aiomysql.Cursor, user: str) -> list[int]:
        await cursor.execute(
            "select id from information_schema.processlist"
            " where user = %s and id <> connection_id()",
            (user,),
        )
        return [int(r[0]) for r in await cursor.fetchall()]


def _account(name: str) -> tuple[str, str | None]:
    user, at, host = name.partition("@")
    return user, (host if at else None)


def _quoted(identifier: str) -> str:
    return "`" + identifier.replace("`", "``") + "`"


async def _kill(cursor: aiomysql.Cursor, session: int) -> None:
    """KILL a session; one that ended meanwhile (1094: unknown thread) is fine."""
    try:
        await cursor.execute("kill connection %s", (session,))
    except pymysql.err.InternalError as err:
        if not (err.args and err.args[0] == 1094):
            raise
    except pymysql.err.OperationalError as err:
        if not (err.args and err.args[0] == 1094):
            raise


def _reason(err: BaseException) -> str:
    return str(err.args[-1]) if err.args else type(err).__name__
