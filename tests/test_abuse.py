"""Abuse limits (issue 10, docs/SECURITY.md) on the real stack, through every channel.

Guesses across requests: wrong codes through the API, the `confirm` signal and the
`confirm_code` update all count; a lock cools a service down, longer each time, and a few
locks in a day need `bajas unlock`. Requests and resends per hour. The lock notice mail.
A name or domain no mail header can carry. The token, the docs and the mail viewer.

Time passing is played by moving a lock's `finished_at` back in the request row (the
audit trail is append-only); nothing here waits for a clock.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from pydantic import SecretStr
from temporalio.client import WorkflowExecutionStatus

from activities.mail import Mailer, SmtpSettings
from bajas.config import ConfigError, Settings
from bajas.dev.mailsink import SunkMessage
from bajas.models import MAX_WRONG_CODES, ConfirmInput, ConfirmResult, State
from starter.api.app import create_app
from starter.client import CancellationClient, CancellationError
from tests.conftest import Stack
from tests.conftest_api import (  # noqa: F401 - fixtures
    TOKEN,
    api,
    api_settings,
    app,
    wait_for_mails,
    wrong,
)
from tests.helpers import assert_eventually, free_port
from tests.helpers.mail import code_in, mails_about
from tests.helpers.panel import ServiceFixture
from tests.panel_http import client, give_clave, post_form, sign_in
from tests.test_cli import assert_one_error_line, bajas
from worker import build_worker

pytestmark = pytest.mark.integration

LOCK_SUBJECT = "Intento de baja bloqueado"


def base(svc: ServiceFixture) -> str:
    return f"/api/customers/{svc.customer_id}/services/{svc.service_id}/cancellation"


def code_mails(stack: Stack, svc: ServiceFixture) -> list[SunkMessage]:
    return [m for m in mails_about(stack.mail, svc.domain) if "código" in m.subject.lower()]


def lock_mails(stack: Stack, svc: ServiceFixture) -> list[SunkMessage]:
    return [m for m in mails_about(stack.mail, svc.domain) if LOCK_SUBJECT in m.subject]


async def next_code(stack: Stack, svc: ServiceFixture, before: int) -> str:
    """The code of the mail after the `before` code mails already there."""
    mails = await assert_eventually(
        lambda: code_mails(stack, svc)[before:], f"code mail #{before + 1} of {svc.domain}"
    )
    return code_in(mails[0])


async def requests_of(stack: Stack, svc: ServiceFixture) -> list[str]:
    rows = await stack.pool.fetch(
        "select state from bajas.cancellation_requests where service_id = $1 order by requested_at",
        svc.service_id,
    )
    return [r["state"] for r in rows]


async def age_locks(stack: Stack, svc: ServiceFixture, minutes: int) -> None:
    """As if the service's locks had happened `minutes` earlier."""
    await stack.pool.execute(
        "update bajas.cancellation_requests set finished_at = finished_at - $2::interval"
        " where service_id = $1 and state = 'locked'",
        svc.service_id,
        timedelta(minutes=minutes),
    )


async def wrong_guesses(
    stack: Stack,
    api: httpx.AsyncClient,  # noqa: F811
    svc: ServiceFixture,
    via: str,
    count: int,
) -> None:
    """Request through the API, then `count` wrong codes through `via`."""
    before = len(code_mails(stack, svc))
    r = await api.post(base(svc))
    assert r.status_code == 202, r.text
    bad = wrong(await next_code(stack, svc, before))
    handle = stack.cancellations.handle(svc.service_id)
    for n in range(1, count + 1):
        if via == "api":
            r = await api.post(base(svc) + "/confirm", json={"code": bad})
            assert (r.status_code, r.json()["attempts_left"]) == (422, MAX_WRONG_CODES - n)
        elif via == "update":
            answer = await handle.execute_update(
                "confirm_code", ConfirmInput(code=bad), result_type=ConfirmResult
            )
            assert answer.attempts_left == MAX_WRONG_CODES - n
        else:
            await handle.signal("confirm", ConfirmInput(code=bad))
            await assert_eventually(_attempts_left(stack, svc, n), f"wrong code #{n} counted")


def _attempts_left(
    stack: Stack, svc: ServiceFixture, counted: int
) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        status = await stack.cancellations.status(svc.service_id)
        return status.attempts_left == MAX_WRONG_CODES - counted

    return probe


async def lock_once(
    stack: Stack,
    api: httpx.AsyncClient,  # noqa: F811
    svc: ServiceFixture,
    via: str,
) -> None:
    locks = len(lock_mails(stack, svc))
    await wrong_guesses(stack, api, svc, via, MAX_WRONG_CODES)
    result = await asyncio.wait_for(stack.cancellations.result(svc.service_id), 30)
    assert result.state is State.LOCKED
    await assert_eventually(lambda: len(lock_mails(stack, svc)) > locks, "the lock notice")


async def withdraw(api: httpx.AsyncClient, svc: ServiceFixture) -> None:  # noqa: F811
    r = await api.delete(base(svc))
    assert r.status_code == 200, r.text


# ---- guesses across requests -----------------------------------------------------------------


async def test_locks_cool_down_longer_each_time_then_need_an_operator(
    api: httpx.AsyncClient,  # noqa: F811
    app: FastAPI,  # noqa: F811
    stack: Stack,
) -> None:
    svc = await stack.panel.service()

    # Lock 1, wrong codes through the API. The customer hears of it.
    await lock_once(stack, api, svc, "api")
    [notice] = lock_mails(stack, svc)
    assert svc.email in notice.to
    assert f"Alguien intentó dar de baja el servicio {svc.domain}" in notice.body
    assert "no se borró nada" in notice.body
    assert (
        await stack.pool.fetchval(
            "select count(*) from bajas.sent_mails m join bajas.cancellation_requests r"
            " using (run_id) where r.service_id = $1 and m.kind = 'locked'",
            svc.service_id,
        )
        == 1
    )

    # At once again: 429 with about 15 minutes to wait; nothing starts, nothing is mailed.
    r = await api.post(base(svc))
    assert r.status_code == 429, r.text
    assert "too many wrong codes" in r.json()["detail"]
    assert 800 < int(r.headers["Retry-After"]) <= 901
    assert await requests_of(stack, svc) == ["locked"]
    assert len(code_mails(stack, svc)) == 1

    # Around the API, straight to Temporal: the worker's own check refuses the run.
    answer = await stack.cancellations.request(
        svc.service_id, svc.customer_id, requested_by="around the API"
    )
    assert answer.status.state is State.REJECTED
    assert (answer.status.rejection_reason or "").startswith("too_many_guesses: ")
    assert "requested again after" in (answer.status.rejection_reason or "")
    assert await requests_of(stack, svc) == ["locked", "rejected"]
    assert len(code_mails(stack, svc)) == 1

    # 16 minutes later it may be requested; lock 2, through the `confirm` signal.
    await age_locks(stack, svc, 16)
    await lock_once(stack, api, svc, "signal")
    r = await api.post(base(svc))
    assert r.status_code == 429
    assert 3500 < int(r.headers["Retry-After"]) <= 3601  # four times as long

    # An hour later; lock 3, through the `confirm_code` update: now only an operator helps.
    await age_locks(stack, svc, 61)
    await lock_once(stack, api, svc, "update")
    await age_locks(stack, svc, 600)
    r = await api.post(base(svc))
    assert r.status_code == 429
    assert "Retry-After" not in r.headers
    assert f"`bajas unlock --service {svc.service_id}`" in r.json()["detail"]
    assert await requests_of(stack, svc) == ["locked", "rejected", "locked", "locked"]
    assert len(code_mails(stack, svc)) == 3
    assert len(lock_mails(stack, svc)) == 3
    assert await stack.pool.fetchval(
        "select status from services where id = $1", svc.service_id
    ) == ("active")

    # The panel says the same in Spanish, and starts nothing.
    number = await give_clave(stack, svc.customer_id)
    async with client(app) as http:
        await sign_in(http, number)
        page = await post_form(http, f"/panel/servicios/{svc.service_id}/baja")
    assert "quedó bloqueada" in page.text and "Comuníquese con soporte" in page.text
    assert "Le enviamos" not in page.text

    # The CLI: one line.
    cid, sid = str(svc.customer_id), str(svc.service_id)
    run = await bajas(stack, "request", "--customer", cid, "--service", sid)
    assert_one_error_line(run, 1, "too many wrong codes", f"bajas unlock --service {sid}")
    assert await requests_of(stack, svc) == ["locked", "rejected", "locked", "locked"]

    # The operator unlocks, audited with the name; then the service may be requested.
    run = await bajas(stack, "unlock", "--service", sid, "--by", "ana", "--reason", "llamó")
    assert run.code == 0, run
    assert "unlocked by ana" in run.out
    unlocked = await stack.pool.fetch(
        "select actor, details from bajas.audit_trail where service_id = $1 and event = 'unlocked'",
        svc.service_id,
    )
    assert [u["actor"] for u in unlocked] == ["operator:ana"]
    assert '"reason": "llamó"' in unlocked[0]["details"]
    assert "too_many_guesses" in unlocked[0]["details"]
    run = await bajas(stack, "unlock", "--service", sid)
    assert (run.code, "not locked" in run.out) == (0, True), run

    r = await api.post(base(svc))
    assert r.status_code == 202, r.text
    await next_code(stack, svc, 3)
    await withdraw(api, svc)


async def test_wrong_codes_of_withdrawn_requests_count(
    api: httpx.AsyncClient,  # noqa: F811
    stack: Stack,
) -> None:
    """Four wrong codes and a withdrawal, again and again, never lock a request: the
    day's budget of wrong codes (15) still runs out, whatever the channel."""
    svc = await stack.panel.service()
    for via in ("api", "signal", "update", "api"):
        await wrong_guesses(stack, api, svc, via, MAX_WRONG_CODES - 1)
        await withdraw(api, svc)
    wrong_codes = await stack.pool.fetchval(
        "select count(*) from bajas.audit_trail where service_id = $1"
        " and event like 'code_rejected:%'",
        svc.service_id,
    )
    assert wrong_codes == 4 * (MAX_WRONG_CODES - 1)
    r = await api.post(base(svc))
    assert r.status_code == 429
    assert "16 wrong codes in 24 h" in r.json()["detail"]
    assert await requests_of(stack, svc) == ["withdrawn"] * 4


# ---- requests and resends per hour --------------------------------------------------------


@dataclass
class Tight:
    """A worker, a client and an app of their own, with small hourly limits."""

    settings: Settings
    cancellations: CancellationClient
    app: FastAPI
    api: httpx.AsyncClient


TIGHT = {
    "requests_per_service_hour": 2,
    "requests_per_customer_hour": 3,
    "resends_per_service_hour": 2,
    "resends_per_customer_hour": 3,
}


@pytest_asyncio.fixture(scope="module")
async def tight(
    stack: Stack,
    api_settings: Settings,  # noqa: F811
) -> AsyncIterator[Tight]:
    settings = api_settings.model_copy(
        update={**TIGHT, "temporal_task_queue": f"bajas-tight-{uuid.uuid4()}"}
    )
    worker = build_worker(stack.client, settings, stack.pool)
    task = asyncio.create_task(worker.run())
    own = create_app(settings, client=stack.client, pool=stack.pool)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=own),
        base_url="http://bajas.test",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    ) as http:
        yield Tight(
            settings,
            CancellationClient(stack.client, settings.temporal_task_queue),
            own,
            http,
        )
    await worker.shutdown()
    await task


async def test_requests_per_service_and_per_customer_hour(tight: Tight, stack: Stack) -> None:
    customer = await stack.panel.customer()
    one = await stack.panel.service(customer)
    two = await stack.panel.service(customer)
    for _ in range(2):
        assert (await tight.api.post(base(one))).status_code == 202
        await withdraw(tight.api, one)
    r = await tight.api.post(base(one))
    assert r.status_code == 429
    assert f"too many cancellation requests for service {one.service_id}" in r.json()["detail"]
    assert 0 < int(r.headers["Retry-After"]) <= 3601
    # The worker's check holds the same line for a run started around the API.
    answer = await tight.cancellations.request(one.service_id, one.customer_id)
    assert (answer.status.rejection_reason or "").startswith("too_many_requests: ")

    assert (await tight.api.post(base(two))).status_code == 202  # the customer's third
    await withdraw(tight.api, two)
    r = await tight.api.post(base(two))
    assert r.status_code == 429
    assert f"for customer {one.customer_id}" in r.json()["detail"]
    assert await requests_of(stack, one) == ["withdrawn", "withdrawn", "rejected"]
    assert await requests_of(stack, two) == ["withdrawn"]
    assert len(code_mails(stack, one)) == 2 and len(code_mails(stack, two)) == 1


async def test_panel_says_too_many_requests(tight: Tight, stack: Stack) -> None:
    svc = await stack.panel.service()
    number = await give_clave(stack, svc.customer_id)
    async with client(tight.app) as http:
        await sign_in(http, number)
        for _ in range(2):
            page = await post_form(http, f"/panel/servicios/{svc.service_id}/baja")
            assert "Le enviamos un código de confirmación por correo" in page.text
            await post_form(http, f"/panel/servicios/{svc.service_id}/desistir")
        page = await post_form(http, f"/panel/servicios/{svc.service_id}/baja")
    assert "Se pidieron demasiadas bajas o códigos de confirmación en la última hora" in page.text
    assert "Le enviamos" not in page.text
    assert await requests_of(stack, svc) == ["withdrawn", "withdrawn"]


async def test_resends_per_service_and_per_customer_hour(tight: Tight, stack: Stack) -> None:
    customer = await stack.panel.customer()
    one = await stack.panel.service(customer)
    two = await stack.panel.service(customer)
    assert (await tight.api.post(base(one))).status_code == 202
    for left in (2, 1):
        r = await tight.api.post(base(one) + "/resend")
        assert (r.status_code, r.json().get("resends_left")) == (200, left), r.text
    await wait_for_mails(stack, one.domain, 3)
    r = await tight.api.post(base(one) + "/resend")
    assert r.status_code == 429
    assert f"too many new codes for service {one.service_id}" in r.json()["detail"]

    # Around the API, the update reaches the workflow: `issue_code` refuses, mails nothing.
    with pytest.raises(CancellationError, match="too_many_requests"):
        await tight.cancellations.resend(one.service_id)
    status = await tight.cancellations.status(one.service_id)
    assert status.state is State.AWAITING_CONFIRMATION
    assert len(code_mails(stack, one)) == 3
    # ... and the last code mailed still works.
    code = code_in(code_mails(stack, one)[-1])
    r = await tight.api.post(base(one) + "/confirm", json={"code": code})
    assert r.status_code == 200, r.text
    assert (await tight.cancellations.result(one.service_id)).state is State.CANCELLED

    assert (await tight.api.post(base(two))).status_code == 202
    assert (await tight.api.post(base(two) + "/resend")).status_code == 200  # the third
    r = await tight.api.post(base(two) + "/resend")
    assert r.status_code == 429
    assert f"for customer {two.customer_id}" in r.json()["detail"]
    assert len(code_mails(stack, two)) == 2
    await withdraw(tight.api, two)


async def test_panel_resend_refused(tight: Tight, stack: Stack) -> None:
    svc = await stack.panel.service()
    number = await give_clave(stack, svc.customer_id)
    page_of = f"/panel/servicios/{svc.service_id}"
    async with client(tight.app) as http:
        await sign_in(http, number)
        await post_form(http, page_of + "/baja")
        for _ in range(2):
            page = await post_form(http, page_of + "/reenviar")
            assert "Le enviamos un código nuevo por correo" in page.text
        page = await post_form(http, page_of + "/reenviar")
        assert "Se pidieron demasiadas bajas o códigos" in page.text
        await post_form(http, page_of + "/desistir")
    assert len(code_mails(stack, svc)) == 3


# ---- a name or domain no header can carry ---------------------------------------------------


@pytest.mark.parametrize("field", ["name", "domain"])
async def test_line_break_in_name_or_domain_is_refused_readably(
    api: httpx.AsyncClient,  # noqa: F811
    app: FastAPI,  # noqa: F811
    stack: Stack,
    field: str,
) -> None:
    svc = await stack.panel.service()
    if field == "name":
        await stack.pool.execute(
            "update customers set name = 'Ana\r\nBcc: intruso@example.test' where id = $1",
            svc.customer_id,
        )
    else:
        await stack.pool.execute(
            "update services set domain = domain || E'\\r\\nBcc: intruso@example.test'"
            " where id = $1",
            svc.service_id,
        )
    r = await api.post(base(svc))
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert "bad_contact_data" in detail
    assert ("customer name" if field == "name" else "domain") in detail
    assert r.json()["state"] == "rejected"
    result = await asyncio.wait_for(stack.cancellations.result(svc.service_id), 30)
    assert result.state is State.REJECTED

    number = await give_clave(stack, svc.customer_id)
    async with client(app) as http:
        await sign_in(http, number)
        page = await post_form(http, f"/panel/servicios/{svc.service_id}/baja")
    assert "los datos de contacto de su cuenta tienen un error" in page.text
    assert "Le enviamos" not in page.text
    assert stack.mail.to(svc.email) == []
    assert stack.mail.to("intruso@example.test") == []
    assert await requests_of(stack, svc) == ["rejected", "rejected"]


async def test_mail_headers_are_one_line(stack: Stack) -> None:
    """What reaches the SMTP layer anyway travels on one header line, to its one address."""
    mailer = Mailer(
        SmtpSettings(host="127.0.0.1", port=stack.settings.smtp_port, sender="b@x.test")
    )
    tag = uuid.uuid4().hex
    await mailer.send(
        f"{tag}@example.test",
        f"Asunto {tag}\r\nBcc: intruso@example.test",
        "cuerpo",
        to_name="Ana\nBcc: intruso@example.test",
    )
    [sent] = stack.mail.to(f"{tag}@example.test")
    assert sent.rcpt_tos == [f"{tag}@example.test"]
    assert sent.subject == f"Asunto {tag} Bcc: intruso@example.test"
    assert sent.message["Bcc"] is None
    assert stack.mail.to("intruso@example.test") == []


@dataclass
class NoSmtp:
    app: FastAPI
    cancellations: CancellationClient


@pytest_asyncio.fixture(scope="module")
async def no_smtp(
    stack: Stack,
    api_settings: Settings,  # noqa: F811
) -> AsyncIterator[NoSmtp]:
    """A worker whose mail server never answers."""
    settings = api_settings.model_copy(
        update={"smtp_port": free_port(), "temporal_task_queue": f"bajas-nosmtp-{uuid.uuid4()}"}
    )
    worker = build_worker(stack.client, settings, stack.pool)
    task = asyncio.create_task(worker.run())
    yield NoSmtp(
        create_app(settings, client=stack.client, pool=stack.pool),
        CancellationClient(stack.client, settings.temporal_task_queue),
    )
    await worker.shutdown()
    await task


async def test_panel_says_a_code_was_sent_only_once_it_was(no_smtp: NoSmtp, stack: Stack) -> None:
    svc = await stack.panel.service()
    number = await give_clave(stack, svc.customer_id)
    try:
        async with client(no_smtp.app) as http:
            await sign_in(http, number)
            page = await post_form(http, f"/panel/servicios/{svc.service_id}/baja")
        assert "el código de confirmación todavía no salió" in page.text
        assert "Le enviamos" not in page.text
        status = await no_smtp.cancellations.status(svc.service_id)
        assert (status.state, status.code_sent) == (State.AWAITING_CONFIRMATION, False)
    finally:
        handle = no_smtp.cancellations.handle(svc.service_id)
        if (await handle.describe()).status is WorkflowExecutionStatus.RUNNING:
            await handle.terminate(reason="test over")


# ---- the token, the docs, the mail viewer ---------------------------------------------------


@pytest.mark.parametrize(
    "token", ["a" * 16, "abcdefghijklmnop", "passwordpassword", "0123456789abcdef", "short"]
)
def test_weak_api_tokens_are_refused(api_settings: Settings, token: str) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match="PANEL_API_TOKEN"):
        create_app(api_settings.model_copy(update={"panel_api_token": SecretStr(token)}))


async def test_docs_are_public_only_when_a_setting_says_so(
    api_settings: Settings,  # noqa: F811
    stack: Stack,
) -> None:
    answers: dict[str, list[int]] = {}
    for name, update in (
        ("production", {"api_docs": None}),
        ("dev", {"api_docs": None, "dev_mode": True}),
        ("API_DOCS=true", {"api_docs": True}),
        ("dev, API_DOCS=false", {"api_docs": False, "dev_mode": True}),
    ):
        own = create_app(
            api_settings.model_copy(update=update), client=stack.client, pool=stack.pool
        )
        async with client(own) as http:
            answers[name] = [
                (await http.get(path)).status_code for path in ("/openapi.json", "/api/docs")
            ]
    assert answers == {
        "production": [404, 404],
        "dev": [200, 200],
        "API_DOCS=true": [200, 200],
        "dev, API_DOCS=false": [404, 404],
    }


async def test_mail_viewer_only_from_this_machine(
    api_settings: Settings,  # noqa: F811
    stack: Stack,
) -> None:
    settings = api_settings.model_copy(update={"trusted_proxies": ["127.0.0.1"]})
    own = create_app(settings, client=stack.client, pool=stack.pool, mail_sink=stack.mail)

    async def viewer(address: str, **headers: Any) -> tuple[int, bool]:
        async with client(own, address) as http:
            r = await http.get("/dev/mail", headers=headers)
            footer = await http.get("/panel/ingresar", headers=headers)
        return r.status_code, "Correo recibido" in footer.text

    assert await viewer("127.0.0.1") == (200, True)
    assert await viewer("::1") == (200, True)
    assert await viewer("192.0.2.7") == (404, False)
    # A trusted proxy on this machine passing on a remote visitor: still remote.
    assert await viewer("127.0.0.1", **{"X-Forwarded-For": "192.0.2.7"}) == (404, False)
    # A remote visitor claiming to be local: not believed.
    assert await viewer("192.0.2.7", **{"X-Forwarded-For": "127.0.0.1"}) == (404, False)
