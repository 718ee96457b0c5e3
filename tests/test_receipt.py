"""The receipt of a finished cancellation (contract section 8), on the real stack.

It is measured against the disk before anything is deleted (`find`, `du -sb`, the way the
deletion engine counts), against the billing rows after, and then read back everywhere it
is shown: the audit trail, the final mail, the API (JSON and text), `bajas receipt` and
the panel. All of them must say the same.
"""

from __future__ import annotations

import asyncio
import html
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from bajas import texts
from bajas.dev.mailsink import SunkMessage
from bajas.models import BillingOutcome, Receipt, ReceiptFiles, State
from bajas.receipts import ReceiptIncomplete, build_receipt
from tests.conftest import Stack
from tests.conftest_api import (  # noqa: F401 - fixtures
    api,
    api_settings,
    app,
    cancel_through,
    wait_for_mails,
)
from tests.helpers import assert_eventually
from tests.helpers.mail import code_in, mails_about
from tests.helpers.panel import ServiceFixture, add_invoice
from tests.panel_http import client, customer_with_clave, sign_in
from tests.test_cli import assert_one_error_line, bajas

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
DONE_SUBJECT = "dado de baja"


@dataclass(frozen=True)
class OnDisk:
    """A service's data as the deletion engine counts it, measured before deletion."""

    files: int
    bytes: int
    # address -> (messages, bytes)
    mailboxes: dict[str, tuple[int, int]]


async def _lines(*command: str) -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, (command, err)
    return out.decode().splitlines()


async def du_bytes(path: Path) -> int:
    (line,) = await _lines("du", "-sb", str(path))
    return int(line.split()[0])


async def measure(svc: ServiceFixture) -> OnDisk:
    assert svc.document_root is not None
    files = await _lines("find", str(svc.document_root), "!", "-type", "d")
    mailboxes = {}
    for n, maildir in enumerate(svc.maildirs):
        messages = await _lines(
            "find",
            str(maildir),
            "-type",
            "f",
            "(",
            "-path",
            "*/cur/*",
            "-o",
            "-path",
            "*/new/*",
            ")",
        )
        mailboxes[f"buzon{n}@{svc.domain}"] = (len(messages), await du_bytes(maildir))
    return OnDisk(len(files), await du_bytes(svc.document_root), mailboxes)


def receipt_url(svc: ServiceFixture, customer_id: int | None = None) -> str:
    cid = svc.customer_id if customer_id is None else customer_id
    return f"/api/customers/{cid}/services/{svc.service_id}/cancellation/receipt"


def done_mails(stack: Stack, domain: str) -> list[SunkMessage]:
    return [m for m in mails_about(stack.mail, domain) if DONE_SUBJECT in m.subject]


async def trail(stack: Stack, run_id: str) -> dict[str, dict[str, Any]]:
    rows = await stack.pool.fetch(
        "select event, details, at from bajas.audit_trail where run_id = $1 order by id", run_id
    )
    return {r["event"]: {"details": json.loads(r["details"]), "at": r["at"]} for r in rows}


async def ids_where(stack: Stack, table: str, service_id: int, status: str) -> list[int]:
    rows = await stack.pool.fetch(
        f"select id from {table} where service_id = $1 and status = $2 order by id",
        service_id,
        status,
    )
    return [r["id"] for r in rows]


async def test_a_cancellation_leaves_one_receipt_shown_alike_everywhere(
    api: httpx.AsyncClient,  # noqa: F811
    app: FastAPI,  # noqa: F811
    stack: Stack,
) -> None:
    cid, number, email = await customer_with_clave(stack)
    svc = await stack.panel.service((cid, email), payment_method="auto_debit", files=7)
    sid = svc.service_id
    # a second renewal invoice to void, and an open one of the current period to keep
    await add_invoice(stack.pool, sid, date(2100, 6, 15), date(2101, 6, 15), "open")
    current = await add_invoice(stack.pool, sid, date(2099, 5, 15), date(2099, 6, 14), "open")
    stranger, _ = await stack.panel.customer()

    # No receipt before the end: not for an active service, nor while awaiting the code.
    expected_404 = {"detail": f"no receipt for service {sid}: it is not cancelled"}
    for url in (receipt_url(svc), receipt_url(svc) + "?format=text"):
        r = await api.get(url)
        assert (r.status_code, r.json()) == (404, expected_404), r.text
    run = await bajas(stack, "receipt", "--service", str(sid))
    assert_one_error_line(run, 1, f"service {sid} is active, not cancelled")
    on_disk = await measure(svc)
    assert on_disk.files == 7 and len(on_disk.mailboxes) == 2

    answer = await stack.cancellations.request(sid, cid)
    assert (await api.get(receipt_url(svc))).status_code == 404
    (mail,) = await wait_for_mails(stack, svc.domain, 1)
    assert (await stack.cancellations.confirm(sid, code_in(mail))).accepted
    result = await asyncio.wait_for(stack.cancellations.result(sid), TIMEOUT)
    assert result.state is State.CANCELLED and svc.document_root is not None
    assert not svc.document_root.exists()

    # The receipt line: the same run, written once, from the steps' own lines.
    lines = await trail(stack, answer.run_id)
    stored = lines["receipt"]["details"]
    receipt = Receipt.model_validate(stored)
    assert (receipt.service_id, receipt.customer_id, receipt.domain) == (sid, cid, svc.domain)
    assert receipt.billing_outcome is BillingOutcome.DEBIT_CANCELLED
    voided = await ids_where(stack, "invoices", sid, "void")
    revoked = await ids_where(stack, "debit_mandates", sid, "revoked")
    assert len(voided) == 2 and current not in voided and len(revoked) == 1
    assert receipt.voided_invoice_ids == voided
    assert receipt.revoked_mandate_ids == revoked
    billing = lines["billing_closed"]["details"]
    assert (billing["voided_invoice_ids"], billing["revoked_mandate_ids"]) == (voided, revoked)
    assert (billing["invoices_voided"], billing["mandates_revoked"]) == (2, 1)
    assert receipt.files.deleted == on_disk.files
    mailboxes = await stack.pool.fetch(
        "select address, deleted_at from mailboxes where service_id = $1 order by address", sid
    )
    assert [m.address for m in receipt.mailboxes] == [r["address"] for r in mailboxes]
    assert sorted(on_disk.mailboxes) == [m.address for m in receipt.mailboxes]
    # The times are those of the lines; the end is the cancelled mark's own instant.
    assert receipt.requested_at == lines["requested"]["at"]
    assert receipt.confirmed_at == lines["confirmed"]["at"]
    assert receipt.billing_closed_at == lines["billing_closed"]["at"]
    assert receipt.files.deleted_at == lines["files_deleted"]["at"]
    assert receipt.finished_at == lines["cancelled"]["at"] == lines["receipt"]["at"]
    service = await stack.pool.fetchrow("select cancelled_at from services where id = $1", sid)
    assert service["cancelled_at"] == receipt.finished_at
    assert receipt.requested_at < receipt.confirmed_at <= receipt.billing_closed_at
    assert receipt.billing_closed_at <= receipt.files.deleted_at <= receipt.finished_at
    for box in receipt.mailboxes:
        assert box.deleted_at is not None
        assert receipt.billing_closed_at <= box.deleted_at <= receipt.finished_at, box
    tz_name = stack.settings.business_tz
    text = texts.receipt_text(receipt, tz_name)
    for words in (
        f"Sitio, borrado el {texts.local_time(receipt.files.deleted_at, tz_name)}: 7 archivos",
        "Correo: 2 buzones",
        f"Facturas anuladas: n.º {voided[0]}, n.º {voided[1]}",
        f"Débitos automáticos revocados: n.º {revoked[0]}",
        texts.outcome_text(BillingOutcome.DEBIT_CANCELLED),
        *(f"- {address}, borrado el " for address in on_disk.mailboxes),
    ):
        assert words in text, (words, text)

    # The final mail carries it, once.
    (done,) = await assert_eventually(lambda: done_mails(stack, svc.domain), "the final mail")
    assert text in done.body.replace("\r\n", "\n"), done.body
    assert email in done.to

    # The API: the stored JSON as it is; the text as the mail words it.
    r = await api.get(receipt_url(svc))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == stored
    r = await api.get(receipt_url(svc) + "?format=text")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert r.text == text + "\n"
    assert (await api.get(receipt_url(svc, stranger))).status_code == 404
    assert (await api.get(receipt_url(svc) + "?format=pdf")).status_code == 422

    # The CLI: the same JSON, the same text.
    run = await bajas(stack, "receipt", "--service", str(sid), "--json")
    assert run.code == 0 and run.err == "", run
    assert json.loads(run.out) == stored
    run = await bajas(stack, "receipt", "--service", str(sid))
    assert (run.code, run.out, run.err) == (0, text + "\n", ""), run

    # The panel: the list links to it, the service's page shows it.
    async with client(app) as http:
        await sign_in(http, number)
        listing = (await http.get("/panel/")).text
        assert f'href="/panel/servicios/{sid}#comprobante"' in listing
        page = (await http.get(f"/panel/servicios/{sid}")).text
    assert 'id="comprobante"' in page
    assert html.escape(text, quote=False) in page


async def test_a_receipt_cannot_be_asked_of_an_unknown_service(stack: Stack) -> None:
    run = await bajas(stack, "receipt", "--service", "9" * 15)
    assert_one_error_line(run, 1, f"no service with id {'9' * 15}")


async def test_the_receipt_reads_the_deletion_engines_lines(stack: Stack) -> None:
    """The lines of the deletion engine (contract section 8) carry sizes, and list the
    mailboxes themselves: the receipt takes them as they are, whatever the rows say."""
    svc = await stack.panel.service(files=0, mailboxes=0, invoices=False)
    run_id = f"receipt-test-{uuid.uuid4()}"
    start = datetime(2026, 6, 5, 19, 44, tzinfo=UTC)

    async def line(event: str, seconds: int, details: dict[str, Any]) -> None:
        await stack.pool.execute(
            "insert into bajas.audit_trail (run_id, workflow_id, event, service_id, customer_id,"
            " actor, billing_outcome, details, at) values ($1, 'wf', $2, $3, $4, 'bajas',"
            " 'no_further_charges', $5::jsonb, $6)",
            run_id,
            event,
            svc.service_id,
            svc.customer_id,
            json.dumps(details),
            start + timedelta(seconds=seconds),
        )

    await line("requested", 0, {})
    with pytest.raises(ReceiptIncomplete, match="no confirmed, billing_closed, files_deleted"):
        await build_receipt(stack.pool, run_id)
    mailboxes = [
        {
            "address": "zoe@x.test",
            "messages": 2,
            "bytes": 8192,
            "deleted_at": "2026-06-05T19:45:30Z",
        },
        {
            "address": "ana@x.test",
            "messages": 0,
            "bytes": 4096,
            "deleted_at": "2026-06-05T19:45:10Z",
        },
    ]
    await line("confirmed", 60, {"attempts_left": 5})
    await line("billing_closed", 61, {"invoices_voided": 1, "voided_invoice_ids": [11]})
    await line("mailboxes_deleted", 90, {"mailboxes": mailboxes})
    await line(
        "files_deleted", 95, {"files": 1250, "bytes": 1_800_000_000, "dirs": 3, "node": "w1"}
    )
    await line("cancelled", 96, {"files_deleted": 1250, "mailboxes_deleted": 2})

    receipt = await build_receipt(stack.pool, run_id)
    assert receipt.files == ReceiptFiles(
        deleted=1250, bytes=1_800_000_000, deleted_at=start + timedelta(seconds=95)
    )
    assert [m.model_dump(mode="json") for m in receipt.mailboxes] == mailboxes[::-1]
    assert (receipt.voided_invoice_ids, receipt.revoked_mandate_ids) == ([11], [])
    assert (receipt.requested_at, receipt.finished_at) == (start, start + timedelta(seconds=96))
    assert receipt.domain == svc.domain


async def test_the_receipt_sizes_are_what_was_on_disk(stack: Stack) -> None:
    svc = await stack.panel.service(files=120, mailboxes=2)
    on_disk = await measure(svc)
    run_id = await cancel_through(stack, svc)
    receipt = Receipt.model_validate((await trail(stack, run_id))["receipt"]["details"])
    assert (receipt.files.deleted, receipt.files.bytes) == (on_disk.files, on_disk.bytes)
    assert {m.address: (m.messages, m.bytes) for m in receipt.mailboxes} == on_disk.mailboxes
    (done,) = await assert_eventually(lambda: done_mails(stack, svc.domain), "the final mail")
    assert f"120 archivos ({texts.byte_size(on_disk.bytes)})" in done.body, done.body
