"""The customer's words: one form for times, with the zone named as people say it."""

from __future__ import annotations

from datetime import UTC, date, datetime

from bajas import texts
from bajas.models import ArchiveState, BillingOutcome
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


def test_the_done_mail_says_how_the_last_copy_ended() -> None:
    plain = texts.cancelled_mail(
        name="Ana", domain="ejemplo.com.ar", outcome=BillingOutcome.NO_FURTHER_CHARGES
    )[1]
    assert "copia" not in plain
    for archive, words in (
        (ArchiveState.FAILED, "no pudo terminarse antes de la baja"),
        (ArchiveState.EXPIRED, "se borró junto con todo lo demás"),
    ):
        _, body = texts.cancelled_mail(
            name="Ana",
            domain="ejemplo.com.ar",
            outcome=BillingOutcome.NO_FURTHER_CHARGES,
            archive=archive,
        )
        assert body.startswith(plain) and words in body


def test_what_a_download_weighs() -> None:
    sizes = [0, 999, 1000, 12_345, 999_999, 3_400_000, 12_000_000, 1_200_000_000]
    assert [texts.byte_size(n) for n in sizes] == [
        "0 bytes",
        "999 bytes",
        "1,0 KB",
        "12 KB",
        "1,0 MB",
        "3,4 MB",
        "12 MB",
        "1,2 GB",
    ]
