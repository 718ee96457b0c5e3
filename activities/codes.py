"""Confirmation codes: made with `secrets`, kept only as an HMAC, carried only by the mail.

The workflow never sees a code: this activity makes it, stores its keyed hash and
mails it in one go, and returns only the (non-secret) generation and expiry.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.audit import record_work
from activities.mail import Mailer
from bajas.limits import TOO_MANY_REQUESTS, Limits, resend_refusal
from bajas.models import (
    CODE_LENGTH,
    IssueCodeInput,
    IssueCodeResult,
    VerifyCodeInput,
    VerifyCodeResult,
    is_well_formed_code,
)
from bajas.run_chain import chain_run_id
from bajas.texts import code_mail


def code_hmac(key: bytes, run_id: str, generation: int, code: str) -> bytes:
    return hmac.new(key, f"{run_id}:{generation}:{code}".encode(), hashlib.sha256).digest()


def new_code() -> str:
    return f"{secrets.randbelow(10**CODE_LENGTH):0{CODE_LENGTH}d}"


def _run_id() -> str:
    """The workflow run a code belongs to: part of its HMAC, so no other run can use it."""
    run_id = chain_run_id()
    if run_id is None:
        raise RuntimeError("codes are issued and checked only for a workflow run")
    return run_id


class CodeActivities:
    """`keys`: CODE_HMAC_KEY's keys; the first hashes every new code, each is tried when
    one is checked, so a rotated key still accepts the codes mailed before."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        keys: Sequence[bytes],
        mailer: Mailer,
        tz_name: str,
        limits: Limits | None = None,
    ) -> None:
        self.pool = pool
        if not keys:
            raise ValueError("CodeActivities needs at least one key")
        self.keys = list(keys)
        self.mailer = mailer
        self.tz_name = tz_name
        self.limits = limits or Limits()

    @activity.defn(name="issue_code")
    async def issue_code(self, data: IssueCodeInput) -> IssueCodeResult:
        """Idempotent per generation: once its mail has left, a retry sends nothing.

        A retry after a failed send makes a fresh code, since the old one cannot be read
        back; only the mail that actually leaves carries a working code.
        """
        run_id = _run_id()
        sent = await self.pool.fetchval(
            "select sent_at from bajas.confirmation_codes where run_id = $1 and generation = $2",
            run_id,
            data.generation,
        )
        if sent is not None:
            return IssueCodeResult(generation=data.generation, expires_at=data.expires_at)
        if data.generation > 1:
            # A resend over the hourly limits fails its update and mails nothing.
            refusal = await resend_refusal(
                self.pool, self.limits, data.service_id, data.customer_id
            )
            if refusal is not None:
                raise ApplicationError(
                    refusal.rejection_reason, type=TOO_MANY_REQUESTS, non_retryable=True
                )
        row = await self.pool.fetchrow(
            "select c.email, c.name, s.domain, s.expires_on"
            " from services s join customers c on c.id = s.customer_id where s.id = $1",
            data.service_id,
        )
        if row is None:
            raise RuntimeError(f"service {data.service_id} vanished from the panel database")
        code = new_code()
        await self.pool.execute(
            """
            insert into bajas.confirmation_codes (run_id, generation, code_hmac, expires_at)
            values ($1, $2, $3, $4)
            on conflict (run_id, generation)
            do update set code_hmac = excluded.code_hmac, issued_at = now()
            """,
            run_id,
            data.generation,
            code_hmac(self.keys[0], run_id, data.generation, code),
            data.expires_at,
        )
        subject, body = code_mail(
            name=row["name"],
            domain=row["domain"],
            code=code,
            expires_at=data.expires_at,
            tz_name=self.tz_name,
            expires_on=row["expires_on"],
            debit_cutoff=data.debit_cutoff,
            preview=data.billing_preview,
            term_end=data.term_end,
            inventory=data.inventory,
            counting=data.counting,
        )
        del code
        await self.mailer.send(row["email"], subject, body, to_name=row["name"])
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "update bajas.confirmation_codes set sent_at = now()"
                " where run_id = $1 and generation = $2",
                run_id,
                data.generation,
            )
            await record_work(
                conn, data, f"code_sent:{data.generation}", {"generation": data.generation}
            )
        return IssueCodeResult(generation=data.generation, expires_at=data.expires_at)

    @activity.defn(name="verify_code")
    async def verify_code(self, data: VerifyCodeInput) -> VerifyCodeResult:
        """Compare in constant time; only the current generation counts, and only once."""
        if not is_well_formed_code(data.code):
            return VerifyCodeResult(accepted=False)
        run_id = _run_id()
        row = await self.pool.fetchrow(
            "select code_hmac, used_at from bajas.confirmation_codes"
            " where run_id = $1 and generation = $2 and sent_at is not null",
            run_id,
            data.generation,
        )
        if row is None:
            return VerifyCodeResult(accepted=False)
        expected = bytes(row["code_hmac"])
        # every key is computed, so the time taken says nothing about which one matched
        matches = [
            hmac.compare_digest(expected, code_hmac(key, run_id, data.generation, data.code))
            for key in self.keys
        ]
        ok = any(matches)
        if ok:
            # A retry of this same attempt still answers accepted; the workflow never asks
            # again after an acceptance, so the code is single-use.
            await self.pool.execute(
                "update bajas.confirmation_codes set used_at = coalesce(used_at, now())"
                " where run_id = $1 and generation = $2",
                run_id,
                data.generation,
            )
        return VerifyCodeResult(accepted=ok)
