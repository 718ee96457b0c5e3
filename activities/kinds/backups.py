"""`backup_directory` (contract section 9): a folder of the service's backups strictly
under BACKUP_ROOT, counted and deleted by the deletion engine (activities/deletion.py),
so it gets the same guarantees as the site's files: no link followed, no other mount
entered, nothing outside the root."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import ClassVar

from activities.deletion import count_tree, delete_tree, mounts_below, remaining, shown
from activities.kinds.base import Measure, Removal, ResourceKind, ResourceRefused
from activities.paths import UnsafePath, checked_target, lexically_overlaps
from bajas.models import ResourceContext, ResourceRef

ROOT = "BACKUP_ROOT"
DEFAULT_ROOT = "./.bajas/backups"


class BackupDirectory(ResourceKind):
    kind = "backup_directory"
    settings: ClassVar[tuple[str, ...]] = (ROOT, "DELETE_THREADS")

    @property
    def root(self) -> Path:
        return Path(self.env.get(ROOT) or DEFAULT_ROOT).absolute()

    @property
    def threads(self) -> int:
        value = self.env.get("DELETE_THREADS", "")
        return int(value) if value.isdigit() and int(value) > 0 else 4

    def name_error(self, name: str) -> str | None:
        if not os.path.isabs(name) or os.path.normpath(name) != name.rstrip("/") or "//" in name:
            return "not an absolute, normalised path"
        root = os.path.normpath(str(self.root))
        if not name.startswith(root.rstrip("/") + "/"):
            return f"not strictly under {ROOT} ({root})"
        return None

    def target(self, resource: ResourceRef, context: ResourceContext) -> str:
        """The folder on disk, links resolved: strictly under the root, and neither the
        service's document root or maildirs nor inside them (they have steps of their own)."""
        try:
            target = checked_target(resource.name, self.root, what=self.kind)
        except UnsafePath as err:
            raise ResourceRefused(str(err)) from None
        for path in [context.document_root, *context.maildirs]:
            if path and lexically_overlaps(target, path):
                raise ResourceRefused(f"{shown(target)} overlaps {shown(path)}")
        return target

    async def inventory(self, resource: ResourceRef, context: ResourceContext) -> Measure:
        count = await asyncio.to_thread(count_tree, self.target(resource, context), self.threads)
        return Measure(bytes=count.bytes, items=count.files)

    async def preflight(self, resource: ResourceRef, context: ResourceContext) -> None:
        target = self.target(resource, context)
        mounts = await asyncio.to_thread(
            lambda: mounts_below(target) if os.path.lexists(target) else []
        )
        if mounts:
            raise ResourceRefused(f"{shown(mounts[0])} is a mount point below it")

    async def delete(self, resource: ResourceRef, context: ResourceContext) -> Removal:
        target = self.target(resource, context)
        try:
            done = await asyncio.to_thread(delete_tree, target, self.threads)
        except UnsafePath as err:
            raise ResourceRefused(str(err)) from None
        return Removal(bytes=done.bytes, items=done.files)

    async def verify(self, resource: ResourceRef, context: ResourceContext) -> str | None:
        left = await asyncio.to_thread(remaining, self.target(resource, context), self.threads)
        if left is not None:
            return f"{left.files} file(s) and {left.dirs} folder(s) are still there"
        return None
