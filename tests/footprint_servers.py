"""Real servers for the server-footprint kinds, started once per session on loopback
ports and temporary folders: nginx (`-c` and `-p` on its own prefix), PHP-FPM (its own
configuration), PowerDNS with the SQLite backend (API and DNS on free ports), and
throwaway system users made with `useradd` and removed at clean-up.

Each fixture skips when its program is missing (`./scripts/test` installs them with
apt-get); the users need root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from activities.kinds.processes import processes_of
from bajas.dev.footprint import (
    nginx_conf,
    pdns_conf,
    pdns_schema,
    php_fpm_conf,
    pool_conf,
    start_process,
    stop_process,
    zone_request,
)
from tests.helpers import free_port, port_open


def _program(*names: str) -> str:
    for name in names:
        for found in [shutil.which(name), *sorted(glob.glob(f"/usr/sbin/{name}"))]:
            if found:
                return found
    pytest.skip(f"{names[0]} is not installed (./scripts/test installs it with apt-get)")


def _free_udp_and_tcp_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (DNS answers on both)."""
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def _wait_port(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    for _ in range(200):
        if port_open(port):
            return
        if process.poll() is not None:
            break
        threading.Event().wait(0.05)
    raise RuntimeError(f"{process.args!r} did not start: {log.read_text(errors='replace')}")


@dataclass
class Nginx:
    """One nginx with its sites folders; every site answers `site NAME` for its domain,
    and a default server answers 404 for any other."""

    binary: str
    prefix: Path
    conf: Path
    port: int

    @property
    def available(self) -> Path:
        return self.prefix / "sites-available"

    @property
    def enabled(self) -> Path:
        return self.prefix / "sites-enabled"

    @property
    def where(self) -> list[str]:
        return ["-p", str(self.prefix), "-c", str(self.conf), "-e", str(self.prefix / "error.log")]

    @property
    def env(self) -> dict[str, str]:
        return {
            "NGINX_SITES_AVAILABLE": str(self.available),
            "NGINX_SITES_ENABLED": str(self.enabled),
            "NGINX_TEST": shlex.join([self.binary, "-q", "-t", *self.where]),
            "NGINX_RELOAD": shlex.join([self.binary, "-s", "reload", *self.where]),
        }

    def add_site(self, name: str, domain: str, extra: str = "") -> None:
        (self.available / name).write_text(
            f"server {{\n    listen 127.0.0.1:{self.port};\n    server_name {domain};\n"
            f'    location / {{ return 200 "site {name}\\n"; }}\n{extra}}}\n'
        )
        (self.enabled / name).symlink_to(self.available / name)
        self.reload()

    def reload(self) -> None:
        subprocess.run(shlex.split(self.env["NGINX_RELOAD"]), check=True, capture_output=True)

    def workers(self) -> int:
        """nginx's worker processes; more than one while a reload is under way (an old
        worker may still take a connection with the previous configuration)."""
        pid = (self.prefix / "nginx.pid").read_text().strip()
        return sum(1 for stat in glob.glob("/proc/[0-9]*/stat") if _parent(stat) == pid)

    def serves(self, **bodies: str) -> bool:
        """Whether, with a reload settled, each domain answers its body (`_` for `.`)."""
        return self.workers() == 1 and all(
            self.body(domain.replace("_", ".")) == body for domain, body in bodies.items()
        )

    def body(self, domain: str) -> str:
        """What nginx answers for the domain (the site's text, or the default's 404)."""
        response = httpx.get(f"http://127.0.0.1:{self.port}/", headers={"Host": domain})
        return response.text if response.status_code == 200 else str(response.status_code)


def _parent(stat: str) -> str | None:
    try:
        return Path(stat).read_text().rpartition(")")[2].split()[1]
    except (OSError, IndexError):
        return None


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    binary = _program("nginx")
    prefix = tmp_path_factory.mktemp("nginx")
    for folder in ("sites-available", "sites-enabled", "temp"):
        (prefix / folder).mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, port))
    server = Nginx(binary, prefix, conf, port)
    process = start_process([binary, *server.where], prefix / "error.log")
    try:
        _wait_port(process, port, prefix / "error.log")
        yield server
    finally:
        stop_process(process)


@dataclass
class PhpFpm:
    binary: str
    conf: Path
    pools: Path
    process: subprocess.Popen[bytes]

    @property
    def env(self) -> dict[str, str]:
        return {
            "PHP_FPM_POOL_DIR": str(self.pools),
            "PHP_FPM_TEST": f"{self.binary} -t -y {shlex.quote(str(self.conf))}",
            "PHP_FPM_RELOAD": f"kill -USR2 {self.process.pid}",
        }

    def add_pool(self, name: str) -> None:
        (self.pools / f"{name}.conf").write_text(pool_conf(name, self.pools))
        subprocess.run(shlex.split(self.env["PHP_FPM_RELOAD"]), check=True)

    def pools_running(self) -> set[str]:
        """The pools whose workers run now, by the titles of the master's children."""
        running = set()
        for stat in glob.glob("/proc/[0-9]*/stat"):
            if _parent(stat) != str(self.process.pid):
                continue
            try:
                title = Path(stat).with_name("cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            words = title.decode(errors="replace").split()
            if words[:2] == ["php-fpm:", "pool"] and len(words) > 2:
                running.add(words[2])
        return running


@pytest.fixture(scope="session")
def php_fpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PhpFpm]:
    binary = _program("php-fpm", "php-fpm[0-9]*")
    root = tmp_path_factory.mktemp("php-fpm")
    pools = root / "pool.d"
    pools.mkdir()
    # A neighbour's pool: PHP-FPM does not start without one.
    (pools / "neighbour.conf").write_text(pool_conf("neighbour", pools))
    conf = root / "php-fpm.conf"
    conf.write_text(php_fpm_conf(root, pools))
    process = start_process([binary, "-F", "-y", str(conf)], root / "php-fpm.log")
    server = PhpFpm(binary, conf, pools, process)
    try:
        for _ in range(200):
            if "neighbour" in server.pools_running() or process.poll() is not None:
                break
            threading.Event().wait(0.05)
        if "neighbour" not in server.pools_running():
            raise RuntimeError(f"php-fpm did not start: {(root / 'php-fpm.log').read_text()}")
        yield server
    finally:
        stop_process(process)


@dataclass
class PowerDns:
    api_port: int
    dns_port: int
    key: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "PDNS_API_URL": f"http://127.0.0.1:{self.api_port}",
            "PDNS_API_KEY": self.key,
            "PDNS_SERVER_ID": "localhost",
            "PDNS_DNS_ADDRESS": f"127.0.0.1:{self.dns_port}",
        }

    def create_zone(self, zone: str, records: int) -> None:
        """A zone with exactly `records` records: SOA, NS and A records for the rest."""
        soa = f"ns1.{zone} hostmaster.{zone} 1 10800 3600 604800 3600"
        hosts = [
            (f"h{n}.{zone}", "A", f"10.0.{n // 250}.{n % 250 + 1}") for n in range(records - 2)
        ]
        response = httpx.post(
            f"{self.env['PDNS_API_URL']}/api/v1/servers/localhost/zones",
            headers={"X-API-Key": self.key},
            json=zone_request(zone, [(zone, "SOA", soa), (zone, "NS", f"ns1.{zone}"), *hosts]),
        )
        response.raise_for_status()


@pytest.fixture(scope="session")
def powerdns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PowerDns]:
    binary = _program("pdns_server")
    if pdns_schema() is None:
        pytest.skip("pdns-backend-sqlite3 is not installed")
    root = tmp_path_factory.mktemp("pdns")
    server = PowerDns(free_port(), _free_udp_and_tcp_port(), secrets.token_hex(16))
    (root / "pdns.conf").write_text(pdns_conf(root, server.api_port, server.dns_port, server.key))
    log = root / "pdns.log"
    process = start_process([binary, f"--config-dir={root}"], log)
    try:
        _wait_port(process, server.api_port, log)
        yield server
    finally:
        stop_process(process)


@dataclass
class Users:
    """Throwaway system users with homes under `hosting_root`, removed at clean-up."""

    hosting_root: Path
    made: list[str] = field(default_factory=list)

    def add(self) -> str:
        if os.geteuid() != 0:
            pytest.skip("making system users needs root")
        name = f"bajas{secrets.token_hex(4)}"
        home = self.hosting_root / name
        subprocess.run(
            ["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/sh", name],
            check=True,
            capture_output=True,
        )
        self.made.append(name)
        return name

    def run_as(self, name: str, *command: str) -> subprocess.Popen[bytes]:
        """A process of the user, reaped by a thread of ours once it ends (a killed
        child must not linger as a zombie the user's removal would wait for)."""
        process = subprocess.Popen(
            ["setpriv", f"--reuid={name}", f"--regid={name}", "--init-groups", *command],
            start_new_session=True,
        )
        threading.Thread(target=process.wait, daemon=True).start()
        return process

    def run_as_cron_job(self, name: str, script: str) -> subprocess.Popen[bytes]:
        """`script` run as the user under a root parent named CRON, as Debian's cron runs
        each job; the parent stays until the job ends."""
        job = shlex.join(["setpriv", f"--reuid={name}", f"--regid={name}", "--init-groups"])
        parent = f"printf CRON > /proc/$$/comm; {job} sh -c {shlex.quote(script)}; exit 0"
        process = subprocess.Popen(["sh", "-c", parent], start_new_session=True)
        threading.Thread(target=process.wait, daemon=True).start()
        return process

    def remove_all(self) -> None:
        for name in self.made:
            with contextlib.suppress(KeyError):
                for pid in processes_of(pwd.getpwnam(name).pw_uid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            subprocess.run(["crontab", "-u", name, "-r"], capture_output=True)
            subprocess.run(["userdel", "--force", name], capture_output=True)


@pytest.fixture(scope="session")
def users() -> Iterator[Users]:
    # Not under pytest's folder: its parents are closed to other users (0700).
    root = Path(tempfile.mkdtemp(prefix="bajas-hosting-"))
    root.chmod(0o755)
    made = Users(root)
    try:
        yield made
    finally:
        made.remove_all()
        shutil.rmtree(root, ignore_errors=True)
