"""Kinds whose resource is a server's configuration file (nginx sites, PHP-FPM pools):
removed, the configuration tested and the server reloaded; a test or a reload that fails
puts the removed files back exactly and stops the step with the error in one line, so a
web server is never left unable to restart.

"Removed" is first a move into a stash beside the configuration folders
(`.bajas-removed/NAME/` in their parent, e.g. /etc/nginx/.bajas-removed, which no server
includes): a rename keeps the file as it was (content, owner, mode, times, link target),
and a worker that crashes between the removal and the reload finds it there on the next
attempt, to put back if the test fails then. The stash goes once the reload passed."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
from abc import abstractmethod
from collections.abc import Mapping
from pathlib import Path

from activities.kinds._common import file_name_error, folder_error, one_line, program_error, run
from activities.kinds.base import Measure, NotConfigured, Removal, ResourceKind, ResourceRefused
from bajas.models import ResourceContext, ResourceRef

STASH = ".bajas-removed"


class ReloadedConfigKind(ResourceKind):
    """A file per place (`places`); gone when absent from each and a reload that passed
    has happened since (remembered by this worker: `verify` follows `delete`)."""

    server_label: str

    def __init__(self, env: Mapping[str, str]) -> None:
        super().__init__(env)
        self._reloaded: set[str] = set()

    @abstractmethod
    def folders(self) -> dict[str, Path]:
        """Each folder setting and the folder it names; a file per folder."""

    @abstractmethod
    def commands(self) -> dict[str, list[str] | None]:
        """The test (None when not configured) and the reload, by setting; in order."""

    def places(self, name: str) -> list[Path]:
        return [folder / name for folder in self.folders().values()]

    def configuration_error(self) -> str | None:
        try:
            commands = self.commands()
        except NotConfigured as err:
            return str(err)
        for setting, folder in self.folders().items():
            problem = folder_error(setting, folder)
            if problem is not None:
                return problem
        for setting, words in commands.items():
            problem = program_error(setting, words) if words is not None else None
            if problem is not None:
                return problem
        return None

    def name_error(self, name: str) -> str | None:
        return file_name_error(name)

    def _stashed(self, name: str) -> list[tuple[Path, Path]]:
        """Each place with where its file waits while the server is tested and reloaded."""
        places = self.places(name)
        stash = places[0].parent.parent / STASH / self.kind / name
        return [(place, stash / str(n)) for n, place in enumerate(places)]

    async def inventory(self, resource: ResourceRef, context: ResourceContext) -> Measure:
        return _measure(self.places(resource.name))

    async def preflight(self, resource: ResourceRef, context: ResourceContext) -> None:
        problem = self.configuration_error()
        if problem is not None:
            raise NotConfigured(problem)

    async def delete(self, resource: ResourceRef, context: ResourceContext) -> Removal:
        commands = self.commands()
        self._reloaded.discard(resource.name)
        pairs = self._stashed(resource.name)
        await asyncio.to_thread(_stash, pairs)
        measure = _measure([kept for _, kept in pairs])
        for words in commands.values():
            if words is None:
                continue
            ran = await run(words)
            if not ran.ok:
                put_back = await asyncio.to_thread(_put_back, pairs)
                kept = "its files put back" if put_back else "none of its files was left"
                raise ResourceRefused(
                    f"{shlex.join(words)} failed without {resource.name} ({kept}):"
                    f" {one_line(ran.output) or f'exit {ran.code}'}"
                )
        await asyncio.to_thread(shutil.rmtree, pairs[0][1].parent, ignore_errors=True)
        self._reloaded.add(resource.name)
        return Removal(bytes=measure.bytes, items=measure.items)

    async def verify(self, resource: ResourceRef, context: ResourceContext) -> str | None:
        left = [str(p) for p in self.places(resource.name) if os.path.lexists(p)]
        if left:
            return f"still present: {', '.join(left)}"
        if resource.name not in self._reloaded:
            return f"{self.server_label} has not been reloaded since it was removed"
        return None


def _measure(paths: list[Path]) -> Measure:
    """The bytes of the files among `paths` (links count as items, not bytes)."""
    present = [p for p in paths if os.path.lexists(p)]
    if not present:
        return Measure()
    size = sum(p.lstat().st_size for p in present if not p.is_symlink())
    return Measure(bytes=size, items=len(present))


def _stash(pairs: list[tuple[Path, Path]]) -> None:
    for place, kept in pairs:
        if os.path.lexists(place):
            kept.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if os.path.lexists(kept):  # an older attempt's, the place made again since
                kept.unlink()
            shutil.move(place, kept)


def _put_back(pairs: list[tuple[Path, Path]]) -> int:
    """Move every stashed file back where it was; how many."""
    moved = 0
    for place, kept in pairs:
        if os.path.lexists(kept) and not os.path.lexists(place):
            shutil.move(kept, place)
            moved += 1
    shutil.rmtree(pairs[0][1].parent, ignore_errors=True)
    return moved
