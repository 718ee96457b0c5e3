"""`bajas report`: why customers leave and what it meant for billing, from the request rows.

Counts the requests of `bajas.cancellation_requests` made since a date (00:00
BUSINESS_TZ), per `reason_code` and per `billing_outcome`. Requests the service check
rejected (unknown service, not the customer's, the abuse limits) never became
cancellations and are left out. Only codes and outcomes are read: the free-text
reasons stay in the database.
"""

from __future__ import annotations

from collections import Counter
from datetime import date

import asyncpg
from pydantic import BaseModel

from bajas.models import BillingOutcome, ReasonCode, State

_COUNTS = """
select reason_code, billing_outcome, count(*) as n
  from bajas.cancellation_requests
 where requested_at >= ($1::date::timestamp at time zone $2) and state <> $3
 group by reason_code, billing_outcome
"""


class ReasonCount(BaseModel):
    reason_code: ReasonCode | None
    count: int


class OutcomeCount(BaseModel):
    """`billing_outcome` null: not confirmed (still waiting, expired, withdrawn, locked)."""

    billing_outcome: BillingOutcome | None
    count: int


class CancellationReport(BaseModel):
    """Every code and outcome is listed, with 0 where none; null last."""

    since: date
    business_tz: str
    total: int
    by_reason_code: list[ReasonCount]
    by_billing_outcome: list[OutcomeCount]


async def cancellation_report(
    conn: asyncpg.Connection | asyncpg.Pool, since: date, business_tz: str
) -> CancellationReport:
    rows = await conn.fetch(_COUNTS, since, business_tz, State.REJECTED)
    reasons: Counter[ReasonCode | None] = Counter()
    outcomes: Counter[BillingOutcome | None] = Counter()
    for row in rows:
        code = ReasonCode(row["reason_code"]) if row["reason_code"] else None
        outcome = BillingOutcome(row["billing_outcome"]) if row["billing_outcome"] else None
        reasons[code] += row["n"]
        outcomes[outcome] += row["n"]
    return CancellationReport(
        since=since,
        business_tz=business_tz,
        total=sum(reasons.values()),
        by_reason_code=[
            ReasonCount(reason_code=code, count=reasons[code]) for code in [*ReasonCode, None]
        ],
        by_billing_outcome=[
            OutcomeCount(billing_outcome=outcome, count=outcomes[outcome])
            for outcome in [*BillingOutcome, None]
        ],
    )
