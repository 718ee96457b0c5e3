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
from activities.paths import (
    FileId,
    UnsafePath,
    ancestry,
    checked_target,
    file_ids,
    lexically_overlaps,
    scan_tree,
)
from bajas.models import Step

# Live paths of every other service, judged by the directory each names on disk (one
# stat, links and `..` resolved by the kernel), so two spellings of one directory count
# as one.
_OTHERS = """
select document_root as path from services
 where id <> $1 and status <> 'cancelled' and document_root is not null
union all
select maildir from mailboxes where service_id <> $1 and deleted_at is null
"""


class PanelPaths:
    """The live paths of the other services, with the directory each names on disk.

    The rows are read fresh every time; what a path names on disk is remembered for
    `ttl` seconds, so a wave of cancellations stats a large panel (a 100,000-service
    panel holds about 300,000 paths) once per few seconds, not once per cancellation.
    Only a directory replaced on disk under the same path within those seconds would
    be judged on what stood just before.
    """

    def __init__(self, pool: asyncpg.Pool, ttl: float = 5.0) -> None:
        self.pool = pool
        self.ttl = ttl
        self._seen: dict[str, tuple[float, FileId | None]] = {}

    async def of_others(self, service_id: int) -> list[tuple[str, FileId | None]]:
        written = [r["path"] for r in await self.pool.fetch(_OTHERS, service_id)]
        now = asyncio.get_running_loop().time()
        stale = [p for p in written if now - self._seen.get(p, (-self.ttl, None))[0] >= self.ttl]
        if stale:
            for path, found in zip(stale, await asyncio.to_thread(file_ids, stale), strict=True):
                self._seen[path] = (now, found)
        if len(self._seen) > 2 * len(written) + 1000:  # forget paths no longer in the panel
            keep = set(written)
            self._seen = {p: v for p, v in self._seen.items() if p in keep}
        return [(p, self._seen[p][1]) for p in written]


@dataclass
class ServicePaths:
    """What may be deleted: resolved targets, and the file count found by the scan."""

    document_root: str | None = None
    files: int = 0
    maildirs: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class _Mine:
    step: Step
    label: str
    target: str
    # the directories whose deletion this step implies or needs: the target, its
    # ancestors (deleting them is never asked, but another service living there would
    # contain ours) and everything below it
    taken: set[FileId] = field(default_factory=set)


async def check_paths(
    pool: asyncpg.Pool,
    service_id: int,
    roots: dict[Step, Path],
    panel: PanelPaths | None = None,
) -> ServicePaths:
    """Check the paths of the steps named in `roots` ({Step.FILES: HOSTING_ROOT,
    Step.MAILBOXES: MAIL_ROOT}); with `panel`, also that no other service shares them
    (the preflight)."""
    try:
        return await _check(pool, service_id, roots, panel)
    except _Refusal as refusal:
        raise path_refused(refusal.message, refusal.step) from None


class _Refusal(Exception):
    def __init__(self, step: Step, message: str) -> None:
        super().__init__(message)
        self.step = step
        self.message = message


def _target(path: str | None, root: Path, what: str, step: Step) -> str:
    try:
        return checked_target(path, root, what=what)
    except UnsafePath as err:
        raise _Refusal(step, str(err)) from None


async def _check(
    pool: asyncpg.Pool, service_id: int, roots: dict[Step, Path], panel: PanelPaths | None
) -> ServicePaths:
    paths = ServicePaths()
    mine: list[_Mine] = []
    if Step.FILES in roots:
        document_root = await pool.fetchval(
            "select document_root from services where id = $1", service_id
        )
        if document_root:
            paths.document_root = _target(
                document_root, roots[Step.FILES], "document_root", Step.FILES
            )
            mine.append(_Mine(Step.FILES, f"document_root {document_root!r}", paths.document_root))
    if Step.MAILBOXES in roots:
        for row in await pool.fetch(
            "select id, maildir from mailboxes"
            " where service_id = $1 and deleted_at is null order by id",
            service_id,
        ):
            what = f"maildir of mailbox {row['id']}"
            target = _target(row["maildir"], roots[Step.MAILBOXES], what, Step.MAILBOXES)
            paths.maildirs.append((row["id"], target))
            mine.append(_Mine(Step.MAILBOXES, f"{what} ({row['maildir']!r})", target))
    for item in mine:
        item.taken |= ancestry(item.target)
        if os.path.isdir(item.target) and not os.path.islink(item.target):
            try:
                files, _ = await asyncio.to_thread(scan_tree, item.target, item.taken)
            except UnsafePath as err:
                raise _Refusal(item.step, str(err)) from None
            if item.step is Step.FILES:
                paths.files = files
    if mine and panel is not None:
        others = await panel.of_others(service_id)
        for item in mine:
            for other, other_id in others:
                if lexically_overlaps(item.target, other) or (
                    other_id is not None and other_id in item.taken
                ):
                    raise _Refusal(
                        item.step, f"{item.label} is shared with another service ({other!r})"
                    )
    return paths
