"""The inventory: what confirming a cancellation deletes, counted where the data is.

Taken when the request arrives, beside the code mail (the workflow waits for it a few
seconds at most, so a site of a million files does not hold the mail back). The same
engine walk as the deletion's, deleting nothing; the paths are checked first, so it
never counts outside HOSTING_ROOT / MAIL_ROOT.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
from temporalio import activity

from activities.deletion import TreeCount
from activities.errors import path_refused
from activities.paths import UnsafePath
from activities.safety import check_paths
from activities.walks import Walker
from bajas.models import Inventory, InventoryInput, InventoryResult, MailboxInventory, Step


class InventoryActivities:
    """Counts a service's document root and maildirs; changes nothing."""

    def __init__(
        self, pool: asyncpg.Pool, *, hosting_root: Path, mail_root: Path, threads: int = 4
    ) -> None:
        self.pool = pool
        self.roots = {Step.FILES: hosting_root, Step.MAILBOXES: mail_root}
        self.walker = Walker(threads)

    @activity.defn(name="take_inventory")
    async def take_inventory(self, data: InventoryInput) -> InventoryResult:
        """Files and bytes of the document root (as `find TOP ! -type d | wc -l` and
        `du -sb TOP`), messages and bytes of each maildir. An unsafe path (PathRefused)
        is not counted: the preflight refuses it after the confirmation."""
        paths = await check_paths(self.pool, data.service_id, self.roots)
        step = Step.FILES
        try:
            site = (
                await self.walker.count(paths.document_root, _alive)
                if paths.document_root is not None
                else TreeCount()
            )
            step = Step.MAILBOXES
            mailboxes = []
            for maildir in paths.maildirs:
                counted = await self.walker.count_maildir(maildir.target, _alive)
                mailboxes.append(
                    MailboxInventory(
                        address=maildir.address, messages=counted.messages, bytes=counted.bytes
                    )
                )
        except UnsafePath as err:
            raise path_refused(str(err), step) from None
        return InventoryResult(
            inventory=Inventory(files=site.files, bytes=site.bytes, mailboxes=mailboxes)
        )


def _alive(_: TreeCount) -> tuple[()]:
    return ()
