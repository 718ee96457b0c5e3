"""The deletion engine (activities/deletion.py) run from an activity: in a thread, its
`Progress` heartbeated from the event loop, stopped at a safe point by a cancellation.

Also where a deletion proves itself: `delete_until_gone` walks a tree again while the
check after a walk (the engine's `remaining`) still finds something there, such as a file a
customer's cron job wrote into a folder the walk had already emptied.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from temporalio import activity

from activities.deletion import (
    MaildirCount,
    Progress,
    TreeCount,
    count_maildir,
    count_tree,
    delete_tree,
    shown,
)
from activities.paths import FileId

T = TypeVar("T")

HEARTBEAT_EVERY = 1.0
# Counting heartbeats only once it has run this long: a first heartbeat goes out at
# once and the SDK holds the next ones back for most of the heartbeat timeout, so an
# early one would delay the one that says how many files the deletion has.
QUIET_COUNT = 4.0
# Walks of one tree in one attempt; past this the attempt fails and the step retries.
MAX_WALKS = 3

# What to heartbeat given the progress so far; None sends nothing.
Beat = Callable[[TreeCount], Sequence[Any] | None]


class NotGone(Exception):
    """The check after the last walk still found entries: written faster than deleted."""


@dataclass(frozen=True)
class Deleted:
    """Everything a deletion removed, in every walk (what was on disk, counted by the
    engine as it went), and how many walks it took."""

    count: TreeCount
    walks: int


class Walker:
    """Engine walks for one activity attempt, with its threads and the (dev, ino) of
    directories that are never entered (other services' live ones)."""

    def __init__(self, threads: int, protected: Collection[FileId] = ()) -> None:
        self.threads = threads
        self.protected = frozenset(protected)
        self.beaten_at = float("-inf")

    async def count(self, top: str, beat: Beat | None = None, *, quiet: bool = False) -> TreeCount:
        """`quiet`: no heartbeat for the first QUIET_COUNT seconds."""
        return await self.run(
            lambda progress, stop: count_tree(
                top, self.threads, progress, stop, protected=self.protected
            ),
            beat,
            quiet=QUIET_COUNT if quiet else 0.0,
        )

    async def count_maildir(self, top: str, beat: Beat | None = None) -> MaildirCount:
        return await self.run(
            lambda progress, stop: count_maildir(
                top, self.threads, progress, stop, protected=self.protected
            ),
            beat,
        )

    async def delete_until_gone(self, top: str, beat: Beat | None = None) -> Deleted:
        """Delete `top`, then check that it is gone; walk again while it is not.

        `beat` gets what all walks deleted so far. NotGone after MAX_WALKS.
        """
        progress = Progress()
        left = TreeCount()
        for walk in range(1, MAX_WALKS + 1):
            await self.run(
                lambda p, stop: delete_tree(top, self.threads, p, stop, self.protected),
                beat,
                progress=progress,
            )
            found = await self.run(
                lambda p, stop: self._remaining(top, stop), beat, progress=progress
            )
            if found is None:
                return Deleted(progress.snapshot(), walk)
            left = found
        raise NotGone(
            f"{shown(top)} still holds {left.files} files after {MAX_WALKS} walks:"
            " something keeps writing into it"
        )

    def _remaining(self, top: str, stop: threading.Event) -> TreeCount | None:
        """The engine's `remaining`, stoppable: None when `top` is gone."""
        if not os.path.lexists(top):
            return None
        return count_tree(top, self.threads, stop=stop, protected=self.protected)

    async def run(
        self,
        walk: Callable[[Progress, threading.Event], T],
        beat: Beat | None,
        *,
        progress: Progress | None = None,
        quiet: float = 0.0,
    ) -> T:
        """`walk(progress, stop)` in a thread. `beat(progress)` is heartbeated when the
        last heartbeat of this walker is HEARTBEAT_EVERY old (and `quiet` seconds have
        passed), at the start and while it runs, so many short walks heartbeat too; a
        cancellation of the activity sets `stop`, waits for the walk to reach a safe
        point and is raised again."""
        progress = progress or Progress()
        stop = threading.Event()
        work = asyncio.ensure_future(asyncio.to_thread(walk, progress, stop))
        loop = asyncio.get_running_loop()
        quiet_until = loop.time() + quiet

        def maybe_beat() -> None:
            now = loop.time()
            if beat is not None and now >= quiet_until and now - self.beaten_at >= HEARTBEAT_EVERY:
                heartbeat(beat(progress.snapshot()))
                self.beaten_at = now

        try:
            maybe_beat()
            while not (await asyncio.wait({work}, timeout=HEARTBEAT_EVERY))[0]:
                maybe_beat()
        except asyncio.CancelledError:
            stop.set()
            await asyncio.wait({work})
            if not work.cancelled():
                work.exception()  # Stopped, most likely: the cancellation is what counts
            raise
        return work.result()


def heartbeat(details: Sequence[Any] | None) -> None:
    """Heartbeat `details`; a local activity (billing's old preflight) has none to send."""
    if details is not None and not activity.info().is_local:
        activity.heartbeat(*details)
