"""Mail to customers and operators: the code, the "dado de baja" notice, the SLA alert."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from email.message import EmailMessage
from email.utils import formataddr, make_msgid

import aiosmtplib
import asyncpg
from temporalio import activity

from bajas.models import (
    MAX_WRONG_CODES,
    BillingOutcome,
    NoticeInput,
    NoticeResult,
    PaymentMethod,
)
from workflows.rules import OUTCOME_TEXT_ES, debit_warning_es, zone

KIND_CANCELLED = "cancelled"
KIND_SLA_AT_RISK = "sla_at_risk"
KIND_LOCKED = "locked"
# What no header may carry: a line break would end the header (or be refused by `email`).
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")


def unsendable_fields(values: dict[str, str]) -> list[str]:
    """The names of the values that hold a control character (a CR/LF above all)."""
    return [name for name, value in values.items() if _CONTROL.search(value)]


def header_text(value: str) -> str:
    """A header value on one line: control characters become one space."""
    return _CONTROL.sub(" ", value).strip()


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    sender: str
    timeout: float = 10.0


class Mailer:
    """Sends one message over SMTP; failures propagate so the activity retries."""

    def __init__(self, smtp: SmtpSettings) -> None:
        self.smtp = smtp

    async def send(self, to: str, subject: str, body: str, *, to_name: str | None = None) -> None:
        msg = EmailMessage()
        msg["From"] = self.smtp.sender
        msg["To"] = formataddr((header_text(to_name), to)) if to_name else to
        msg["Subject"] = header_text(subject)
        msg["Message-ID"] = make_msgid(domain="bajas")
        msg.set_content(body)
        await aiosmtplib.send(
            msg, hostname=self.smtp.host, port=self.smtp.port, timeout=self.smtp.timeout
        )


def local_text(instant: datetime, tz_name: str) -> str:
    return instant.astimezone(zone(tz_name)).strftime("%d/%m/%Y %H:%M")


def code_mail(
    *,
    name: str,
    domain: str,
    code: str,
    expires_at: datetime,
    tz_name: str,
    expires_on: date,
    payment_method: PaymentMethod,
    preview: BillingOutcome,
) -> tuple[str, str]:
    warning = debit_warning_es(expires_on, payment_method)
    lines = [
        f"Hola {name}:",
        "",
        f"Recibimos una solicitud de baja del servicio {domain}.",
        "",
        f"Su código de confirmación para la baja de {domain} es: {code}",
        "",
        f'Ingréselo en el panel con "Confirmar baja del servicio" antes del '
        f"{local_text(expires_at, tz_name)} (hora de {tz_name}).",
        "",
        "Al confirmar se borrará todo el contenido del sitio y todo el correo existente, "
        "y se cerrará la facturación del servicio.",
        f"Facturación: {OUTCOME_TEXT_ES[preview]}",
        f"Vencimiento del servicio: {expires_on.strftime('%d/%m/%Y')}.",
    ]
    if warning:
        lines += ["", warning]
    lines += [
        "",
        "Si usted no pidió esta baja, no haga nada: sin confirmación no se borra nada.",
    ]
    return f"Código de confirmación para la baja de {domain}", "\n".join(lines)


def cancelled_mail(*, name: str, domain: str, outcome: BillingOutcome) -> tuple[str, str]:
    body = "\n".join(
        [
            f"Hola {name}:",
            "",
            f"El servicio {domain} fue dado de baja.",
            "Se borró todo el contenido del sitio y todo el correo existente.",
            f"Facturación: {OUTCOME_TEXT_ES[outcome]}",
        ]
    )
    return f"Servicio {domain} dado de baja", body


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


class NoticeActivities:
    """Once-per-run mails; `bajas.sent_mails` makes a retried activity send nothing more."""

    def __init__(self, pool: asyncpg.Pool, mailer: Mailer, ops_email: str | None) -> None:
        self.pool = pool
        self.mailer = mailer
        self.ops_email = ops_email

    @activity.defn(name="send_notice")
    async def send_notice(self, data: NoticeInput) -> NoticeResult:
        info = activity.info()
        already = await self.pool.fetchval(
            "select 1 from bajas.sent_mails where run_id = $1 and kind = $2",
            info.workflow_run_id,
            data.kind,
        )
        if already:
            return NoticeResult(sent=False)
        row = await self.pool.fetchrow(
            "select c.email, c.name, s.domain from services s join customers c"
            " on c.id = s.customer_id where s.id = $1",
            data.service_id,
        )
        if row is None:
            return NoticeResult(sent=False)
        if data.kind == KIND_CANCELLED:
            assert data.billing_outcome is not None
            subject, body = cancelled_mail(
                name=row["name"], domain=row["domain"], outcome=data.billing_outcome
            )
            await self.mailer.send(row["email"], subject, body, to_name=row["name"])
        elif data.kind == KIND_LOCKED:
            subject, body = locked_mail(
                name=row["name"], domain=row["domain"], wrong_codes=MAX_WRONG_CODES
            )
            await self.mailer.send(row["email"], subject, body, to_name=row["name"])
        elif data.kind == KIND_SLA_AT_RISK:
            if not self.ops_email:
                activity.logger.warning(
                    "SLA at risk for service %s; OPS_EMAIL unset", data.service_id
                )
                return NoticeResult(sent=False)
            await self.mailer.send(
                self.ops_email,
                f"[bajas] SLA en riesgo: baja del servicio {data.service_id}",
                f"La baja del servicio {data.service_id} ({row['domain']}), workflow "
                f"{info.workflow_id}, no terminó dentro del plazo configurado tras la "
                "confirmación. Revise el workflow en la Web UI de Temporal.",
            )
        else:
            raise ValueError(f"unknown notice kind {data.kind!r}")
        await self.pool.execute(
            "insert into bajas.sent_mails (run_id, kind) values ($1, $2) on conflict do nothing",
            info.workflow_run_id,
            data.kind,
        )
        return NoticeResult(sent=True)
