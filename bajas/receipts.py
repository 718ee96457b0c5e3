"""The receipt of a finished cancellation: built once from the audit lines its steps wrote
(never from what a caller says happened), stored as the run's `receipt` line, and read
back from there by the final mail, the API, the CLI and the panel.

Shared, like `bajas.limits`, by the worker (which builds and stores it) and the starter
(which only reads it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from bajas.models import Receipt, ReceiptFiles, ReceiptMailbox, ReceiptResource

RECEIPT = "receipt"
# The audit line of one resource step (`record_resources`): one per kind and server.
RESOURCES_DELETED = "resources_deleted"
# The audit lines a receipt is made of: a run that reached its `cancelled` mark has them all.
SOURCES = (
    "requested",
    "confirmed",
    "billing_closed",
    "files_deleted",
    "mailboxes_deleted",
    "cancelled",
)


class ReceiptIncomplete(Exception):
    """The run lacks an audit line the receipt is built from."""


@dataclass(frozen=True)
class _Line:
    details: dict[str, Any]
    at: datetime
    billing_outcome: str | None


async def build_receipt(conn: asyncpg.Connection | asyncpg.Pool, run_id: str) -> Receipt:
    """The receipt of run `run_id`, from its audit lines (and, for mailboxes whose line
    does not list them, from their `mailboxes` rows)."""
    rows = await conn.fetch(
        "select event, service_id, customer_id, billing_outcome, details, at"
        " from bajas.audit_trail where run_id = $1 and event = any($2::text[])",
        run_id,
        list(SOURCES),
    )
    lines = {r["event"]: _Line(_json(r["details"]), r["at"], r["billing_outcome"]) for r in rows}
    missing = [event for event in SOURCES if event not in lines]
    if missing:
        raise ReceiptIncomplete(f"run {run_id} has no {', '.join(missing)} audit line")
    service_id, customer_id = rows[0]["service_id"], rows[0]["customer_id"]
    billing = lines["billing_closed"]
    return Receipt(
        service_id=service_id,
        customer_id=customer_id,
        domain=await conn.fetchval("select domain from services where id = $1", service_id),
        requested_at=lines["requested"].at,
        confirmed_at=lines["confirmed"].at,
        finished_at=lines["cancelled"].at,
        billing_outcome=lines["cancelled"].billing_outcome,
        billing_closed_at=billing.at,
        voided_invoice_ids=billing.details.get("voided_invoice_ids", []),
        revoked_mandate_ids=billing.details.get("revoked_mandate_ids", []),
        files=_files(lines["files_deleted"]),
        mailboxes=await _mailboxes(conn, lines["mailboxes_deleted"], service_id),
        resources=await receipt_resources(conn, run_id),
    )


def resources_event(kind: str, server: str | None) -> str:
    """The audit event of one resource step: its kind, and its server when it has one."""
    return f"{RESOURCES_DELETED}:{kind}" + (f"@{server}" if server else "")


async def receipt_resources(
    conn: asyncpg.Connection | asyncpg.Pool, run_id: str
) -> list[ReceiptResource]:
    """Every resource the run's resource steps proved gone, from their audit lines."""
    rows = await conn.fetch(
        "select details, at from bajas.audit_trail where run_id = $1 and starts_with(event, $2)",
        run_id,
        RESOURCES_DELETED + ":",
    )
    found = [
        ReceiptResource(
            kind=r["kind"],
            name=r["name"],
            server=r.get("server"),
            deleted_at=row["at"],
            bytes=r.get("bytes"),
            items=r.get("items"),
        )
        for row in rows
        for r in _json(row["details"]).get("resources", [])
    ]
    return sorted(found, key=lambda r: (r.kind, r.server or "", r.name))


def _files(line: _Line) -> ReceiptFiles:
    """The deletion engine's line ({"files", "bytes", ...}), or the older one
    ({"files_deleted", ...}, no size)."""
    details = line.details
    deleted = details["files"] if "files" in details else details["files_deleted"]
    return ReceiptFiles(deleted=deleted, bytes=details.get("bytes"), deleted_at=line.at)


async def _mailboxes(
    conn: asyncpg.Connection | asyncpg.Pool, line: _Line, service_id: int
) -> list[ReceiptMailbox]:
    """The mailboxes the deletion engine's line lists, or else the service's rows marked
    deleted (the older line only counted them)."""
    listed = line.details.get("mailboxes")
    if isinstance(listed, list):
        found = [ReceiptMailbox.model_validate(m) for m in listed]
    else:
        rows = await conn.fetch(
            "select address, deleted_at from mailboxes"
            " where service_id = $1 and deleted_at is not null",
            service_id,
        )
        found = [ReceiptMailbox(address=r["address"], deleted_at=r["deleted_at"]) for r in rows]
    return sorted(found, key=lambda m: m.address)


async def stored_receipt(
    conn: asyncpg.Connection | asyncpg.Pool, service_id: int, run_id: str | None = None
) -> Receipt | None:
    """The receipt line of the service's cancelled run (of run `run_id` if given); None
    before the service is cancelled."""
    details = await conn.fetchval(
        "select details from bajas.audit_trail"
        " where service_id = $1 and event = $2 and ($3::text is null or run_id = $3)"
        " order by id desc limit 1",
        service_id,
        RECEIPT,
        run_id,
    )
    return Receipt.model_validate(_json(details)) if details is not None else None


def _json(value: str | Mapping[str, Any]) -> dict[str, Any]:
    """A jsonb value as asyncpg hands it (text, unless a codec decodes it)."""
    return dict(json.loads(value) if isinstance(value, str) else value)
