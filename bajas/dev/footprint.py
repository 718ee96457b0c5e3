"""The server footprint of `bajas dev`'s demo: an nginx serving the demo sites, a PHP-FPM
pool and a PowerDNS zone per service, each started under ./.bajas/footprint when its
program is installed (nginx, php-fpm, pdns_server with the SQLite backend), and listed in
`service_resources` so a cancellation removes them. Without them the demo is as before.

Fixed loopback ports, like the rest of `bajas dev`: nginx on 8089, the PowerDNS API on
8091 and its DNS on 5354 (`dig @127.0.0.1 -p 5354 anaperez.com.ar SOA`). The
configuration builders are shared with the tests' servers (tests/footprint_servers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import secrets
import shlex
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

NGINX_PORT, PDNS_API_PORT, PDNS_DNS_PORT = 8089, 8091, 5354
PDNS_SCHEMAS = (
    "/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql",
    "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql",
)
# Which demo services get which footprint (ids of bajas.dev.demo.SERVICES).
SITES = {101: "anaperez.com.ar", 201: "brunogomez.dev"}
POOLS = {101: "anaperez"}


def find_program(*patterns: str) -> str | None:
    """On PATH, or in /usr/sbin (Debian's servers, off a normal user's PATH)."""
    for pattern in patterns:
        found = shutil.which(pattern) or next(iter(sorted(glob.glob(f"/usr/sbin/{pattern}"))), None)
        if found:
            return found
    return None


def nginx_conf(prefix: Path, port: int) -> str:
    """An nginx of its own under `prefix`: the sites of `prefix/sites-enabled`, and a
    default server that answers 404 for any other domain on `port`."""
    temps = " ".join(
        f"{what}_temp_path {prefix}/temp/{what};"
        for what in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log;\nevents {{ worker_connections 64; }}\n"
        f"http {{\n  access_log off;\n  {temps}\n"
        f"  server {{ listen 127.0.0.1:{port} default_server; return 404; }}\n"
        f"  include {prefix}/sites-enabled/*;\n}}\n"
    )


def pool_conf(name: str, folder: Path) -> str:
    """A small PHP-FPM pool listening on a socket in `folder`."""
    user = "user = nobody\ngroup = nogroup\n" if os.geteuid() == 0 else ""
    return f"[{name}]\n{user}listen = {folder}/{name}.sock\npm = static\npm.max_children = 1\n"


def php_fpm_conf(root: Path, pools: Path) -> str:
    return (
        f"[global]\npid = {root}/php-fpm.pid\nerror_log = {root}/php-fpm.log\n"
        f"daemonize = no\ninclude = {pools}/*.conf\n"
    )


def pdns_conf(root: Path, api_port: int, dns_port: int, key: str) -> str:
    """pdns_server on `root/pdns.sqlite3`, its API and DNS on loopback; the database
    is made from Debian's schema when missing."""
    database = root / "pdns.sqlite3"
    if not database.exists():
        schema = pdns_schema()
        assert schema is not None
        with contextlib.closing(sqlite3.connect(database)) as db:
            db.executescript(schema.read_text())
    settings = {
        "launch": "gsqlite3",
        "gsqlite3-database": database,
        "local-address": "127.0.0.1",
        "local-port": dns_port,
        "api": "yes",
        "api-key": key,
        "webserver": "yes",
        "webserver-address": "127.0.0.1",
        "webserver-port": api_port,
        "webserver-allow-from": "127.0.0.0/8",
        "socket-dir": root,
        "guardian": "no",
        "daemon": "no",
        "disable-syslog": "yes",
        "loglevel": "3",
    }
    return "".join(f"{k}={v}\n" for k, v in settings.items())


def pdns_schema() -> Path | None:
    """Where Debian's pdns-backend-sqlite3 puts the schema."""
    return next((Path(p) for p in PDNS_SCHEMAS if Path(p).is_file()), None)


def zone_request(zone: str, records: list[tuple[str, str, str]]) -> dict[str, object]:
    """The API's body that creates a Native zone with exactly these records."""
    return {
        "name": zone,
        "kind": "Native",
        "nameservers": [],
        "rrsets": [
            {
                "name": owner,
                "type": rtype,
                "ttl": 3600,
                "changetype": "REPLACE",
                "records": [{"content": content, "disabled": False}],
            }
            for owner, rtype, content in records
        ],
    }


def start_process(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A server in a session of its own, its output appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            command, start_new_session=True, stdout=out, stderr=subprocess.STDOUT
        )


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass
class Footprint:
    """The settings the worker's kinds read, and the kinds whose server runs."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    kinds: set[str] = field(default_factory=set)


async def _until(check: Callable[[], bool], process: subprocess.Popen[bytes]) -> bool:
    for _ in range(100):
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError, httpx.HTTPError):
            if check():
                return True
        await asyncio.sleep(0.1)
    return False


@contextlib.asynccontextmanager
async def footprint_servers(state: Path) -> AsyncIterator[Footprint]:
    """Start what is installed; stop it on the way out."""
    footprint = Footprint(state / "footprint")
    footprint.root.mkdir(parents=True, exist_ok=True)
    started: list[subprocess.Popen[bytes]] = []
    try:
        for start in (_nginx, _php_fpm, _powerdns):
            process = await start(footprint)
            if process is not None:
                started.append(process)
        yield footprint
    finally:
        for process in reversed(started):
            stop_process(process)


async def _nginx(footprint: Footprint) -> subprocess.Popen[bytes] | None:
    binary = find_program("nginx")
    if binary is None:
        return None
    prefix = footprint.root / "nginx"
    for folder in ("sites-available", "sites-enabled", "temp"):
        (prefix / folder).mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, NGINX_PORT))
    where = ["-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    process = start_process([binary, *where], prefix / "error.log")
    url = f"http://127.0.0.1:{NGINX_PORT}/"
    if not await _until(lambda: httpx.get(url).status_code == 404, process):
        stop_process(process)
        return None
    footprint.env.update(
        NGINX_SITES_AVAILABLE=str(prefix / "sites-available"),
        NGINX_SITES_ENABLED=str(prefix / "sites-enabled"),
        NGINX_TEST=shlex.join([binary, "-q", "-t", *where]),
        NGINX_RELOAD=shlex.join([binary, "-s", "reload", *where]),
    )
    footprint.kinds.add("nginx_site")
    return process


async def _php_fpm(footprint: Footprint) -> subprocess.Popen[bytes] | None:
    binary = find_program("php-fpm", "php-fpm[0-9]*")
    if binary is None:
        return None
    root = footprint.root / "php-fpm"
    pools = root / "pool.d"
    pools.mkdir(parents=True, exist_ok=True)
    # PHP-FPM does not start without a pool: the provider's own stays.
    (pools / "panel.conf").write_text(pool_conf("panel", pools))
    conf = root / "php-fpm.conf"
    conf.write_text(php_fpm_conf(root, pools))
    process = start_process([binary, "-F", "-y", str(conf)], root / "php-fpm.log")
    if not await _until(lambda: (pools / "panel.sock").exists(), process):
        stop_process(process)
        return None
    footprint.env.update(
        PHP_FPM_POOL_DIR=str(pools),
        PHP_FPM_TEST=shlex.join([binary, "-t", "-y", str(conf)]),
        PHP_FPM_RELOAD=f"kill -USR2 {process.pid}",
    )
    footprint.kinds.add("php_fpm_pool")
    return process


async def _powerdns(footprint: Footprint) -> subprocess.Popen[bytes] | None:
    binary = find_program("pdns_server")
    if binary is None or pdns_schema() is None:
        return None
    root = footprint.root / "pdns"
    root.mkdir(parents=True, exist_ok=True)
    key_file = root / "api.key"
    if not key_file.exists():
        key_file.write_text(secrets.token_hex(16))
    key = key_file.read_text().strip()
    (root / "pdns.conf").write_text(pdns_conf(root, PDNS_API_PORT, PDNS_DNS_PORT, key))
    process = start_process([binary, f"--config-dir={root}"], root / "pdns.log")
    api = f"http://127.0.0.1:{PDNS_API_PORT}"
    headers = {"X-API-Key": key}
    if not await _until(
        lambda: httpx.get(f"{api}/api/v1/servers", headers=headers).status_code == 200, process
    ):
        stop_process(process)
        return None
    footprint.env.update(
        PDNS_API_URL=api,
        PDNS_API_KEY=key,
        PDNS_SERVER_ID="localhost",
        PDNS_DNS_ADDRESS=f"127.0.0.1:{PDNS_DNS_PORT}",
    )
    footprint.kinds.add("dns_zone")
    return process


async def load_footprint(
    conn: asyncpg.Connection, footprint: Footprint, hosting_root: Path
) -> None:
    """List each running server's resources for the demo services and make them there,
    once: a row that exists (a resource a cancellation removed, say) is left alone."""
    for service_id, domain in SITES.items():
        wanted = []
        if "nginx_site" in footprint.kinds:
            wanted.append(("nginx_site", domain))
        if "php_fpm_pool" in footprint.kinds and service_id in POOLS:
            wanted.append(("php_fpm_pool", f"{POOLS[service_id]}.conf"))
        if "dns_zone" in footprint.kinds:
            wanted.append(("dns_zone", f"{domain}."))
        for n, (kind, name) in enumerate(wanted):
            inserted = await conn.fetchval(
                "insert into service_resources (id, service_id, kind, name)"
                " select $1, $2, $3, $4 where exists (select 1 from services where id = $2)"
                " on conflict do nothing returning id",
                service_id * 100 + 50 + n,
                service_id,
                kind,
                name,
            )
            if inserted is not None:
                await asyncio.to_thread(_make, footprint.env, kind, name, domain, hosting_root)


def _make(env: dict[str, str], kind: str, name: str, domain: str, hosting_root: Path) -> None:
    """The resource on its demo server, as a panel would have made it."""
    if kind == "nginx_site":
        site = Path(env["NGINX_SITES_AVAILABLE"]) / name
        site.write_text(
            f"server {{\n    listen 127.0.0.1:{NGINX_PORT};\n    server_name {domain};\n"
            f"    root {(hosting_root / domain).resolve()};\n}}\n"
        )
        link = Path(env["NGINX_SITES_ENABLED"]) / name
        if not os.path.lexists(link):
            link.symlink_to(site)
        subprocess.run(shlex.split(env["NGINX_RELOAD"]), check=False, capture_output=True)
    elif kind == "php_fpm_pool":
        pools = Path(env["PHP_FPM_POOL_DIR"])
        (pools / name).write_text(pool_conf(name.removesuffix(".conf"), pools))
        subprocess.run(shlex.split(env["PHP_FPM_RELOAD"]), check=False, capture_output=True)
    elif kind == "dns_zone":
        records = [
            (name, "SOA", f"ns1.{name} hostmaster.{name} 1 10800 3600 604800 3600"),
            (name, "NS", f"ns1.{name}"),
            (name, "A", "127.0.0.1"),
            (f"www.{name}", "A", "127.0.0.1"),
        ]
        httpx.post(
            f"{env['PDNS_API_URL']}/api/v1/servers/localhost/zones",
            headers={"X-API-Key": env["PDNS_API_KEY"]},
            json=zone_request(name, records),
        )


def footprint_line(footprint: Footprint) -> str:
    """What `bajas dev` prints: what runs, or what to install for the full demo."""
    parts = {
        "nginx_site": f"nginx http://127.0.0.1:{NGINX_PORT}/ (Host: anaperez.com.ar)",
        "php_fpm_pool": "PHP-FPM",
        "dns_zone": f"PowerDNS API :{PDNS_API_PORT}, DNS 127.0.0.1:{PDNS_DNS_PORT}",
    }
    running = [text for kind, text in parts.items() if kind in footprint.kinds]
    if len(running) == len(parts):
        return "; ".join(running) + f"   ({footprint.root})"
    missing = "apt-get install nginx php-fpm pdns-server pdns-backend-sqlite3"
    return "; ".join([*running, f"for the full demo: {missing}"])
