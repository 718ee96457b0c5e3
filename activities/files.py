"""Deleting a site's document root: checked first, then removed with heartbeats.

The walk runs in a thread; the activity heartbeats its progress from the event loop,
and the workflow hands the last progress to the next attempt, so that one counts on
from where the last got to and walks only what is left.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import asyncpg
from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.audit import record_work
from activities.safety import check_paths
from bajas.models import FilesInput, FilesProgress, FilesResult, Step

HEARTBEAT_EVERY = 1.0


class _Progress:
    """Shared between the deleting thread and the heartbeating loop."""

    def __init__(self) -> None:
        self.files = 0
        self.dirs = 0
        self.stop = threading.Event()


class Cancelled(Exception):
    pass


def remove_tree(top: str, progress: _Progress) -> None:
    """Depth-first unlink of everything below `top`, then `top` itself; never follows links."""

    def clear(path: str) -> None:
        with os.scandir(path) as it:
            entries = list(it)
        for entry in entries:
            if progress.stop.is_set():
                raise Cancelled
            if entry.is_dir(follow_symlinks=False):
                clear(entry.path)
                os.rmdir(entry.path)
                progress.dirs += 1
            else:
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    pass
                progress.files += 1

    clear(top)
    os.rmdir(top)


class FilesActivities:
    """Deletes document roots below HOSTING_ROOT, nowhere else."""

    def __init__(self, pool: asyncpg.Pool, hosting_root: Path) -> None:
        self.pool = pool
        self.hosting_root = hosting_root

    @activity.defn(name="delete_files")
    async def delete_files(self, data: FilesInput) -> FilesResult:
        """One attempt. Where an earlier one got to arrives in `data.resume` (the
        workflow runs the attempts); a failure carries where this one got to."""
        paths = await check_paths(self.pool, data.service_id, {Step.FILES: self.hosting_root})
        target = paths.document_root
        previous = data.resume or _previous_progress()
        # What earlier attempts deleted is gone from disk but still counts as done.
        already = previous.total - paths.files if previous is not None else 0
        total = already + paths.files
        progress = _Progress()
        try:
            if target is not None and os.path.lexists(target):
                await _remove_with_heartbeats(target, progress, total, already)
            deleted = already + progress.files
            await record_work(
                self.pool,
                data,
                "files_deleted",
                {"files_deleted": deleted, "dirs_deleted": progress.dirs, "resumed_from": already},
            )
        except Exception as err:
            # The next attempt is a new execution: it counts on from what this one deleted.
            deleted = already + progress.files
            raise ApplicationError(
                f"stopped after {deleted} of {total} files",
                FilesProgress(total=total, deleted=deleted),
                type="DeletionStopped",
            ) from err
        return FilesResult(files_deleted=deleted, dirs_deleted=progress.dirs, resumed_from=already)


async def _remove_with_heartbeats(
    target: str, progress: _Progress, total: int, already: int
) -> None:
    """Delete in a thread and heartbeat from here; a cancellation stops the thread."""
    activity.heartbeat(FilesProgress(total=total, deleted=already))
    work = asyncio.create_task(asyncio.to_thread(remove_tree, target, progress))
    try:
        while not work.done():
            await asyncio.wait({work}, timeout=HEARTBEAT_EVERY)
            activity.heartbeat(FilesProgress(total=total, deleted=already + progress.files))
        await work
    except asyncio.CancelledError:
        progress.stop.set()
        await asyncio.wait({work})
        raise


def _previous_progress() -> FilesProgress | None:
    """The last heartbeat of an earlier attempt retried by the server: only activities
    scheduled before the workflow ran the attempts itself get one."""
    details = activity.info().heartbeat_details
    if not details:
        return None
    try:
        return FilesProgress.model_validate(details[0])
    except ValidationError:
        return None
