"""Panel sessions, the clave throttle and the network in front of the app (issue 10).

Sessions live in `bajas.panel_sessions`: "Salir" and `bajas set-password` end them, 8
hours from sign-in is the end whatever happens meanwhile, and the cookie names nobody.
Failed claves are throttled per customer number and per client address, with the same
answer as a wrong clave. Behind https: `Secure` cookies and HSTS, `X-Forwarded-*` only from
trusted proxies, and nothing built from the `Host` header. Client addresses are chosen
per request through `httpx.ASGITransport`; time passing is played by moving timestamps
back in the database.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from itsdangerous import TimestampSigner

from bajas.config import Settings
from starter.api import security
from starter.api.app import create_app
from starter.api.throttle import Keys, Rules
from tests.conftest import Stack
from tests.conftest_api import api_settings, app  # noqa: F401 - fixtures
from tests.panel_http import (
    CLAVE,
    WRONG_ANSWER,
    WRONG_CLAVE,
    client,
    cookie_payload,
    customer_with_clave,
    new_address,
    post_form,
    sign_in,
    signed_in,
    try_sign_in,
)
from tests.test_cli import bajas

pytestmark = pytest.mark.integration


async def sessions_of(stack: Stack, customer_id: int) -> list[dict[str, Any]]:
    rows = await stack.pool.fetch(
        "select created_at, expires_at, revoked_at, revoked_because from bajas.panel_sessions"
        " where customer_id = $1 order by created_at",
        customer_id,
    )
    return [dict(r) for r in rows]


def with_cookies(app: FastAPI, source: httpx.AsyncClient) -> httpx.AsyncClient:  # noqa: F811
    """Another browser holding a copy of `source`'s cookie."""
    copy = client(app)
    copy.cookies.update(source.cookies)
    return copy


@pytest.fixture(scope="module")
def throttled(
    stack: Stack,
    api_settings: Settings,  # noqa: F811
) -> FastAPI:
    """The panel with the default throttle (the shared app counts per number only)."""
    settings = api_settings.model_copy(update={"sign_in_address_factor": 1})
    return create_app(settings, client=stack.client, pool=stack.pool)


# ---- sessions ------------------------------------------------------------------------------


async def test_salir_ends_the_session_for_every_copy_of_the_cookie(
    app: FastAPI,  # noqa: F811
    stack: Stack,
) -> None:
    cid, number, _ = await customer_with_clave(stack)
    async with client(app) as http:
        await sign_in(http, number)
        async with with_cookies(app, http) as thief:
            assert signed_in(await thief.get("/panel/", follow_redirects=True))
            page = await post_form(http, "/panel/salir")
            assert "Cerró la sesión." in page.text
            r = await thief.get("/panel/", follow_redirects=True)
            assert not signed_in(r) and r.url.path == "/panel/ingresar"
    [session] = await sessions_of(stack, cid)
    assert session["revoked_because"] == "signed out" and session["revoked_at"] is not None


async def test_set_password_ends_every_session(app: FastAPI, stack: Stack) -> None:  # noqa: F811
    cid, number, _ = await customer_with_clave(stack)
    async with client(app) as one, client(app) as two:
        await sign_in(one, number)
        await sign_in(two, number)
        run = await bajas(stack, "set-password", "--customer", str(cid), stdin="otra clave 456\n")
        assert run.code == 0, run
        assert "panel sessions ended: 2" in run.out
        for http in (one, two):
            r = await http.get("/panel/", follow_redirects=True)
            assert r.url.path == "/panel/ingresar"
        # The old clave no longer opens one; the new one does.
        assert (await try_sign_in(one, number)).status_code == 200
        await sign_in(one, number, "otra clave 456")
    assert [s["revoked_because"] for s in await sessions_of(stack, cid)] == [
        "clave changed",
        "clave changed",
        None,
    ]


async def test_eight_hours_from_sign_in_whatever_happens_meanwhile(
    app: FastAPI,  # noqa: F811
    stack: Stack,
) -> None:
    cid, number, _ = await customer_with_clave(stack)
    svc = await stack.panel.service((cid, "x@example.test"), mailboxes=0, files=1)
    async with client(app) as http:
        await sign_in(http, number)
        [opened] = await sessions_of(stack, cid)
        assert opened["expires_at"] - opened["created_at"] == timedelta(hours=8)
        for path in ("/panel/", f"/panel/servicios/{svc.service_id}", "/panel/"):
            assert (await http.get(path)).status_code == 200
        [used] = await sessions_of(stack, cid)
        assert used["expires_at"] == opened["expires_at"]  # use does not extend it
        # Eight hours after sign-in (moved back in the table, as time would):
        await stack.pool.execute(
            "update bajas.panel_sessions set created_at = created_at - interval '8 hours',"
            " expires_at = expires_at - interval '8 hours' where customer_id = $1",
            cid,
        )
        r = await http.get("/panel/", follow_redirects=True)
        assert r.url.path == "/panel/ingresar"


async def test_the_cookie_names_nobody_and_cannot_be_minted(
    app: FastAPI,  # noqa: F811
    api_settings: Settings,  # noqa: F811
    stack: Stack,
) -> None:
    cid, number, email = await customer_with_clave(stack)
    svc = await stack.panel.service((cid, email), mailboxes=0, files=1)
    async with client(app) as http:
        await sign_in(http, number)
        payload = cookie_payload(http)
        assert set(payload) <= {"sid", "csrf", "flash"}
        assert str(cid) not in str(payload) and number not in str(payload)
        # The message waiting in the cookie after a request names no address.
        token = payload["csrf"]
        await http.post(f"/panel/servicios/{svc.service_id}/baja", data={"csrf_token": token})
        assert email not in str(cookie_payload(http))
        await post_form(http, f"/panel/servicios/{svc.service_id}/desistir")
        # The database keeps a digest of the session id, not the id.
        sid = payload["sid"]
        stored = await stack.pool.fetchval(
            "select count(*) from bajas.panel_sessions where id_hash = $1",
            hashlib.sha256(sid.encode()).digest(),
        )
        assert stored == 1

    # A cookie signed with the key, naming a customer the old way, or an unknown session:
    key = security.session_secret(api_settings)
    for forged in ({"customer_id": cid, "csrf": "x"}, {"sid": "made-up", "csrf": "x"}):
        data = base64.b64encode(json.dumps(forged).encode())
        cookie = TimestampSigner(key).sign(data).decode()
        async with client(app, cookies={"bajas_panel": cookie}) as forger:
            r = await forger.get("/panel/", follow_redirects=True)
            assert r.url.path == "/panel/ingresar"


# ---- the clave throttle ----------------------------------------------------------------------


def test_the_delay_grows_then_locks() -> None:
    rules = Rules(delay_after=5, lock_after=10, lock=timedelta(minutes=5))
    waits = [rules.wait_after(n).total_seconds() for n in range(12)]
    assert waits == [0, 0, 0, 0, 0, 1, 2, 4, 8, 16, 300, 300]
    assert rules.wait_after(10, address=False) == timedelta(minutes=5)
    wide = Rules(address_factor=4)
    assert wide.wait_after(19, address=True) == timedelta(0)
    assert wide.wait_after(20, address=True) == timedelta(seconds=1)


async def age_failures(stack: Stack, number: str, seconds: float) -> None:
    """As if the number's last failed sign-in had happened `seconds` earlier (later, when
    negative: "just now", however slow this machine is)."""
    await stack.pool.execute(
        "update bajas.sign_in_failures set last_failure_at = last_failure_at - $2::interval"
        " where key_hash = $1",
        Keys.of(number, None).number,
        timedelta(seconds=seconds),
    )


async def answers(app: FastAPI, attempts: list[tuple[str, str, str]]) -> list[str]:  # noqa: F811
    """Sign in with each (address, number, clave); 'in' or 'wrong' for each answer."""
    said = []
    for address, number, clave in attempts:
        async with client(app, address) as http:
            r = await try_sign_in(http, number, clave)
        assert r.status_code in (200, 303), r.text
        if r.status_code == 303:
            said.append("in")
        else:
            assert WRONG_ANSWER in r.text
            said.append("wrong")
    return said


async def test_a_number_is_throttled_from_any_address(throttled: FastAPI, stack: Stack) -> None:
    cid, number, _ = await customer_with_clave(stack)
    guesses = [(new_address(), number, WRONG_CLAVE) for _ in range(5)]
    assert await answers(throttled, guesses) == ["wrong"] * 5
    # Within a second of the fifth failure even the right clave is not checked: same answer.
    await age_failures(stack, number, -30)
    assert await answers(throttled, [(new_address(), number, CLAVE)]) == ["wrong"]
    await age_failures(stack, number, 31.5)
    assert await answers(throttled, [(new_address(), number, CLAVE)]) == ["in"]

    # Ten failures: a short lock. Past it, the right clave opens a session again.
    for _ in range(10):
        await age_failures(stack, number, 20)
        assert await answers(throttled, [(new_address(), number, WRONG_CLAVE)]) == ["wrong"]
    await age_failures(stack, number, 20)
    assert await answers(throttled, [(new_address(), number, CLAVE)]) == ["wrong"]
    await age_failures(stack, number, 5 * 60)
    assert await answers(throttled, [(new_address(), number, CLAVE)]) == ["in"]
    assert len(await sessions_of(stack, cid)) == 2


async def test_an_address_is_throttled_across_numbers(throttled: FastAPI, stack: Stack) -> None:
    _, number, _ = await customer_with_clave(stack)
    guesser = new_address()
    await answers(throttled, [(guesser, f"N{n}-{guesser}", WRONG_CLAVE) for n in range(10)])
    assert await answers(throttled, [(guesser, number, CLAVE)]) == ["wrong"]
    assert await answers(throttled, [(new_address(), number, CLAVE)]) == ["in"]


async def test_throttled_unknown_and_wrong_answer_alike(throttled: FastAPI, stack: Stack) -> None:
    _, number, _ = await customer_with_clave(stack)
    pages = []
    for numero, clave in ((number, WRONG_CLAVE), ("nadie-tiene-este-numero", CLAVE)):
        async with client(throttled) as http:
            pages.append((await try_sign_in(http, numero, clave)).text)
    for _ in range(5):
        await answers(throttled, [(new_address(), number, WRONG_CLAVE)])
    await age_failures(stack, number, -30)
    async with client(throttled) as http:
        pages.append((await try_sign_in(http, number, CLAVE)).text)

    def without_token(html: str) -> str:
        return "".join(line for line in html.splitlines() if "csrf_token" not in line)

    assert len({without_token(p).replace("nadie-tiene-este-numero", number) for p in pages}) == 1


async def test_argon2_checks_are_bounded(
    stack: Stack,
    api_settings: Settings,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Six guessers at once: with SIGN_IN_CONCURRENCY=2 never more than two checks run."""
    own = create_app(
        api_settings.model_copy(update={"sign_in_concurrency": 2}),
        client=stack.client,
        pool=stack.pool,
    )
    running, most = 0, 0
    real = security._verify
    count = threading.Lock()
    two_at_once = threading.Event()

    def counted(password_hash: str | None, clave: str) -> bool:
        """Each check holds its slot until two run together, so more would pile up."""
        nonlocal running, most
        with count:
            running += 1
            most = max(most, running)
            if running >= 2:
                two_at_once.set()
        try:
            two_at_once.wait(timeout=10)
            time.sleep(0.1)
            return real(password_hash, clave)
        finally:
            with count:
                running -= 1

    monkeypatch.setattr(security, "_verify", counted)
    customers = [await customer_with_clave(stack) for _ in range(6)]
    said = await asyncio.gather(
        *(answers(own, [(new_address(), number, WRONG_CLAVE)]) for _, number, _ in customers)
    )
    assert said == [["wrong"]] * 6
    assert most == 2


# ---- https, proxies, host names ------------------------------------------------------------


def cookie_flags(r: httpx.Response) -> list[str]:
    return [v for k, v in r.headers.multi_items() if k == "set-cookie"]


async def test_https_gets_secure_cookies_and_hsts(
    api_settings: Settings,  # noqa: F811
    stack: Stack,
) -> None:
    plain = create_app(api_settings, client=stack.client, pool=stack.pool)
    proxied = create_app(
        api_settings.model_copy(update={"trusted_proxies": ["10.0.0.0/8"]}),
        client=stack.client,
        pool=stack.pool,
    )
    always = create_app(
        api_settings.model_copy(update={"https_only": True}), client=stack.client, pool=stack.pool
    )
    https = {"X-Forwarded-Proto": "https"}

    async def visit(app_: FastAPI, address: str, base_url: str, **headers: str) -> httpx.Response:
        async with client(app_, address, base_url=base_url) as http:
            return await http.get("/panel/ingresar", headers=headers)

    r = await visit(plain, "203.0.113.5", "https://bajas.test")
    assert all("Secure" in c for c in cookie_flags(r)) and cookie_flags(r)
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")
    r = await visit(plain, "203.0.113.5", "http://bajas.test")
    assert cookie_flags(r) and not any("Secure" in c for c in cookie_flags(r))
    assert "Strict-Transport-Security" not in r.headers
    # X-Forwarded-Proto from anyone but a trusted proxy is ignored ...
    r = await visit(plain, "203.0.113.5", "http://bajas.test", **https)
    assert "Strict-Transport-Security" not in r.headers
    r = await visit(proxied, "203.0.113.5", "http://bajas.test", **https)
    assert "Strict-Transport-Security" not in r.headers
    # ... and believed from one.
    r = await visit(proxied, "10.1.2.3", "http://bajas.test", **https)
    assert all("Secure" in c for c in cookie_flags(r)) and "Strict-Transport-Security" in r.headers
    r = await visit(always, "203.0.113.5", "http://bajas.test")
    assert all("Secure" in c for c in cookie_flags(r)) and "Strict-Transport-Security" in r.headers


async def test_the_throttle_counts_the_address_a_trusted_proxy_saw(
    api_settings: Settings,  # noqa: F811
    stack: Stack,
) -> None:
    proxy = "10.9.9.9"
    own = create_app(
        api_settings.model_copy(update={"trusted_proxies": [proxy], "sign_in_address_factor": 1}),
        client=stack.client,
        pool=stack.pool,
    )
    _, number, _ = await customer_with_clave(stack)
    guesser, other = new_address(), new_address()

    async def through_proxy(visitor: str, numero: str, clave: str) -> int:
        async with client(own, proxy, headers={"X-Forwarded-For": visitor}) as http:
            return (await try_sign_in(http, numero, clave)).status_code

    for n in range(10):
        assert await through_proxy(guesser, f"P{n}-{guesser}", WRONG_CLAVE) == 200
    assert await through_proxy(guesser, number, CLAVE) == 200  # the guesser's address locked
    assert await through_proxy(other, number, CLAVE) == 303  # not everyone behind the proxy


async def test_nothing_is_built_from_the_host_header(
    app: FastAPI,  # noqa: F811
    api_settings: Settings,  # noqa: F811
    stack: Stack,
) -> None:
    async with client(app, headers={"Host": "evil.test"}) as http:
        r = await http.get("/panel/")
        assert (r.status_code, r.headers["Location"]) == (303, "/panel/ingresar")
        assert (await http.get("/")).headers["Location"] == "/panel/"
        form = await http.get("/panel/ingresar")
        assert 'action="/panel/ingresar"' in form.text
        assert "evil.test" not in form.text
    pinned = create_app(
        api_settings.model_copy(update={"public_hosts": ["panel.example.test"]}),
        client=stack.client,
        pool=stack.pool,
    )
    async with client(pinned, headers={"Host": "evil.test"}) as http:
        assert (await http.get("/panel/ingresar")).status_code == 400
    async with client(pinned, headers={"Host": "panel.example.test"}) as http:
        assert (await http.get("/panel/ingresar")).status_code == 200
