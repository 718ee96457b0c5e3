"""Mail to customers and operators: the code, the "dado de baja" notice, the SLA alert,
the lock-out and the withdrawal that keeps billing closed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr, make_msgid

import aiosmtplib
import asyncpg
from temporalio import activity

from bajas import texts
from bajas.models import (
    KIND_CANCELLED,
    KIND_LOCKED,
    KIND_SLA_AT_RISK,
    KIND_WITHDRAWN,
    MAX_WRONG_CODES,
    NoticeInput,
    NoticeResult,
)
from bajas.receipts import stored_receipt
from bajas.run_chain import chain_run_id

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


class NoticeActivities:
    """Once-per-run mails; `bajas.sent_mails` makes a retried activity send nothing more."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        mailer: Mailer,
        ops_email: str | None,
        *,
        business_tz: str,
    ) -> None:
        self.pool = pool
        self.mailer = mailer
        self.ops_email = ops_email
        self.business_tz = business_tz

    @activity.defn(name="send_notice")
    async def send_notice(self, data: NoticeInput) -> NoticeResult:
        info = activity.info()
        already = await self.pool.fetchval(
            "select 1 from bajas.sent_mails where run_id = $1 and kind = $2",
            chain_run_id(),
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
            if data.billing_outcome is None:
                raise ValueError("a 'cancelled' notice needs the billing outcome")
            subject, body = texts.cancelled_mail(
                name=row["name"],
                domain=row["domain"],
                outcome=data.billing_outcome,
                receipt=await stored_receipt(self.pool, data.service_id, chain_run_id()),
                tz_name=self.business_tz,
                term_end=data.term_end,
                archive=data.archive,
            )
            await self.mailer.send(row["email"], subject, body, to_name=row["name"])
        elif data.kind == KIND_LOCKED:
            subject, body = texts.locked_mail(
                name=row["name"], domain=row["domain"], wrong_codes=MAX_WRONG_CODES
            )
            await self.mailer.send(row["email"], subject, body, to_name=row["name"])
        elif data.kind == KIND_WITHDRAWN:
            if data.term_end is None:
                raise ValueError("a 'withdrawn' notice needs the end of the term")
            subject, body = texts.withdrawn_mail(
                name=row["name"],
                domain=row["domain"],
                term_end=data.term_end,
                tz_name=self.business_tz,
            )
            await self.mailer.send(row["email"], subject, body, to_name=row["name"])
        elif data.kind == KIND_SLA_AT_RISK:
            if not self.ops_email:
                activity.logger.warning(
                    "SLA at risk for service %s; OPS_EMAIL unset", data.service_id
                )
                return NoticeResult(sent=False)
            subject, body = texts.sla_alert_mail(
                service_id=data.service_id,
                domain=row["domain"],
                workflow_id=info.workflow_id or "(unknown)",
                problems=data.problems,
            )
            await self.mailer.send(self.ops_email, subject, body)
        else:
            raise ValueError(f"unknown notice kind {data.kind!r}")
        await self.pool.execute(
            "insert into bajas.sent_mails (run_id, kind) values ($1, $2) on conflict do nothing",
            chain_run_id(),
            data.kind,
        )
        return NoticeResult(sent=True)
