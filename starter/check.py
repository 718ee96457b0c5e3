"""`bajas check`: what an operator (or a systemd unit, or a probe) runs after a deploy.

One line per check, in the order a deploy fails: Temporal (reached with the configured
TLS or API key, the namespace, the search attributes, a poller on every queue), the
panel database and its migrations, SMTP, the secrets, and the settings of each resource
kind the panel lists. A failed line names the server and the setting that would fix it.

On a central machine `--role` says what it runs (worker, api, codec-server; all three
when not given), so only their secrets are asked for; on a hosting server (`--node NAME`)
only what that server's worker needs is checked.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import asyncpg
from temporalio.api.enums.v1 import IndexedValueType, TaskQueueKind, TaskQueueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeIndexedValueType
from temporalio.service import RPCError, RPCStatusCode

from bajas.config import ConfigError, Settings
from bajas.kind_settings import kind_problems
from bajas.temporal_client import connect, connect_config, payload_codec
from starter.api.security import api_token, session_secret, weakness
from workflows.search_attributes import ALL as SEARCH_ATTRIBUTES
from workflows.search_attributes import node_task_queue

# A probe that hangs (a firewall dropping packets) fails its line instead.
CHECK_TIMEOUT = 15.0

_INDEXED = {
    SearchAttributeIndexedValueType.KEYWORD: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    SearchAttributeIndexedValueType.BOOL: IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
}


class Role(Enum):
    """What a central machine runs; a hosting server is checked with `node` instead."""

    WORKER = "worker"
    API = "api"
    CODEC_SERVER = "codec-server"


class Outcome(Enum):
    OK = "ok"
    FAIL = "FAIL"
    WARN = "warn"  # worth reading, not a failure
    SKIP = "skip"  # could not be checked because an earlier check failed


@dataclass(frozen=True)
class CheckLine:
    outcome: Outcome
    what: str
    detail: str

    def __str__(self) -> str:
        return f"{self.outcome.value:<4}  {self.what}: {self.detail}"


class Checks:
    """The checks of one process's configuration; `lines()` runs them one by one."""

    def __init__(
        self,
        settings: Settings,
        env: Mapping[str, str] | None = None,
        node: str | None = None,
        roles: Collection[Role] = tuple(Role),
    ) -> None:
        self.settings = settings
        self.env = os.environ if env is None else env
        self.node = node
        self.roles = set() if node is not None else set(roles)
        self.client: Client | None = None
        self.conn: asyncpg.Connection | None = None

    async def lines(self) -> AsyncIterator[CheckLine]:
        try:
            async for line in self._temporal():
                yield line
            async for line in self._database():
                yield line
            if Role.WORKER in self.roles:
                yield await self._smtp()
            for line in self._secrets():
                yield line
            async for line in self._kinds():
                yield line
            if self.node is None and self.client is not None and self.conn is not None:
                async for line in self._node_pollers():
                    yield line
        finally:
            if self.conn is not None:
                await self.conn.close()

    # ---- Temporal ----------------------------------------------------------------------

    async def _temporal(self) -> AsyncIterator[CheckLine]:
        config = connect_config()
        address = str(config.get("target_host"))
        how = _credentials(config)
        try:
            self.client = await _within(connect(self.settings))
        except (ConfigError, TimeoutError) as err:
            yield CheckLine(Outcome.FAIL, "Temporal", _message(err, f"Temporal at {address}"))
            for what in ("namespace", "search attributes", "pollers"):
                yield CheckLine(Outcome.SKIP, what, "Temporal not reached")
            return
        yield CheckLine(Outcome.OK, "Temporal", f"reached at {address} ({how})")
        namespace = self.client.namespace
        try:
            described = await _within(
                self.client.workflow_service.describe_namespace(
                    DescribeNamespaceRequest(namespace=namespace)
                )
            )
        except (RPCError, TimeoutError) as err:
            yield CheckLine(
                Outcome.FAIL,
                "namespace",
                f"{namespace} at {address} (TEMPORAL_NAMESPACE): {_rpc_reason(err)}",
            )
            return
        days = described.config.workflow_execution_retention_ttl.ToTimedelta().days
        yield CheckLine(Outcome.OK, "namespace", f"{namespace}, retention {days} days")
        yield await self._search_attributes(namespace)
        queue = self.settings.temporal_task_queue
        if self.node is None:
            yield await self._pollers(queue, "the central workers", "bajas worker")
        else:
            yield await self._pollers(
                node_task_queue(queue, self.node),
                f"hosting server {self.node}",
                f"bajas worker --node {self.node}",
            )

    async def _search_attributes(self, namespace: str) -> CheckLine:
        assert self.client is not None
        try:
            known = (
                await _within(
                    self.client.operator_service.list_search_attributes(
                        ListSearchAttributesRequest(namespace=namespace)
                    )
                )
            ).custom_attributes
        except (RPCError, TimeoutError) as err:
            return CheckLine(Outcome.FAIL, "search attributes", _rpc_reason(err))
        wrong = [
            f"{k.name} ({k.indexed_value_type.name.title()})"
            for k in SEARCH_ATTRIBUTES
            if known.get(k.name) != _INDEXED[k.indexed_value_type]
        ]
        if wrong:
            return CheckLine(
                Outcome.FAIL,
                "search attributes",
                f"namespace {namespace} lacks {', '.join(wrong)}: temporal operator"
                " search-attribute create --name NAME --type TYPE (docs/DEPLOY.md)",
            )
        names = ", ".join(k.name for k in SEARCH_ATTRIBUTES)
        return CheckLine(Outcome.OK, "search attributes", f"{names} registered")

    async def _pollers(self, queue: str, who: str, command: str) -> CheckLine:
        """A worker polls `queue` (workflow and activity tasks on the main queue)."""
        assert self.client is not None
        kinds = [TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY]
        if queue == self.settings.temporal_task_queue:
            kinds.insert(0, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW)
        counts = []
        for kind in kinds:
            try:
                described = await _within(
                    self.client.workflow_service.describe_task_queue(
                        DescribeTaskQueueRequest(
                            namespace=self.client.namespace,
                            task_queue=TaskQueue(
                                name=queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL
                            ),
                            task_queue_type=kind,
                        )
                    )
                )
            except (RPCError, TimeoutError) as err:
                return CheckLine(Outcome.FAIL, f"pollers of {queue}", _rpc_reason(err))
            counts.append(len(described.pollers))
        if not all(counts):
            return CheckLine(
                Outcome.FAIL,
                f"pollers of {queue}",
                f"no worker polls it: start `{command}` on {who} (TEMPORAL_TASK_QUEUE"
                f" {self.settings.temporal_task_queue})",
            )
        return CheckLine(Outcome.OK, f"pollers of {queue}", f"{max(counts)} polling")

    async def _node_pollers(self) -> AsyncIterator[CheckLine]:
        """Each hosting server the panel names for a service or resource still to delete."""
        assert self.conn is not None
        servers = await self.conn.fetch(
            "select server from services where server is not null and status <> 'cancelled'"
            " union select server from service_resources"
            " where server is not null and deleted_at is null order by 1"
        )
        for (server,) in servers:
            queue = node_task_queue(self.settings.temporal_task_queue, server)
            yield await self._pollers(
                queue, f"hosting server {server}", f"bajas worker --node {server}"
            )

    # ---- PostgreSQL --------------------------------------------------------------------

    async def _database(self) -> AsyncIterator[CheckLine]:
        from bajas.db import connect as connect_db
        from bajas.db import database_address, migration_files

        if not self.settings.database_url:
            if self.roles & {Role.WORKER, Role.API}:
                yield CheckLine(Outcome.FAIL, "PostgreSQL", "DATABASE_URL is not set")
            return
        address = database_address(self.settings.database_url)
        try:
            self.conn = await _within(connect_db(self.settings.database_url))
        except (ConfigError, TimeoutError) as err:
            yield CheckLine(Outcome.FAIL, "PostgreSQL", _message(err, f"PostgreSQL at {address}"))
            yield CheckLine(Outcome.SKIP, "migrations", "PostgreSQL not reached")
            return
        yield CheckLine(Outcome.OK, "PostgreSQL", f"reached at {address}")
        try:
            applied = {
                r["name"] for r in await self.conn.fetch("select name from bajas.schema_migrations")
            }
        except asyncpg.UndefinedTableError:
            applied = set()
        missing = [name for name, _ in migration_files() if name not in applied]
        if missing:
            yield CheckLine(
                Outcome.FAIL,
                "migrations",
                f"{', '.join(missing)} not applied at {address}: run `bajas migrate`",
            )
        else:
            yield CheckLine(Outcome.OK, "migrations", f"current ({len(applied)} applied)")

    # ---- SMTP --------------------------------------------------------------------------

    async def _smtp(self) -> CheckLine:
        import aiosmtplib

        s = self.settings
        where = f"SMTP at {s.smtp_host}:{s.smtp_port} (SMTP_HOST, SMTP_PORT)"
        smtp = aiosmtplib.SMTP(hostname=s.smtp_host, port=s.smtp_port, timeout=s.smtp_timeout)
        try:
            await smtp.connect()
            await smtp.noop()
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError) as err:
            return CheckLine(Outcome.FAIL, "SMTP", f"cannot reach {where}: {_first_line(err)}")
        return CheckLine(Outcome.OK, "SMTP", f"{s.smtp_host}:{s.smtp_port} answers")

    # ---- secrets -----------------------------------------------------------------------

    def _secrets(self) -> list[CheckLine]:
        """The secrets of the roles checked: each set and strong."""
        s = self.settings
        codec = Role.CODEC_SERVER in self.roles
        lines = [_secret("PAYLOAD_KEYS", lambda: _payload_keys(s, required=codec))]
        if Role.WORKER in self.roles:
            lines.append(_secret("CODE_HMAC_KEY", lambda: _code_keys(s)))
        if Role.API in self.roles:
            lines += [
                _secret("PANEL_API_TOKEN", lambda: _strong(api_token(s))),
                _secret("PANEL_SESSION_SECRET", lambda: _strong(session_secret(s))),
            ]
        if codec:
            lines.append(
                _secret(
                    "CODEC_SERVER_TOKEN",
                    lambda: _strong(s.require_codec_server_token(), "CODEC_SERVER_TOKEN"),
                )
            )
        return lines

    # ---- resource kinds ----------------------------------------------------------------

    async def _kinds(self) -> AsyncIterator[CheckLine]:
        """The kinds the panel lists on this machine's server (central: no server)."""
        if self.conn is None or (self.node is None and Role.WORKER not in self.roles):
            return
        here = "the central workers" if self.node is None else f"server {self.node}"
        rows = await self.conn.fetch(
            "select kind, count(*) as n from service_resources"
            " where deleted_at is null and server is not distinct from $1"
            " group by kind order by kind",
            self.node,
        )
        for row in rows:
            what = f"resources {row['kind']} on {here}"
            problems = kind_problems(row["kind"], self.env)
            if problems is None:
                yield CheckLine(Outcome.WARN, what, "a kind bajas does not know: not checked")
            elif problems:
                yield CheckLine(Outcome.FAIL, what, "; ".join(problems))
            else:
                yield CheckLine(Outcome.OK, what, f"{row['n']} listed, settings usable")


async def run_check(
    settings: Settings,
    node: str | None = None,
    env: Mapping[str, str] | None = None,
    echo: Callable[[CheckLine], None] | None = None,
    roles: Collection[Role] = tuple(Role),
) -> list[CheckLine]:
    """Every check's line, each passed to `echo` as soon as it is known."""
    found = []
    async for line in Checks(settings, env, node, roles).lines():
        if echo is not None:
            echo(line)
        found.append(line)
    return found


def _secret(name: str, probe: Callable[[], str]) -> CheckLine:
    try:
        detail = probe()
    except ConfigError as err:
        text = str(err)
        return CheckLine(Outcome.FAIL, name, text if name in text else f"{name}: {text}")
    return CheckLine(Outcome.WARN if detail.startswith("not set") else Outcome.OK, name, detail)


def _strong(value: str, name: str = "") -> str:
    problem = weakness(value)
    if problem:
        raise ConfigError(f"{name} {problem}".strip())
    return "set and strong"


def _code_keys(settings: Settings) -> str:
    keys = settings.hmac_keys()
    for n, key in enumerate(keys, 1):
        problem = weakness(key.decode())
        if problem:
            which = "CODE_HMAC_KEY" if len(keys) == 1 else f"CODE_HMAC_KEY (key {n})"
            raise ConfigError(f"{which} {problem}")
    return "set and strong" + (f" ({len(keys)} keys: rotation)" if len(keys) > 1 else "")


def _payload_keys(settings: Settings, *, required: bool) -> str:
    codec = payload_codec(settings)  # raises ConfigError naming PAYLOAD_KEYS
    if codec is None:
        if required:
            raise ConfigError(
                "PAYLOAD_KEYS is not set: the codec server has nothing to decode with"
            )
        return "not set: histories are stored in clear on the Temporal server"
    count = len(codec.key_ids)
    return f"{count} key{'s' if count > 1 else ''}, new payloads under {codec.key_ids[0]!r}"


def _credentials(config: Mapping[str, Any]) -> str:
    """How the client proves itself, as envconfig configured it."""
    tls = config.get("tls")
    if config.get("api_key"):
        return "API key over TLS" if tls else "API key"
    if getattr(tls, "client_cert", None):
        return "TLS with a client certificate"
    return "TLS" if tls else "no TLS"


async def _within(awaitable: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(awaitable, CHECK_TIMEOUT)


def _message(err: BaseException, where: str) -> str:
    if isinstance(err, TimeoutError):
        return f"{where}: no answer within {CHECK_TIMEOUT:g} s"
    return str(err)


def _rpc_reason(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return f"no answer within {CHECK_TIMEOUT:g} s"
    if isinstance(err, RPCError) and err.status is RPCStatusCode.NOT_FOUND:
        return "not found: create it (docs/DEPLOY.md)"
    if isinstance(err, RPCError) and err.status is RPCStatusCode.PERMISSION_DENIED:
        return "permission denied to this client's credentials"
    return _first_line(err)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:200]
