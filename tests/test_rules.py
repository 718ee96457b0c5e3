"""The provider's deadlines and the billing outcome table (CONTRACT.md section 1).

C = local date of confirmation in BUSINESS_TZ, E = expires_on, D = the 1st of E's month.
First condition that holds:
    C >= E                 -> late_no_refund
    auto debit and C >= D  -> debit_processed_no_refund
    auto debit             -> debit_cancelled
    otherwise              -> no_further_charges

America/Argentina/Buenos_Aires is UTC-3 all year (no DST since 2009), so local midnight
is 03:00 UTC and 23:59:59 local is 02:59:59 UTC of the next UTC day.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bajas.models import BillingOutcome, Effective, PaymentMethod
from bajas.texts import debit_warning
from workflows.rules import (
    auto_debit_cutoff,
    billing_closes_at,
    billing_outcome,
    debit_cutoff,
    debit_cutoff_eve,
    effective_at,
    local_date,
    outcome_at,
    revokes_mandate,
    start_of_day,
    term_end,
    voids_renewal_invoices,
)

TZ = "America/Argentina/Buenos_Aires"

LATE = BillingOutcome.LATE_NO_REFUND
PROCESSED = BillingOutcome.DEBIT_PROCESSED_NO_REFUND
CANCELLED = BillingOutcome.DEBIT_CANCELLED
NO_CHARGES = BillingOutcome.NO_FURTHER_CHARGES

AUTO = "auto_debit"
MANUAL = "manual"


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    """An aware UTC instant."""
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


def ba(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    """A Buenos Aires wall-clock time, returned as the equivalent UTC instant (UTC-3)."""
    return datetime(y, mo, d, h, mi, s, tzinfo=timezone(timedelta(hours=-3))).astimezone(UTC)


# --- local_date ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        pytest.param(utc(2026, 6, 1, 2, 59, 59), date(2026, 5, 31), id="0259utc-is-2359-prev-day"),
        pytest.param(utc(2026, 6, 1, 3, 0, 0), date(2026, 6, 1), id="0300utc-is-local-midnight"),
        pytest.param(utc(2027, 1, 1, 2, 59, 59), date(2026, 12, 31), id="year-end-still-2026"),
        pytest.param(utc(2027, 1, 1, 3, 0, 0), date(2027, 1, 1), id="year-start-2027"),
        pytest.param(utc(2028, 3, 1, 2, 59, 59), date(2028, 2, 29), id="leap-day-late-evening"),
        pytest.param(utc(2028, 2, 29, 3, 0, 0), date(2028, 2, 29), id="leap-day-midnight"),
        pytest.param(utc(2028, 2, 29, 2, 59, 59), date(2028, 2, 28), id="before-leap-day"),
        pytest.param(
            datetime(2026, 6, 1, 11, 0, tzinfo=timezone(timedelta(hours=9))),
            date(2026, 5, 31),
            id="tokyo-offset-converted",
        ),
        pytest.param(
            datetime(2026, 5, 31, 23, 30, tzinfo=ZoneInfo("America/Argentina/Buenos_Aires")),
            date(2026, 5, 31),
            id="already-local",
        ),
    ],
)
def test_local_date(instant: datetime, expected: date) -> None:
    assert local_date(instant, TZ) == expected


def test_local_date_depends_on_zone() -> None:
    instant = utc(2026, 6, 1, 2, 0)
    assert local_date(instant, TZ) == date(2026, 5, 31)
    assert local_date(instant, "UTC") == date(2026, 6, 1)


def test_naive_datetime_is_refused() -> None:
    naive = datetime(2026, 6, 1, 12, 0)
    with pytest.raises(ValueError):
        local_date(naive, TZ)
    with pytest.raises(ValueError):
        outcome_at(naive, TZ, date(2026, 6, 15), AUTO)
    with pytest.raises(ValueError):
        outcome_at(naive, TZ, date(2026, 6, 15), MANUAL)


# --- debit_cutoff ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expires_on", "cutoff"),
    [
        pytest.param(date(2026, 6, 1), date(2026, 6, 1), id="on-the-1st-D-equals-E"),
        pytest.param(date(2026, 6, 15), date(2026, 6, 1), id="mid-month"),
        pytest.param(date(2026, 3, 31), date(2026, 3, 1), id="month-end"),
        pytest.param(date(2026, 12, 31), date(2026, 12, 1), id="year-end"),
        pytest.param(date(2027, 1, 1), date(2027, 1, 1), id="new-year"),
        pytest.param(date(2028, 2, 29), date(2028, 2, 1), id="leap-day"),
    ],
)
def test_debit_cutoff(expires_on: date, cutoff: date) -> None:
    assert debit_cutoff(expires_on) == cutoff


# --- billing_outcome on dates ------------------------------------------------------------


@pytest.mark.parametrize(
    ("confirmed_on", "expires_on", "method", "expected"),
    [
        # E mid-month: D = 2026-06-01
        pytest.param(date(2026, 5, 31), date(2026, 6, 15), AUTO, CANCELLED, id="auto-day-before-D"),
        pytest.param(date(2026, 6, 1), date(2026, 6, 15), AUTO, PROCESSED, id="auto-on-D"),
        pytest.param(date(2026, 6, 14), date(2026, 6, 15), AUTO, PROCESSED, id="auto-day-before-E"),
        pytest.param(date(2026, 6, 15), date(2026, 6, 15), AUTO, LATE, id="auto-on-E"),
        pytest.param(date(2026, 6, 16), date(2026, 6, 15), AUTO, LATE, id="auto-after-E"),
        pytest.param(date(2026, 5, 31), date(2026, 6, 15), MANUAL, NO_CHARGES, id="man-before-D"),
        pytest.param(date(2026, 6, 1), date(2026, 6, 15), MANUAL, NO_CHARGES, id="manual-on-D"),
        pytest.param(date(2026, 6, 14), date(2026, 6, 15), MANUAL, NO_CHARGES, id="man-before-E"),
        pytest.param(date(2026, 6, 15), date(2026, 6, 15), MANUAL, LATE, id="manual-on-E"),
        pytest.param(date(2026, 6, 16), date(2026, 6, 15), MANUAL, LATE, id="manual-after-E"),
        # E on the 1st: D == E, so "debit processed" can never happen
        pytest.param(
            date(2026, 5, 31), date(2026, 6, 1), AUTO, CANCELLED, id="auto-1st-day-before"
        ),
        pytest.param(date(2026, 6, 1), date(2026, 6, 1), AUTO, LATE, id="auto-1st-on-E"),
        pytest.param(date(2026, 5, 31), date(2026, 6, 1), MANUAL, NO_CHARGES, id="man-1st-day-bef"),
        pytest.param(date(2026, 6, 1), date(2026, 6, 1), MANUAL, LATE, id="manual-1st-on-E"),
        # a year earlier is still in time
        pytest.param(date(2025, 6, 20), date(2026, 6, 15), AUTO, CANCELLED, id="auto-long-before"),
        # same day-of-month one month earlier is before D
        pytest.param(date(2026, 5, 15), date(2026, 6, 15), AUTO, CANCELLED, id="auto-prev-month"),
    ],
)
def test_billing_outcome_table(
    confirmed_on: date, expires_on: date, method: str, expected: BillingOutcome
) -> None:
    assert billing_outcome(confirmed_on, expires_on, method) is expected
    assert billing_outcome(confirmed_on, expires_on, PaymentMethod(method)) is expected


def test_unknown_payment_method_is_refused() -> None:
    with pytest.raises(ValueError):
        billing_outcome(date(2026, 5, 1), date(2026, 6, 15), "cheque")


# --- outcome_at: instants around local midnight ---------------------------------------


@pytest.mark.parametrize(
    ("instant", "expires_on", "method", "expected"),
    [
        # expiry on the 1st (D == E)
        pytest.param(
            ba(2026, 5, 31, 23, 59, 59),
            date(2026, 6, 1),
            AUTO,
            CANCELLED,
            id="E1st-auto-2359-day-before",
        ),
        pytest.param(
            ba(2026, 6, 1, 0, 0, 0), date(2026, 6, 1), AUTO, LATE, id="E1st-auto-0000-on-E"
        ),
        pytest.param(
            ba(2026, 5, 31, 23, 59, 59),
            date(2026, 6, 1),
            MANUAL,
            NO_CHARGES,
            id="E1st-manual-2359-day-before",
        ),
        pytest.param(
            ba(2026, 6, 1, 0, 0, 0), date(2026, 6, 1), MANUAL, LATE, id="E1st-manual-0000-on-E"
        ),
        pytest.param(
            utc(2026, 6, 1, 2, 59, 59),
            date(2026, 6, 1),
            AUTO,
            CANCELLED,
            id="E1st-auto-0259utc-still-previous-local-day",
        ),
        pytest.param(
            utc(2026, 6, 1, 3, 0, 0),
            date(2026, 6, 1),
            AUTO,
            LATE,
            id="E1st-auto-0300utc-local-midnight",
        ),
        # year end: E = 2027-01-01 = D
        pytest.param(
            ba(2026, 12, 31, 23, 59, 0),
            date(2027, 1, 1),
            AUTO,
            CANCELLED,
            id="yearend-auto-2359-dec31",
        ),
        pytest.param(
            ba(2026, 12, 31, 23, 59, 59),
            date(2027, 1, 1),
            MANUAL,
            NO_CHARGES,
            id="yearend-manual-235959-dec31",
        ),
        pytest.param(
            utc(2027, 1, 1, 2, 59, 0),
            date(2027, 1, 1),
            AUTO,
            CANCELLED,
            id="yearend-auto-0259utc-jan1",
        ),
        pytest.param(
            ba(2027, 1, 1, 0, 0, 0), date(2027, 1, 1), AUTO, LATE, id="yearend-auto-0000-jan1"
        ),
        pytest.param(
            ba(2027, 1, 1, 0, 0, 0), date(2027, 1, 1), MANUAL, LATE, id="yearend-manual-0000-jan1"
        ),
        # month end: E = 2026-03-31, D = 2026-03-01 (after a 28-day February)
        pytest.param(
            ba(2026, 2, 28, 23, 59, 59),
            date(2026, 3, 31),
            AUTO,
            CANCELLED,
            id="monthend-auto-2359-day-before-D",
        ),
        pytest.param(
            ba(2026, 3, 1, 0, 0, 0),
            date(2026, 3, 31),
            AUTO,
            PROCESSED,
            id="monthend-auto-0000-on-D",
        ),
        pytest.param(
            ba(2026, 3, 1, 0, 0, 0),
            date(2026, 3, 31),
            MANUAL,
            NO_CHARGES,
            id="monthend-manual-0000-on-D",
        ),
        pytest.param(
            ba(2026, 3, 30, 23, 59, 59),
            date(2026, 3, 31),
            AUTO,
            PROCESSED,
            id="monthend-auto-2359-day-before-E",
        ),
        pytest.param(
            ba(2026, 3, 30, 23, 59, 59),
            date(2026, 3, 31),
            MANUAL,
            NO_CHARGES,
            id="monthend-manual-2359-day-before-E",
        ),
        pytest.param(
            ba(2026, 3, 31, 0, 0, 0), date(2026, 3, 31), AUTO, LATE, id="monthend-auto-0000-on-E"
        ),
        pytest.param(
            ba(2026, 3, 31, 0, 0, 0),
            date(2026, 3, 31),
            MANUAL,
            LATE,
            id="monthend-manual-0000-on-E",
        ),
        # year end with E = 2026-12-31, D = 2026-12-01
        pytest.param(
            ba(2026, 11, 30, 23, 59, 59),
            date(2026, 12, 31),
            AUTO,
            CANCELLED,
            id="dec31-auto-2359-nov30",
        ),
        pytest.param(
            ba(2026, 12, 1, 0, 0, 0), date(2026, 12, 31), AUTO, PROCESSED, id="dec31-auto-0000-dec1"
        ),
        pytest.param(
            ba(2026, 12, 31, 23, 59, 59), date(2026, 12, 31), AUTO, LATE, id="dec31-auto-2359-on-E"
        ),
        # leap day: E = 2028-02-29, D = 2028-02-01
        pytest.param(
            ba(2028, 1, 31, 23, 59, 59),
            date(2028, 2, 29),
            AUTO,
            CANCELLED,
            id="leap-auto-2359-day-before-D",
        ),
        pytest.param(
            ba(2028, 2, 1, 0, 0, 0), date(2028, 2, 29), AUTO, PROCESSED, id="leap-auto-0000-on-D"
        ),
        pytest.param(
            ba(2028, 2, 1, 0, 0, 0),
            date(2028, 2, 29),
            MANUAL,
            NO_CHARGES,
            id="leap-manual-0000-on-D",
        ),
        pytest.param(
            ba(2028, 2, 28, 23, 59, 59),
            date(2028, 2, 29),
            AUTO,
            PROCESSED,
            id="leap-auto-2359-day-before-E",
        ),
        pytest.param(
            ba(2028, 2, 28, 23, 59, 59),
            date(2028, 2, 29),
            MANUAL,
            NO_CHARGES,
            id="leap-manual-2359-day-before-E",
        ),
        pytest.param(
            utc(2028, 2, 29, 2, 59, 59),
            date(2028, 2, 29),
            MANUAL,
            NO_CHARGES,
            id="leap-manual-0259utc-still-feb28",
        ),
        pytest.param(
            ba(2028, 2, 29, 0, 0, 0), date(2028, 2, 29), AUTO, LATE, id="leap-auto-0000-on-E"
        ),
        pytest.param(
            ba(2028, 2, 29, 0, 0, 0), date(2028, 2, 29), MANUAL, LATE, id="leap-manual-0000-on-E"
        ),
        pytest.param(
            ba(2028, 3, 1, 0, 0, 0), date(2028, 2, 29), MANUAL, LATE, id="leap-manual-after-E"
        ),
    ],
)
def test_outcome_at_edges(
    instant: datetime, expires_on: date, method: str, expected: BillingOutcome
) -> None:
    assert instant.tzinfo is not None
    assert outcome_at(instant, TZ, expires_on, method) is expected
    assert outcome_at(instant, TZ, expires_on, PaymentMethod(method)) is expected


def test_outcome_at_uses_the_given_zone() -> None:
    # 2026-06-01 01:00 UTC: still May 31 in Buenos Aires, already June 1 in UTC.
    instant = utc(2026, 6, 1, 1, 0)
    assert outcome_at(instant, TZ, date(2026, 6, 1), AUTO) is CANCELLED
    assert outcome_at(instant, "UTC", date(2026, 6, 1), AUTO) is LATE


# --- billing effects ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "revokes", "voids"),
    [
        pytest.param(LATE, True, False, id="late_no_refund"),
        pytest.param(PROCESSED, True, False, id="debit_processed_no_refund"),
        pytest.param(CANCELLED, True, True, id="debit_cancelled"),
        pytest.param(NO_CHARGES, False, True, id="no_further_charges"),
    ],
)
def test_billing_effects(outcome: BillingOutcome, revokes: bool, voids: bool) -> None:
    assert revokes_mandate(outcome) is revokes
    assert voids_renewal_invoices(outcome) is voids


# --- the debit warning ---------------------------------------------------------------------


def debit_warning_es(expires_on: date, method: PaymentMethod | str) -> str | None:
    """The warning as the code mail and the panel build it: the rule's cut-off, then the text."""
    return debit_warning(auto_debit_cutoff(expires_on, method))


MESES = (
    "enero", "febrero", "marzo", "abril", "mayo", "junio",
    "julio", "agosto", "septiembre", "octubre", "noviembre", "diciembre",
)  # fmt: skip


@pytest.mark.parametrize("method", [MANUAL, PaymentMethod.MANUAL], ids=["str", "enum"])
def test_debit_warning_none_for_manual(method: PaymentMethod | str) -> None:
    assert debit_warning_es(date(2026, 6, 15), method) is None


@pytest.mark.parametrize(
    ("expires_on", "phrase"),
    [
        pytest.param(date(2026, 6, 15), "1 de junio de 2026", id="mid-month"),
        pytest.param(date(2026, 6, 1), "1 de junio de 2026", id="on-the-1st"),
        pytest.param(date(2027, 1, 1), "1 de enero de 2027", id="new-year"),
        pytest.param(date(2026, 12, 31), "1 de diciembre de 2026", id="year-end"),
        pytest.param(date(2028, 2, 29), "1 de febrero de 2028", id="leap-day"),
        pytest.param(date(2026, 9, 30), "1 de septiembre de 2026", id="septiembre"),
    ],
)
def test_debit_warning_names_first_of_expiry_month(expires_on: date, phrase: str) -> None:
    for method in (AUTO, PaymentMethod.AUTO_DEBIT):
        text = debit_warning_es(expires_on, method)
        assert text is not None
        assert phrase in text


@pytest.mark.parametrize("month", range(1, 13), ids=MESES)
def test_debit_warning_every_month(month: int) -> None:
    text = debit_warning_es(date(2030, month, 20), AUTO)
    assert text is not None
    assert f"1 de {MESES[month - 1]} de 2030" in text
    others = [m for i, m in enumerate(MESES) if i != month - 1]
    assert not any(f"de {m} de" in text for m in others)


# --- property: outcome_at against an independent oracle ------------------------------------

BA_OFFSET = timedelta(hours=-3)  # Buenos Aires: UTC-3, no DST in 2020..2035


def oracle_local_ymd(instant: datetime) -> tuple[int, int, int]:
    """Buenos Aires calendar day of an aware instant, by plain offset arithmetic."""
    offset = instant.utcoffset()
    assert offset is not None
    wall_utc = instant.replace(tzinfo=None) - offset
    wall_ba = wall_utc + BA_OFFSET
    return (wall_ba.year, wall_ba.month, wall_ba.day)


def oracle_outcome(instant: datetime, expires_on: date, method: str) -> str:
    c = oracle_local_ymd(instant)
    e = (expires_on.year, expires_on.month, expires_on.day)
    d = (expires_on.year, expires_on.month, 1)
    if c >= e:
        return "late_no_refund"
    if method == "auto_debit" and c >= d:
        return "debit_processed_no_refund"
    if method == "auto_debit":
        return "debit_cancelled"
    return "no_further_charges"


ZONES = st.sampled_from(
    [
        UTC,
        timezone(timedelta(hours=-3)),
        timezone(timedelta(hours=14)),
        timezone(timedelta(hours=-12)),
        timezone(timedelta(hours=5, minutes=45)),
        ZoneInfo("America/Argentina/Buenos_Aires"),
        ZoneInfo("Europe/Madrid"),
        ZoneInfo("America/New_York"),
        ZoneInfo("Australia/Lord_Howe"),
    ]
)

INSTANTS = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31, 23, 59, 59), timezones=ZONES
)


@st.composite
def cases(draw: st.DrawFn) -> tuple[datetime, date, str]:
    instant = draw(INSTANTS)
    method = draw(st.sampled_from([AUTO, MANUAL]))
    if draw(st.booleans()):
        expires_on = draw(st.dates(min_value=date(2020, 1, 1), max_value=date(2035, 12, 31)))
    else:
        # expiry close to the local confirmation day, so every row of the table is reached
        y, m, d = oracle_local_ymd(instant)
        shift = draw(st.integers(min_value=-3, max_value=62))
        expires_on = date(y, m, d) + timedelta(days=shift)
    return instant, expires_on, method


@settings(max_examples=600, deadline=None)
@given(cases())
def test_outcome_at_matches_oracle(case: tuple[datetime, date, str]) -> None:
    instant, expires_on, method = case
    outcome = outcome_at(instant, TZ, expires_on, method)
    assert outcome == oracle_outcome(instant, expires_on, method)

    assert revokes_mandate(outcome) is (outcome != "no_further_charges")
    assert voids_renewal_invoices(outcome) is (outcome in ("debit_cancelled", "no_further_charges"))
    if method == MANUAL:
        assert outcome in ("late_no_refund", "no_further_charges")


@settings(max_examples=200, deadline=None)
@given(st.dates(min_value=date(2020, 1, 1), max_value=date(2035, 12, 31)))
def test_debit_warning_property(expires_on: date) -> None:
    assert debit_warning_es(expires_on, MANUAL) is None
    text = debit_warning_es(expires_on, AUTO)
    assert text is not None
    assert f"1 de {MESES[expires_on.month - 1]} de {expires_on.year}" in text


# --- the end of the term (contract section 8) ------------------------------------------


@pytest.mark.parametrize(
    ("tz", "expires_on", "instant", "local_clock"),
    [
        pytest.param(TZ, date(2026, 6, 1), utc(2026, 6, 1, 3), "00:00", id="ba-on-the-1st"),
        pytest.param(TZ, date(2026, 3, 31), utc(2026, 3, 31, 3), "00:00", id="ba-on-the-31st"),
        pytest.param(TZ, date(2027, 1, 1), utc(2027, 1, 1, 3), "00:00", id="ba-new-year"),
        pytest.param(TZ, date(2028, 2, 29), utc(2028, 2, 29, 3), "00:00", id="ba-leap-day"),
        # Madrid: winter UTC+1, summer UTC+2; the change is at 02:00, midnight always exists
        pytest.param(
            "Europe/Madrid", date(2026, 3, 29), utc(2026, 3, 28, 23), "00:00", id="madrid-dst-day"
        ),
        pytest.param(
            "Europe/Madrid", date(2026, 3, 30), utc(2026, 3, 29, 22), "00:00", id="madrid-after"
        ),
        pytest.param(
            "Europe/Madrid", date(2026, 10, 25), utc(2026, 10, 24, 22), "00:00", id="madrid-back"
        ),
        pytest.param(
            "Europe/Madrid", date(2026, 10, 26), utc(2026, 10, 25, 23), "00:00", id="madrid-winter"
        ),
        # Santiago changes at midnight: in September 00:00 does not exist (-> 01:00 -03);
        # in April 00:00 comes once, after 23:00-23:59 of the day before was lived twice.
        pytest.param(
            "America/Santiago", date(2026, 9, 6), utc(2026, 9, 6, 4), "01:00", id="santiago-gap"
        ),
        pytest.param(
            "America/Santiago", date(2026, 4, 5), utc(2026, 4, 5, 4), "00:00", id="santiago-fold"
        ),
        pytest.param(
            "America/Santiago", date(2026, 9, 7), utc(2026, 9, 7, 3), "00:00", id="santiago-summer"
        ),
    ],
)
def test_term_end_is_the_first_instant_of_the_expiry_day(
    tz: str, expires_on: date, instant: datetime, local_clock: str
) -> None:
    end = term_end(expires_on, tz)
    assert end == instant
    assert end.tzinfo is UTC
    local = end.astimezone(ZoneInfo(tz))
    assert (local.date(), f"{local:%H:%M}") == (expires_on, local_clock)
    # nothing of that day lies before it
    assert (end - timedelta(seconds=1)).astimezone(ZoneInfo(tz)).date() < expires_on


def test_days_between_term_ends_follow_the_clock_changes() -> None:
    """Midnight to midnight across the spring change is 23 hours in Madrid, 24 in Buenos Aires."""
    madrid = term_end(date(2026, 3, 30), "Europe/Madrid") - term_end(
        date(2026, 3, 29), "Europe/Madrid"
    )
    assert madrid == timedelta(hours=23)
    assert term_end(date(2026, 3, 30), TZ) - term_end(date(2026, 3, 29), TZ) == timedelta(hours=24)


@pytest.mark.parametrize(
    ("effective", "confirmed_at", "expires_on", "expected"),
    [
        pytest.param(Effective.NOW, utc(2026, 5, 10, 15), date(2026, 6, 1), utc(2026, 5, 10, 15)),
        pytest.param(
            Effective.END_OF_TERM, utc(2026, 5, 10, 15), date(2026, 6, 1), utc(2026, 6, 1, 3)
        ),
        pytest.param(
            Effective.END_OF_TERM, utc(2026, 5, 10, 15), date(2026, 5, 31), utc(2026, 5, 31, 3)
        ),
        # the term already over, or ending this very day: the deletion starts at once
        pytest.param(
            Effective.END_OF_TERM, utc(2026, 6, 1, 15), date(2026, 6, 1), utc(2026, 6, 1, 15)
        ),
        pytest.param(
            Effective.END_OF_TERM, utc(2026, 6, 5, 15), date(2026, 6, 1), utc(2026, 6, 5, 15)
        ),
        # a second before midnight in Buenos Aires: waits that second
        pytest.param(
            "end_of_term", utc(2026, 6, 1, 2, 59, 59), date(2026, 6, 1), utc(2026, 6, 1, 3)
        ),
    ],
)
def test_effective_at(
    effective: Effective | str, confirmed_at: datetime, expires_on: date, expected: datetime
) -> None:
    assert effective_at(effective, confirmed_at, expires_on, TZ) == expected


# --- when billing closes for the end of the term ---------------------------------------


@pytest.mark.parametrize(
    ("tz", "expires_on", "eve"),
    [
        pytest.param(TZ, date(2026, 7, 20), ba(2026, 6, 30), id="ba-20th"),
        # the expiry is the cut-off itself: the eve is the day before the expiry
        pytest.param(TZ, date(2026, 7, 1), ba(2026, 6, 30), id="ba-on-the-1st"),
        pytest.param(TZ, date(2027, 1, 15), ba(2026, 12, 31), id="ba-across-the-year"),
        pytest.param(TZ, date(2028, 3, 10), ba(2028, 2, 29), id="ba-leap-day"),
        # Madrid on summer time from 29 March: the eve, 31 March, is at 00:00 CEST
        pytest.param("Europe/Madrid", date(2026, 4, 10), utc(2026, 3, 30, 22), id="madrid"),
    ],
)
def test_debit_cutoff_eve_is_the_start_of_the_day_before_the_1st(
    tz: str, expires_on: date, eve: datetime
) -> None:
    at = debit_cutoff_eve(expires_on, tz)
    assert at == eve
    local = at.astimezone(ZoneInfo(tz))
    assert (local.date(), f"{local:%H:%M}") == (
        debit_cutoff(expires_on) - timedelta(days=1),
        "00:00",
    )
    # a whole day before the debit reaches the bank
    assert start_of_day(debit_cutoff(expires_on), tz) - at >= timedelta(hours=23)


JULY_20 = date(2026, 7, 20)
END = term_end(JULY_20, TZ)  # 2026-07-20 03:00 UTC


@pytest.mark.parametrize(
    ("confirmed_at", "expires_on", "method", "when"),
    [
        # confirmed in March for a July expiry: billing closes on 30 June, 00:00
        pytest.param(ba(2026, 3, 10, 15), JULY_20, AUTO, ba(2026, 6, 30), id="auto-march"),
        pytest.param(ba(2026, 6, 29, 23, 59), JULY_20, AUTO, ba(2026, 6, 30), id="auto-eve-ahead"),
        # the eve has begun: at once
        pytest.param(ba(2026, 6, 30, 0, 0, 1), JULY_20, AUTO, ba(2026, 6, 30, 0, 0, 1), id="eve"),
        pytest.param(ba(2026, 6, 30, 23), JULY_20, AUTO, ba(2026, 6, 30, 23), id="eve-late"),
        # the debit is already at the bank, or no debit at all: with the deletion
        pytest.param(ba(2026, 7, 1), JULY_20, AUTO, END, id="auto-processed"),
        pytest.param(ba(2026, 3, 10, 15), JULY_20, MANUAL, END, id="manual"),
        # expiring on the 1st: the eve is the last day of the term
        pytest.param(
            ba(2026, 5, 10), date(2026, 7, 1), AUTO, ba(2026, 6, 30), id="auto-expiry-on-1st"
        ),
        pytest.param(
            ba(2026, 5, 10), date(2026, 7, 1), MANUAL, ba(2026, 7, 1), id="manual-expiry-on-1st"
        ),
        # the term is over: the deletion and billing start at the confirmation
        pytest.param(ba(2026, 7, 25), JULY_20, AUTO, ba(2026, 7, 25), id="late"),
    ],
)
def test_billing_closes_at_for_the_end_of_term(
    confirmed_at: datetime, expires_on: date, method: str, when: datetime
) -> None:
    outcome = outcome_at(confirmed_at, TZ, expires_on, method)
    deletion = effective_at(Effective.END_OF_TERM, confirmed_at, expires_on, TZ)
    assert billing_closes_at(outcome, confirmed_at, deletion, expires_on, TZ) == when


@pytest.mark.parametrize("outcome", list(BillingOutcome))
def test_billing_closes_at_the_confirmation_for_now(outcome: BillingOutcome) -> None:
    confirmed_at = ba(2026, 3, 10, 15)
    now = effective_at(Effective.NOW, confirmed_at, JULY_20, TZ)
    assert billing_closes_at(outcome, confirmed_at, now, JULY_20, TZ) == confirmed_at


@settings(max_examples=600, deadline=None)
@given(cases(), st.sampled_from([TZ, "Europe/Madrid", "America/Santiago"]))
def test_billing_closes_in_time_for_the_outcome(case: tuple[datetime, date, str], tz: str) -> None:
    """Never before the confirmation nor after the deletion; a cancelled debit is always
    stopped before 00:00 on the 1st, the moment it reaches the bank."""
    confirmed_at, expires_on, method = case
    outcome = outcome_at(confirmed_at, tz, expires_on, method)
    deletion = effective_at(Effective.END_OF_TERM, confirmed_at, expires_on, tz)
    at = billing_closes_at(outcome, confirmed_at, deletion, expires_on, tz)
    assert confirmed_at <= at <= deletion
    if outcome is BillingOutcome.DEBIT_CANCELLED:
        assert at < start_of_day(debit_cutoff(expires_on), tz)
    else:
        assert at == deletion
