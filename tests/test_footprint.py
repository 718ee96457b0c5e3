"""The server-footprint kinds on real servers started by the tests (tests/footprint_servers.py):
each resource deleted through `ResourceActivities`, proven gone by the kind's own check
and by the server itself, its neighbours untouched, and the unsafe ones refused."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import subprocess
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from temporalio.exceptions import ApplicationError

from activities.errors import PATH_REFUSED
from activities.kinds import load_kinds
from activities.kinds.processes import cron_jobs_of, processes_of
from activities.resources import ResourceActivities
from bajas.dev.footprint import php_fpm_conf, pool_conf
from bajas.models import (
    ResourceCheckInput,
    ResourceContext,
    ResourceRef,
    ResourceStepInput,
    ResourceStepResult,
)
from bajas.texts import stops_at_once
from tests.footprint_servers import Nginx, PhpFpm, PowerDns, Users, nginx, php_fpm, powerdns, users
from tests.helpers import assert_eventually, free_port, new_id

__all__ = ["nginx", "php_fpm", "powerdns", "users"]  # the session fixtures used below


def context(**fields: object) -> ResourceContext:
    return ResourceContext(service_id=new_id(), domain="customer.test", **fields)


async def delete(
    env: Mapping[str, str], kind: str, name: str, ctx: ResourceContext | None = None
) -> ResourceStepResult:
    """One attempt of the kind's step, as the workflow runs it on the resource's worker."""
    ctx = ctx or context()
    activities = ResourceActivities(load_kinds(env))
    return await activities.delete_resources(
        ResourceStepInput(
            service_id=ctx.service_id,
            customer_id=1,
            kind=kind,
            resources=[ResourceRef(id=new_id(), kind=kind, name=name)],
            context=ctx,
        )
    )


async def inventory_items(env: Mapping[str, str], kind: str, name: str) -> int | None:
    ctx = context()
    counted = await ResourceActivities(load_kinds(env)).inventory_resources(
        ResourceCheckInput(
            service_id=ctx.service_id,
            customer_id=1,
            resources=[ResourceRef(id=new_id(), kind=kind, name=name)],
            context=ctx,
        )
    )
    return counted.resources[0].items


async def refused(
    env: Mapping[str, str], kind: str, name: str, ctx: ResourceContext | None = None
) -> str:
    """The refusal's message, as `status` shows it in the kind's step."""
    with pytest.raises(ApplicationError) as caught:
        await delete(env, kind, name, ctx)
    assert caught.value.type == PATH_REFUSED
    assert caught.value.details == (kind,)
    return caught.value.message


async def test_nginx_site_stops_answering_and_its_neighbour_keeps_answering(nginx: Nginx) -> None:
    nginx.add_site("gone-site", "gone.test")
    nginx.add_site("kept-site", "kept.test")
    await assert_eventually(
        lambda: nginx.serves(gone_test="site gone-site\n", kept_test="site kept-site\n"), "sites"
    )

    result = await delete(nginx.env, "nginx_site", "gone-site")

    assert result.verified and result.resources[0].verified
    assert not (nginx.available / "gone-site").exists()
    assert not os.path.lexists(nginx.enabled / "gone-site")
    await assert_eventually(
        lambda: nginx.serves(gone_test="404", kept_test="site kept-site\n"), "only the neighbour"
    )
    again = await delete(nginx.env, "nginx_site", "gone-site")
    assert again.verified and again.resources[0].bytes is None


async def test_a_configuration_nginx_refuses_without_the_site_puts_it_back(nginx: Nginx) -> None:
    upstream = "    location /api { proxy_pass http://shared_backend; }\n"
    nginx.add_site("defines-upstream", "upstream.test")
    with (nginx.available / "defines-upstream").open("a") as conf:
        conf.write("upstream shared_backend { server 127.0.0.1:9; }\n")
    nginx.add_site("uses-upstream", "user.test", extra=upstream)
    await assert_eventually(
        lambda: nginx.serves(
            user_test="site uses-upstream\n", upstream_test="site defines-upstream\n"
        ),
        "both sites",
    )
    before = (nginx.available / "defines-upstream").read_bytes()
    mode = (nginx.available / "defines-upstream").stat().st_mode
    link = os.readlink(nginx.enabled / "defines-upstream")

    message = await refused(nginx.env, "nginx_site", "defines-upstream")

    assert "shared_backend" in message and "put back" in message and "\n" not in message
    assert (nginx.available / "defines-upstream").read_bytes() == before
    assert (nginx.available / "defines-upstream").stat().st_mode == mode
    assert os.readlink(nginx.enabled / "defines-upstream") == link
    assert nginx.serves(upstream_test="site defines-upstream\n")

    # An attempt that ends between the removal and the test (the worker stopped, say):
    # the next attempt finds the files set aside, and puts them back when nginx refuses.
    stuck = {**nginx.env, "NGINX_TEST": "sleep 60"}
    attempt = asyncio.create_task(delete(stuck, "nginx_site", "defines-upstream"))
    await assert_eventually(
        lambda: not (nginx.available / "defines-upstream").exists(), "the file set aside"
    )
    attempt.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await attempt
    assert "put back" in await refused(nginx.env, "nginx_site", "defines-upstream")
    assert (nginx.available / "defines-upstream").read_bytes() == before
    assert os.readlink(nginx.enabled / "defines-upstream") == link
    for name in ("uses-upstream", "defines-upstream"):
        assert (await delete(nginx.env, "nginx_site", name)).verified


async def test_php_fpm_pool_is_removed_and_php_fpm_reloaded(php_fpm: PhpFpm) -> None:
    php_fpm.add_pool("gonepool")
    await assert_eventually(lambda: "gonepool" in php_fpm.pools_running(), "the pool running")

    result = await delete(php_fpm.env, "php_fpm_pool", "gonepool.conf")

    assert result.verified and not (php_fpm.pools / "gonepool.conf").exists()
    await assert_eventually(
        lambda: php_fpm.pools_running() == {"neighbour"}, "only the neighbour's pool running"
    )
    assert (await delete(php_fpm.env, "php_fpm_pool", "gonepool.conf")).verified
    env = {k: v for k, v in php_fpm.env.items() if k != "PHP_FPM_POOL_DIR"}
    assert "PHP_FPM_POOL_DIR is not set" in await refused(env, "php_fpm_pool", "x.conf")


async def test_a_pool_php_fpm_cannot_do_without_is_put_back(
    php_fpm: PhpFpm, tmp_path: Path
) -> None:
    pools = tmp_path / "pool.d"
    pools.mkdir()
    (pools / "only.conf").write_text(pool_conf("only", pools))
    before = (pools / "only.conf").read_bytes()
    (tmp_path / "php-fpm.conf").write_text(php_fpm_conf(tmp_path, pools))
    env = {
        "PHP_FPM_POOL_DIR": str(pools),
        "PHP_FPM_TEST": f"{php_fpm.binary} -t -y {tmp_path / 'php-fpm.conf'}",
        "PHP_FPM_RELOAD": "false",
    }

    message = await refused(env, "php_fpm_pool", "only.conf")

    assert "put back" in message and "pool" in message.lower()
    assert (pools / "only.conf").read_bytes() == before


async def soa_rcode(server: PowerDns, zone: str) -> tuple[int, int]:
    query = dns.message.make_query(zone, "SOA")
    answer = await dns.asyncquery.udp(query, "127.0.0.1", port=server.dns_port, timeout=3)
    return answer.rcode(), len(answer.answer)


async def test_a_zone_of_200_records_is_deleted_and_no_longer_answers(powerdns: PowerDns) -> None:
    powerdns.create_zone("gone-zone.test.", records=200)
    assert await inventory_items(powerdns.env, "dns_zone", "gone-zone.test.") == 200
    assert await soa_rcode(powerdns, "gone-zone.test.") == (dns.rcode.NOERROR, 1)

    result = await delete(powerdns.env, "dns_zone", "gone-zone.test.")

    assert result.verified and result.resources[0].items == 200
    api = httpx.get(
        f"{powerdns.env['PDNS_API_URL']}/api/v1/servers/localhost/zones/gone-zone.test.",
        headers={"X-API-Key": powerdns.key},
    )
    assert api.status_code == 404
    assert (await soa_rcode(powerdns, "gone-zone.test."))[0] == dns.rcode.REFUSED
    assert (await delete(powerdns.env, "dns_zone", "gone-zone.test.")).verified


async def test_a_zone_serving_another_live_service_is_refused(powerdns: PowerDns) -> None:
    powerdns.create_zone("shared-zone.test.", records=3)
    ctx = context(other_domains=["shop.shared-zone.test"])

    message = await refused(powerdns.env, "dns_zone", "shared-zone.test.", ctx)

    assert "shop.shared-zone.test" in message
    assert await soa_rcode(powerdns, "shared-zone.test.") == (dns.rcode.NOERROR, 1)


def make_lineage(root: Path, name: str, domains: list[str]) -> None:
    """A certbot lineage as certbot lays it out: live/ links into archive/."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), False)
        .sign(key, hashes.SHA256())
    )
    archive, live = root / "archive" / name, root / "live" / name
    archive.mkdir(parents=True)
    live.mkdir(parents=True)
    (root / "renewal").mkdir(exist_ok=True)
    (archive / "cert1.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (archive / "privkey1.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for part in ("cert", "privkey"):
        (live / f"{part}.pem").symlink_to(f"../../archive/{name}/{part}1.pem")
    (root / "renewal" / f"{name}.conf").write_text(f"archive_dir = {archive}\n")


async def test_a_certificate_is_removed_unless_it_covers_another_live_service(
    tmp_path: Path,
) -> None:
    env = {"LETSENCRYPT_DIR": str(tmp_path)}
    make_lineage(tmp_path, "customer.test", ["customer.test", "www.customer.test"])
    make_lineage(tmp_path, "shared.test", ["customer2.test", "*.shared.test"])
    ctx = context(other_domains=["shop.shared.test", "elsewhere.test"])

    result = await delete(env, "tls_certificate", "customer.test", ctx)
    message = await refused(env, "tls_certificate", "shared.test", ctx)

    assert result.verified and result.resources[0].items == 3
    for gone in ("live/customer.test", "archive/customer.test", "renewal/customer.test.conf"):
        assert not os.path.lexists(tmp_path / gone)
    assert "shop.shared.test" in message and "elsewhere" not in message
    assert (tmp_path / "archive" / "shared.test" / "privkey1.pem").is_file()
    assert (await delete(env, "tls_certificate", "customer.test", ctx)).verified


async def test_cron_jobs_of_the_user_are_removed_and_the_running_one_ended(
    users: Users,
) -> None:
    name = users.add()
    uid = pwd.getpwnam(name).pw_uid
    ticks = users.hosting_root / name / "ticks"
    job = f"* * * * * echo tick >> {ticks}\n"
    subprocess.run(["crontab", "-u", name, "-"], input=job.encode(), check=True)
    # A job cron started and that is still writing. cron starts jobs only on the minute,
    # so a stand-in for its per-job child (a root process named CRON) starts the job.
    writer = f"while :; do echo tick >> {ticks}; sleep 0.2; done"
    users.run_as_cron_job(name, writer)
    await assert_eventually(lambda: ticks.exists() and cron_jobs_of(uid), "the job writing")
    assert await inventory_items({}, "cron", name) == 1

    result = await delete({}, "cron", name)

    assert result.verified and result.resources[0].items == 1
    assert "ended" in (result.resources[0].detail or "")
    assert cron_jobs_of(uid) == []  # the only writer is gone: the file no longer grows
    listed = subprocess.run(["crontab", "-u", name, "-l"], capture_output=True, text=True)
    assert listed.returncode != 0 and "no crontab" in listed.stderr
    assert not Path("/var/spool/cron/crontabs", name).exists()
    assert (await delete({}, "cron", name)).verified


async def test_a_user_with_a_running_process_is_ended_and_removed(users: Users) -> None:
    env = {"HOSTING_ROOT": str(users.hosting_root)}
    name = users.add()
    home = Path(pwd.getpwnam(name).pw_dir)
    uid = pwd.getpwnam(name).pw_uid
    users.run_as(name, "sleep", "600")
    await assert_eventually(lambda: processes_of(uid), "the user's process")
    # What it owns outside the service's folders: its home (kept by userdel) and a file
    # in /tmp; the document root (already emptied by the files step) is not searched.
    owned = 1 + len(list(home.rglob("*"))) + 1  # the home, what useradd put in it, the file
    (home / "www").mkdir()
    (home / "www" / "index.html").touch()
    left_in_tmp = Path(tempfile.mkstemp(prefix="bajas-left-")[1])
    os.chown(left_in_tmp, uid, -1)

    try:
        result = await delete(env, "system_user", name, context(document_root=str(home / "www")))
    finally:
        kept = left_in_tmp.exists()
        left_in_tmp.unlink()

    assert result.verified
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    assert processes_of(uid) == []
    assert home.is_dir() and kept
    detail = result.resources[0].detail or ""
    assert f"{owned} files of uid {uid} left in place" in detail and str(home) in detail
    assert (await delete(env, "system_user", name)).verified


@pytest.mark.parametrize("name", ["root", "daemon", "nobody"])
async def test_system_accounts_are_refused(name: str, tmp_path: Path) -> None:
    env = {"HOSTING_ROOT": str(tmp_path)}
    message = await refused(env, "system_user", name)
    assert "system account" in message or "uid" in message
    assert pwd.getpwnam(name)
    if name != "root":
        assert "uid" in await refused(env, "cron", name)


async def test_a_user_whose_home_is_outside_the_hosting_root_is_refused(
    users: Users, tmp_path: Path
) -> None:
    name = users.add()
    message = await refused({"HOSTING_ROOT": str(tmp_path)}, "system_user", name)
    assert "HOSTING_ROOT" in message
    assert pwd.getpwnam(name)


@pytest.mark.parametrize(
    ("kinds", "expected"),
    [
        (
            ["system_user", "cron", "dns_zone", "nginx_site"],
            "Apenas empieza la eliminación, el sitio deja de responder, el dominio deja de"
            " resolverse en nuestros servidores y las tareas programadas se detienen.",
        ),
        (["cron"], "Apenas empieza la eliminación, las tareas programadas se detienen."),
        (["mariadb_database", "system_user"], None),
    ],
)
def test_the_customer_is_told_only_what_stops_for_the_kinds_present(
    kinds: list[str], expected: str | None
) -> None:
    assert stops_at_once(kinds) == expected


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("nginx_site", "../../etc/passwd"),
        ("nginx_site", ".hidden"),
        ("php_fpm_pool", "pools/other.conf"),
        ("tls_certificate", ".."),
        ("tls_certificate", "README"),
        ("dns_zone", "com."),
        ("dns_zone", "example.com"),
        ("dns_zone", "Example.com."),
        ("cron", "root"),
        ("cron", "a user"),
        ("system_user", "Root"),
    ],
)
async def test_names_a_kind_does_not_accept_are_refused_before_anything(
    kind: str, name: str, tmp_path: Path
) -> None:
    env = {"PHP_FPM_RELOAD": "true", "NGINX_TEST": "true", "NGINX_RELOAD": "true"}
    env |= {"PDNS_API_URL": "http://127.0.0.1:9", "PDNS_API_KEY": "k"}
    folders = ("NGINX_SITES_AVAILABLE", "NGINX_SITES_ENABLED", "PHP_FPM_POOL_DIR")
    env |= {s: str(tmp_path) for s in (*folders, "LETSENCRYPT_DIR", "HOSTING_ROOT")}
    message = await refused(env, kind, name)
    assert name in message and "not a folder" not in message


def test_the_kinds_are_installed_in_a_safe_order() -> None:
    kinds = load_kinds({})
    assert {"nginx_site", "php_fpm_pool", "cron", "dns_zone", "tls_certificate"} <= set(kinds)
    assert {"files", "mailboxes"} <= kinds["nginx_site"].before
    assert "files" in kinds["php_fpm_pool"].before and "files" in kinds["cron"].before
    assert "nginx_site" in kinds["dns_zone"].after
    assert "nginx_site" in kinds["tls_certificate"].after
    assert kinds["system_user"].after == {"*"}


# Each folder setting and the kind that reads it.
FOLDER_SETTINGS = {
    "NGINX_SITES_AVAILABLE": "nginx_site",
    "NGINX_SITES_ENABLED": "nginx_site",
    "PHP_FPM_POOL_DIR": "php_fpm_pool",
    "LETSENCRYPT_DIR": "tls_certificate",
    "HOSTING_ROOT": "system_user",
}


@pytest.mark.parametrize("setting", FOLDER_SETTINGS)
async def test_a_folder_setting_naming_no_folder_refuses_instead_of_finding_nothing(
    setting: str, tmp_path: Path
) -> None:
    env = {"PHP_FPM_RELOAD": "true", "NGINX_TEST": "true", "NGINX_RELOAD": "true"}
    env |= {s: str(tmp_path) for s in ("NGINX_SITES_AVAILABLE", "NGINX_SITES_ENABLED")}
    env[setting] = str(tmp_path / "missing")
    message = await refused(env, FOLDER_SETTINGS[setting], "shop")
    assert setting in message and "not a folder" in message


async def test_a_powerdns_that_does_not_answer_fails_the_attempt_to_be_tried_again() -> None:
    env = {"PDNS_API_URL": f"http://127.0.0.1:{free_port()}", "PDNS_API_KEY": "k"}
    with pytest.raises(ApplicationError) as caught:
        await delete(env, "dns_zone", "customer.test.")
    assert caught.value.type == "ServerUnavailable" and not caught.value.non_retryable
    assert "PowerDNS API" in caught.value.message
