"""Kinds whose resource is a server's configuration file (nginx sites, PHP-FPM pools):
removed, the configuration tested and the server reloaded; a test or a reload that fails
puts the removed files back exactly and stops the step with the error in one line, so a
web server is never left unable to restart."""

from __future__ import annotations

import asyncio
import os
import shlex
import stat
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from activities.kinds._common import file_name_error, one_line, run
from activities.kinds.base import Measure, Removal, ResourceKind, ResourceRefused
from bajas.models import ResourceContext, ResourceRef


@dataclass(frozen=True)
class _Removed:
    """One removed file as it was, enough to put it back: a link's target, or a file's
    bytes, mode, owner and times."""

    path: Path
    link: str | None
    content: bytes
    mode: int
    uid: int
    gid: int
    times: tuple[int, int]

    @classmethod
    def take(cls, path: Path) -> _Removed:
        info = path.lstat()
        link = os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
        content = b"" if link is not None else path.read_bytes()
        return cls(
            path,
            link,
            content,
            stat.S_IMODE(info.st_mode),
            info.st_uid,
            info.st_gid,
            (info.st_atime_ns, info.st_mtime_ns),
        )

    def put_back(self) -> None:
        if self.link is not None:
            os.symlink(self.link, self.path)
        else:
            self.path.write_bytes(self.content)
            os.chmod(self.path, self.mode)
        os.chown(self.path, self.uid, self.gid, follow_symlinks=False)
        if self.link is None:
            os.utime(self.path, ns=self.times)


class ReloadedConfigKind(ResourceKind):
    """A file per place (`places`); gone when absent from each and a reload that passed
    has happened since (remembered by this worker: `verify` follows `delete`)."""

    server_label: str

    def __init__(self, env: Mapping[str, str]) -> None:
        super().__init__(env)
        self._reloaded: set[str] = set()

    @abstractmethod
    def places(self, name: str) -> list[Path]:
        """Where the resource's files live (a folder per setting)."""

    @abstractmethod
    def test_command(self) -> list[str] | None:
        """The configuration test, or None when the kind has none configured."""

    @abstractmethod
    def reload_command(self) -> list[str]:
        """The reload; NotConfigured when it cannot be had."""

    def name_error(self, name: str) -> str | None:
        return file_name_error(name)

    async def inventory(self, resource: ResourceRef, context: ResourceContext) -> Measure:
        present = [p for p in self.places(resource.name) if p.is_file() and not p.is_symlink()]
        if not present:
            return Measure()
        return Measure(bytes=sum(p.stat().st_size for p in present), items=len(present))

    async def preflight(self, resource: ResourceRef, context: ResourceContext) -> None:
        self.reload_command()
        self.test_command()

    async def delete(self, resource: ResourceRef, context: ResourceContext) -> Removal:
        test, reload = self.test_command(), self.reload_command()
        self._reloaded.discard(resource.name)
        removed = await asyncio.to_thread(self._remove, resource.name)
        for words, what in ((test, "refuses the configuration"), (reload, "failed")):
            if words is None:
                continue
            ran = await run(words)
            if not ran.ok:
                await asyncio.to_thread(self._put_back, removed)
                kept = "its files put back" if removed else "nothing was removed"
                raise ResourceRefused(
                    f"{shlex.join(words)} {what} without {resource.name} ({kept}):"
                    f" {one_line(ran.output) or f'exit {ran.code}'}"
                )
        self._reloaded.add(resource.name)
        size = sum(len(r.content) for r in removed if r.link is None)
        return Removal(bytes=size if removed else None, items=len(removed) or None)

    async def verify(self, resource: ResourceRef, context: ResourceContext) -> str | None:
        left = [str(p) for p in self.places(resource.name) if os.path.lexists(p)]
        if left:
            return f"still present: {', '.join(left)}"
        if resource.name not in self._reloaded:
            return f"{self.server_label} has not been reloaded since it was removed"
        return None

    def _remove(self, name: str) -> list[_Removed]:
        removed = []
        for path in self.places(name):
            if os.path.lexists(path):
                removed.append(_Removed.take(path))
                path.unlink()
        return removed

    @staticmethod
    def _put_back(removed: list[_Removed]) -> None:
        for item in removed:
            if not os.path.lexists(item.path):
                item.put_back()
