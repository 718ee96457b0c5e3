"""Deleting a service's mailboxes: each maildir gone, each row's `deleted_at` set."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import asyncpg
from temporalio import activity

from activities.audit import record_work
from activities.safety import check_paths
from bajas.models import DeprovisionInput, MailboxesResult, Step


class MailboxActivities:
    """Deletes maildirs below MAIL_ROOT and marks their rows."""

    def __init__(self, pool: asyncpg.Pool, mail_root: Path) -> None:
        self.pool = pool
        self.mail_root = mail_root

    @activity.defn(name="delete_mailboxes")
    async def delete_mailboxes(self, data: DeprovisionInput) -> MailboxesResult:
        """Every maildir is checked first, so a refusal deletes none of them."""
        total = await self.pool.fetchval(
            "select count(*) from mailboxes where service_id = $1", data.service_id
        )
        paths = await check_paths(self.pool, data.service_id, {Step.MAILBOXES: self.mail_root})
        for mailbox_id, target in paths.maildirs:
            await asyncio.to_thread(_remove, target)
            await self.pool.execute(
                "update mailboxes set deleted_at = coalesce(deleted_at, now()) where id = $1",
                mailbox_id,
            )
            activity.heartbeat(mailbox_id)
        await record_work(self.pool, data, "mailboxes_deleted", {"mailboxes_deleted": total})
        return MailboxesResult(mailboxes_deleted=len(paths.maildirs), mailboxes_total=total)


def _remove(target: str) -> None:
    if os.path.islink(target):
        os.unlink(target)
    elif os.path.isdir(target):
        shutil.rmtree(target)
    elif os.path.exists(target):
        os.unlink(target)
