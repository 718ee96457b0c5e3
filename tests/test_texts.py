"""The customer's words: one form for times, with the zone named as people say it, and
sizes and counts as a Spanish reader writes them."""

from __future__ import annotations

from datetime import UTC, date, datetime

from bajas import texts
from bajas.models import (
    ArchiveState,
    BillingOutcome,
    CancellationStatus,
    Effective,
    Inventory,
    MailboxInventory,
    Receipt,
    ReceiptFiles,
    ReceiptMailbox,
    ReceiptResource,
    ResourceInventory,
    State,
    StepProgress,
    Steps,
    StepStatus,
)
from starter.api import store
from starter.api.panel_ui import ServiceCard
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


def test_sizes_and_counts_in_spanish() -> None:
    assert texts.byte_size(1_800_000_000) == "1,8 GB"
    assert [texts.byte_size(n) for n in (0, 1, 999, 1000, 999_960)] == [
        "0 bytes",
        "1 byte",
        "999 bytes",
        "1,0 kB",
        "1,0 MB",  # not "1000,0 kB"
    ]
    assert texts.count_of(1250, "archivo", "archivos") == "1.250 archivos"
    assert texts.count_of(1, "buzón", "buzones") == "1 buzón"


def _receipt(**changes: object) -> Receipt:
    receipt = Receipt(
        service_id=42,
        customer_id=7,
        domain="ejemplo.com.ar",
        requested_at=AT,
        confirmed_at=AT,
        finished_at=AT,
        billing_outcome=BillingOutcome.NO_FURTHER_CHARGES,
        billing_closed_at=AT,
        voided_invoice_ids=[],
        revoked_mandate_ids=[],
        files=ReceiptFiles(deleted=1250, bytes=1_800_000_000, deleted_at=AT),
        mailboxes=[
            ReceiptMailbox(address="ana@ejemplo.com.ar", messages=1, bytes=4096, deleted_at=AT)
        ],
    )
    return receipt.model_copy(update=changes)


def test_the_receipt_says_what_went_with_sizes_and_times() -> None:
    text = texts.receipt_text(_receipt(voided_invoice_ids=[5, 6]), TZ)
    at = "05/06/2026 16:44 (hora de Buenos Aires)"
    assert f"Sitio, borrado el {at}: 1.250 archivos (1,8 GB)" in text
    assert f"- ana@ejemplo.com.ar, borrado el {at}: 1 mensaje (4,1 kB)" in text
    assert "Facturas anuladas: n.º 5, n.º 6" in text
    assert "Débitos automáticos revocados: ninguno" in text
    assert TZ not in text
    _, body = texts.cancelled_mail(
        name="Ana",
        domain="ejemplo.com.ar",
        outcome=BillingOutcome.NO_FURTHER_CHARGES,
        receipt=_receipt(),
        tz_name=TZ,
    )
    assert texts.receipt_text(_receipt(), TZ) in body


def test_a_receipt_without_sizes_leaves_them_out() -> None:
    """Lines written before the deletion engine counted bytes give a receipt without them."""
    text = texts.receipt_text(
        _receipt(
            files=ReceiptFiles(deleted=3, deleted_at=AT),
            mailboxes=[ReceiptMailbox(address="ana@ejemplo.com.ar", deleted_at=AT)],
        ),
        TZ,
    )
    assert "Sitio, borrado el 05/06/2026 16:44 (hora de Buenos Aires): 3 archivos\n" in text
    assert "- ana@ejemplo.com.ar, borrado el 05/06/2026 16:44 (hora de Buenos Aires)\n" in text
    assert "None" not in text and "bytes" not in text


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
    _, now = texts.cancelled_mail(
        name="Ana", domain="x.com.ar", outcome=outcome, receipt=None, tz_name=TZ
    )
    _, later = texts.cancelled_mail(
        name="Ana",
        domain="x.com.ar",
        outcome=outcome,
        receipt=None,
        tz_name=TZ,
        term_end=END,
    )
    assert "final del período" not in now
    assert (
        "Como lo pidió, el borrado empezó al final del período: el 20 de julio de 2026 a las "
        "00:00 (hora de Buenos Aires)." in later
    )


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
    assert [texts.byte_size(n) for n in (1, 999, 1000, 9_960, 999_600, 1_250_000_000_000)] == [
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


def test_the_done_mail_says_how_the_last_copy_ended() -> None:
    plain = texts.cancelled_mail(
        name="Ana",
        domain="ejemplo.com.ar",
        outcome=BillingOutcome.NO_FURTHER_CHARGES,
        receipt=None,
        tz_name=TZ,
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
            receipt=None,
            tz_name=TZ,
            archive=archive,
        )
        assert body.startswith(plain) and words in body


def test_what_a_download_weighs() -> None:
    sizes = [0, 999, 1000, 12_345, 999_999, 3_400_000, 12_000_000, 1_200_000_000]
    assert [texts.byte_size(n) for n in sizes] == [
        "0 bytes",
        "999 bytes",
        "1,0 kB",
        "12 kB",
        "1,0 MB",
        "3,4 MB",
        "12 MB",
        "1,2 GB",
    ]


# ---- billing closed before the debit of the 1st (end of term) --------------------------

JULY_20 = date(2026, 7, 20)
EVE = datetime(2026, 6, 30, 3, tzinfo=UTC)  # 00:00 in Buenos Aires
END = datetime(2026, 7, 20, 3, tzinfo=UTC)


def _card(
    state: State, *, billing: StepStatus = StepStatus.PENDING, closes_at: datetime = EVE
) -> ServiceCard:
    service = store.Service(
        id=42,
        customer_id=7,
        domain="ejemplo.com.ar",
        plan="basico",
        status="active",
        expires_on=JULY_20,
        payment_method="auto_debit",
        auto_renew=billing is not StepStatus.DONE,
        cancelled_at=None,
    )
    status = CancellationStatus(
        state=state,
        service_id=42,
        customer_id=7,
        requested_by="panel",
        attempts_left=5,
        resends_left=3,
        effective=Effective.END_OF_TERM,
        effective_at=END,
        billing_closes_at=closes_at,
        billing_outcome=BillingOutcome.DEBIT_CANCELLED,
        steps=Steps(billing=StepProgress(status=billing)),
    )
    if state.is_final:
        return ServiceCard(service, None, ended=status)
    return ServiceCard(service, status)


def test_a_scheduled_card_says_billing_closes_before_the_debit() -> None:
    note = _card(State.SCHEDULED).billing_note(TZ)
    assert note is not None
    assert "se cierra antes, el 30 de junio de 2026 a las 00:00 (hora de Buenos Aires)" in note
    assert "débito automático del 1 de julio de 2026 no se procese" in note
    assert "Si desiste después" in note
    closed = _card(State.SCHEDULED, billing=StepStatus.DONE).billing_note(TZ)
    assert closed == texts.BILLING_CLOSED_EARLY
    assert "se renueva a mano" in closed
    # billing with the deletion (a manual payer, a debit already at the bank): nothing to add
    assert _card(State.SCHEDULED, closes_at=END).billing_note(TZ) is None


def test_a_withdrawal_after_billing_closed_says_it_stays_closed() -> None:
    kept = _card(State.WITHDRAWN, billing=StepStatus.DONE).ended_note
    assert kept is not None
    assert kept.startswith("Usted desistió de la solicitud de baja anterior.")
    assert texts.billing_stays_closed(JULY_20) in kept
    assert _card(State.WITHDRAWN).ended_note == "Usted desistió de la solicitud de baja anterior."

    subject, body = texts.withdrawn_mail(
        name="Ana", domain="ejemplo.com.ar", term_end=END, tz_name=TZ
    )
    assert "ejemplo.com.ar" in subject and "la facturación sigue cerrada" in subject
    assert "no se borra nada, el sitio y el correo siguen funcionando" in body
    assert "Vence el 20 de julio de 2026: para seguir usándolo, renuévelo a mano" in body


def test_the_inventory_lists_databases_and_backups_with_their_sizes() -> None:
    resources = [
        ResourceInventory(kind="mariadb_database", name="tienda", bytes=300_000_000, items=40),
        ResourceInventory(kind="postgresql_database", name="blog", bytes=40_000_000, items=9),
        ResourceInventory(kind="mariadb_user", name="tienda", items=2),
        ResourceInventory(kind="restic_snapshots", name="svc-42", items=13),
        ResourceInventory(kind="backup_directory", name="/srv/copias/42"),
    ]
    inventory = Inventory(files=0, bytes=0, resources=resources)
    assert texts.inventory_text(inventory) == (
        "se eliminarán 2 bases de datos (340 MB) y 14 copias de seguridad"
    )
    with_files = Inventory(files=3, bytes=3000, resources=resources[:1])
    assert texts.inventory_line(with_files) == (
        "Se eliminarán 3 archivos (3,0 kB) y 1 base de datos (300 MB)."
    )
    alone = Inventory(files=0, bytes=0, resources=resources[:1])
    assert texts.inventory_text(alone) == "se eliminará 1 base de datos (300 MB)"


def test_the_receipt_lists_every_resource() -> None:
    gone = [
        ReceiptResource(
            kind="mariadb_database",
            name="tienda",
            server="db1",
            deleted_at=AT,
            bytes=340_000_000,
            items=40,
        ),
        ReceiptResource(kind="mariadb_user", name="tienda", server="db1", deleted_at=AT, items=2),
        ReceiptResource(kind="example_marker", name="m-1", deleted_at=AT),
    ]
    text = texts.receipt_text(_receipt(resources=gone), TZ)
    at = "05/06/2026 16:44 (hora de Buenos Aires)"
    assert f"- base de datos MariaDB tienda en db1, borrado el {at}: 40 tablas (340 MB)" in text
    assert f"- usuario MariaDB tienda en db1, borrado el {at}: 2 hosts" in text
    assert f"- example_marker m-1, borrado el {at}" in text
    assert "Bases de datos" not in texts.receipt_text(_receipt(), TZ)
