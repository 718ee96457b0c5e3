"""`system_user`: the service's system user, removed after every other step. Its
processes are ended (SIGTERM, then SIGKILL), then `userdel` removes the account (not
its files: the files step deleted what the service owned). Files it still owns outside
the service's folders are reported in the step's detail and the receipt, never deleted:
the search covers its home (under HOSTING_ROOT, kept by `userdel`), /tmp, /var/tmp and
/dev/shm, up to SEARCH_LIMIT entries: the rest of HOSTING_ROOT is other customers'.

The uid is never to be handed out again: docs/FOOTPRINT.md says how operators keep it so."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import ClassVar

from activities.kinds._common import (
    account,
    folder_error,
    one_line,
    program_error,
    run,
    uid_error,
    user_name_error,
)
from activities.kinds.base import EVERYTHING, Measure, Removal, ResourceKind, ResourceRefused
from activities.kinds.processes import end_processes, processes_of
from bajas.config import STATE_DIR
from bajas.models import ResourceContext, ResourceRef

SHARED_ROOTS = ("/tmp", "/var/tmp", "/dev/shm")
SEARCH_LIMIT = 200_000
SHOWN = 5
ROUNDS = 3
USER_BUSY = 8  # userdel: the user is logged in (has processes)


def owned_files(uid: int, roots: list[Path], skip: list[Path]) -> tuple[list[str], int, bool]:
    """Paths under `roots` owned by `uid`, not under `skip`: (first SHOWN, count, whether
    the search stopped at SEARCH_LIMIT). Symbolic links are not followed."""
    # A root inside another (a home under /tmp) is searched once, as itself.
    skipped = {str(p) for p in [*skip, *roots]}

    def paths() -> Iterator[str]:
        for root in roots:
            yield str(root)
            for top, dirs, files in os.walk(root):
                dirs[:] = [d for d in dirs if os.path.join(top, d) not in skipped]
                yield from (os.path.join(top, name) for name in (*dirs, *files))

    shown: list[str] = []
    count = 0
    for seen, path in enumerate(paths(), 1):
        if seen > SEARCH_LIMIT:
            return shown, count, True
        try:
            owner = os.lstat(path).st_uid
        except OSError:
            continue  # removed meanwhile
        if owner == uid:
            count += 1
            if len(shown) < SHOWN:
                shown.append(path)
    return shown, count, False


class SystemUser(ResourceKind):
    kind = "system_user"
    settings: ClassVar[tuple[str, ...]] = ("HOSTING_ROOT",)
    after = frozenset({EVERYTHING})

    def __init__(self, env: Mapping[str, str]) -> None:
        super().__init__(env)
        self._uids: dict[str, int] = {}

    def _hosting_root(self) -> Path:
        return Path(self.env.get("HOSTING_ROOT") or STATE_DIR / "www").resolve()

    def configuration_error(self) -> str | None:
        return folder_error("HOSTING_ROOT", self._hosting_root()) or program_error(
            "userdel", ["userdel"]
        )

    def name_error(self, name: str) -> str | None:
        return user_name_error(name)

    async def inventory(self, resource: ResourceRef, context: ResourceContext) -> Measure:
        user = account(resource.name)
        if user is None:
            return Measure()
        return Measure(items=len(await asyncio.to_thread(processes_of, user.pw_uid)))

    async def preflight(self, resource: ResourceRef, context: ResourceContext) -> None:
        user = account(resource.name)
        if user is None:
            return
        problem = uid_error(user.pw_uid)
        if problem is not None:
            raise ResourceRefused(problem)
        home, root = Path(user.pw_dir).resolve(), self._hosting_root()
        if root not in home.parents:
            raise ResourceRefused(f"its home {user.pw_dir} is not under HOSTING_ROOT ({root})")

    async def delete(self, resource: ResourceRef, context: ResourceContext) -> Removal:
        user = account(resource.name)
        if user is None:
            return Removal()
        uid = self._uids[resource.name] = user.pw_uid
        ended = 0
        for _ in range(ROUNDS):
            ended += await asyncio.to_thread(end_processes, partial(processes_of, uid))
            ran = await run(["userdel", resource.name])
            if ran.ok or account(resource.name) is None:
                break
            if ran.code != USER_BUSY:
                raise ResourceRefused(f"userdel {resource.name} failed: {one_line(ran.output)}")
        skip = [Path(p).resolve() for p in [context.document_root, *context.maildirs] if p]
        roots = [r for r in [Path(user.pw_dir), *map(Path, SHARED_ROOTS)] if r.is_dir()]
        shown, count, stopped = await asyncio.to_thread(owned_files, uid, roots, skip)
        return Removal(items=ended, detail=_owned_note(uid, shown, count, stopped, roots))

    async def verify(self, resource: ResourceRef, context: ResourceContext) -> str | None:
        if account(resource.name) is not None:
            return "the user still exists"
        uid = self._uids.get(resource.name)
        left = await asyncio.to_thread(processes_of, uid) if uid is not None else []
        return f"{len(left)} processes of uid {uid} still running" if left else None


def _owned_note(
    uid: int, shown: list[str], count: int, stopped: bool, roots: list[Path]
) -> str | None:
    """The receipt's line about what the removed uid still owns (left in place)."""
    where = ", ".join(map(str, roots))
    more = f" (search stopped after {SEARCH_LIMIT} entries of {where})" if stopped else ""
    if not count:
        return f"no file of uid {uid} left in {where}{more}" if stopped else None
    listed = ", ".join(shown) + (", …" if count > len(shown) else "")
    return f"{count} files of uid {uid} left in place, not deleted: {listed}{more}"
