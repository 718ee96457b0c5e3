"""The deletion preflight: every path a service's deprovisioning will touch, checked.

Run by `preflight_paths` (on the server that holds the data, right before billing
closes) and again by each deletion step right before it deletes, so a path fixed (or
broken) in between is judged as it is then. A refusal raises a non-retryable
`PathRefused` that names the step.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from temporalio import activity

from activities.deletion import mounts_below, shown
from activities.errors import path_refused
from activities.paths import (
    FileId,
    UnsafePath,
    ancestry,
    checked_target,
    file_ids,
    lexically_overlaps,
)
from activities.walks import Walker
from bajas.models import PreflightInput, PreflightResult, Step

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


@dataclass(frozen=True)
class Maildir:
    mailbox_id: int
    address: str
    target: str


@dataclass
class ServicePaths:
    """What may be deleted: resolved targets, and the directories of other services
    that no walk may enter (their (dev, ino); empty without the panel check)."""

    document_root: str | None = None
    maildirs: list[Maildir] = field(default_factory=list)
    protected: frozenset[FileId] = frozenset()


@dataclass
class _Mine:
    step: Step
    label: str
    target: str
    # the target and its ancestors: another service living at one of them would
    # contain ours (deleting them is never asked)
    taken: set[FileId] = field(default_factory=set)


async def check_paths(
    pool: asyncpg.Pool,
    service_id: int,
    roots: dict[Step, Path],
    panel: PanelPaths | None = None,
    *,
    walk: bool = False,
    threads: int = 4,
) -> ServicePaths:
    """Check the paths of the steps named in `roots` ({Step.FILES: HOSTING_ROOT,
    Step.MAILBOXES: MAIL_ROOT}): strictly inside their root, no mount at or below them.

    With `panel`, also that no other service shares them, and their directories come
    back as `protected`. With `walk` (the preflight), each tree is walked (by `threads`)
    without deleting, so a directory of another service inside it, or a mount, refuses
    now rather than half-way through the deletion."""
    try:
        return await _check(pool, service_id, roots, panel, threads if walk else None)
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


def mount_refusal(label: str, target: str) -> str | None:
    """Why `target` must not be walked because of a mount at or below it; None if none."""
    found = mounts_below(target)
    if not found:
        return None
    if found[0] == target:
        return f"{label} is itself a mount point; deletion never enters another mount"
    more = f" and {len(found) - 1} more" if len(found) > 1 else ""
    return (
        f"{label} holds the mount point {shown(found[0])}{more};"
        " deletion never enters another mount"
    )


async def _check(
    pool: asyncpg.Pool,
    service_id: int,
    roots: dict[Step, Path],
    panel: PanelPaths | None,
    walk_threads: int | None,
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
            "select id, address, maildir from mailboxes"
            " where service_id = $1 and deleted_at is null order by id",
            service_id,
        ):
            what = f"maildir of mailbox {row['id']}"
            target = _target(row["maildir"], roots[Step.MAILBOXES], what, Step.MAILBOXES)
            paths.maildirs.append(Maildir(row["id"], row["address"], target))
            mine.append(_Mine(Step.MAILBOXES, f"{what} ({row['maildir']!r})", target))
    for item in mine:
        why = await asyncio.to_thread(mount_refusal, item.label, item.target)
        if why is not None:
            raise _Refusal(item.step, why)
    if mine and panel is not None:
        others = await panel.of_others(service_id)
        for item in mine:
            item.taken = await asyncio.to_thread(ancestry, item.target)
            for other, other_id in others:
                if lexically_overlaps(item.target, other) or (
                    other_id is not None and other_id in item.taken
                ):
                    raise _Refusal(
                        item.step, f"{item.label} is shared with another service ({other!r})"
                    )
        paths.protected = frozenset(other_id for _, other_id in others if other_id is not None)
    if walk_threads is not None:
        walker = Walker(walk_threads, paths.protected)
        for item in mine:
            if os.path.isdir(item.target) and not os.path.islink(item.target):
                try:
                    await walker.count(item.target, lambda _: ())
                except UnsafePath as err:
                    raise _Refusal(item.step, f"{item.label}: {err}") from None
    return paths


class PreflightActivities:
    """The preflight as its own step: it stats and walks the service's trees, so it runs
    on the server that holds them (`bajas worker --node`), right before billing closes."""

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
        self.roots = {Step.FILES: hosting_root, Step.MAILBOXES: mail_root}
        self.panel = panel
        self.threads = threads

    @activity.defn(name="preflight_paths")
    async def preflight_paths(self, data: PreflightInput) -> PreflightResult:
        """Every path inside its root, on no other mount, shared with no other service:
        billing closes only when the data can go too. PathRefused names the step."""
        paths = await check_paths(
            self.pool, data.service_id, self.roots, self.panel, walk=True, threads=self.threads
        )
        return PreflightResult(paths=len(paths.maildirs) + (paths.document_root is not None))
