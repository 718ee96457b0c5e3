"""`cron`: a system user's crontab, removed before the files so that no job runs a
half-deleted site; gone when `crontab -l` says the user has none and its spool file
(CRON_SPOOL_DIR, Debian's `/var/spool/cron/crontabs`) is absent. Its jobs still running
(the user's processes a cron daemon started) are ended too, so that "las tareas
programadas se detienen" holds before the files go; its other processes are left to
`system_user`."""

from __future__ import annotations

import asyncio
import os
from functools import partial
from pathlib import Path
from typing import ClassVar

from activities.kinds._common import (
    account,
    one_line,
    program_error,
    run,
    uid_error,
    user_name_error,
)
from activities.kinds.base import FILES, Measure, Removal, ResourceKind, ResourceRefused
from activities.kinds.processes import cron_jobs_of, end_processes
from bajas.models import ResourceContext, ResourceRef

NONE = "no crontab for"


class Cron(ResourceKind):
    kind = "cron"
    settings: ClassVar[tuple[str, ...]] = ("CRON_SPOOL_DIR",)
    before = frozenset({FILES})

    def configuration_error(self) -> str | None:
        return program_error("crontab", ["crontab"])

    def name_error(self, name: str) -> str | None:
        return user_name_error(name)

    async def inventory(self, resource: ResourceRef, context: ResourceContext) -> Measure:
        table = await self._table(resource.name)
        if table is None:
            return Measure()
        lines = [
            line
            for line in table.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        return Measure(bytes=len(table.encode()), items=len(lines))

    async def preflight(self, resource: ResourceRef, context: ResourceContext) -> None:
        uid = _uid(resource.name)
        problem = uid_error(uid) if uid is not None else None
        if problem is not None:
            raise ResourceRefused(problem)

    async def delete(self, resource: ResourceRef, context: ResourceContext) -> Removal:
        measure = await self.inventory(resource, context)
        if _uid(resource.name) is not None:
            ran = await run(["crontab", "-u", resource.name, "-r"])
            if not ran.ok and NONE not in ran.output:
                raise ResourceRefused(
                    f"crontab -u {resource.name} -r failed: {one_line(ran.output)}"
                )
        # A user already removed keeps its spool file, which crontab no longer reaches.
        await asyncio.to_thread(self._spool(resource.name).unlink, missing_ok=True)
        uid = _uid(resource.name)
        ended = (
            await asyncio.to_thread(end_processes, partial(cron_jobs_of, uid))
            if uid is not None
            else 0
        )
        note = f"ended {ended} running cron job processes" if ended else None
        return Removal(bytes=measure.bytes, items=measure.items, detail=note)

    async def verify(self, resource: ResourceRef, context: ResourceContext) -> str | None:
        if os.path.lexists(self._spool(resource.name)):
            return f"{self._spool(resource.name)} is still there"
        if await self._table(resource.name) is not None:
            return f"crontab -u {resource.name} -l still lists a crontab"
        uid = _uid(resource.name)
        running = await asyncio.to_thread(cron_jobs_of, uid) if uid is not None else []
        if running:
            return f"{len(running)} cron job processes of the user still running"
        return None

    def _spool(self, name: str) -> Path:
        return Path(self.env.get("CRON_SPOOL_DIR") or "/var/spool/cron/crontabs") / name

    async def _table(self, name: str) -> str | None:
        """The crontab, None when the user has none (or no longer exists)."""
        if _uid(name) is None:
            spool = self._spool(name)
            return spool.read_text(errors="replace") if spool.is_file() else None
        ran = await run(["crontab", "-u", name, "-l"])
        if ran.ok:
            return ran.output
        if NONE in ran.output:
            return None
        raise ResourceRefused(f"crontab -u {name} -l failed: {one_line(ran.output)}")


def _uid(name: str) -> int | None:
    user = account(name)
    return user.pw_uid if user is not None else None
