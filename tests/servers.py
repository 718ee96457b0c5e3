"""The database and backup servers the resource kinds are tested on, real and the tests' own:
MariaDB from Debian's `mariadb-server` (a datadir of its own, a free port and socket),
and a restic repository in a temporary folder. PostgreSQL is the session's embedded one
(tests/conftest.py).

Each can be stopped and started again on the same port and data, so a test can take
a server away in the middle of a step.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.helpers import assert_eventually, free_port, port_open
from tests.helpers.processes import Process, clean_env

# The account the kinds connect with (MARIADB_URL), as a provider would create it.
ADMIN, ADMIN_PASSWORD = "bajas", "bajas-admin-pw"


def binary(name: str) -> str | None:
    """A Debian program, on PATH or in /usr/sbin (where mariadbd lives)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


def have(name: str) -> bool:
    return binary(name) is not None


def client(
    argv: list[str],
    *,
    input: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    """A client program's output; its errors in the exception when it fails."""
    done = subprocess.run(
        argv, input=input, env=clean_env(env or {}), capture_output=True, text=True, cwd=cwd
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


class MariaDB:
    """`mariadb-install-db` into a temporary datadir, `mariadbd` on a free port and on a
    socket in that folder; root logs in through the socket only."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="bajas-my-"))
        self.datadir = self.base / "data"
        self.socket = self.base / "sock"
        self.port = free_port()
        self.host = "127.0.0.1"
        root = ["--user=root"] if os.geteuid() == 0 else []
        subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                *root,
            ],
            check=True,
            capture_output=True,
            env=clean_env({}),
        )
        argv = [
            binary("mariadbd") or "mariadbd",
            "--no-defaults",
            *root,
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={self.base / 'mariadbd.pid'}",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=48M",
            "--innodb-flush-log-at-trx-commit=0",
            "--skip-name-resolve",
        ]
        self.process = Process(
            "mariadbd", argv, log_path=self.base / "mariadbd.log", env=clean_env({})
        )
        self.url = f"mysql://{ADMIN}:{ADMIN_PASSWORD}@{self.host}:{self.port}/"

    async def start(self) -> None:
        self.process.start()
        await assert_eventually(
            lambda: self.process.running() and port_open(self.port) and self.socket.exists(),
            f"mariadbd on port {self.port}",
            timeout=60,
        )

    def stop(self) -> None:
        self.process.stop(timeout=30)

    def sql(self, statements: str) -> str:
        """Run SQL as root through the socket (the `mariadb` client); its output."""
        argv = ["mariadb", "--no-defaults", f"--socket={self.socket}", "-uroot", "-N", "-B"]
        return client(argv, input=statements)

    async def asql(self, statements: str) -> str:
        return await asyncio.to_thread(self.sql, statements)

    def create_admin(self) -> None:
        self.sql(
            f"create user if not exists '{ADMIN}'@'%' identified by '{ADMIN_PASSWORD}';"
            f" grant all privileges on *.* to '{ADMIN}'@'%' with grant option;"
        )

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


class Restic:
    """A restic repository in a temporary folder, its password in a file beside it."""

    def __init__(self, base: Path) -> None:
        self.repository = base / "repo"
        self.password_file = base / "password"
        self.cache = base / "cache"
        self.password_file.write_text("restic-test-password\n")
        self.env = {
            "RESTIC_REPOSITORY": str(self.repository),
            "RESTIC_PASSWORD_FILE": str(self.password_file),
            "RESTIC_CACHE_DIR": str(self.cache),
        }
        self.run("init")

    def run(self, *args: str, cwd: Path | None = None) -> str:
        return client(["restic", "--quiet", *args], env=self.env, cwd=cwd)

    def at(self, repository: Path) -> Restic:
        """The same settings on another repository (a copy of this one)."""
        other = Restic.__new__(Restic)
        other.repository, other.password_file, other.cache = (
            repository,
            self.password_file,
            self.cache,
        )
        other.env = {**self.env, "RESTIC_REPOSITORY": str(repository)}
        return other

    def backup(self, folder: Path, tag: str) -> None:
        self.run("backup", "--tag", tag, ".", cwd=folder)


@pytest_asyncio.fixture(scope="session")
async def mariadb() -> AsyncIterator[MariaDB]:
    """The session's MariaDB, with the account the kinds connect with."""
    if not (have("mariadbd") and have("mariadb-install-db")):
        pytest.skip("needs Debian's mariadb-server (./scripts/test installs it)")
    server = MariaDB()
    try:
        await server.start()
        await server.asql("select 1")
        server.create_admin()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def restic_repo(tmp_path_factory: pytest.TempPathFactory) -> Restic:
    """The session's restic repository; each test uses tags of its own."""
    if not have("restic"):
        pytest.skip("needs Debian's restic (./scripts/test installs it)")
    return Restic(tmp_path_factory.mktemp("restic"))
