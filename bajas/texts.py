"""What customers and operators read, in Spanish: the billing outcomes, dates and times,
the debit warning and the mails. One module for the mails (activities) and the panel.

Nothing here decides anything: what a text needs from a rule (the debit cut-off, the
outcome) is computed by the caller with `workflows/rules.py` and passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from bajas.models import ArchiveState, BillingOutcome, Inventory, ReasonCode, Receipt

OUTCOME_TEXTS: dict[BillingOutcome, str] = {
    BillingOutcome.LATE_NO_REFUND: (
        "El servicio ya venció: se desactiva la renovación automática, se revoca el "
        "débito automático si lo hubiera y las facturas de renovación quedan como están "
        "(no hay reintegro)."
    ),
    BillingOutcome.DEBIT_PROCESSED_NO_REFUND: (
        "El débito automático de la renovación ya está en el banco: se procesa y no se "
        "reintegra. Se revoca el débito automático para los meses siguientes."
    ),
    BillingOutcome.DEBIT_CANCELLED: (
        "Se revoca el débito automático y se anulan las facturas de renovación "
        "pendientes: no habrá más cargos."
    ),
    BillingOutcome.NO_FURTHER_CHARGES: (
        "Se desactiva la renovación automática y se anulan las facturas de renovación "
        "pendientes: no habrá más cargos."
    ),
}

# The panel's words for the reason codes (contract section 8).
REASON_LABELS: dict[ReasonCode, str] = {
    ReasonCode.PRECIO: "El precio",
    ReasonCode.CAMBIO_DE_PROVEEDOR: "Me cambio a otro proveedor",
    ReasonCode.CIERRE_DEL_PROYECTO: "Cierro el proyecto o el sitio",
    ReasonCode.PROBLEMAS_TECNICOS: "Problemas técnicos",
    ReasonCode.OTRO: "Otro motivo",
}
NO_REASON = "sin motivo"

MONTHS = (
    "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre"
).split()


def outcome_text(outcome: BillingOutcome) -> str:
    return OUTCOME_TEXTS[outcome]


def long_date(day: date) -> str:
    """ "1 de junio de 2026"."""
    return f"{day.day} de {MONTHS[day.month - 1]} de {day.year}"


def short_date(day: date) -> str:
    """ "01/06/2026"."""
    return day.strftime("%d/%m/%Y")


def zone_label(tz_name: str) -> str:
    """ "hora de Buenos Aires" for America/Argentina/Buenos_Aires; "hora UTC" for UTC."""
    place = tz_name.rsplit("/", 1)[-1].replace("_", " ")
    if "/" not in tz_name or tz_name.startswith("Etc/"):
        return f"hora {place}"
    return f"hora de {place}"


def local_time(instant: datetime, tz_name: str, *, seconds: bool = False) -> str:
    """The one form of a time everywhere: "05/06/2026 16:44 (hora de Buenos Aires)";
    `seconds` where instants a minute apart must be told apart (the mail viewer)."""
    local = instant.astimezone(ZoneInfo(tz_name))
    clock = f"{local:%H:%M:%S}" if seconds else f"{local:%H:%M}"
    return f"{local:%d/%m/%Y} {clock} ({zone_label(tz_name)})"


def long_time(instant: datetime, tz_name: str) -> str:
    """ "15 de junio de 2026 a las 00:00 (hora de Buenos Aires)": a date people plan by."""
    local = instant.astimezone(ZoneInfo(tz_name))
    return f"{long_date(local.date())} a las {local:%H:%M} ({zone_label(tz_name)})"


def working_until(term_end: datetime, tz_name: str) -> str:
    """The clause a cancellation at the end of the term adds, for the panel and the mails."""
    return f"el sitio y el correo siguen funcionando hasta el {long_time(term_end, tz_name)}"


def inventory_text(inventory: Inventory) -> str:
    """ "se eliminarán 12.431 archivos (1,8 GB), 3 casillas con 5.210 mensajes (740 MB),
    2 bases de datos (340 MB) y 14 copias de seguridad"."""
    # each part with how many things it counts (one thing alone: "se eliminará")
    parts: list[tuple[str, int]] = []
    if inventory.files or inventory.bytes:
        parts.append(
            (
                f"{count_of(inventory.files, 'archivo', 'archivos')} ({byte_size(inventory.bytes)})",
                inventory.files,
            )
        )
    boxes = inventory.mailboxes
    if boxes:
        messages = sum(m.messages for m in boxes)
        parts.append(
            (
                f"{count_of(len(boxes), 'casilla', 'casillas')} con "
                f"{count_of(messages, 'mensaje', 'mensajes')} ({byte_size(sum(m.bytes for m in boxes))})",
                len(boxes),
            )
        )
    databases = [r for r in inventory.resources if r.kind in DATABASE_KINDS]
    if databases:
        parts.append(
            (
                count_of(len(databases), "base de datos", "bases de datos")
                + _known_size(r.bytes for r in databases),
                len(databases),
            )
        )
    backups = [r for r in inventory.resources if r.kind in BACKUP_KINDS]
    copies = sum((r.items or 0) if r.kind == "restic_snapshots" else 1 for r in backups)
    if copies:
        parts.append(
            (
                count_of(copies, "copia de seguridad", "copias de seguridad")
                + _known_size(r.bytes for r in backups),
                copies,
            )
        )
    if not parts:
        return "no hay archivos ni correo que eliminar"
    one = len(parts) == 1 and parts[0][1] == 1
    return f"se {'eliminará' if one else 'eliminarán'} {spanish_list([p for p, _ in parts])}"


# Kinds (contract section 9) the inventory sentence counts as databases, and as backups.
DATABASE_KINDS = frozenset({"mariadb_database", "postgresql_database"})
BACKUP_KINDS = frozenset({"restic_snapshots", "backup_directory"})


def spanish_list(parts: Sequence[str]) -> str:
    """ "a", "a y b", "a, b y c"."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " y " + parts[-1]


def _known_size(sizes: Iterable[int | None]) -> str:
    """ " (340 MB)" for the sizes known, or nothing when none is."""
    known = [n for n in sizes if n is not None]
    return f" ({byte_size(sum(known))})" if known else ""


# What stops at once when the deletion starts, by the resource kind that stops it
# (contract section 9), in the order the sentence says it.
STOPS_AT_ONCE: tuple[tuple[str, str], ...] = (
    ("nginx_site", "el sitio deja de responder"),
    ("dns_zone", "el dominio deja de resolverse en nuestros servidores"),
    ("cron", "las tareas programadas se detienen"),
)


def stops_at_once(kinds: Iterable[str]) -> str | None:
    """For the preview and the code mail: "Apenas empieza la eliminación, el sitio deja
    de responder, …", only the parts the service's resource kinds bring; None without."""
    present = set(kinds)
    parts = [text for kind, text in STOPS_AT_ONCE if kind in present]
    if not parts:
        return None
    listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} y {parts[-1]}"
    return f"Apenas empieza la eliminación, {listed}."


COUNTING = "contando…"


def inventory_line(inventory: Inventory | None) -> str:
    """The inventory as a sentence of its own, or "contando…" while it is counted."""
    if inventory is None:
        return COUNTING
    text = inventory_text(inventory)
    return f"{text[0].upper()}{text[1:]}."


# Contract section 1, rule 5: carried out within 24 hours of the confirmation.
DELETION_WITHIN = timedelta(hours=24)


def key_dates(
    *,
    expires_on: date,
    debit_cutoff: date | None,
    confirmed_at: datetime | None,
    tz_name: str,
) -> list[str]:
    """The dates that matter to a cancelling customer: when the service ends, the last
    day to avoid the next automatic debit (auto-debit payers, `debit_cutoff` given
    while it can still be avoided), and when the deletion will be done."""
    lines = [f"El servicio termina el {short_date(expires_on)}."]
    if debit_cutoff is not None:
        last = debit_cutoff - timedelta(days=1)
        lines.append(f"Último día para evitar el próximo débito automático: {short_date(last)}.")
    if confirmed_at is None:
        lines.append("El borrado se completa dentro de las 24 horas de confirmada la baja.")
    else:
        done_by = local_time(confirmed_at + DELETION_WITHIN, tz_name)
        lines.append(f"El borrado estará completo antes del {done_by}.")
    return lines


def debit_warning(cutoff: date | None) -> str | None:
    """The automatic-debit warning of the customer instructions; None without a cut-off
    (a manual payer)."""
    if cutoff is None:
        return None
    return (
        f"Usted paga por débito automático: confirme la baja antes del {long_date(cutoff)}. "
        "Desde ese día el débito ya está en el banco, se procesa y no se reintegra."
    )


BILLING_CLOSED_EARLY = (
    "La facturación ya se cerró: se revocó el débito automático, así que el débito de la "
    "renovación no se procesa. Si desiste, el sitio y el correo siguen, pero la facturación "
    "queda cerrada y el servicio se renueva a mano."
)


def billing_closes_early(closes_at: datetime, debit_on: date, tz_name: str) -> str:
    """While a cancellation waits for the end of the term: billing closes before the
    deletion, so that the debit of the 1st is not processed."""
    return (
        f"La facturación se cierra antes, el {long_time(closes_at, tz_name)}, para que el "
        f"débito automático del {long_date(debit_on)} no se procese. Si desiste después, el "
        "sitio y el correo siguen, pero la facturación queda cerrada."
    )


def billing_stays_closed(expires_on: date) -> str:
    """After a withdrawal from a cancellation whose billing had already closed (before
    the debit of the 1st): the site stays, the billing does not reopen."""
    return (
        "La facturación del servicio ya se había cerrado y queda cerrada: el servicio ya "
        f"no se renueva solo ni se debita. Vence el {long_date(expires_on)}: para seguir "
        "usándolo, renuévelo a mano antes de esa fecha."
    )


def code_mail(
    *,
    name: str,
    domain: str,
    code: str,
    expires_at: datetime,
    tz_name: str,
    expires_on: date,
    debit_cutoff: date | None,
    preview: BillingOutcome,
    term_end: datetime | None = None,
    inventory: Inventory | None = None,
    counting: bool = False,
) -> tuple[str, str]:
    """Subject and body of the mail that carries the confirmation code: with `term_end`
    the deletion waits for the end of the term; with the inventory when it is known, or
    a word that it is being counted."""
    deleted = (
        "Al confirmar se borrará todo el contenido del sitio y todo el correo existente, "
        "y se cerrará la facturación del servicio."
        if term_end is None
        else f"Usted eligió la baja al final del período: al confirmar, "
        f"{working_until(term_end, tz_name)}. Entonces se borrará todo el contenido del "
        "sitio y todo el correo existente, y se cerrará la facturación del servicio."
    )
    lines = [
        f"Hola {name}:",
        "",
        f"Recibimos una solicitud de baja del servicio {domain}.",
        "",
        f"Su código de confirmación para la baja de {domain} es: {code}",
        "",
        f'Ingréselo en el panel con "Confirmar baja del servicio" antes del '
        f"{local_time(expires_at, tz_name)}.",
        "",
        deleted,
    ]
    if inventory is not None:
        lines.append(f"En total {inventory_text(inventory)}.")
    elif counting:
        lines.append(
            "Todavía estamos contando los archivos y los mensajes que se eliminarán; "
            "el panel muestra el total apenas lo tengamos."
        )
    lines += [
        f"Facturación: {outcome_text(preview)}",
        f"Vencimiento del servicio: {short_date(expires_on)}.",
    ]
    warning = debit_warning(debit_cutoff)
    if warning:
        lines += ["", warning]
    lines += [
        "",
        "Si usted no pidió esta baja, no haga nada: sin confirmación no se borra nada.",
    ]
    return f"Código de confirmación para la baja de {domain}", "\n".join(lines)


ARCHIVE_TEXTS: dict[ArchiveState, str] = {
    ArchiveState.FAILED: (
        "La copia del sitio y del correo que pidió no pudo terminarse antes de la baja: la "
        "baja se completó sin ella, dentro del plazo de 24 horas, y no hay copia para descargar."
    ),
    ArchiveState.EXPIRED: "La copia del sitio y del correo que pidió se borró junto con todo lo demás.",
}


def cancelled_mail(
    *,
    name: str,
    domain: str,
    outcome: BillingOutcome,
    receipt: Receipt | None,
    tz_name: str,
    term_end: datetime | None = None,
    archive: ArchiveState | None = None,
) -> tuple[str, str]:
    """Subject and body of the "dado de baja" mail: the receipt, or without one (a run
    finished by a worker older than receipts) the outcome alone; `term_end` when the
    deletion waited for the end of the term; `archive`, how a last copy the customer
    asked for ended."""
    lines = [f"Hola {name}:", "", f"El servicio {domain} fue dado de baja."]
    if term_end is not None:
        lines.append(
            "Como lo pidió, el borrado empezó al final del período: el "
            f"{long_time(term_end, tz_name)}."
        )
    if receipt is None:
        lines += [
            "Se borró todo el contenido del sitio y todo el correo existente.",
            f"Facturación: {outcome_text(outcome)}",
        ]
    else:
        lines += ["", receipt_text(receipt, tz_name)]
    if archive in ARCHIVE_TEXTS:
        lines += ["", ARCHIVE_TEXTS[archive]]
    return f"Servicio {domain} dado de baja", "\n".join(lines)


def withdrawn_mail(*, name: str, domain: str, term_end: datetime, tz_name: str) -> tuple[str, str]:
    """Subject and body of the mail after a withdrawal that keeps the site but not the
    billing, closed already before the end of the term (`term_end`)."""
    expires_on = term_end.astimezone(ZoneInfo(tz_name)).date()
    lines = [
        f"Hola {name}:",
        "",
        f"Usted desistió de la baja del servicio {domain}: no se borra nada, el sitio y el "
        "correo siguen funcionando.",
        "",
        billing_stays_closed(expires_on),
    ]
    return f"Desistió de la baja de {domain}: la facturación sigue cerrada", "\n".join(lines)


def receipt_text(receipt: Receipt, tz_name: str) -> str:
    """The receipt in plain text, as the final mail, `?format=text` and `bajas receipt`
    show it: what was deleted per resource, with counts, sizes and times, then billing."""

    def when(instant: datetime) -> str:
        return local_time(instant, tz_name)

    files = receipt.files
    lines = [
        f"Comprobante de baja del servicio {receipt.domain} (servicio {receipt.service_id})",
        "",
        f"Solicitud: {when(receipt.requested_at)}",
        f"Confirmación: {when(receipt.confirmed_at)}",
        f"Baja terminada: {when(receipt.finished_at)}",
        "",
        f"Sitio, borrado el {when(files.deleted_at)}: "
        f"{count_of(files.deleted, 'archivo', 'archivos')}{_size(files.bytes)}",
    ]
    if receipt.mailboxes:
        lines.append(f"Correo: {count_of(len(receipt.mailboxes), 'buzón', 'buzones')}")
        for box in receipt.mailboxes:
            line = f"- {box.address}"
            if box.deleted_at is not None:
                line += f", borrado el {when(box.deleted_at)}"
            if box.messages is not None:
                line += f": {count_of(box.messages, 'mensaje', 'mensajes')}{_size(box.bytes)}"
            lines.append(line)
    else:
        lines.append("Correo: el servicio no tenía buzones.")
    if receipt.resources:
        lines.append("Bases de datos, copias de seguridad y demás recursos:")
        for resource in receipt.resources:
            label, items = RESOURCE_LABELS.get(
                resource.kind, (resource.kind, ("elemento", "elementos"))
            )
            line = f"- {label} {resource.name}"
            if resource.server:
                line += f" en {resource.server}"
            line += f", borrado el {when(resource.deleted_at)}"
            if resource.items is not None:
                line += f": {count_of(resource.items, *items)}{_size(resource.bytes)}"
            elif resource.bytes is not None:
                line += f": {byte_size(resource.bytes)}"
            lines.append(line)
    lines += [
        "",
        f"Facturación, cerrada el {when(receipt.billing_closed_at)}: "
        + outcome_text(receipt.billing_outcome),
        "Facturas anuladas: " + _ids(receipt.voided_invoice_ids, "ninguna"),
        "Débitos automáticos revocados: " + _ids(receipt.revoked_mandate_ids, "ninguno"),
    ]
    return "\n".join(lines)


# How the receipt names each kind bajas ships, and what its `items` count.
RESOURCE_LABELS: dict[str, tuple[str, tuple[str, str]]] = {
    "mariadb_database": ("base de datos MariaDB", ("tabla", "tablas")),
    "mariadb_user": ("usuario MariaDB", ("host", "hosts")),
    "postgresql_database": ("base de datos PostgreSQL", ("tabla", "tablas")),
    "postgresql_role": ("rol PostgreSQL", ("rol", "roles")),
    "restic_snapshots": ("copias restic con la etiqueta", ("copia", "copias")),
    "backup_directory": ("carpeta de copias", ("archivo", "archivos")),
}


def _size(n: int | None) -> str:
    return f" ({byte_size(n)})" if n is not None else ""


def _ids(ids: Sequence[int], none: str) -> str:
    return ", ".join(f"n.º {i}" for i in ids) if ids else none


def count_of(n: int, one: str, many: str) -> str:
    """ "1 buzón", "2 buzones", "1.250 archivos": Spanish plurals are not always one
    more letter, and thousands are grouped with dots."""
    return f"{n:,}".replace(",", ".") + f" {one if n == 1 else many}"


BYTE_UNITS = ("kB", "MB", "GB", "TB", "PB")


def byte_size(n: int) -> str:
    """A size as a customer reads it: "512 bytes", "1,8 GB", "740 MB" (decimal units,
    one decimal below 10)."""
    if n < 1000:
        return "1 byte" if n == 1 else f"{n} bytes"
    value, unit = n / 1000, 0
    while unit < len(BYTE_UNITS) - 1 and round(value) >= 1000:
        value /= 1000
        unit += 1
    shown = f"{value:.1f}" if round(value, 1) < 10 else f"{value:.0f}"
    return f"{shown.replace('.', ',')} {BYTE_UNITS[unit]}"


def sla_alert_mail(
    *, service_id: int, domain: str, workflow_id: str, problems: Sequence[str] = ()
) -> tuple[str, str]:
    """Subject and body of the operators' alert when the 24-hour promise is at risk;
    `problems` has one line per failing step."""
    lines = [
        f"La baja del servicio {service_id} ({domain}), workflow {workflow_id}, no terminó "
        "dentro del plazo configurado tras la confirmación."
    ]
    if problems:
        lines += ["", "Pasos con error:", *problems]
    lines += ["", "Revise el workflow en la Web UI de Temporal."]
    return f"[bajas] SLA en riesgo: baja del servicio {service_id}", "\n".join(lines)


def locked_mail(*, name: str, domain: str, wrong_codes: int) -> tuple[str, str]:
    body = "\n".join(
        [
            f"Hola {name}:",
            "",
            f"Alguien intentó dar de baja el servicio {domain} e ingresó {wrong_codes} "
            "códigos de confirmación incorrectos, así que bloqueamos esa solicitud. "
            "El servicio sigue como estaba: no se borró nada.",
            "",
            "Si fue usted, puede volver a solicitar la baja desde el panel más tarde.",
            "Si no fue usted, alguien más puede entrar a su panel: cambie su clave y "
            "comuníquese con nosotros.",
        ]
    )
    return f"Intento de baja bloqueado: {domain}", body
