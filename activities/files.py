"""Deleting a site's document root: checked, counted, removed, and proven gone.

One attempt: the paths are checked again; the engine counts what is there (the
inventory at deletion time, which the audit line reports), deletes it, and checks that
the document root is gone, walking it again while it is not (a cron job writing into
it meanwhile). The check lives here, at the end of the attempt, because it must run
where the files are. The walks run in threads; their progress is heartbeated from the
event loop, and the workflow hands the last progress to the next attempt, so that one
counts on from where the last got to and walks only what is left.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.audit import record_work
from activities.deletion import TreeCount, TreeError
from activities.errors import path_refused
from activities.paths import UnsafePath
from activities.safety import PanelPaths, check_paths
from activities.walks import Deleted, Walker
from bajas.models import FilesInput, FilesProgress, FilesResult, FilesSizes, Step


class FilesActivities:
    """Deletes document roots below HOSTING_ROOT, nowhere else. `node` names the hosting
    server this worker runs on (None: a central worker), for the audit trail."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        hosting_root: Path,
        *,
        panel: PanelPaths | None = None,
        threads: int = 4,
        node: str | None = None,
    ) -> None:
        self.pool = pool
        self.hosting_root = hosting_root
        self.panel = panel or PanelPaths(pool)
        self.threads = threads
        self.node = node

    @activity.defn(name="delete_files")
    async def delete_files(self, data: FilesInput) -> FilesResult:
        """One attempt. Where an earlier one got to arrives in `data.resume` (the
        workflow runs the attempts); a failure carries where this one got to."""
        paths = await check_paths(
            self.pool, data.service_id, {Step.FILES: self.hosting_root}, self.panel
        )
        walker = Walker(self.threads, paths.protected)
        target = paths.document_root
        previous, sizes = _previous(data)
        # Until this attempt has counted, a failure hands on what the last one handed.
        handed: tuple[FilesProgress | FilesSizes, ...] = tuple(
            d for d in (previous, sizes) if d is not None
        )
        before = _Before.empty()
        try:
            if target is not None:
                found = await walker.count(target, lambda _: handed or None, quiet=True)
                before = _Before.of(found, previous, sizes)
                handed = before.details()
                activity.heartbeat(*handed)
                gone = await walker.delete_until_gone(
                    target, lambda count: before.details(count.files)
                )
            else:
                gone = Deleted(TreeCount(), 0)
            handed = before.details(gone.count.files)
            activity.heartbeat(*handed)
            deleted = before.plus(gone.count)
            await record_work(
                self.pool,
                data,
                "files_deleted",
                {
                    "files": deleted.files,
                    "bytes": deleted.bytes,
                    "dirs": deleted.dirs,
                    "resumed_from": before.already.files,
                    "walks": gone.walks,
                    "node": self.node,
                },
            )
        except UnsafePath as err:
            raise path_refused(str(err), Step.FILES) from None
        except Exception as err:
            # The next attempt is a new execution: it counts on from what this one got to.
            raise ApplicationError(
                f"deletion stopped, {before.total} files in all",
                *handed,
                type="DeletionStopped",
            ) from _plain(err)
        return FilesResult(
            files_deleted=deleted.files,
            dirs_deleted=deleted.dirs,
            bytes_deleted=deleted.bytes,
            resumed_from=before.already.files,
            walks=gone.walks,
            verified=True,
        )


class _Before:
    """The tree as it was before its deletion began: what earlier attempts deleted
    (`already`, told apart from what is still there by counting it now) plus what is
    there now."""

    def __init__(self, already: TreeCount, found: TreeCount) -> None:
        self.already = already
        self.found = found
        self.total = already.files + found.files

    @classmethod
    def empty(cls) -> _Before:
        return cls(TreeCount(), TreeCount())

    @classmethod
    def of(
        cls, found: TreeCount, previous: FilesProgress | None, sizes: FilesSizes | None
    ) -> _Before:
        if previous is None:
            return cls(TreeCount(), found)
        sizes = sizes or FilesSizes()
        already = TreeCount(
            files=max(previous.total - found.files, 0),
            bytes=max(sizes.bytes - found.bytes, 0),
            dirs=max(sizes.dirs - found.dirs, 0),
        )
        return cls(already, found)

    def plus(self, count: TreeCount) -> TreeCount:
        return TreeCount(
            self.already.files + count.files,
            self.already.bytes + count.bytes,
            self.already.dirs + count.dirs,
        )

    def details(self, deleted_now: int = 0) -> tuple[FilesProgress, FilesSizes]:
        """The heartbeat (and failure) details: progress, then the sizes before."""
        return (
            FilesProgress(total=self.total, deleted=self.already.files + deleted_now),
            FilesSizes(
                bytes=self.already.bytes + self.found.bytes,
                dirs=self.already.dirs + self.found.dirs,
            ),
        )


def _previous(data: FilesInput) -> tuple[FilesProgress | None, FilesSizes | None]:
    """Where an earlier attempt got to: handed over by the workflow, or the last
    heartbeat of an attempt retried by the server (only activities scheduled before the
    workflow ran the attempts itself get one)."""
    if data.resume is not None:
        return data.resume, data.resume_sizes
    resumed = data.resumed(activity.info().heartbeat_details)
    return resumed.resume, resumed.resume_sizes


def _plain(err: Exception) -> Exception:
    """The cause a failed attempt shows in one line: for entries that could not be
    deleted, the first one's error with its whole path ("PermissionError: [Errno 1]
    Operation not permitted: '…/locked.php'")."""
    if isinstance(err, TreeError):
        return type(err.first)(err.first.errno, err.first.strerror, err.path)
    return err
