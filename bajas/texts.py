"""What customers and operators read, in Spanish: the billing outcomes, dates and times,
the debit warning and the mails. One module for the mails (activities) and the panel.

Nothing here decides anything: what a text needs from a rule (the debit cut-off, the
outcome) is computed by the caller with `workflows/rules.py` and passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from zoneinfo import ZoneInfo

from bajas.models import ArchiveState, BillingOutcome

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


def byte_size(n: int) -> str:
    """ "830 bytes", "12 KB", "3,4 MB", "1,2 GB": what a download weighs."""
    if n < 1000:
        return f"{n} bytes"
    for unit, size in (("KB", 10**3), ("MB", 10**6), ("GB", 10**9), ("TB", 10**12)):
        value = n / size
        if round(value) < 1000 or unit == "TB":
            break
    shown = f"{value:.1f}" if value < 9.95 else f"{value:.0f}"
    return f"{shown.replace('.', ',')} {unit}"


def debit_warning(cutoff: date | None) -> str | None:
    """The automatic-debit warning of the customer instructions; None without a cut-off
    (a manual payer)."""
    if cutoff is None:
        return None
    return (
        f"Usted paga por débito automático: confirme la baja antes del {long_date(cutoff)}. "
        "Desde ese día el débito ya está en el banco, se procesa y no se reintegra."
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
) -> tuple[str, str]:
    """Subject and body of the mail that carries the confirmation code."""
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
        "Al confirmar se borrará todo el contenido del sitio y todo el correo existente, "
        "y se cerrará la facturación del servicio.",
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
    *, name: str, domain: str, outcome: BillingOutcome, archive: ArchiveState | None = None
) -> tuple[str, str]:
    """Subject and body of the "dado de baja" mail; `archive`, how a last copy the
    customer asked for ended."""
    lines = [
        f"Hola {name}:",
        "",
        f"El servicio {domain} fue dado de baja.",
        "Se borró todo el contenido del sitio y todo el correo existente.",
        f"Facturación: {outcome_text(outcome)}",
    ]
    if archive in ARCHIVE_TEXTS:
        lines += ["", ARCHIVE_TEXTS[archive]]
    return f"Servicio {domain} dado de baja", "\n".join(lines)


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
