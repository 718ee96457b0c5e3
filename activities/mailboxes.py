"""Deleting a service's mailboxes: each maildir gone, each row's `deleted_at` set."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import asyncpg
from temporalio import activity

from activities.audit import record
from activities.errors import path_refused
from activities.paths import UnsafePath, checked_target, refuse_shared, scan_tree
from bajas.models import DeprovisionInput, MailboxesResult, TransitionInput


class MailboxActivities:
    def __init__(self, pool: asyncpg.Pool, mail_root: Path) -> None:
        self.pool = pool
        self.mail_root = mail_root

    @activity.defn(name="delete_mailboxes")
    async def delete_mailboxes(self, data: DeprovisionInput) -> MailboxesResult:
        """Check every maildir first, so a refusal deletes none of them."""
        rows = await self.pool.fetch(
            "select id, maildir, deleted_at from mailboxes where service_id = $1 order by id",
            data.service_id,
        )
        pending = [r for r in rows if r["deleted_at"] is None]
        others = await self.pool.fetch(
            "select maildir as path from mailboxes where service_id <> $1 and deleted_at is null"
            " union all select document_root from services where id <> $1"
            " and status <> 'cancelled'",
            data.service_id,
        )
        try:
            targets = [
                checked_target(r["maildir"], self.mail_root, what=f"maildir of mailbox {r['id']}")
                for r in pending
            ]
            for target in targets:
                refuse_shared(target, (o["path"] for o in others), what="maildir")
                if os.path.isdir(target) and not os.path.islink(target):
                    await asyncio.to_thread(scan_tree, target)
        except UnsafePath as err:
            raise path_refused(str(err)) from err
        for row, target in zip(pending, targets, strict=True):
            await asyncio.to_thread(_remove, target)
            await self.pool.execute(
                "update mailboxes set deleted_at = coalesce(deleted_at, now()) where id = $1",
                row["id"],
            )
            activity.heartbeat(row["id"])
        async with self.pool.acquire() as conn, conn.transaction():
            await record(
                conn,
                TransitionInput(
                    event="mailboxes_deleted",
                    service_id=data.service_id,
                    customer_id=data.customer_id,
                    actor="bajas",
                    details={"mailboxes_deleted": len(rows)},
                ),
            )
        return MailboxesResult(mailboxes_deleted=len(pending), mailboxes_total=len(rows))


def _remove(target: str) -> None:
    if os.path.islink(target):
        os.unlink(target)
    elif os.path.isdir(target):
        shutil.rmtree(target)
    elif os.path.exists(target):
        os.unlink(target)
