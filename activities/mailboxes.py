"""Deleting a service's mailboxes: each maildir counted, removed and proven gone, each
row's `deleted_at` set, and the per-domain folders left empty under MAIL_ROOT removed.

Each mailbox's deletion is recorded as it happens (`mailbox_deleted:<id>`, in the
transaction that sets `deleted_at`), so the step's closing audit line lists every
mailbox of the run with its messages and bytes, those of earlier attempts included.
The check that every maildir is gone and every row marked closes the same attempt, on
the server that holds the mail.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.audit import record_work
from activities.deletion import TreeCount
from activities.errors import path_refused
from activities.paths import UnsafePath
from activities.safety import Maildir, PanelPaths, check_paths
from activities.walks import Walker
from bajas.models import DeprovisionInput, MailboxesResult, Step
from bajas.run_chain import chain_run_id

# The mailboxes this run has deleted, one audit line each.
_DELETED_IN_RUN = """
select details from bajas.audit_trail
 where run_id = $1 and event like 'mailbox_deleted:%' order by id
"""
# Whether a live mailbox's maildir lies in a folder, given its spellings.
_LIVE_BELOW = """
select exists (
  select 1 from mailboxes, unnest($1::text[]) as folder
   where deleted_at is null
     and (rtrim(maildir, '/') = folder or starts_with(maildir, folder || '/'))
)
"""


class MailboxActivities:
    """Deletes maildirs below MAIL_ROOT and marks their rows. `node` names the hosting
    server this worker runs on (None: a central worker), for the audit trail."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        mail_root: Path,
        *,
        panel: PanelPaths | None = None,
        threads: int = 4,
        node: str | None = None,
    ) -> None:
        self.pool = pool
        self.mail_root = mail_root
        self.panel = panel or PanelPaths(pool)
        self.threads = threads
        self.node = node

    @activity.defn(name="delete_mailboxes")
    async def delete_mailboxes(self, data: DeprovisionInput) -> MailboxesResult:
        """Every maildir is checked first, so a refusal deletes none of them."""
        total = await self.pool.fetchval(
            "select count(*) from mailboxes where service_id = $1", data.service_id
        )
        paths = await check_paths(
            self.pool, data.service_id, {Step.MAILBOXES: self.mail_root}, self.panel
        )
        walker = Walker(self.threads, paths.protected)
        try:
            for maildir in paths.maildirs:
                await self._delete(data, walker, maildir)
        except UnsafePath as err:
            raise path_refused(str(err), Step.MAILBOXES) from None
        await self._prune({os.path.dirname(m.target) for m in paths.maildirs})
        await self._check(data, paths.maildirs)
        deleted = [
            json.loads(row["details"]) if isinstance(row["details"], str) else row["details"]
            for row in await self.pool.fetch(_DELETED_IN_RUN, chain_run_id())
        ]
        for mailbox in deleted:
            mailbox.pop("node", None)
        await record_work(
            self.pool, data, "mailboxes_deleted", {"mailboxes": deleted, "node": self.node}
        )
        return MailboxesResult(
            mailboxes_deleted=len(paths.maildirs),
            mailboxes_total=total,
            messages_deleted=sum(m["messages"] for m in deleted),
            bytes_deleted=sum(m["bytes"] for m in deleted),
            verified=True,
        )

    async def _delete(self, data: DeprovisionInput, walker: Walker, maildir: Maildir) -> None:
        """Count one maildir (what the audit line reports), delete it until it is gone,
        then mark its row and record it, in one transaction."""

        def beat(_: TreeCount) -> tuple[int]:
            return (maildir.mailbox_id,)

        counted = await walker.count_maildir(maildir.target, beat)
        await walker.delete_until_gone(maildir.target, beat)
        async with self.pool.acquire() as conn, conn.transaction():
            deleted_at = await conn.fetchval(
                "update mailboxes set deleted_at = coalesce(deleted_at, now())"
                " where id = $1 returning deleted_at",
                maildir.mailbox_id,
            )
            await record_work(
                conn,
                data,
                f"mailbox_deleted:{maildir.mailbox_id}",
                {
                    "address": maildir.address,
                    "messages": counted.messages,
                    "bytes": counted.bytes,
                    "deleted_at": deleted_at.isoformat(),
                    "node": self.node,
                },
            )

    async def _prune(self, folders: set[str]) -> None:
        """Remove the folders (per domain, usually) that held the deleted maildirs, and
        their parents, while they are empty: below MAIL_ROOT only, never MAIL_ROOT, and
        none that a live mailbox of any service lies in (its maildir may not exist yet)."""
        root = os.path.realpath(self.mail_root)
        written = os.path.normpath(os.path.abspath(self.mail_root))
        for folder in sorted(folders, key=len, reverse=True):
            while folder.startswith(root + os.sep):
                spellings = {folder, written + folder[len(root) :]}
                if await self.pool.fetchval(_LIVE_BELOW, list(spellings)):
                    break
                try:
                    os.rmdir(folder)  # only ever an empty directory, never a link
                except OSError:
                    break
                folder = os.path.dirname(folder)

    async def _check(self, data: DeprovisionInput, deleted: list[Maildir]) -> None:
        """Every mailbox row of the service marked, and every maildir this attempt
        deleted absent from disk (earlier attempts deleted theirs before marking them)."""
        unmarked = await self.pool.fetch(
            "select id from mailboxes where service_id = $1 and deleted_at is null",
            data.service_id,
        )
        left = [m.mailbox_id for m in deleted if os.path.lexists(m.target)]
        if unmarked or left:
            raise ApplicationError(
                f"mailboxes not proven gone: {len(unmarked)} rows without deleted_at,"
                f" {len(left)} maildirs still on disk",
                type="NotVerified",
            )
