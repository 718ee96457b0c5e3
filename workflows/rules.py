"""The provider's deadlines and billing outcomes (contract section 1), as pure functions.

No Temporal import: the workflow calls these with `workflow.now()`, the panel calls
them with the wall clock for the preview, and the tests call them directly. What the
customer reads about them is in `bajas/texts.py`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from bajas.models import BillingOutcome, Effective, PaymentMethod


@lru_cache(maxsize=8)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_date(instant: datetime, tz_name: str) -> date:
    """The provider's calendar date at an aware instant."""
    if instant.tzinfo is None:
        raise ValueError("instant must be timezone-aware")
    return instant.astimezone(zone(tz_name)).date()


def debit_cutoff(expires_on: date) -> date:
    """The 1st of the expiry month: from then on the debit is already at the bank."""
    return expires_on.replace(day=1)


def auto_debit_cutoff(expires_on: date, payment_method: PaymentMethod | str) -> date | None:
    """For an automatic-debit payer, the day the next debit reaches the bank; None for others."""
    if PaymentMethod(payment_method) is not PaymentMethod.AUTO_DEBIT:
        return None
    return debit_cutoff(expires_on)


def billing_outcome(
    confirmed_on: date, expires_on: date, payment_method: PaymentMethod | str
) -> BillingOutcome:
    """The contract's table: the first condition that holds wins."""
    auto_debit = PaymentMethod(payment_method) is PaymentMethod.AUTO_DEBIT
    if confirmed_on >= expires_on:
        return BillingOutcome.LATE_NO_REFUND
    if auto_debit and confirmed_on >= debit_cutoff(expires_on):
        return BillingOutcome.DEBIT_PROCESSED_NO_REFUND
    if auto_debit:
        return BillingOutcome.DEBIT_CANCELLED
    return BillingOutcome.NO_FURTHER_CHARGES


def outcome_at(
    instant: datetime, tz_name: str, expires_on: date, payment_method: PaymentMethod | str
) -> BillingOutcome:
    return billing_outcome(local_date(instant, tz_name), expires_on, payment_method)


def revokes_mandate(outcome: BillingOutcome) -> bool:
    return outcome is not BillingOutcome.NO_FURTHER_CHARGES


def voids_renewal_invoices(outcome: BillingOutcome) -> bool:
    """Only a confirmation in time cancels what would be charged for the next period."""
    return outcome in (BillingOutcome.DEBIT_CANCELLED, BillingOutcome.NO_FURTHER_CHARGES)


def start_of_day(day: date, tz_name: str) -> datetime:
    """00:00 BUSINESS_TZ on `day`, in UTC.

    Where the clocks skip midnight that day (America/Santiago in September goes from
    23:59:59 to 01:00), this is the day's first instant, 01:00 local: a missing wall
    time takes the offset from before the change, which lands exactly on it.
    """
    return datetime.combine(day, time(0), zone(tz_name)).astimezone(UTC)


def term_end(expires_on: date, tz_name: str) -> datetime:
    """00:00 BUSINESS_TZ on `expires_on`, in UTC: the end of the paid period."""
    return start_of_day(expires_on, tz_name)


def debit_cutoff_eve(expires_on: date, tz_name: str) -> datetime:
    """00:00 BUSINESS_TZ on the day before the debit cut-off, in UTC: a mandate revoked
    by then keeps the debit of the 1st from the bank, with a whole day to spare for a
    billing step that has to retry."""
    return start_of_day(debit_cutoff(expires_on) - timedelta(days=1), tz_name)


def effective_at(
    effective: Effective | str, confirmed_at: datetime, expires_on: date, tz_name: str
) -> datetime:
    """When the deletion of a confirmed cancellation starts: at the confirmation, or at
    the end of the term; never before the confirmation (a term already over starts at once)."""
    if Effective(effective) is Effective.NOW:
        return confirmed_at
    return max(term_end(expires_on, tz_name), confirmed_at)


def billing_closes_at(
    outcome: BillingOutcome,
    confirmed_at: datetime,
    effective_at: datetime,
    expires_on: date,
    tz_name: str,
) -> datetime:
    """When the billing step of a confirmed cancellation runs: with the deletion, at
    `effective_at`, unless the outcome promises that the next debit is cancelled
    (`debit_cancelled`) and the deletion waits past the debit cut-off's eve; then at that
    eve, or at once when the eve has begun before the confirmation."""
    if outcome is not BillingOutcome.DEBIT_CANCELLED:
        return effective_at
    return max(confirmed_at, min(effective_at, debit_cutoff_eve(expires_on, tz_name)))
