"""Closing the billing of a service, per the contract's outcome table."""

from __future__ import annotations

from pathlib import Path

import asyncpg
from temporalio import activity

from activities.audit import record_work
from activities.safety import PanelPaths, check_paths
from bajas.models import BillingInput, BillingResult, Step


class BillingActivities:
    """Closes billing as the workflow decided it; the panel database is the only thing touched."""

    def __init__(
        self, pool: asyncpg.Pool, *, hosting_root: Path, mail_root: Path, panel: PanelPaths
    ) -> None:
        self.pool = pool
        self.hosting_root = hosting_root
        self.mail_root = mail_root
        self.panel = panel

    @activity.defn(name="close_billing")
    async def close_billing(self, data: BillingInput) -> BillingResult:
        """Preflight every path first (inside its root, no link out, shared with no other
        service): billing closes only when the data can go too.

        Then one transaction carrying out the effects in `data` (the workflow decided
        them); each statement only touches rows not yet in their final state.
        """
        await check_paths(
            self.pool,
            data.service_id,
            {Step.FILES: self.hosting_root, Step.MAILBOXES: self.mail_root},
            self.panel,
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
                conn, data, "billing_closed", result.model_dump(), billing_outcome=data.outcome
            )
        return result


async def _ids(conn: asyncpg.Connection, statement: str, service_id: int) -> list[int]:
    """The ids an update touched, sorted: the receipt lists them as they were recorded."""
    return sorted(row["id"] for row in await conn.fetch(statement, service_id))
