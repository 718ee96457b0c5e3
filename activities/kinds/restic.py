"""`restic_snapshots` (contract section 9): every snapshot with the service's tag in the
repository RESTIC_REPOSITORY, forgotten, then the repository pruned.

A prune rewrites packs shared with every other service's snapshots and holds the
repository's exclusive lock, so the prunes of several cancellations on one repository
are batched within RESTIC_PRUNE_WITHIN (0: each prunes at once). The batch is kept in a
small state file beside the password file, `RESTIC_PASSWORD_FILE.prune.json`, under an
flock of its own:

- `forgotten`: each tag and when its snapshots were forgotten;
- `pending_since`: the first forget no prune has covered yet;
- `pruned_at`: when the last completed prune started (it covers every forget before);
- `prunes`: how many prunes bajas ran on the repository.

A step forgets its tag's snapshots, then waits (heartbeating) until `pending_since +
RESTIC_PRUNE_WITHIN`; the first step that gets there prunes for all of them, and the
others find `pruned_at` past their forget. The tag is gone when `restic snapshots --tag
TAG` lists none and a prune has started since its forget.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from temporalio import activity

from activities.kinds.base import Measure, NotConfigured, Removal, ResourceKind, ServerUnavailable
from activities.kinds.common import duration
from bajas.models import ResourceContext, ResourceRef

REPOSITORY, PASSWORD_FILE, PRUNE_WITHIN = (
    "RESTIC_REPOSITORY",
    "RESTIC_PASSWORD_FILE",
    "RESTIC_PRUNE_WITHIN",
)
MAX_PRUNE_WITHIN = timedelta(hours=24)
_TAG = re.compile(r"[A-Za-z0-9_.:@+=-]{1,200}")
_UNREACHABLE = ("unable to open", "connection refused", "no such host", "timeout", "dial tcp")


class ResticSnapshots(ResourceKind):
    kind = "restic_snapshots"
    settings: ClassVar[tuple[str, ...]] = (REPOSITORY, PASSWORD_FILE, PRUNE_WITHIN)
    # The other steps may still write backups of the site until they are done.
    after = frozenset({"files", "backup_directory"})
    # Seconds between heartbeats (and looks at the state) while a batched prune is due later.
    wait_step = 15.0

    def configuration_error(self) -> str | None:
        for variable in (REPOSITORY, PASSWORD_FILE):
            if not self.env.get(variable, "").strip():
                return f"{variable} is not set"
        try:
            within = self.prune_within
        except NotConfigured as err:
            return str(err)
        if not timedelta(0) <= within <= MAX_PRUNE_WITHIN:
            return f"{PRUNE_WITHIN} must be between 0 and 24 hours"
        return None

    def name_error(self, name: str) -> str | None:
        if not _TAG.fullmatch(name):
            return "not a restic tag this kind accepts (letters, digits, _ . : @ + = -; no comma)"
        return None

    @property
    def prune_within(self) -> timedelta:
        return duration(self.env, PRUNE_WITHIN, timedelta(0))

    @property
    def state_file(self) -> Path:
        return Path(self.env[PASSWORD_FILE] + ".prune.json")

    async def inventory(self, resource: ResourceRef, context: ResourceContext) -> Measure:
        """The tag's snapshots, and the bytes of the repository's data they reference."""
        return await self._measure(resource.name, await self.snapshots(resource.name))

    async def preflight(self, resource: ResourceRef, context: ResourceContext) -> None:
        await self.snapshots(resource.name)

    async def delete(self, resource: ResourceRef, context: ResourceContext) -> Removal:
        """Forget the tag's snapshots and see them pruned. The size is the inventory's
        business: what a prune frees is less (packs shared with other services stay)."""
        # Forgets and prunes take the repository's exclusive lock: the state's flock keeps
        # this server's steps from running them at the same time.
        async with self._state() as state:
            snapshots = await self.snapshots(resource.name)
            if snapshots:
                now = _now()
                at_once = self.prune_within == timedelta(0)
                await self.restic("forget", *(["--prune"] if at_once else []), *snapshots)
                state["forgotten"][resource.name] = now.isoformat()
                if at_once:  # the prune ran after the forget, in the same command
                    state["pruned_at"] = now.isoformat()
                    state["prunes"] = state.get("prunes", 0) + 1
                else:
                    state["pending_since"] = state["pending_since"] or now.isoformat()
        await self._pruned_since_forget(resource.name)
        return Removal(items=len(snapshots))

    async def _measure(self, tag: str, snapshots: list[str]) -> Measure:
        if not snapshots:
            return Measure(bytes=0, items=0)
        stats = json.loads(await self.restic("stats", "--json", "--mode", "raw-data", "--tag", tag))
        return Measure(bytes=int(stats.get("total_size", 0)), items=len(snapshots))

    async def verify(self, resource: ResourceRef, context: ResourceContext) -> str | None:
        if left := await self.snapshots(resource.name):
            return f"restic still lists {len(left)} snapshot(s) with the tag {resource.name}"
        async with self._state() as state:
            if not _covered(state, resource.name):
                return f"no prune has run since the snapshots of {resource.name} were forgotten"
        return None

    async def snapshots(self, tag: str) -> list[str]:
        listed = json.loads(await self.restic("snapshots", "--json", "--tag", tag) or "[]")
        return [str(s["id"]) for s in listed or []]

    async def _pruned_since_forget(self, tag: str) -> None:
        """Until a prune has started since the tag's forget: the one due first runs it."""
        while True:
            async with self._state() as state:
                if _covered(state, tag):
                    return
                due = datetime.fromisoformat(state["pending_since"]) + self.prune_within
                if _now() >= due:
                    started = _now()
                    await self.restic("prune")
                    state["pruned_at"] = started.isoformat()
                    state["pending_since"] = None
                    state["prunes"] = state.get("prunes", 0) + 1
                    return
            wait = min(self.wait_step, (due - _now()).total_seconds())
            if activity.in_activity():
                activity.heartbeat(f"restic prune batched until {due.isoformat()}")
            await asyncio.sleep(max(wait, 0.05))

    @asynccontextmanager
    async def _state(self) -> AsyncIterator[dict[str, Any]]:
        """The batch's state, read and written back under an exclusive flock (held during
        a prune too, so two workers of one server never prune at the same time); taken in
        a thread, so a step waiting for it never blocks the worker's event loop."""
        path = self.state_file
        with open(str(path) + ".lock", "a") as lock:
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
            try:
                state: dict[str, Any] = {"forgotten": {}, "pending_since": None, "pruned_at": None}
                if path.exists():
                    state.update(json.loads(path.read_text() or "{}"))
                before = json.dumps(state, sort_keys=True)
                yield state
                if json.dumps(state, sort_keys=True) != before:
                    tmp = path.with_name(path.name + ".tmp")
                    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
                    os.replace(tmp, path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    async def restic(self, *args: str) -> str:
        """Run restic with this worker's RESTIC_* settings; its standard output."""
        proc = await asyncio.create_subprocess_exec(
            "restic",
            "--quiet",
            "--no-lock" if args[0] in ("snapshots", "stats") else "--cleanup-cache",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **self.env},
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            last = lines[-1] if lines else f"exit status {proc.returncode}"
            where = f"the restic repository {self.env[REPOSITORY]}"
            if "already locked" in last or any("already locked" in x for x in lines):
                raise ServerUnavailable(f"{where} is locked by another restic")
            if any(word in last.lower() for word in _UNREACHABLE):
                raise ServerUnavailable(f"{where} is not answering ({last})")
            raise RuntimeError(f"restic {args[0]}: {last}")
        return out.decode()


def _covered(state: dict[str, Any], tag: str) -> bool:
    forgotten = state["forgotten"].get(tag)
    pruned = state["pruned_at"]
    if forgotten is None:
        return True
    return pruned is not None and datetime.fromisoformat(pruned) >= datetime.fromisoformat(
        forgotten
    )


def _now() -> datetime:
    return datetime.now(UTC)
