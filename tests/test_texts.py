"""The customer's words: one form for times, with the zone named as people say it."""

from __future__ import annotations

from datetime import UTC, date, datetime

from bajas import texts
from bajas.models import BillingOutcome, Inventory, MailboxInventory
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


def test_inventory_in_spanish_figures() -> None:
    boxes = [
        MailboxInventory(address=f"b{n}@ejemplo.com.ar", messages=m, bytes=b)
        for n, (m, b) in enumerate([(5000, 700_000_000), (200, 30_000_000), (10, 10_000_000)])
    ]
    inventory = Inventory(files=12_431, bytes=1_800_000_000, mailboxes=boxes)
    assert texts.inventory_text(inventory) == (
        "se eliminarán 12.431 archivos (1,8 GB) y 3 casillas con 5.210 mensajes (740 MB)"
    )
    assert (
        texts.inventory_line(Inventory(files=1, bytes=12)) == "Se eliminará 1 archivo (12 bytes)."
    )
    assert texts.inventory_line(None) == "contando…"
    assert [texts.size(n) for n in (1, 999, 1000, 9_960, 999_600, 1_250_000_000_000)] == [
        "1 byte",
        "999 bytes",
        "1,0 kB",
        "10 kB",
        "1,0 MB",
        "1,2 TB",
    ]


def test_the_dates_that_matter() -> None:
    pending = texts.key_dates(
        expires_on=date(2026, 7, 20), debit_cutoff=date(2026, 7, 1), confirmed_at=None, tz_name=TZ
    )
    assert pending == [
        "El servicio termina el 20/07/2026.",
        "Último día para evitar el próximo débito automático: 30/06/2026.",
        "El borrado se completa dentro de las 24 horas de confirmada la baja.",
    ]
    confirmed = texts.key_dates(
        expires_on=date(2026, 7, 20), debit_cutoff=None, confirmed_at=AT, tz_name=TZ
    )
    assert confirmed[1:] == [
        "El borrado estará completo antes del 06/06/2026 16:44 (hora de Buenos Aires)."
    ]
