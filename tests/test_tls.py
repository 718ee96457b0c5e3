"""TLS to Temporal, proven: nginx's stream module terminates TLS in front of the session's
dev server, demands a client certificate from the test's CA and speaks h2 by ALPN.

The worker, the API and the CLI, each a process configured only by TEMPORAL_TLS_*,
carry a cancellation through it; a client without a certificate, or with one from
another CA, gets one line naming the server and the setting.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from bajas.models import State
from tests.conftest import Stack
from tests.conftest_api import wait_for_mails
from tests.helpers import REPO, assert_eventually, free_port, port_open
from tests.helpers.mail import code_in
from tests.helpers.tls import Authority, KeyPair, nginx_missing, tls_proxy
from tests.test_api import base
from tests.test_cli import _command, assert_one_error_line, bajas, stack_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(nginx_missing() is not None, reason=nginx_missing() or ""),
]

TOKEN = "tls-token-" + uuid.uuid4().hex


@dataclass
class Proxy:
    address: str
    ca: Path
    client: KeyPair
    stranger: KeyPair

    def env(self, client: KeyPair | None) -> dict[str, Any]:
        """TEMPORAL_* of a process that reaches Temporal through the proxy as `client`."""
        env: dict[str, Any] = {
            "TEMPORAL_ADDRESS": self.address,
            "TEMPORAL_TLS": "true",
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(self.ca),
        }
        if client is not None:
            env["TEMPORAL_TLS_CLIENT_CERT_PATH"] = str(client.cert)
            env["TEMPORAL_TLS_CLIENT_KEY_PATH"] = str(client.key)
        return env


@pytest.fixture(scope="module")
def proxy(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    folder = tmp_path_factory.mktemp("tls")
    ca, other = Authority(folder, "bajas"), Authority(folder, "other")
    server = ca.issue("temporal", server=True)
    upstream = stack.client.service_client.config.target_host
    with tls_proxy(folder, upstream, server, client_ca=ca.cert) as address:
        yield Proxy(
            address,
            ca.cert,
            client=ca.issue("client", server=False),
            stranger=other.issue("stranger", server=False),
        )


@pytest_asyncio.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Processes a test starts; each gets SIGTERM and is awaited at the end."""
    started: list[asyncio.subprocess.Process] = []
    yield started
    for proc in started:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    for proc in started:
        await asyncio.wait_for(proc.wait(), 40)


async def test_worker_api_and_cli_carry_a_cancellation_over_mtls(
    stack: Stack, proxy: Proxy, processes: list[asyncio.subprocess.Process]
) -> None:
    queue = f"tls-{uuid.uuid4()}"
    settings = stack.settings
    env = stack_env(
        stack,
        **proxy.env(proxy.client),
        TEMPORAL_TASK_QUEUE=queue,
        SMTP_HOST=settings.smtp_host,
        SMTP_PORT=str(settings.smtp_port),
        HOSTING_ROOT=str(settings.hosting_root),
        MAIL_ROOT=str(settings.mail_root),
        CODE_HMAC_KEY=settings.code_hmac_key.get_secret_value(),  # type: ignore[union-attr]
        PANEL_API_TOKEN=TOKEN,
        PANEL_SESSION_SECRET="tls-session-" + uuid.uuid4().hex,
    )
    api_port = free_port()
    for argv in ([sys.executable, "worker.py"], [*_command(), "api", "--port", str(api_port)]):
        processes.append(
            await asyncio.create_subprocess_exec(
                *argv, env=env, cwd=REPO, stdout=asyncio.subprocess.DEVNULL
            )
        )
    await assert_eventually(lambda: port_open(api_port), "the API to listen")

    svc = await stack.panel.service(files=3, mailboxes=1)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{api_port}", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as http:
        r = await http.post(base(svc), json={})
        assert r.status_code == 202, r.text
    (mail,) = await wait_for_mails(stack, svc.domain, 1)
    tls_only = proxy.env(proxy.client) | {"TEMPORAL_TASK_QUEUE": queue}
    run = await bajas(
        stack, "confirm", "--service", str(svc.service_id), "--code", code_in(mail), **tls_only
    )
    assert run.code == 0 and "confirmed" in run.out, run

    result = await asyncio.wait_for(stack.cancellations.result(svc.service_id), 30)
    assert result.state is State.CANCELLED
    run = await bajas(stack, "status", "--service", str(svc.service_id), "--json", **tls_only)
    assert run.code == 0 and '"state": "cancelled"' in run.out, run
    run = await bajas(stack, "check", **tls_only)
    assert "ok    Temporal: reached at" in run.out and "(TLS with a client certificate)" in run.out


@pytest.mark.parametrize(
    ("who", "names"),
    [
        (None, "the server demands a client certificate: set TEMPORAL_TLS_CLIENT_CERT_PATH"),
        ("stranger", "the server refused the client certificate (TEMPORAL_TLS_CLIENT_CERT_PATH)"),
    ],
)
async def test_a_client_without_an_accepted_certificate_gets_one_line(
    stack: Stack, proxy: Proxy, who: str | None, names: str
) -> None:
    client = None if who is None else proxy.stranger
    run = await bajas(stack, "status", "--service", "1", **proxy.env(client))
    assert_one_error_line(
        run, 1, f"cannot reach Temporal at {proxy.address} (TEMPORAL_ADDRESS)", names
    )
