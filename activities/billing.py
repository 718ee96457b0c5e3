"""Closing the billing of a service, per the contract's outcome table."""

from __future__ import annotations

from pathlib import Path

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.audit import record_work
from activities.safety import PanelPaths, check_paths
from bajas.models import BillingInput, BillingResult, Step


class BillingActivities:
    """Closes billing as the workflow decided it; the panel database is the only thing touched."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        hosting_root: Path,
        mail_root: Path,
        panel: PanelPaths,
        threads: int = 4,
    ) -> None:
        self.pool = pool
        self.hosting_root = hosting_root
        self.mail_root = mail_root
        self.panel = panel
        self.threads = threads

    @activity.defn(name="close_billing")
    async def close_billing(self, data: BillingInput) -> BillingResult:
        """One transaction carrying out the effects in `data` (the workflow decided
        them); each statement only touches rows not yet in their final state. Then the
        check that billing is closed, which sets `verified`.

        The preflight of the paths is `preflight_paths`, run before this on the server
        that holds them; runs started before it existed ask for it here (`preflight`).
        """
        if data.preflight:
            await check_paths(
                self.pool,
                data.service_id,
                {Step.FILES: self.hosting_root, Step.MAILBOXES: self.mail_root},
                self.panel,
                walk=True,
                threads=self.threads,
            )
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "update services set auto_renew = false where id = $1", data.service_id
            )
            revoked: list[int] = []
            voided: list[int] = []
            if data.revoke_mandate:
                revoked = await _ids(
                    conn,
                    "update debit_mandates set status = 'revoked', revoked_at = now()"
                    " where service_id = $1 and status = 'active' returning id",
                    data.service_id,
                )
            if data.void_renewal_invoices:
                voided = await _ids(
                    conn,
                    """
                    update invoices i set status = 'void'
                      from services s
                     where s.id = i.service_id and i.service_id = $1
                       and i.status = 'open' and i.period_start >= s.expires_on
                    returning i.id
                    """,
                    data.service_id,
                )
            result = BillingResult(
                invoices_voided=len(voided),
                mandates_revoked=len(revoked),
                voided_invoice_ids=voided,
                revoked_mandate_ids=revoked,
            )
            await record_work(
                conn,
                data,
                "billing_closed",
                result.model_dump(exclude={"verified"}),
                billing_outcome=data.outcome,
            )
        await _check_closed(self.pool, data)
        return result.model_copy(update={"verified": True})


async def _ids(conn: asyncpg.Connection, statement: str, service_id: int) -> list[int]:
    """The ids an update touched, sorted: the receipt lists them as they were recorded."""
    return sorted(row["id"] for row in await conn.fetch(statement, service_id))


async def _check_closed(pool: asyncpg.Pool, data: BillingInput) -> None:
    """Auto-renew off, no active mandate left when it is to be revoked, and no open
    renewal invoice left when they are to be voided; a retryable error otherwise."""
    left = await pool.fetchrow(
        """
        select s.auto_renew,
               (select count(*) from debit_mandates m
                 where m.service_id = s.id and m.status = 'active') as mandates,
               (select count(*) from invoices i
                 where i.service_id = s.id and i.status = 'open'
                   and i.period_start >= s.expires_on) as invoices
          from services s where s.id = $1
        """,
        data.service_id,
    )
    problems = []
    if left is None:
        problems.append("the service is gone from the panel database")
    else:
        if left["auto_renew"]:
            problems.append("auto-renew is still on")
        if data.revoke_mandate and left["mandates"]:
            problems.append(f"{left['mandates']} debit mandates still active")
        if data.void_renewal_invoices and left["invoices"]:
            problems.append(f"{left['invoices']} renewal invoices still open")
    if problems:
        raise ApplicationError(
            f"billing not proven closed: {', '.join(problems)}", type="NotVerified"
        )
