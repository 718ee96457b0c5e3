"""How often a service may be requested, re-mailed and guessed at (docs/SECURITY.md).

Judged from bajas' own tables, so every worker and every API process agree: locked
requests and finished requests in `bajas.cancellation_requests`, wrong codes, mailed codes
and operator unlocks in `bajas.audit_trail`. The worker applies the rules where every
channel passes (`check_service`, `issue_code`); the API, the panel and the CLI ask the same
question first, so that a refusal starts nothing.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from bajas.models import IN_PROGRESS

if TYPE_CHECKING:
    from bajas.config import Settings

# Locks and wrong codes count over this long (since the last `bajas unlock`).
GUESS_WINDOW = timedelta(hours=24)
RATE_WINDOW = timedelta(hours=1)
# Each further lock in the window multiplies the cool-down by this.
COOLDOWN_GROWTH = 4

# Rejection reasons start with one of these words; the rest is for people.
TOO_MANY_GUESSES = "too_many_guesses"
TOO_MANY_REQUESTS = "too_many_requests"
BAD_CONTACT_DATA = "bad_contact_data"
# The audit event of `bajas unlock`.
UNLOCKED = "unlocked"

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True)
class Limits:
    guess_cooldown: timedelta = timedelta(minutes=15)
    guess_max_locks: int = 3
    guess_max_wrong_codes: int = 15
    requests_per_service: int = 5
    requests_per_customer: int = 20
    resends_per_service: int = 5
    resends_per_customer: int = 20

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            guess_cooldown=settings.guess_cooldown,
            guess_max_locks=settings.guess_max_locks,
            guess_max_wrong_codes=settings.guess_max_wrong_codes,
            requests_per_service=settings.requests_per_service_hour,
            requests_per_customer=settings.requests_per_customer_hour,
            resends_per_service=settings.resends_per_service_hour,
            resends_per_customer=settings.resends_per_customer_hour,
        )

    def cooldown(self, locks: int) -> timedelta:
        """After the n-th lock in the window: the base, then growing fourfold each time."""
        return self.guess_cooldown * COOLDOWN_GROWTH ** max(locks - 1, 0)


@dataclass(frozen=True)
class Refusal:
    """Why a request or a resend is refused now; `until` None: until `bajas unlock`."""

    code: str
    message: str
    until: datetime | None

    @property
    def guesses(self) -> bool:
        return self.code == TOO_MANY_GUESSES

    @property
    def rejection_reason(self) -> str:
        return f"{self.code}: {self.message}"

    def retry_after(self, now: datetime) -> int | None:
        """Seconds for an HTTP `Retry-After`, or None when an operator must act."""
        if self.until is None:
            return None
        return max(int((self.until - now).total_seconds()) + 1, 1)

    def text_es(self, local: str | None) -> str:
        """The same refusal in the panel's words; `local` is `until` in local time
        ("dd/mm/aaaa hh:mm")."""
        if self.guesses and self.until is None:
            return (
                "Por seguridad, la baja de este servicio quedó bloqueada porque se ingresaron "
                "demasiados códigos de confirmación incorrectos. Comuníquese con soporte para "
                "habilitarla de nuevo."
            )
        if self.guesses:
            return (
                "Por seguridad, la baja de este servicio no puede solicitarse de nuevo antes "
                f"del {local}: se ingresaron demasiados códigos de confirmación incorrectos."
            )
        return (
            "Se pidieron demasiadas bajas o códigos de confirmación en la última hora. "
            f"Inténtelo de nuevo después del {local}."
        )


def is_limit_rejection(reason: str | None) -> bool:
    """A workflow rejected by `check_service` for one of these limits (answered 429)."""
    return reason is not None and reason.startswith((TOO_MANY_GUESSES, TOO_MANY_REQUESTS))


def _utc(instant: datetime) -> str:
    return f"{instant:%Y-%m-%d %H:%M} UTC"


# The service's counts start at its last unlock, at most GUESS_WINDOW ago.
_SINCE = """
    with since as (
        select greatest(now() - $3::interval, coalesce(max(at), '-infinity'::timestamptz)) as t
          from bajas.audit_trail
         where service_id = $1 and event = 'unlocked'
    )
"""

_REQUEST_FACTS = (
    _SINCE
    + """
    select now() as now, l.locks, l.last_lock, w.wrong_codes,
           sr.n as service_n, sr.oldest as service_oldest,
           cr.n as customer_n, cr.oldest as customer_oldest,
           (select state from bajas.cancellation_requests
             where service_id = $1 order by requested_at desc limit 1) as latest_state
      from since s
     cross join lateral (
           select count(*) as locks, max(finished_at) as last_lock
             from bajas.cancellation_requests
            where service_id = $1 and state = 'locked' and finished_at > s.t) l
     cross join lateral (
           select count(*) as wrong_codes from bajas.audit_trail
            where service_id = $1 and event like 'code\\_rejected:%' and at > s.t) w
     cross join lateral (
           select count(*) as n, min(requested_at) as oldest
             from bajas.cancellation_requests
            where service_id = $1 and state <> 'rejected' and run_id <> $5
              and requested_at > greatest(s.t, now() - $4::interval)) sr
     cross join lateral (
           select count(*) as n, min(requested_at) as oldest
             from bajas.cancellation_requests
            where customer_id = $2 and state <> 'rejected' and run_id <> $5
              and requested_at > now() - $4::interval) cr
    """
)

# Mailed codes after the first of each run (`code_sent:2`, `code_sent:3`, ...).
_RESEND_FACTS = (
    _SINCE
    + """
    select now() as now, sr.n as service_n, sr.oldest as service_oldest,
           cr.n as customer_n, cr.oldest as customer_oldest
      from since s
     cross join lateral (
           select count(*) as n, min(at) as oldest from bajas.audit_trail
            where service_id = $1 and event like 'code\\_sent:%' and event <> 'code_sent:1'
              and at > greatest(s.t, now() - $4::interval)) sr
     cross join lateral (
           select count(*) as n, min(at) as oldest from bajas.audit_trail
            where customer_id = $2 and event like 'code\\_sent:%' and event <> 'code_sent:1'
              and at > now() - $4::interval) cr
    """
)


async def request_refusal(
    db: Db,
    limits: Limits,
    service_id: int,
    customer_id: int | None,
    *,
    run_id: str = "",
    attach_allowed: bool = False,
) -> Refusal | None:
    """Whether a new cancellation of the service may start now.

    `customer_id` None leaves out the customer's own rate (for `bajas unlock`). With
    `attach_allowed`, a request in progress is let through: a repeat only attaches to it.
    `run_id` is left out of the counts (the run asking, on a retried check).
    """
    row = await db.fetchrow(
        _REQUEST_FACTS,
        service_id,
        customer_id if customer_id is not None else 0,
        GUESS_WINDOW,
        RATE_WINDOW,
        run_id,
    )
    assert row is not None
    if attach_allowed and row["latest_state"] in IN_PROGRESS:
        return None
    now: datetime = row["now"]
    locks: int = row["locks"]
    if locks >= limits.guess_max_locks or row["wrong_codes"] >= limits.guess_max_wrong_codes:
        return Refusal(
            TOO_MANY_GUESSES,
            f"too many wrong codes for service {service_id} ({locks} locked requests, "
            f"{row['wrong_codes']} wrong codes in 24 h): an operator must run "
            f"`bajas unlock --service {service_id}`",
            until=None,
        )
    if locks:
        until = row["last_lock"] + limits.cooldown(locks)
        if now < until:
            return Refusal(
                TOO_MANY_GUESSES,
                f"too many wrong codes for service {service_id}: it can be requested again "
                f"after {_utc(until)}",
                until=until,
            )
    return _rate_refusal(
        row,
        "cancellation requests",
        service_id,
        customer_id,
        limits.requests_per_service,
        limits.requests_per_customer,
    )


async def resend_refusal(
    db: Db, limits: Limits, service_id: int, customer_id: int
) -> Refusal | None:
    """Whether one more code may be mailed for the service now (after its first)."""
    row = await db.fetchrow(_RESEND_FACTS, service_id, customer_id, GUESS_WINDOW, RATE_WINDOW)
    assert row is not None
    return _rate_refusal(
        row,
        "new codes",
        service_id,
        customer_id,
        limits.resends_per_service,
        limits.resends_per_customer,
    )


def _rate_refusal(
    row: asyncpg.Record,
    what: str,
    service_id: int,
    customer_id: int | None,
    per_service: int,
    per_customer: int,
) -> Refusal | None:
    counts = [(row["service_n"], row["service_oldest"], per_service, f"service {service_id}")]
    if customer_id is not None:
        counts.append(
            (row["customer_n"], row["customer_oldest"], per_customer, f"customer {customer_id}")
        )
    for n, oldest, limit, whose in counts:
        if n >= limit:
            until = oldest + RATE_WINDOW
            return Refusal(
                TOO_MANY_REQUESTS,
                f"too many {what} for {whose} in the last hour ({n}, at most {limit}): "
                f"try again after {_utc(until)}",
                until=until,
            )
    return None


async def unlock(
    conn: asyncpg.Connection,
    *,
    service_id: int,
    customer_id: int,
    workflow_id: str,
    by: str,
    was: Refusal,
    reason: str | None = None,
) -> None:
    """`bajas unlock`: an audit line from which every count of the service starts anew."""
    await conn.execute(
        """
        insert into bajas.audit_trail (run_id, workflow_id, event, service_id, customer_id,
                                       actor, details)
        values ($1, $2, $3, $4, $5, $6, $7::jsonb)
        """,
        f"unlock:{uuid.uuid4()}",
        workflow_id,
        UNLOCKED,
        service_id,
        customer_id,
        by,
        json.dumps({"was": was.rejection_reason, "reason": reason}),
    )
