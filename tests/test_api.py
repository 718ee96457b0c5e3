"""The HTTP API of contract section 5, against the real worker, dev server, PostgreSQL and SMTP."""

from __future__ import annotations

import asyncio
from datetime import date

import httpx
import pytest
from pydantic import SecretStr
from temporalio.service import RPCError, RPCStatusCode

from bajas.config import ConfigError, Settings
from bajas.models import MAX_REASON_CHARS, CancellationStatus
from starter.api.app import create_app
from starter.api.security import session_secret
from tests.conftest import Stack
from tests.conftest_api import (  # noqa: F401 - fixtures
    TOKEN,
    api,
    api_settings,
    app,
    wait_for_mails,
    wrong,
)
from tests.helpers import assert_eventually
from tests.helpers.mail import code_in, mails_about
from tests.helpers.panel import ServiceFixture
from workflows.search_attributes import workflow_id_for

pytestmark = pytest.mark.integration


def base(svc: ServiceFixture) -> str:
    return f"/api/customers/{svc.customer_id}/services/{svc.service_id}/cancellation"


def code_mails(stack: Stack, svc: ServiceFixture) -> list:
    return [m for m in mails_about(stack.mail, svc.domain) if "código" in m.subject.lower()]


async def latest_code(stack: Stack, svc: ServiceFixture, count: int = 1) -> str:
    await wait_for_mails(stack, svc.domain, count)
    mails = code_mails(stack, svc)
    assert len(mails) >= count
    return code_in(mails[-1])


async def no_workflow(stack: Stack, service_id: int) -> bool:
    try:
        await stack.client.get_workflow_handle(workflow_id_for(service_id)).describe()
    except RPCError as err:
        return err.status is RPCStatusCode.NOT_FOUND
    return False


async def wait_state(api: httpx.AsyncClient, svc: ServiceFixture, state: str) -> dict:  # noqa: F811
    async def reached() -> dict | None:
        r = await api.get(base(svc))
        body = r.json()
        return body if r.status_code == 200 and body["state"] == state else None

    return await assert_eventually(reached, f"state {state} of {svc.domain}")


# ---- the schema and authentication ----------------------------------------------------------


async def test_openapi_lists_every_route(api: httpx.AsyncClient) -> None:  # noqa: F811
    r = await api.get("/openapi.json", headers={"Authorization": ""})
    assert r.status_code == 200
    paths = r.json()["paths"]
    assert set(paths["/api/customers/{cid}/services/{sid}/cancellation"]) == {
        "get",
        "post",
        "delete",
    }
    assert "post" in paths["/api/customers/{cid}/services/{sid}/cancellation/confirm"]
    assert "post" in paths["/api/customers/{cid}/services/{sid}/cancellation/resend"]
    receipt = paths["/api/customers/{cid}/services/{sid}/cancellation/receipt"]["get"]
    assert set(receipt["responses"]["200"]["content"]) == {"application/json", "text/plain"}
    assert "get" in paths["/api/customers/{cid}/services"]
    assert "HTTPBearer" in r.json()["components"]["securitySchemes"]


async def test_api_root_maps_the_api(api: httpx.AsyncClient) -> None:  # noqa: F811
    """`bajas dev` prints /api: it answers, without the token, with where everything is."""
    r = await api.get("/api", headers={"Authorization": ""})
    assert r.status_code == 200, r.text
    index = r.json()
    assert (await api.get(index["docs"])).status_code == 200
    assert (await api.get(index["openapi"])).status_code == 200
    listed = {(route["method"], route["path"]) for route in index["routes"]}
    assert {(m, p.format(cid="{cid}", sid="{sid}")) for m, p, _ in ROUTES} <= listed
    does = {(route["method"], route["path"]): route["does"] for route in index["routes"]}
    assert does[("POST", "/api/customers/{cid}/services/{sid}/cancellation/resend")] == (
        "Mail a new code; the previous one stops working; 429 after too many codes."
    )
    assert "Bearer" in index["authentication"]


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/api/customers/1/services/2/cancellation", {"DELETE", "GET", "HEAD", "POST"}),
        ("/api/customers/1/services/2/cancellation/confirm", {"POST"}),
        ("/api/customers/1/services", {"GET", "HEAD"}),
    ],
)
@pytest.mark.parametrize("method", ["OPTIONS", "PUT", "PATCH"])
async def test_405_allows_every_method_of_the_path(
    api: httpx.AsyncClient,  # noqa: F811
    path: str,
    allowed: set[str],
    method: str,
) -> None:
    r = await api.request(method, path)
    assert r.status_code == 405, r.text
    assert {m.strip() for m in r.headers["Allow"].split(",")} == allowed
    assert r.json() == {"detail": "Method Not Allowed"}


ROUTES = [
    ("GET", "/api/customers/{cid}/services", None),
    ("POST", "/api/customers/{cid}/services/{sid}/cancellation", None),
    ("GET", "/api/customers/{cid}/services/{sid}/cancellation", None),
    ("DELETE", "/api/customers/{cid}/services/{sid}/cancellation", None),
    ("POST", "/api/customers/{cid}/services/{sid}/cancellation/confirm", {"code": "123456"}),
    ("POST", "/api/customers/{cid}/services/{sid}/cancellation/resend", None),
    ("GET", "/api/customers/{cid}/services/{sid}/cancellation/receipt", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer "])
async def test_every_route_needs_the_token(
    api: httpx.AsyncClient,  # noqa: F811
    stack: Stack,
    method: str,
    path: str,
    body: dict | None,
    authorization: str | None,
) -> None:
    svc = await stack.panel.service()
    headers = {"Authorization": authorization} if authorization is not None else {}
    client = httpx.AsyncClient(transport=api._transport, base_url=str(api.base_url))
    async with client:
        r = await client.request(
            method,
            path.format(cid=svc.customer_id, sid=svc.service_id),
            json=body,
            headers=headers,
        )
    assert r.status_code == 401, r.text
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert isinstance(r.json()["detail"], str) and "token" in r.json()["detail"]
    assert await no_workflow(stack, svc.service_id)


# ---- whose service ---------------------------------------------------------------------------


async def test_list_services_with_their_cancellations(
    api: httpx.AsyncClient,  # noqa: F811
    stack: Stack,
) -> None:
    customer = await stack.panel.customer()
    active = await stack.panel.service(customer)
    cancelled = await stack.panel.service(customer, status="cancelled", mailboxes=0)
    suspended = await stack.panel.service(customer, status="suspended", payment_method="auto_debit")
    r = await api.get(f"/api/customers/{customer[0]}/services")
    assert r.status_code == 200, r.text
    listed = {s["id"]: s for s in r.json()["services"]}
    assert set(listed) == {active.service_id, cancelled.service_id, suspended.service_id}
    assert listed[active.service_id]["status"] == "active"
    assert listed[active.service_id]["domain"] == active.domain
    assert listed[active.service_id]["cancellation"] is None
    assert listed[cancelled.service_id]["status"] == "cancelled"
    assert listed[suspended.service_id]["payment_method"] == "auto_debit"

    assert (await api.post(base(active))).status_code == 202
    r = await api.get(f"/api/customers/{customer[0]}/services")
    listed = {s["id"]: s for s in r.json()["services"]}
    cancellation = listed[active.service_id]["cancellation"]
    assert cancellation["state"] == "awaiting_confirmation"
    assert cancellation["workflow_id"] == workflow_id_for(active.service_id)
    assert cancellation["attempts_left"] == 5
    assert listed[suspended.service_id]["cancellation"] is None
    assert (await api.delete(base(active))).status_code == 200


async def test_unknown_customer_is_404(api: httpx.AsyncClient) -> None:  # noqa: F811
    r = await api.get("/api/customers/987654321987/services")
    assert r.status_code == 404
    assert r.json() == {"detail": "customer 987654321987 not found"}
    assert (await api.get(f"/api/customers/{2**70}/services")).status_code == 404


@pytest.mark.parametrize(("method", "path", "body"), ROUTES[1:])
async def test_a_strangers_service_is_404_and_starts_nothing(
    api: httpx.AsyncClient,  # noqa: F811
    stack: Stack,
    method: str,
    path: str,
    body: dict | None,
) -> None:
    owner = await stack.panel.service()
    stranger, _ = await stack.panel.customer()
    r = await api.request(method, path.format(cid=stranger, sid=owner.service_id), json=body)
    assert r.status_code == 404, r.text
    assert r.json() == {"detail": f"service {owner.service_id} not found for customer {stranger}"}
    # A service that does not exist gets the same answer.
    missing = owner.service_id + 10_000_000
    r2 = await api.request(method, path.format(cid=stranger, sid=missing), json=body)
    assert r2.status_code == 404
    assert r2.json() == {"detail": f"service {missing} not found for customer {stranger}"}
    assert await no_workflow(stack, owner.service_id)
    assert await no_workflow(stack, missing)
    assert code_mails(stack, owner) == []


# ---- malformed requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"code": "12ab56"}, "6 digits"),
        ({"code": "1234567"}, "6 digits"),
        ({"code": 123456}, "code"),
        ({}, "code: Field required"),
        ({"code": "123456", "extra": 1}, "extra"),
        ("not json", "not valid JSON"),
        (b'{"code": "\xff\xfe"}', "not valid JSON"),  # not UTF-8: FastAPI's own answer is 400
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),  # too deep for the parser: 400 too
        ([1, 2], "must be a JSON object"),
    ],
)
async def test_malformed_confirm_is_422_with_a_message(
    api: httpx.AsyncClient,  # noqa: F811
    stack: Stack,
    body: object,
    words: str,
) -> None:
    svc = await stack.panel.service()
    if isinstance(body, str | bytes):
        r = await api.post(
            base(svc) + "/confirm", content=body, headers={"Content-Type": "application/json"}
        )
    else:
        r = await api.post(base(svc) + "/confirm", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and words in detail, detail
    assert set(r.json()) <= {"detail", "errors"}  # the schema's ErrorBody
    assert await no_workflow(stack, svc.service_id)


async def test_malformed_request_body_and_ids(
    api: httpx.AsyncClient,  # noqa: F811
    stack: Stack,
) -> None:
    svc = await stack.panel.service()
    r = await api.post(base(svc), json={"reason": "x", "colour": "red"})
    assert r.status_code == 422
    assert "colour" in r.json()["detail"]
    r = await api.post(base(svc), json={"requested_by": ""})
    assert r.status_code == 422
    r = await api.get(f"/api/customers/abc/services/{svc.service_id}/cancellation")
    assert r.status_code == 422
    assert "cid" in r.json()["detail"]
    assert await no_workflow(stack, svc.service_id)


# ---- the life of a cancellation ---------------------------------------------------------------


async def test_request_confirm_and_carry_out(
    api: httpx.AsyncClient,  # noqa: F811
    stack: Stack,
) -> None:
    svc = await stack.panel.service(files=12, mailboxes=2)
    r = await api.post(base(svc), json={"reason": "me mudo"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["workflow_id"] == workflow_id_for(svc.service_id)
    assert body["run_id"]
    assert body["state"] == "awaiting_confirmation"
    assert body["code_sent"] is True
    assert body["billing_preview"]["outcome"] == "no_further_charges"
    assert "no habrá más cargos" in body["billing_preview"]["text"]
    assert body["billing_preview"]["debit_warning"] is None
    assert r.headers["Location"].endswith(base(svc))
    # every field of the status query is there, the preview spelled out
    assert set(CancellationStatus.model_fields) | {"workflow_id", "run_id"} == set(body)
    assert body["domain"] == svc.domain

    code = await latest_code(stack, svc)
    r = await api.post(base(svc) + "/confirm", json={"code": wrong(code)})
    assert r.status_code == 422
    assert r.json() == {
        "detail": "wrong or expired confirmation code",
        "state": "awaiting_confirmation",
        "attempts_left": 4,
    }
    r = await api.post(base(svc) + "/confirm", json={"code": code})
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": True, "attempts_left": 4, "state": "deprovisioning"}

    done = await wait_state(api, svc, "cancelled")
    assert done["billing_outcome"] == "no_further_charges"
    assert done["steps"]["files"]["status"] == "done"
    assert done["steps"]["files"]["done"] == 12
    assert done["steps"]["mailboxes"]["done"] == 2
    assert done["confirmed_at"] and done["finished_at"]
    status = await stack.pool.fetchval("select status from services where id=$1", svc.service_id)
    assert status == "cancelled"

    # Now the service is cancelled: a new request is refused and nothing else can be done.
    r = await api.post(base(svc))
    assert r.status_code == 409
    assert r.json()["detail"] == f"service {svc.service_id} is already cancelled"
    r = await api.post(base(svc) + "/confirm", json={"code": code})
    assert r.status_code == 409
    assert r.json()["state"] == "cancelled"
    assert (await api.post(base(svc) + "/resend")).status_code == 409
    assert (await api.delete(base(svc))).status_code == 409
    listed = (await api.get(f"/api/customers/{svc.customer_id}/services")).json()["services"]
    assert listed[0]["status"] == "cancelled" and listed[0]["cancellation"] is None


async def test_auto_debit_preview_warns(api: httpx.AsyncClient, stack: Stack) -> None:  # noqa: F811
    svc = await stack.panel.service(payment_method="auto_debit", expires_on=date(2099, 6, 15))
    r = await api.post(base(svc))
    assert r.status_code == 202
    preview = r.json()["billing_preview"]
    assert preview["outcome"] == "debit_cancelled"
    assert "1 de junio de 2099" in preview["debit_warning"]
    assert (await api.delete(base(svc))).status_code == 200


async def test_already_cancelled_service_is_409_and_starts_nothing(
    api: httpx.AsyncClient,  # noqa: F811
    stack: Stack,
) -> None:
    svc = await stack.panel.service(status="cancelled")
    r = await api.post(base(svc))
    assert r.status_code == 409
    assert "already cancelled" in r.json()["detail"]
    assert await no_workflow(stack, svc.service_id)


async def test_nothing_to_act_on_is_404(api: httpx.AsyncClient, stack: Stack) -> None:  # noqa: F811
    svc = await stack.panel.service()
    expected = {"detail": f"no cancellation for service {svc.service_id}"}
    r = await api.get(base(svc))
    assert (r.status_code, r.json()) == (404, expected)
    r = await api.post(base(svc) + "/confirm", json={"code": "123456"})
    assert (r.status_code, r.json()) == (404, expected)
    r = await api.post(base(svc) + "/resend")
    assert (r.status_code, r.json()) == (404, expected)
    r = await api.delete(base(svc))
    assert (r.status_code, r.json()) == (404, expected)
    assert await no_workflow(stack, svc.service_id)


async def test_double_click_gives_one_workflow_and_one_mail(
    api: httpx.AsyncClient,  # noqa: F811
    stack: Stack,
) -> None:
    svc = await stack.panel.service()
    first, second = await asyncio.gather(api.post(base(svc)), api.post(base(svc)))
    assert first.status_code == second.status_code == 202
    a, b = first.json(), second.json()
    assert a["workflow_id"] == b["workflow_id"] == workflow_id_for(svc.service_id)
    assert a["run_id"] == b["run_id"]
    # A later repeat answers with the same one in progress.
    third = await api.post(base(svc))
    assert third.status_code == 202
    assert third.json()["run_id"] == a["run_id"]
    assert third.json()["state"] == "awaiting_confirmation"
    await asyncio.sleep(1.0)
    assert len(code_mails(stack, svc)) == 1
    assert (await api.delete(base(svc))).status_code == 200


async def test_locked_after_five_wrong_codes(
    api: httpx.AsyncClient,  # noqa: F811
    stack: Stack,
) -> None:
    svc = await stack.panel.service()
    assert (await api.post(base(svc))).status_code == 202
    bad = wrong(await latest_code(stack, svc))
    for left in (4, 3, 2, 1):
        r = await api.post(base(svc) + "/confirm", json={"code": bad})
        assert r.status_code == 422
        assert r.json()["attempts_left"] == left
        assert r.json()["state"] == "awaiting_confirmation"
    r = await api.post(base(svc) + "/confirm", json={"code": bad})
    assert r.status_code == 422
    assert r.json()["state"] == "locked"
    assert r.json()["attempts_left"] == 0
    assert "locked" in r.json()["detail"]
    r = await api.post(base(svc) + "/confirm", json={"code": bad})
    assert r.status_code == 409
    assert r.json()["state"] == "locked"
    assert (await api.get(base(svc))).json()["state"] == "locked"
    assert (await api.post(base(svc) + "/resend")).status_code == 409
    status = await stack.pool.fetchval("select status from services where id=$1", svc.service_id)
    assert status == "active"


async def test_withdraw(api: httpx.AsyncClient, stack: Stack) -> None:  # noqa: F811
    svc = await stack.panel.service()
    assert (await api.post(base(svc))).status_code == 202
    code = await latest_code(stack, svc)
    r = await api.delete(base(svc))
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "withdrawn"
    r = await api.delete(base(svc))
    assert r.status_code == 409
    assert r.json()["state"] == "withdrawn"
    assert "withdraw" in r.json()["detail"]
    assert (await api.get(base(svc))).json()["state"] == "withdrawn"
    r = await api.post(base(svc) + "/confirm", json={"code": code})
    assert r.status_code == 409
    assert r.json()["state"] == "withdrawn"
    listed = (await api.get(f"/api/customers/{svc.customer_id}/services")).json()["services"]
    assert listed[0]["cancellation"] is None
    # A new request after withdrawing starts a new run.
    again = await api.post(base(svc))
    assert again.status_code == 202
    assert again.json()["state"] == "awaiting_confirmation"
    assert (await api.delete(base(svc))).status_code == 200


async def test_withdraw_refused_once_confirmed(
    api: httpx.AsyncClient,  # noqa: F811
    stack: Stack,
) -> None:
    svc = await stack.panel.service(files=3)
    assert (await api.post(base(svc))).status_code == 202
    code = await latest_code(stack, svc)
    assert (await api.post(base(svc) + "/confirm", json={"code": code})).status_code == 200
    r = await api.delete(base(svc))
    assert r.status_code == 409
    assert r.json()["state"] in ("deprovisioning", "cancelled")
    await wait_state(api, svc, "cancelled")


async def test_resend_new_code_works_old_does_not(
    api: httpx.AsyncClient,  # noqa: F811
    stack: Stack,
) -> None:
    svc = await stack.panel.service()
    assert (await api.post(base(svc))).status_code == 202
    old = await latest_code(stack, svc, 1)
    r = await api.post(base(svc) + "/resend")
    assert r.status_code == 200, r.text
    assert r.json()["resends_left"] == 2
    assert r.json()["code_expires_at"]
    new = await latest_code(stack, svc, 2)
    assert len(code_mails(stack, svc)) == 2
    if new != old:
        r = await api.post(base(svc) + "/confirm", json={"code": old})
        assert r.status_code == 422
        assert r.json()["attempts_left"] == 4
    r = await api.post(base(svc) + "/confirm", json={"code": new})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] is True
    await wait_state(api, svc, "cancelled")


async def test_resend_limit_is_409(api: httpx.AsyncClient, stack: Stack) -> None:  # noqa: F811
    svc = await stack.panel.service()
    assert (await api.post(base(svc))).status_code == 202
    for left in (2, 1, 0):
        r = await api.post(base(svc) + "/resend")
        assert r.status_code == 200
        assert r.json()["resends_left"] == left
    r = await api.post(base(svc) + "/resend")
    assert r.status_code == 409
    assert "resend" in r.json()["detail"]
    assert r.json()["state"] == "awaiting_confirmation"
    assert (await api.delete(base(svc))).status_code == 200


# ---- building the app -------------------------------------------------------------------------


def test_the_token_is_required(api_settings: Settings) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match="PANEL_API_TOKEN is required"):
        create_app(api_settings.model_copy(update={"panel_api_token": None}))
    with pytest.raises(ConfigError, match="at least 16"):
        create_app(api_settings.model_copy(update={"panel_api_token": SecretStr("short")}))


def test_session_key_is_required_outside_dev(api_settings: Settings) -> None:  # noqa: F811
    """Only `bajas dev` derives the cookie key from its API token; elsewhere whoever holds
    the token must not be able to sign a cookie."""
    given = api_settings.model_copy(
        update={"panel_session_secret": SecretStr("a-session-secret-of-my-own")}
    )
    assert session_secret(given) == "a-session-secret-of-my-own"
    bare = api_settings.model_copy(update={"panel_session_secret": None})
    with pytest.raises(ConfigError, match="PANEL_SESSION_SECRET is required"):
        create_app(bare)
    with pytest.raises(ConfigError, match="PANEL_SESSION_SECRET is too predictable"):
        create_app(api_settings.model_copy(update={"panel_session_secret": SecretStr("x" * 40)}))
    dev = bare.model_copy(update={"dev_mode": True})
    assert session_secret(dev) == session_secret(dev.model_copy())
    assert TOKEN not in session_secret(dev)
    other = dev.model_copy(update={"panel_api_token": SecretStr("another-token-0123456")})
    assert session_secret(other) != session_secret(dev)


async def test_the_app_connects_by_itself(
    api_settings: Settings,  # noqa: F811
    stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without client and pool, the lifespan connects to TEMPORAL_ADDRESS and DATABASE_URL."""
    monkeypatch.setenv("TEMPORAL_ADDRESS", stack.client.service_client.config.target_host)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", stack.client.namespace)
    own = create_app(api_settings)
    svc = await stack.panel.service()
    async with own.router.lifespan_context(own):
        transport = httpx.ASGITransport(app=own)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://bajas.test",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as client:
            r = await client.get(f"/api/customers/{svc.customer_id}/services")
            assert r.status_code == 200
            assert r.json()["services"][0]["domain"] == svc.domain
            assert (await client.post(base(svc))).status_code == 202
            assert (await client.delete(base(svc))).status_code == 200
            assert (await client.get("/dev/mail")).status_code == 404
    assert own.state.bajas.pool is None


# ---- when and why (contract section 8) ---------------------------------------------------


async def test_end_of_term_request_with_reasons(
    api: httpx.AsyncClient,  # noqa: F811
    stack: Stack,
) -> None:
    svc = await stack.panel.service(expires_on=date(2099, 6, 15), files=2, mailboxes=1)
    reason = "ñ" * MAX_REASON_CHARS  # at the limit, counted in characters
    r = await api.post(
        base(svc),
        json={"effective": "end_of_term", "reason_code": "precio", "reason": reason},
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["effective"], body["reason_code"]) == ("end_of_term", "precio")
    assert body["effective_at"] == "2099-06-15T03:00:00Z"  # 00:00 in Buenos Aires
    assert "reason" not in body  # the free text is kept, not shown back
    row = await stack.pool.fetchrow(
        "select effective, reason_code, reason from bajas.cancellation_requests where run_id = $1",
        body["run_id"],
    )
    assert dict(row) == {"effective": "end_of_term", "reason_code": "precio", "reason": reason}

    code = await latest_code(stack, svc)
    r = await api.post(base(svc) + "/confirm", json={"code": code})
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": True, "attempts_left": 5, "state": "scheduled"}
    scheduled = await wait_state(api, svc, "scheduled")
    assert scheduled["effective_at"] == "2099-06-15T03:00:00Z"
    assert [e["event"] for e in scheduled["timeline"]] == [
        "requested",
        "code_sent",
        "confirmed",
        "scheduled",
    ]
    # the list shows it as a cancellation in progress, not as a plain active service
    listed = (await api.get(f"/api/customers/{svc.customer_id}/services")).json()["services"]
    assert listed[0]["status"] == "active"
    assert listed[0]["cancellation"]["state"] == "scheduled"

    r = await api.delete(base(svc))
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "withdrawn"
    assert svc.document_root is not None and svc.document_root.exists()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        pytest.param(
            {"reason": "x" * (MAX_REASON_CHARS + 1)}, ("reason", "500 characters"), id="long"
        ),
        pytest.param({"reason_code": "caro"}, ("reason_code", "precio"), id="unknown_code"),
        pytest.param({"effective": "mañana"}, ("effective", "end_of_term"), id="bad_effective"),
    ],
)
async def test_bad_reasons_are_422_and_start_nothing(
    api: httpx.AsyncClient,  # noqa: F811
    stack: Stack,
    body: dict[str, str],
    words: tuple[str, ...],
) -> None:
    svc = await stack.panel.service()
    r = await api.post(base(svc), json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    for word in words:
        assert word in detail, detail
    assert await no_workflow(stack, svc.service_id)
    assert not await stack.pool.fetchval(
        "select count(*) from bajas.cancellation_requests where service_id = $1", svc.service_id
    )
