"""The deletion preflight: every path a service's deprovisioning will touch, checked.

Run by `close_billing` before anything changes, and again by each deletion step
right before it deletes, so a path fixed (or broken) in between is judged as it is
then. A refusal raises a non-retryable `PathRefused` that names the step.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from activities.errors import path_refused
from activities.paths import UnsafePath, checked_target, refuse_shared, resolve_all, scan_tree

FILES = "files"
MAILBOXES = "mailboxes"

# Live paths of every other service; all of them are resolved (links, `.`, `..`, `//`),
# since two spellings of one directory must count as one.
_OTHERS = """
select document_root as path from services
 where id <> $1 and status <> 'cancelled' and document_root is not null
union all
select maildir from mailboxes where service_id <> $1 and deleted_at is null
"""


@dataclass
class ServicePaths:
    """What may be deleted: resolved targets, and the file count found by the scan."""

    document_root: str | None = None
    files: int = 0
    maildirs: list[tuple[int, str]] = field(default_factory=list)


async def check_paths(pool: asyncpg.Pool, service_id: int, roots: dict[str, Path]) -> ServicePaths:
    """Check the paths of the steps named in `roots` ({FILES: HOSTING_ROOT, MAILBOXES: MAIL_ROOT})."""
    try:
        return await _check(pool, service_id, roots)
    except _Refusal as refusal:
        raise path_refused(refusal.message, refusal.step) from None


class _Refusal(Exception):
    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step
        self.message = message


def _target(path: str | None, root: Path, what: str, step: str) -> str:
    try:
        return checked_target(path, root, what=what)
    except UnsafePath as err:
        raise _Refusal(step, str(err)) from None


async def _check(pool: asyncpg.Pool, service_id: int, roots: dict[str, Path]) -> ServicePaths:
    paths = ServicePaths()
    mine: list[tuple[str, str, str]] = []  # (step, label, resolved target)
    if FILES in roots:
        document_root = await pool.fetchval(
            "select document_root from services where id = $1", service_id
        )
        if document_root:
            paths.document_root = _target(document_root, roots[FILES], "document_root", FILES)
            mine.append((FILES, f"document_root {document_root!r}", paths.document_root))
    if MAILBOXES in roots:
        for row in await pool.fetch(
            "select id, maildir from mailboxes"
            " where service_id = $1 and deleted_at is null order by id",
            service_id,
        ):
            what = f"maildir of mailbox {row['id']}"
            target = _target(row["maildir"], roots[MAILBOXES], what, MAILBOXES)
            paths.maildirs.append((row["id"], target))
            mine.append((MAILBOXES, f"{what} ({row['maildir']!r})", target))
    if mine:
        written = [r["path"] for r in await pool.fetch(_OTHERS, service_id)]
        others = list(zip(written, await asyncio.to_thread(resolve_all, written), strict=True))
        for step, label, target in mine:
            try:
                refuse_shared(target, others, what=label)
            except UnsafePath as err:
                raise _Refusal(step, str(err)) from None
    for step, _, target in mine:
        if os.path.isdir(target) and not os.path.islink(target):
            try:
                files, _ = await asyncio.to_thread(scan_tree, target)
            except UnsafePath as err:
                raise _Refusal(step, str(err)) from None
            if step == FILES:
                paths.files = files
    return paths
