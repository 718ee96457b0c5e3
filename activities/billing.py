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
            revoked = voided = 0
            if data.revoke_mandate:
                revoked = len(
                    await conn.fetch(
                        "update debit_mandates set status = 'revoked', revoked_at = now()"
                        " where service_id = $1 and status = 'active' returning id",
                        data.service_id,
                    )
                )
            if data.void_renewal_invoices:
                voided = len(
                    await conn.fetch(
                        """
                        update invoices i set status = 'void'
                          from services s
                         where s.id = i.service_id and i.service_id = $1
                           and i.status = 'open' and i.period_start >= s.expires_on
                        returning i.id
                        """,
                        data.service_id,
                    )
                )
            await record_work(
                conn,
                data,
                "billing_closed",
                {"invoices_voided": voided, "mandates_revoked": revoked},
                billing_outcome=data.outcome,
            )
        return BillingResult(invoices_voided=voided, mandates_revoked=revoked)
