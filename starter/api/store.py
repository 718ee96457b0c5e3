"""Reads of the panel database the API and panel need; nothing here writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import asyncpg

from bajas.models import IN_PROGRESS, MAX_ID


@dataclass(frozen=True)
class Customer:
    id: int
    number: str
    email: str
    name: str


@dataclass(frozen=True)
class Service:
    id: int
    customer_id: int
    domain: str
    plan: str
    status: str
    expires_on: date
    payment_method: str
    auto_renew: bool
    cancelled_at: datetime | None
    # 'active', 'revoked' (every mandate revoked), or None without a mandate
    debit_mandate: str | None = None


@dataclass(frozen=True)
class LatestRequest:
    """The newest `bajas.cancellation_requests` row of a service."""

    service_id: int
    workflow_id: str
    run_id: str
    state: str
    requested_at: datetime

    @property
    def in_progress(self) -> bool:
        return self.state in IN_PROGRESS


# 'active' sorts before 'revoked': the least status says whether any mandate still debits.
_SERVICE_COLUMNS = (
    "id, customer_id, domain, plan, status, expires_on, payment_method, auto_renew, cancelled_at,"
    " (select min(m.status) from debit_mandates m where m.service_id = services.id)"
    " as debit_mandate"
)


def _valid_id(value: int) -> bool:
    return 0 < value <= MAX_ID


async def customer(pool: asyncpg.Pool, customer_id: int) -> Customer | None:
    if not _valid_id(customer_id):
        return None
    row = await pool.fetchrow(
        "select id, number, email, name from customers where id = $1", customer_id
    )
    return Customer(**dict(row)) if row else None


async def customer_for_sign_in(pool: asyncpg.Pool, number: str) -> tuple[int, str | None] | None:
    """(id, password_hash) of the customer with that number, or None."""
    row = await pool.fetchrow(
        "select id, password_hash from customers where number = $1", number.strip()
    )
    return (row["id"], row["password_hash"]) if row else None


async def services_of(pool: asyncpg.Pool, customer_id: int) -> list[Service]:
    if not _valid_id(customer_id):
        return []
    rows = await pool.fetch(
        f"select {_SERVICE_COLUMNS} from services where customer_id = $1 order by domain, id",
        customer_id,
    )
    return [Service(**dict(r)) for r in rows]


async def owned_service(pool: asyncpg.Pool, customer_id: int, service_id: int) -> Service | None:
    """The service if it exists AND is this customer's: callers answer both misses alike."""
    if not (_valid_id(customer_id) and _valid_id(service_id)):
        return None
    row = await pool.fetchrow(
        f"select {_SERVICE_COLUMNS} from services where id = $1 and customer_id = $2",
        service_id,
        customer_id,
    )
    return Service(**dict(row)) if row else None


async def mailbox_addresses(pool: asyncpg.Pool, service_ids: list[int]) -> dict[int, list[str]]:
    """The mailboxes not yet deleted of each service, by address."""
    if not service_ids:
        return {}
    rows = await pool.fetch(
        "select service_id, address from mailboxes"
        " where service_id = any($1::bigint[]) and deleted_at is null order by address",
        service_ids,
    )
    found: dict[int, list[str]] = {}
    for r in rows:
        found.setdefault(r["service_id"], []).append(r["address"])
    return found


async def latest_requests(pool: asyncpg.Pool, service_ids: list[int]) -> dict[int, LatestRequest]:
    if not service_ids:
        return {}
    rows = await pool.fetch(
        """
        select distinct on (service_id) service_id, workflow_id, run_id, state, requested_at
          from bajas.cancellation_requests
         where service_id = any($1::bigint[])
         order by service_id, requested_at desc
        """,
        service_ids,
    )
    return {r["service_id"]: LatestRequest(**dict(r)) for r in rows}
