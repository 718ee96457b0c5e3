"""A system user's processes, found in /proc and ended: all of them before the user is
removed (`system_user`), or only its running cron jobs once its crontab is gone (`cron`)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

GRACE = 5.0
# The cron daemon's names: Debian's forks a `CRON` child per job, which runs the job.
CRON_NAMES = frozenset({"cron", "CRON", "crond"})


def processes_of(uid: int) -> list[int]:
    """Live processes whose real, effective, saved or filesystem uid is `uid` (zombies
    run nothing and are left to their parent)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue  # ended meanwhile
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith("Z"):
            continue
        if str(uid) in fields.get("Uid", "").split():
            found.append(int(entry.name))
    return found


def _parent_and_name(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    return int(stat[stat.rindex(")") + 2 :].split()[1]), name


def started_by_cron(pid: int) -> bool:
    """Whether a cron daemon is among the process's ancestors."""
    found = _parent_and_name(pid)
    for _ in range(64):
        if found is None or found[0] <= 1:
            return False
        found = _parent_and_name(found[0])
        if found is not None and found[1] in CRON_NAMES:
            return True
    return False


def cron_jobs_of(uid: int) -> list[int]:
    """The uid's processes that a cron daemon started (its running jobs)."""
    return [pid for pid in processes_of(uid) if started_by_cron(pid)]


def end_processes(find: Callable[[], list[int]]) -> int:
    """SIGTERM every process `find` lists, SIGKILL what is left after GRACE; how many."""
    ended: set[int] = set()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = find()
        for pid in pids:
            try:
                os.kill(pid, sig)
                ended.add(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + GRACE
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = find()
        if not pids:
            break
    return len(ended)
