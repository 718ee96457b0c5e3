"""The cancellation on the real stack, through the public client.

Dev server (WorkflowEnvironment.start_local), embedded PostgreSQL, the aiosmtpd sink
and the real worker, all from tests/conftest.py. Each test builds its own customer and
services with `Panel` and judges what a user sees: panel rows, directories on disk,
mails in the sink, the workflow's state.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import calendar
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
import pytest_asyncio
from argon2 import PasswordHasher
from pydantic import SecretStr
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from bajas import texts
from bajas.config import Settings
from bajas.dev.mailsink import MailSink, SunkMessage
from bajas.models import (
    MAX_WRONG_CODES,
    BillingOutcome,
    CancellationResult,
    CancellationStatus,
    Effective,
    ReasonCode,
    State,
    StepStatus,
)
from starter.api.app import create_app
from starter.client import CancellationClient, CancellationNotFound
from tests.helpers import assert_eventually
from tests.helpers.mail import code_in, mails_about
from tests.helpers.panel import (
    Panel,
    ServiceFixture,
    add_invoice,
    add_mailbox,
    add_mandate,
    make_tree,
    tree_files,
    tree_snapshot,
)
from tests.panel_http import CLAVE, post_form, sign_in
from tests.panel_http import client as panel_client
from worker import build_worker
from workflows.rules import debit_cutoff, debit_cutoff_eve, outcome_at, term_end
from workflows.search_attributes import CANCELLATION_STATE

pytestmark = pytest.mark.integration

TIMEOUT = 30.0


CODE_SUBJECT = "Código de confirmación"
DONE_SUBJECT = "dado de baja"
WARNING = "Usted paga por débito automático: confirme la baja antes del 1 de"

LATE = BillingOutcome.LATE_NO_REFUND
PROCESSED = BillingOutcome.DEBIT_PROCESSED_NO_REFUND
DEBIT_CANCELLED = BillingOutcome.DEBIT_CANCELLED
NO_CHARGES = BillingOutcome.NO_FURTHER_CHARGES


# ---- dates ------------------------------------------------------------------------------


def business_now(stack: Any) -> datetime:
    return datetime.now(ZoneInfo(stack.settings.business_tz))


async def business_today(stack: Any) -> date:
    """Today in BUSINESS_TZ, stepping past local midnight if it is less than a minute away,
    so the date judged at confirmation is the date the test chose its expiry from."""
    now = business_now(stack)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), now.tzinfo)
    if midnight - now < timedelta(minutes=1):
        await asyncio.sleep((midnight - now).total_seconds() + 1)
    return business_now(stack).date()


def last_day_of_month(d: date) -> date:
    return d.replace(day=calendar.monthrange(d.year, d.month)[1])


def first_of_next_month(d: date) -> date:
    return last_day_of_month(d) + timedelta(days=1)


def expiry_for(outcome: BillingOutcome, today: date) -> date | None:
    """An `expires_on` that gives `outcome` when confirmed today (C = today, D = 1st of E's month).

    None when no date can: debit_processed needs D <= C < E, so E in C's own month and
    after C, impossible on the last day of a month.
    """
    if outcome is LATE:
        return today - timedelta(days=3)  # C >= E
    if outcome is PROCESSED:
        last = last_day_of_month(today)  # D = 1st of this month <= C < E
        return last if last > today else None
    if outcome is DEBIT_CANCELLED:
        return first_of_next_month(today) + timedelta(days=14)  # C < D
    return today + timedelta(days=60)  # manual payer, C < E


# ---- waiting and reading ---------------------------------------------------------------


def code_mails(stack: Any, domain: str) -> list[SunkMessage]:
    return [m for m in mails_about(stack.mail, domain) if CODE_SUBJECT in m.subject]


def done_mails(stack: Any, domain: str) -> list[SunkMessage]:
    return [m for m in mails_about(stack.mail, domain) if DONE_SUBJECT in m.subject]


async def wait_code_mail(stack: Any, svc: ServiceFixture, count: int = 1) -> SunkMessage:
    mails = await assert_eventually(
        lambda: (lambda ms: ms if len(ms) >= count else None)(code_mails(stack, svc.domain)),
        f"{count} code mail(s) for {svc.domain}",
    )
    return mails[count - 1]


async def wait_status(
    stack: Any, service_id: int, pred: Callable[[CancellationStatus], bool], what: str
) -> CancellationStatus:
    async def probe() -> CancellationStatus | None:
        status = await stack.cancellations.status(service_id)
        return status if pred(status) else None

    return await assert_eventually(probe, what)


async def result_of(stack: Any, service_id: int) -> CancellationResult:
    return await asyncio.wait_for(stack.cancellations.result(service_id), TIMEOUT)


async def service_row(stack: Any, service_id: int) -> dict[str, Any]:
    row = await stack.pool.fetchrow("select * from services where id = $1", service_id)
    assert row is not None
    return dict(row)


async def rows(stack: Any, table: str, service_id: int) -> dict[int, dict[str, Any]]:
    recs = await stack.pool.fetch(
        f"select * from {table} where service_id = $1 order by id", service_id
    )
    return {r["id"]: dict(r) for r in recs}


async def panel_snapshot(stack: Any, svc: ServiceFixture) -> dict[str, Any]:
    """Everything of a service a cancellation could touch: rows and files."""
    return {
        "service": await service_row(stack, svc.service_id),
        "mailboxes": await rows(stack, "mailboxes", svc.service_id),
        "invoices": await rows(stack, "invoices", svc.service_id),
        "mandates": await rows(stack, "debit_mandates", svc.service_id),
        "files": tree_snapshot(svc.document_root) if svc.document_root else None,
        "maildirs": {str(m): tree_snapshot(m) for m in svc.maildirs},
    }


async def audit(stack: Any, run_id: str) -> dict[str, dict[str, Any]]:
    recs = await stack.pool.fetch(
        "select event, actor, from_state, to_state, billing_outcome, details"
        " from bajas.audit_trail where run_id = $1 order by id",
        run_id,
    )
    out: dict[str, dict[str, Any]] = {}
    for r in recs:
        entry = dict(r)
        if isinstance(entry["details"], str):
            entry["details"] = json.loads(entry["details"])
        out[r["event"]] = entry
    return out


async def request_row(stack: Any, run_id: str) -> dict[str, Any]:
    row = await stack.pool.fetchrow(
        "select * from bajas.cancellation_requests where run_id = $1", run_id
    )
    assert row is not None, f"no bajas.cancellation_requests row for run {run_id}"
    return dict(row)


async def request_and_code(stack: Any, svc: ServiceFixture) -> tuple[str, str]:
    """Request the cancellation; return (run_id, the code read from the mail)."""
    answer = await stack.cancellations.request(svc.service_id, svc.customer_id)
    assert answer.status.state is State.AWAITING_CONFIRMATION, answer.status
    assert answer.status.code_sent
    mail = await wait_code_mail(stack, svc)
    return answer.run_id, code_in(mail)


async def confirm_ok(stack: Any, svc: ServiceFixture, code: str) -> None:
    answer = await stack.cancellations.confirm(svc.service_id, code)
    assert answer.accepted, answer
    assert answer.state is State.DEPROVISIONING


async def terminate(stack: Any, service_id: int) -> None:
    handle = stack.cancellations.handle(service_id)
    desc = await handle.describe()
    if desc.status is WorkflowExecutionStatus.RUNNING:
        try:
            await handle.terminate(reason="integration test over")
        except RPCError as err:  # it may end between the two calls
            if "already completed" not in err.message:
                raise


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


# ---- the four billing outcomes ----------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "payment_method", "expires_today"),
    [
        pytest.param(LATE, "auto_debit", False, id="late_no_refund"),
        pytest.param(LATE, "auto_debit", True, id="late_no_refund-expires_today"),
        pytest.param(PROCESSED, "auto_debit", False, id="debit_processed_no_refund"),
        pytest.param(DEBIT_CANCELLED, "auto_debit", False, id="debit_cancelled"),
        pytest.param(NO_CHARGES, "manual", False, id="no_further_charges"),
    ],
)
async def test_happy_path(
    stack: Any, outcome: BillingOutcome, payment_method: str, expires_today: bool
) -> None:
    today = await business_today(stack)
    expires_on = today if expires_today else expiry_for(outcome, today)
    if expires_on is None:
        pytest.skip(
            f"{today} is the last day of its month: no expires_on gives D <= C < E "
            "(debit_processed_no_refund cannot be produced today)"
        )
    assert expires_on is not None
    svc = await stack.panel.service(
        expires_on=expires_on, payment_method=payment_method, files=5, mailboxes=2
    )
    sid, cid = svc.service_id, svc.customer_id
    # an open invoice of the current period (not a renewal) stays open whatever the outcome
    current = await add_invoice(
        stack.pool, sid, expires_on - timedelta(days=30), expires_on - timedelta(days=1), "open"
    )
    if payment_method == "manual":
        # a leftover mandate: no_further_charges does not touch mandates
        await add_mandate(stack.pool, sid)
    invoices_before = await rows(stack, "invoices", sid)
    mandates_before = await rows(stack, "debit_mandates", sid)
    assert svc.document_root is not None and tree_files(svc.document_root) == 5
    assert len(svc.maildirs) == 2 and all(m.is_dir() for m in svc.maildirs)

    # request -> code mail
    answer = await stack.cancellations.request(sid, cid)
    assert answer.workflow_id == f"service-cancellation-{sid}"
    assert answer.status.state is State.AWAITING_CONFIRMATION
    assert answer.status.code_sent
    assert answer.status.attempts_left == MAX_WRONG_CODES
    assert answer.status.billing_preview is outcome
    assert answer.status.domain == svc.domain
    mail = await wait_code_mail(stack, svc)
    assert svc.domain in mail.subject
    assert svc.email in mail.to
    code = code_in(mail)
    assert re.fullmatch(r"\d{6}", code)
    assert svc.domain in mail.body
    if payment_method == "auto_debit":
        cutoff_month = [
            "enero",
            "febrero",
            "marzo",
            "abril",
            "mayo",
            "junio",
            "julio",
            "agosto",
            "septiembre",
            "octubre",
            "noviembre",
            "diciembre",
        ][expires_on.month - 1]
        assert f"{WARNING} {cutoff_month} de {expires_on.year}" in mail.body, mail.body
    else:
        assert WARNING not in mail.body
    # nothing deleted before a valid confirmation
    assert tree_files(svc.document_root) == 5
    assert (await service_row(stack, sid))["status"] == "active"

    # confirm -> cancelled
    await confirm_ok(stack, svc, code)
    result = await result_of(stack, sid)
    assert result.state is State.CANCELLED
    assert result.billing_outcome is outcome
    assert result.files_deleted == 5
    assert result.mailboxes_deleted == 2

    status = await stack.cancellations.status(sid)
    assert status.state is State.CANCELLED
    assert status.billing_outcome is outcome
    assert status.confirmed_at is not None and status.finished_at is not None
    for step in ("billing", "mailboxes", "files"):
        assert getattr(status.steps, step).status is StepStatus.DONE, status.steps

    # panel rows
    service = await service_row(stack, sid)
    assert service["status"] == "cancelled"
    assert service["cancelled_at"] is not None
    assert service["auto_renew"] is False
    for mb in (await rows(stack, "mailboxes", sid)).values():
        assert mb["deleted_at"] is not None, mb
    invoices = await rows(stack, "invoices", sid)
    voids = outcome in (DEBIT_CANCELLED, NO_CHARGES)
    for iid, before in invoices_before.items():
        after = invoices[iid]
        renewal = before["period_start"] >= expires_on
        if before["status"] == "open" and renewal and voids:
            assert after["status"] == "void", (outcome, before, after)
        else:
            assert after == before, (outcome, before, after)
    assert invoices[current]["status"] == "open"
    assert {i["status"] for i in invoices.values()} >= {"paid"}
    mandates = await rows(stack, "debit_mandates", sid)
    assert mandates, "every case here has a mandate"
    for mid, before in mandates_before.items():
        after = mandates[mid]
        if outcome is NO_CHARGES:
            assert after == before
        else:
            assert after["status"] == "revoked" and after["revoked_at"] is not None, after

    # disk
    assert not svc.document_root.exists()
    for maildir in svc.maildirs:
        assert not maildir.exists()

    # the "dado de baja" mail, exactly once
    await assert_eventually(lambda: done_mails(stack, svc.domain), "the dado de baja mail")
    await asyncio.sleep(0.5)
    done = done_mails(stack, svc.domain)
    assert len(done) == 1, [m.subject for m in done]
    assert svc.email in done[0].to
    assert len(code_mails(stack, svc.domain)) == 1

    # audit trail and request row
    trail = await audit(stack, answer.run_id)
    expected = {
        "requested",
        "code_sent:1",
        "confirmed",
        "billing_closed",
        "mailboxes_deleted",
        "files_deleted",
        "cancelled",
    }
    assert expected <= set(trail), sorted(trail)
    # the receipt is written with the cancelled mark, right after it
    assert list(trail)[0] == "requested" and list(trail)[-2:] == ["cancelled", "receipt"]
    assert trail["confirmed"]["to_state"] == State.DEPROVISIONING
    assert trail["billing_closed"]["billing_outcome"] == outcome
    voided = sorted(
        i for i, inv in invoices.items() if inv["status"] != invoices_before[i]["status"]
    )
    revoked = sorted(m for m, man in mandates.items() if man != mandates_before[m])
    assert trail["billing_closed"]["details"] == {
        "invoices_voided": 1 if voids else 0,
        "mandates_revoked": 0 if outcome is NO_CHARGES else 1,
        "voided_invoice_ids": voided,
        "revoked_mandate_ids": revoked,
    }
    # what was deleted, for the receipt (issue 9's audit details)
    boxes = trail["mailboxes_deleted"]["details"]["mailboxes"]
    assert sorted(b["address"] for b in boxes) == [f"buzon0@{svc.domain}", f"buzon1@{svc.domain}"]
    assert [b["messages"] for b in boxes] == [1, 1] and all(b["deleted_at"] for b in boxes)
    assert trail["files_deleted"]["details"]["files"] == 5
    assert trail["cancelled"]["to_state"] == State.CANCELLED
    assert trail["cancelled"]["billing_outcome"] == outcome
    assert trail["cancelled"]["details"] == {"files_deleted": 5, "mailboxes_deleted": 2}
    req = await request_row(stack, answer.run_id)
    assert req["state"] == State.CANCELLED
    assert req["billing_outcome"] == outcome
    assert req["service_id"] == sid and req["customer_id"] == cid
    assert req["confirmed_at"] is not None and req["finished_at"] is not None


async def test_sibling_service_untouched(stack: Any) -> None:
    today = await business_today(stack)
    expires_on = expiry_for(DEBIT_CANCELLED, today)
    assert expires_on is not None
    customer = await stack.panel.customer()
    target = await stack.panel.service(
        customer, expires_on=expires_on, payment_method="auto_debit", files=4, mailboxes=2
    )
    sibling = await stack.panel.service(
        customer, expires_on=expires_on, payment_method="auto_debit", files=6, mailboxes=2
    )
    before = await panel_snapshot(stack, sibling)
    assert before["files"] and all(before["maildirs"].values())

    _, code = await request_and_code(stack, target)
    await confirm_ok(stack, target, code)
    result = await result_of(stack, target.service_id)
    assert result.state is State.CANCELLED and result.billing_outcome is DEBIT_CANCELLED
    assert target.document_root is not None and not target.document_root.exists()

    assert await panel_snapshot(stack, sibling) == before
    assert mails_about(stack.mail, sibling.domain) == []
    assert (await service_row(stack, sibling.service_id))["status"] == "active"


# ---- paths that must be refused ---------------------------------------------------------


def _outside_tree(tmp_path: Path, name: str) -> Path:
    outside = tmp_path / name
    make_tree(outside, 3)
    (outside / "keep.txt").write_text("not the service's")
    return outside


# A link inside the tree, whatever it points at, is no longer refused (issue 9): it is
# removed as a link, see tests/test_odd_trees.py.
@pytest.mark.parametrize("case", ["outside", "dotdot", "root_is_link"])
async def test_document_root_refused(stack: Any, tmp_path: Path, case: str) -> None:
    hosting_root: Path = stack.settings.hosting_root
    outside = _outside_tree(tmp_path, f"elsewhere-{uuid.uuid4().hex[:8]}")
    if case == "outside":
        document_root: Path = outside
    elif case == "dotdot":
        # written under HOSTING_ROOT, but `..` leads out of it
        document_root = (
            hosting_root
            / "x"
            / ".."
            / ".."
            / ".."
            / outside.relative_to(hosting_root.parent.parent)
        )
        assert document_root.resolve() == outside.resolve()
    else:
        document_root = hosting_root / f"link-{uuid.uuid4().hex[:8]}"
        document_root.symlink_to(outside, target_is_directory=True)
    svc = await stack.panel.service(document_root=document_root, mailboxes=0)
    outside_before = tree_snapshot(outside)

    try:
        _, code = await request_and_code(stack, svc)
        await confirm_ok(stack, svc, code)
        status = await wait_status(
            stack,
            svc.service_id,
            lambda s: s.steps.files.status is StepStatus.REFUSED,
            "the files step refused",
        )
        assert status.state is State.DEPROVISIONING
        detail = status.steps.files.detail or ""
        assert "document_root" in detail, detail
        assert "outside" in detail or "not strictly inside" in detail, detail
        await asyncio.sleep(0.5)  # give a wrongly continuing workflow time to show it
        status = await stack.cancellations.status(svc.service_id)
        assert status.state is State.DEPROVISIONING
        assert status.steps.files.status is StepStatus.REFUSED
        desc = await stack.cancellations.handle(svc.service_id).describe()
        assert desc.status is WorkflowExecutionStatus.RUNNING

        row = await service_row(stack, svc.service_id)
        assert row["status"] == "active" and row["cancelled_at"] is None
        assert tree_snapshot(outside) == outside_before
        if case == "root_is_link":
            assert document_root.is_symlink()
        assert done_mails(stack, svc.domain) == []
    finally:
        await terminate(stack, svc.service_id)


@pytest.mark.parametrize("case", ["outside", "dotdot", "link"])
async def test_maildir_refused(stack: Any, tmp_path: Path, case: str) -> None:
    mail_root: Path = stack.settings.mail_root
    svc = await stack.panel.service(document_root=None, mailboxes=1)
    tag = uuid.uuid4().hex[:8]
    if case == "outside":
        real = tmp_path / f"maildir-{tag}"
        bad = real
    elif case == "dotdot":
        # resolves next to MAIL_ROOT, not inside it
        bad = mail_root / svc.domain / ".." / ".." / f"escape-{tag}" / "buzon"
        real = mail_root.parent / f"escape-{tag}" / "buzon"
    else:
        real = tmp_path / f"maildir-{tag}"
        real.mkdir()
        bad = mail_root / svc.domain / f"link-{tag}"
        bad.symlink_to(real, target_is_directory=True)
    bad_id = await add_mailbox(stack.pool, svc.service_id, bad)
    assert real.resolve() == bad.resolve()
    good = svc.maildirs[0]
    bad_before = tree_snapshot(real)
    good_before = tree_snapshot(good)

    try:
        _, code = await request_and_code(stack, svc)
        await confirm_ok(stack, svc, code)
        status = await wait_status(
            stack,
            svc.service_id,
            lambda s: s.steps.mailboxes.status is StepStatus.REFUSED,
            "the mailboxes step refused",
        )
        assert status.state is State.DEPROVISIONING
        detail = status.steps.mailboxes.detail or ""
        assert f"mailbox {bad_id}" in detail, detail
        await asyncio.sleep(0.5)
        status = await stack.cancellations.status(svc.service_id)
        assert status.state is State.DEPROVISIONING
        assert status.steps.mailboxes.status is StepStatus.REFUSED

        row = await service_row(stack, svc.service_id)
        assert row["status"] == "active" and row["cancelled_at"] is None
        # a refusal deletes none of the service's mailboxes, the good one included
        for mb in (await rows(stack, "mailboxes", svc.service_id)).values():
            assert mb["deleted_at"] is None, mb
        assert tree_snapshot(real) == bad_before
        assert tree_snapshot(good) == good_before
        if case == "link":
            assert bad.is_symlink()
        assert done_mails(stack, svc.domain) == []
    finally:
        await terminate(stack, svc.service_id)


# ---- one cancellation per service -------------------------------------------------------


async def test_repeated_request_returns_the_running_workflow(stack: Any) -> None:
    svc = await stack.panel.service()
    first = await stack.cancellations.request(svc.service_id, svc.customer_id)
    second = await stack.cancellations.request(svc.service_id, svc.customer_id)
    assert second.workflow_id == first.workflow_id
    assert second.run_id == first.run_id
    await asyncio.sleep(0.5)
    assert len(code_mails(stack, svc.domain)) == 1
    await stack.cancellations.withdraw(svc.service_id)


async def test_concurrent_requests_make_one_workflow_and_one_mail(stack: Any) -> None:
    svc = await stack.panel.service()
    answers = await asyncio.gather(
        *(stack.cancellations.request(svc.service_id, svc.customer_id) for _ in range(2))
    )
    assert len({a.run_id for a in answers}) == 1, [a.run_id for a in answers]
    await wait_code_mail(stack, svc)
    await asyncio.sleep(1.0)
    assert len(code_mails(stack, svc.domain)) == 1
    n = await stack.pool.fetchval(
        "select count(*) from bajas.cancellation_requests where service_id = $1", svc.service_id
    )
    assert n == 1
    await stack.cancellations.withdraw(svc.service_id)


# ---- the code stays secret ---------------------------------------------------------------


def _history_text(history_json: str) -> str:
    """The history JSON plus every base64 value decoded (payload data is base64 there)."""
    parts = [history_json]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str) and len(node) >= 4:
            try:
                parts.append(base64.b64decode(node, validate=True).decode("utf-8", "replace"))
            except (binascii.Error, ValueError):
                pass

    walk(json.loads(history_json))
    return "\n".join(parts)


def _contains_code(text: str, code: str) -> bool:
    return re.search(rf"(?<!\d){code}(?!\d)", text) is not None


async def test_code_not_in_history_nor_in_clear_in_database(stack: Any) -> None:
    svc = await stack.panel.service()
    run_id, code = await request_and_code(stack, svc)
    handle = stack.cancellations.handle(svc.service_id)

    history = await handle.fetch_history()
    text = _history_text(history.to_json())
    assert str(svc.service_id) in text  # the decoding does see payloads
    assert not _contains_code(text, code), "the issued code is in the workflow history"

    recs = await stack.pool.fetch(
        "select * from bajas.confirmation_codes where run_id = $1", run_id
    )
    assert len(recs) == 1
    for rec in recs:
        for column, value in dict(rec).items():
            if isinstance(value, bytes | bytearray | memoryview):
                raw = bytes(value)
                assert code.encode() not in raw, column
                assert code not in raw.hex(), column
            else:
                assert code not in str(value), column

    # sensitivity of the check above: a submitted code does arrive as update input
    await confirm_ok(stack, svc, code)
    history = await handle.fetch_history()
    assert _contains_code(_history_text(history.to_json()), code)
    assert (await result_of(stack, svc.service_id)).state is State.CANCELLED


# ---- requests that must be rejected ------------------------------------------------------


async def test_stranger_is_rejected_and_nothing_touched(stack: Any) -> None:
    svc = await stack.panel.service()
    stranger, _ = await stack.panel.customer()
    before = await panel_snapshot(stack, svc)

    try:
        answer = await stack.cancellations.request(svc.service_id, stranger)
    except CancellationNotFound:
        pass
    else:
        assert answer.status.state is State.REJECTED
        assert answer.status.rejection_reason
        result = await result_of(stack, svc.service_id)
        assert result.state is State.REJECTED
        req = await request_row(stack, answer.run_id)
        assert req["state"] == State.REJECTED

    await asyncio.sleep(0.5)
    assert await panel_snapshot(stack, svc) == before
    assert mails_about(stack.mail, svc.domain) == []

    # while the owner's cancellation runs, the stranger does not get hold of it
    own = await stack.cancellations.request(svc.service_id, svc.customer_id)
    assert own.status.state is State.AWAITING_CONFIRMATION
    with pytest.raises(CancellationNotFound):
        await stack.cancellations.request(svc.service_id, stranger)
    status = await stack.cancellations.status(svc.service_id)
    assert status.state is State.AWAITING_CONFIRMATION
    assert status.customer_id == svc.customer_id
    await stack.cancellations.withdraw(svc.service_id)
    assert (await panel_snapshot(stack, svc))["files"] == before["files"]


async def test_unknown_service_is_rejected(stack: Any) -> None:
    cid, _ = await stack.panel.customer()
    unknown = 9_000_000_000_000 + int(uuid.uuid4().int % 1_000_000)
    answer = await stack.cancellations.request(unknown, cid)
    assert answer.status.state is State.REJECTED
    result = await result_of(stack, unknown)
    assert result.state is State.REJECTED
    assert result.rejection_reason


async def test_already_cancelled_service_is_rejected(stack: Any) -> None:
    svc = await stack.panel.service(status="cancelled")
    before = await panel_snapshot(stack, svc)
    answer = await stack.cancellations.request(svc.service_id, svc.customer_id)
    assert answer.status.state is State.REJECTED
    result = await result_of(stack, svc.service_id)
    assert result.state is State.REJECTED
    assert result.billing_outcome is None
    assert await panel_snapshot(stack, svc) == before
    assert mails_about(stack.mail, svc.domain) == []


# ---- wrong code, withdrawal ----------------------------------------------------------------


async def test_wrong_code_then_right_code(stack: Any) -> None:
    svc = await stack.panel.service()
    _, code = await request_and_code(stack, svc)

    wrong = await stack.cancellations.confirm(svc.service_id, other_code(code))
    assert wrong.accepted is False
    assert wrong.attempts_left == MAX_WRONG_CODES - 1 == 4
    assert wrong.state is State.AWAITING_CONFIRMATION
    assert svc.document_root is not None and tree_files(svc.document_root) == 5
    status = await stack.cancellations.status(svc.service_id)
    assert status.attempts_left == 4

    right = await stack.cancellations.confirm(svc.service_id, code)
    assert right.accepted is True
    assert right.attempts_left == 4
    result = await result_of(stack, svc.service_id)
    assert result.state is State.CANCELLED
    assert not svc.document_root.exists()


async def test_withdraw_then_new_request(stack: Any) -> None:
    svc = await stack.panel.service()
    before = await panel_snapshot(stack, svc)
    first_run, first_code = await request_and_code(stack, svc)

    status = await stack.cancellations.withdraw(svc.service_id, reason="me arrepentí")
    assert status.state is State.WITHDRAWN
    result = await result_of(stack, svc.service_id)
    assert result.state is State.WITHDRAWN
    assert result.billing_outcome is None
    assert await panel_snapshot(stack, svc) == before
    assert done_mails(stack, svc.domain) == []
    assert (await request_row(stack, first_run))["state"] == State.WITHDRAWN
    assert "withdrawn" in await audit(stack, first_run)

    second = await stack.cancellations.request(svc.service_id, svc.customer_id)
    assert second.run_id != first_run
    assert second.status.state is State.AWAITING_CONFIRMATION
    mail = await wait_code_mail(stack, svc, count=2)
    assert len(code_mails(stack, svc.domain)) == 2
    second_code = code_in(mail)
    if second_code != first_code:
        # the withdrawn run's code does not confirm the new one
        stale = await stack.cancellations.confirm(svc.service_id, first_code)
        assert stale.accepted is False
    await stack.cancellations.withdraw(svc.service_id)
    assert await panel_snapshot(stack, svc) == before


# ---- a domain hosted again at its old path ------------------------------------------------


@pytest.mark.parametrize("what", ["document_root", "maildir"])
async def test_path_of_an_earlier_cancelled_service_can_be_cancelled_again(
    stack: Any, what: str
) -> None:
    """The customer cancels example.com, subscribes it again later, and cancels again."""
    tag = uuid.uuid4().hex[:8]
    site = stack.settings.hosting_root / f"rehost-{tag}.example.test"
    maildir = stack.settings.mail_root / f"rehost-{tag}.example.test" / "info"
    customer = await stack.panel.customer()

    async def subscribe() -> ServiceFixture:
        if what == "document_root":
            make_tree(site, 3)
            return await stack.panel.service(customer, document_root=site, mailboxes=0)
        svc = await stack.panel.service(customer, document_root=None, mailboxes=0)
        await add_mailbox(stack.pool, svc.service_id, maildir)
        return svc

    first = await subscribe()
    _, code = await request_and_code(stack, first)
    await confirm_ok(stack, first, code)
    assert (await result_of(stack, first.service_id)).state is State.CANCELLED
    assert not site.exists() and not maildir.exists()

    again = await subscribe()
    try:
        _, code = await request_and_code(stack, again)
        await confirm_ok(stack, again, code)
        status = await wait_status(
            stack,
            again.service_id,
            lambda s: (
                s.state is State.CANCELLED
                or StepStatus.REFUSED in (s.steps.files.status, s.steps.mailboxes.status)
            ),
            "the second cancellation to end or be refused",
        )
        assert status.state is State.CANCELLED, status.steps
        assert not site.exists() and not maildir.exists()
    finally:
        await terminate(stack, again.service_id)


# ---- the end of the term (contract section 8) -------------------------------------------


async def test_end_of_term_already_reached_deletes_at_once(stack: Any) -> None:
    """Expiring today, the term ended at 00:00: confirming starts the deletion at once."""
    today = await business_today(stack)
    svc = await stack.panel.service(expires_on=today, files=3, mailboxes=1)
    answer = await stack.cancellations.request(
        svc.service_id, svc.customer_id, effective=Effective.END_OF_TERM
    )
    assert answer.status.effective is Effective.END_OF_TERM
    mail = await wait_code_mail(stack, svc)
    assert "final del período" not in mail.body  # nothing left to wait for
    answer_ = await stack.cancellations.confirm(svc.service_id, code_in(mail))
    assert (answer_.accepted, answer_.state) == (True, State.DEPROVISIONING)
    result = await result_of(stack, svc.service_id)
    assert (result.state, result.billing_outcome) == (State.CANCELLED, LATE)
    status = await stack.cancellations.status(svc.service_id)
    assert status.effective_at is not None and status.effective_at == status.confirmed_at
    assert svc.document_root is not None and not svc.document_root.exists()
    assert not any(m.exists() for m in svc.maildirs)
    events = await audit(stack, answer.run_id)
    assert events["confirmed"]["to_state"] == "deprovisioning"
    assert "term_ended" not in events
    [done] = done_mails(stack, svc.domain)
    assert "final del período" not in done.body


async def test_end_of_term_tomorrow_is_scheduled_and_can_be_withdrawn(stack: Any) -> None:
    tz = ZoneInfo(stack.settings.business_tz)
    tomorrow = await business_today(stack) + timedelta(days=1)
    # Paid by automatic debit, unless tomorrow is the 1st: the eve of that debit began at
    # 00:00 today, so billing would close at once (tested below on a clock that moves).
    method = "manual" if tomorrow.day == 1 else "auto_debit"
    svc = await stack.panel.service(
        expires_on=tomorrow, payment_method=method, files=4, mailboxes=2
    )
    await add_mandate(stack.pool, svc.service_id)
    before = await panel_snapshot(stack, svc)
    answer = await stack.cancellations.request(
        svc.service_id,
        svc.customer_id,
        effective=Effective.END_OF_TERM,
        reason_code=ReasonCode.CIERRE_DEL_PROYECTO,
        reason="cerramos la tienda",
    )
    run_id = answer.run_id
    end = datetime.combine(tomorrow, datetime.min.time(), tz)
    assert answer.status.effective_at == end
    mail = await wait_code_mail(stack, svc)
    assert (
        f"el sitio y el correo siguen funcionando hasta el {tomorrow.day} de" in mail.body
        and "a las 00:00 (hora de Buenos Aires)" in mail.body
    ), mail.body

    confirmed = await stack.cancellations.confirm(svc.service_id, code_in(mail))
    assert (confirmed.accepted, confirmed.state) == (True, State.SCHEDULED)
    status = await wait_status(
        stack, svc.service_id, lambda s: s.state is State.SCHEDULED, "scheduled"
    )
    assert (status.effective, status.effective_at) == (Effective.END_OF_TERM, end)
    assert status.reason_code is ReasonCode.CIERRE_DEL_PROYECTO
    # decided at the confirmation, today (on the day of the deletion it would be "late")
    assert status.confirmed_at is not None
    outcome = outcome_at(status.confirmed_at, stack.settings.business_tz, tomorrow, method)
    assert status.billing_outcome is outcome is not LATE
    assert status.billing_closes_at == end  # with the deletion: no debit left to stop
    described = await stack.cancellations.handle(svc.service_id).describe()
    assert described.typed_search_attributes.get(CANCELLATION_STATE) == "scheduled"
    # the reason is the customer's: not in what operators see on the workflow (the
    # texts given at the start stay on the first run; later runs show the details)
    first = stack.client.get_workflow_handle(answer.workflow_id, run_id=run_id)
    described = await first.describe()
    shown = f"{await described.static_summary()} {await described.static_details()}"
    assert "end_of_term" in shown and "cerramos" not in shown and "cierre" not in shown

    async def row_scheduled() -> dict[str, Any] | None:
        row = await request_row(stack, run_id)
        return row if row["state"] == "scheduled" else None

    row = await assert_eventually(row_scheduled, "the request row to say scheduled")
    assert (row["effective"], row["reason_code"], row["reason"]) == (
        "end_of_term",
        "cierre_del_proyecto",
        "cerramos la tienda",
    )
    assert row["confirmed_at"] is not None and row["billing_outcome"] == outcome
    # site, mail and billing as they were: nothing happens before the end of the term
    assert await panel_snapshot(stack, svc) == before

    withdrawn = await stack.cancellations.withdraw(svc.service_id, by="customer")
    assert withdrawn.state is State.WITHDRAWN
    assert (await result_of(stack, svc.service_id)).state is State.WITHDRAWN
    assert await panel_snapshot(stack, svc) == before
    events = await audit(stack, run_id)
    assert list(events) == ["requested", "code_sent:1", "confirmed", "withdrawn"]
    assert events["requested"]["details"] | {"rejection_reason": None} == {
        "rejection_reason": None,
        "effective": "end_of_term",
        "reason_code": "cierre_del_proyecto",
        "reason": "cerramos la tienda",
    }
    assert events["confirmed"]["to_state"] == "scheduled"
    assert datetime.fromisoformat(events["confirmed"]["details"]["effective_at"]) == end
    assert (events["withdrawn"]["from_state"], events["withdrawn"]["actor"]) == (
        "scheduled",
        "customer",
    )
    assert (await request_row(stack, run_id))["state"] == "withdrawn"
    assert done_mails(stack, svc.domain) == []


# ---- billing before the debit of the 1st, on a clock that moves ----------------------------


@dataclass
class SkippingStack:
    """The real worker, PostgreSQL, SMTP sink and roots, on the time-skipping server: the
    debit cut-off's eve and the end of the term are reached by moving its clock."""

    env: WorkflowEnvironment
    cancellations: CancellationClient
    pool: asyncpg.Pool
    mail: MailSink
    settings: Settings
    panel: Panel

    async def skip_past(self, instant: datetime) -> None:
        await self.env.sleep(instant - await self.env.get_current_time() + timedelta(hours=1))


@pytest_asyncio.fixture
async def skipping(
    env: WorkflowEnvironment, pool: asyncpg.Pool, mail: MailSink, settings: Settings
) -> AsyncIterator[SkippingStack]:
    own = settings.model_copy(update={"temporal_task_queue": f"bajas-skipping-{uuid.uuid4()}"})
    async with build_worker(env.client, own, pool):
        yield SkippingStack(
            env,
            CancellationClient(env.client, own.temporal_task_queue),
            pool,
            mail,
            own,
            Panel(pool, own.hosting_root, own.mail_root),
        )


@pytest.mark.time_skipping
@pytest.mark.parametrize("then", ["withdrawn", "cancelled"])
async def test_auto_debit_billing_closes_the_day_before_the_1st(
    skipping: SkippingStack, then: str
) -> None:
    """Confirmed months ahead for the end of the term, `debit_cancelled`: the mandate is
    revoked and the renewal invoice voided at 00:00 the day before the 1st, while site and
    mail stay; a withdrawal then keeps billing closed, and the panel and a mail say so."""
    s = skipping
    tz = s.settings.business_tz
    today = (await s.env.get_current_time()).astimezone(ZoneInfo(tz)).date()
    expires_on = (today.replace(day=1) + timedelta(days=63)).replace(day=20)
    eve, end = debit_cutoff_eve(expires_on, tz), term_end(expires_on, tz)
    customer = await s.panel.customer(password_hash=PasswordHasher().hash(CLAVE))
    svc = await s.panel.service(
        customer, expires_on=expires_on, payment_method="auto_debit", files=3, mailboxes=1
    )
    before = await panel_snapshot(s, svc)
    panel_settings = s.settings.model_copy(
        update={
            "panel_api_token": SecretStr(uuid.uuid4().hex),
            "panel_session_secret": SecretStr(uuid.uuid4().hex),
        }
    )
    app = create_app(panel_settings, client=s.env.client, pool=s.pool, mail_sink=s.mail)
    page = f"/panel/servicios/{svc.service_id}"
    http = panel_client(app)
    number = await s.pool.fetchval("select number from customers where id = $1", svc.customer_id)
    await sign_in(http, number)
    try:
        answer = await s.cancellations.request(
            svc.service_id, svc.customer_id, effective=Effective.END_OF_TERM
        )
        confirmed = await s.cancellations.confirm(
            svc.service_id, code_in(await wait_code_mail(s, svc))
        )
        assert confirmed.state is State.SCHEDULED
        status = await wait_status(
            s, svc.service_id, lambda st: st.billing_outcome is not None, "the outcome"
        )
        assert (status.billing_outcome, status.billing_closes_at) == (DEBIT_CANCELLED, eve)
        shown = " ".join((await http.get(page)).text.split())
        assert texts.billing_closes_early(eve, debit_cutoff(expires_on), tz) in shown

        await s.skip_past(eve)
        status = await wait_status(
            s,
            svc.service_id,
            lambda st: st.steps.billing.status is StepStatus.DONE,
            "billing to close before the 1st",
        )
        assert status.state is State.SCHEDULED
        billed = await panel_snapshot(s, svc)
        assert billed["service"] == before["service"] | {"auto_renew": False}
        assert {m["status"] for m in billed["mandates"].values()} == {"revoked"}
        renewal = {i for i, inv in before["invoices"].items() if inv["status"] == "open"}
        assert renewal
        assert {i for i, inv in billed["invoices"].items() if inv["status"] == "void"} == renewal
        # the site and the mail work on, untouched
        for kept in ("mailboxes", "files", "maildirs"):
            assert billed[kept] == before[kept]

        assert texts.BILLING_CLOSED_EARLY in " ".join((await http.get(page)).text.split())

        if then == "withdrawn":  # "Desistir" in the panel
            shown = " ".join((await post_form(http, page + "/desistir")).text.split())
            kept = texts.billing_stays_closed(expires_on)
            assert f"Desistió de la baja: el sitio y el correo siguen funcionando. {kept}" in shown
            assert f"Usted desistió de la solicitud de baja anterior. {kept}" in shown
            [mail] = await assert_eventually(
                lambda: (
                    [m for m in mails_about(s.mail, svc.domain) if "Desistió" in m.subject] or None
                ),
                "the withdrawal mail",
            )
            assert mail.rcpt_tos == [svc.email]
            body = " ".join(mail.body.split())
            assert "el sitio y el correo siguen funcionando" in body
            assert texts.billing_stays_closed(expires_on) in body
            assert (await s.cancellations.result(svc.service_id)).state is State.WITHDRAWN
            assert await panel_snapshot(s, svc) == billed  # billing stays closed, all else too
        else:
            await s.skip_past(end)
            result = await asyncio.wait_for(s.cancellations.result(svc.service_id), TIMEOUT)
            assert (result.state, result.billing_outcome) == (State.CANCELLED, DEBIT_CANCELLED)
            after = await panel_snapshot(s, svc)
            assert svc.document_root is not None and not svc.document_root.exists()
            assert not any(m.exists() for m in svc.maildirs)
            assert (after["mandates"], after["invoices"]) == (
                billed["mandates"],
                billed["invoices"],
            )
            assert done_mails(s, svc.domain) != []
        closings = await s.pool.fetchval(
            "select count(*) from bajas.audit_trail where run_id = $1 and event = 'billing_closed'",
            answer.run_id,
        )
        assert closings == 1
    finally:
        await http.aclose()
        await terminate(s, svc.service_id)
