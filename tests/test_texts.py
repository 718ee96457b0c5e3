"""The customer's words: one form for times, with the zone named as people say it."""

from __future__ import annotations

from datetime import UTC, date, datetime

from bajas import texts
from bajas.models import BillingOutcome
from starter.api.panel_ui import local_time as panel_time

TZ = "America/Argentina/Buenos_Aires"
AT = datetime(2026, 6, 5, 19, 44, tzinfo=UTC)  # 16:44 in Buenos Aires (UTC-3)


def test_one_form_of_time_with_the_zone() -> None:
    assert texts.local_time(AT, TZ) == "05/06/2026 16:44 (hora de Buenos Aires)"
    assert texts.local_time(AT, "UTC") == "05/06/2026 19:44 (hora UTC)"
    assert panel_time(AT, TZ) == texts.local_time(AT, TZ)


def test_code_mail_names_the_zone_not_its_id() -> None:
    _, body = texts.code_mail(
        name="Ana",
        domain="ejemplo.com.ar",
        code="123456",
        expires_at=AT,
        tz_name=TZ,
        expires_on=date(2026, 7, 20),
        debit_cutoff=date(2026, 7, 1),
        preview=BillingOutcome.DEBIT_CANCELLED,
    )
    assert "antes del 05/06/2026 16:44 (hora de Buenos Aires)." in body
    assert TZ not in body
    assert "confirme la baja antes del 1 de julio de 2026" in body


def test_sla_alert_lists_the_failing_steps() -> None:
    subject, body = texts.sla_alert_mail(
        service_id=42,
        domain="ejemplo.com.ar",
        workflow_id="service-cancellation-42",
        problems=["files: attempt 7, PermissionError: [Errno 1] Operation not permitted"],
    )
    assert "42" in subject
    assert "files: attempt 7, PermissionError" in body


END = datetime(2026, 7, 20, 3, 0, tzinfo=UTC)  # 00:00 on 20 July in Buenos Aires


def test_a_date_people_plan_by() -> None:
    assert texts.long_time(END, TZ) == "20 de julio de 2026 a las 00:00 (hora de Buenos Aires)"


def test_code_mail_for_the_end_of_the_term_names_the_day() -> None:
    def body(term_end: datetime | None) -> str:
        return texts.code_mail(
            name="Ana",
            domain="ejemplo.com.ar",
            code="123456",
            expires_at=AT,
            tz_name=TZ,
            expires_on=date(2026, 7, 20),
            debit_cutoff=None,
            preview=BillingOutcome.NO_FURTHER_CHARGES,
            term_end=term_end,
        )[1]

    now, later = body(None), body(END)
    assert "Al confirmar se borrará todo" in now and "final del período" not in now
    assert (
        "Usted eligió la baja al final del período: al confirmar, el sitio y el correo siguen "
        "funcionando hasta el 20 de julio de 2026 a las 00:00 (hora de Buenos Aires)." in later
    )
    assert "Al confirmar se borrará todo" not in later


def test_cancelled_mail_says_when_the_deletion_started() -> None:
    outcome = BillingOutcome.NO_FURTHER_CHARGES
    _, now = texts.cancelled_mail(name="Ana", domain="x.com.ar", outcome=outcome, tz_name=TZ)
    _, later = texts.cancelled_mail(
        name="Ana", domain="x.com.ar", outcome=outcome, tz_name=TZ, term_end=END
    )
    assert "final del período" not in now
    assert (
        "Como lo pidió, el borrado empezó al final del período: el 20 de julio de 2026 a las "
        "00:00 (hora de Buenos Aires)." in later
    )
