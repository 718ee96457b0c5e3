"""What several built-in kinds share: their settings read from the worker's environment,
server URLs, and a client program's output streamed into the last copy."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import BinaryIO, ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import TypeAdapter, ValidationError

from activities.kinds.base import NotConfigured, ResourceKind, ServerUnavailable

_CHUNK = 1 << 20
_DURATION = TypeAdapter(timedelta)


@dataclass(frozen=True)
class ServerUrl:
    """A database server URL (MARIADB_URL, POSTGRESQL_URL) taken apart."""

    user: str
    password: str | None
    host: str | None
    port: int | None
    database: str | None
    socket: str | None

    def shown(self, default_port: int) -> str:
        """Where the server is, for "MariaDB at 10.0.0.5:3306 is not answering"."""
        if self.socket:
            return self.socket
        return f"{self.host or 'localhost'}:{self.port or default_port}"


def server_url(env: Mapping[str, str], variable: str, schemes: Sequence[str]) -> ServerUrl:
    """The URL in `variable`, or NotConfigured naming it."""
    value = env.get(variable, "").strip()
    if not value:
        raise NotConfigured(f"{variable} is not set")
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.username:
        raise NotConfigured(
            f"{variable} must look like {schemes[0]}://USER:PASSWORD@HOST:PORT/ (a user is needed)"
        )
    query = parse_qs(parts.query)
    sockets = query.get("unix_socket") or query.get("host") or []
    socket = sockets[0] if sockets else None
    try:
        port = parts.port
    except ValueError:
        raise NotConfigured(f"{variable} has a port that is not a number") from None
    return ServerUrl(
        user=unquote(parts.username),
        password=unquote(parts.password) if parts.password is not None else None,
        host=parts.hostname,
        port=port,
        database=unquote(parts.path.lstrip("/")) or None,
        socket=socket if socket and socket.startswith("/") else None,
    )


def configuration_problem(
    env: Mapping[str, str], variable: str, schemes: Sequence[str]
) -> str | None:
    try:
        server_url(env, variable, schemes)
    except NotConfigured as err:
        return str(err)
    return None


class ServerKind(ResourceKind):
    """A kind whose resources live on a database server named by one URL setting."""

    url_setting: ClassVar[str]
    schemes: ClassVar[tuple[str, ...]]
    default_port: ClassVar[int]
    product: ClassVar[str]

    def configuration_error(self) -> str | None:
        return configuration_problem(self.env, self.url_setting, self.schemes)

    @property
    def url(self) -> ServerUrl:
        return server_url(self.env, self.url_setting, self.schemes)

    @property
    def where(self) -> str:
        """ "MariaDB at 10.0.0.5:3306", for the one-line errors."""
        return f"{self.product} at {self.url.shown(self.default_port)}"


def duration(env: Mapping[str, str], variable: str, default: timedelta) -> timedelta:
    """Seconds ("3600") or ISO 8601 ("PT1H"), as the other durations bajas reads."""
    value = env.get(variable, "").strip()
    if not value:
        return default
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return timedelta(seconds=float(value))
    try:
        return _DURATION.validate_python(value)
    except ValidationError:
        raise NotConfigured(f"{variable}: {value!r} is neither seconds nor ISO 8601") from None


async def stream_command(
    argv: Sequence[str], out: BinaryIO, *, env: Mapping[str, str], server: str
) -> int:
    """Run a dump program and copy its output into `out` a chunk at a time, never whole;
    the bytes written. A failure raises with the program's last line of errors."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    assert proc.stdout is not None and proc.stderr is not None
    errors = asyncio.ensure_future(proc.stderr.read())
    written = 0
    while chunk := await proc.stdout.read(_CHUNK):
        out.write(chunk)
        written += len(chunk)
    code = await proc.wait()
    message = (await errors).decode(errors="replace").strip().splitlines()
    if code != 0:
        last = message[-1] if message else f"exit status {code}"
        if any(w in last.lower() for w in ("can't connect", "connection refused", "no such file")):
            raise ServerUnavailable(f"{server} is not answering ({last})")
        raise RuntimeError(f"{os.path.basename(argv[0])}: {last}")
    return written
