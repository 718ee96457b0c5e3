"""The panel and API driven over HTTP from a chosen client address, in process.

`httpx.ASGITransport(client=...)` sets the address the app sees, so tests can play a
remote visitor, a proxy, or several clients without a network.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from typing import Any

import httpx
from argon2 import PasswordHasher
from fastapi import FastAPI

from tests.conftest import Stack

CLAVE = "una clave larga 123"
WRONG_CLAVE = "no es la clave"
WRONG_ANSWER = "Número de cliente o clave incorrectos."
_hash = PasswordHasher().hash(CLAVE)
_addresses = itertools.count(1)


def new_address() -> str:
    """A documentation address (RFC 5737) no other test has used."""
    n = next(_addresses)
    return f"198.51.{100 + n // 250}.{n % 250 + 1}"


def client(
    app: FastAPI,
    address: str | None = None,
    *,
    base_url: str = "http://bajas.test",
    **kwargs: Any,
) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address or new_address(), 40000))
    return httpx.AsyncClient(transport=transport, base_url=base_url, timeout=60, **kwargs)


async def customer_with_clave(stack: Stack) -> tuple[int, str, str]:
    """(customer id, customer number, e-mail) of a new customer whose clave is CLAVE."""
    cid, email = await stack.panel.customer()
    return cid, await give_clave(stack, cid), email


async def give_clave(stack: Stack, customer_id: int) -> str:
    """Set the customer's clave to CLAVE; returns the customer number."""
    number: str = await stack.pool.fetchval(
        "update customers set password_hash = $2 where id = $1 returning number",
        customer_id,
        _hash,
    )
    return number


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field"
    return match.group(1)


async def try_sign_in(http: httpx.AsyncClient, number: str, clave: str = CLAVE) -> httpx.Response:
    token = csrf_of((await http.get("/panel/ingresar")).text)
    return await http.post(
        "/panel/ingresar", data={"numero": number, "clave": clave, "csrf_token": token}
    )


async def sign_in(http: httpx.AsyncClient, number: str, clave: str = CLAVE) -> None:
    r = await try_sign_in(http, number, clave)
    assert r.status_code == 303, r.text
    assert r.headers["Location"] == "/panel/"


def signed_in(r: httpx.Response) -> bool:
    return r.status_code == 200 and r.url.path == "/panel/" and "Servicios" in r.text


async def post_form(http: httpx.AsyncClient, action: str, **fields: str) -> httpx.Response:
    """A panel form, posted with the session's CSRF token; follows the redirect."""
    token = csrf_of((await http.get("/panel/")).text)
    return await http.post(action, data={"csrf_token": token, **fields}, follow_redirects=True)


def cookie_payload(http: httpx.AsyncClient, name: str = "bajas_panel") -> dict[str, Any]:
    """What the signed session cookie says: readable by anyone who holds it."""
    value = http.cookies.get(name)
    assert value, f"no {name} cookie"
    data = value.split(".")[0]
    payload: dict[str, Any] = json.loads(base64.b64decode(data + "=" * (-len(data) % 4)))
    return payload
