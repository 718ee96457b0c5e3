"""The measurements: cancellations end to end, the baseline, deletion, waiting cost."""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from temporalio.testing import ActivityEnvironment

from activities.files import FilesActivities
from bajas.models import FilesInput, State
from bench import baseline
from bench.stack import Stack, per_dir, status_kib, verify_cancelled
from starter.client import CancellationClient
from tests.helpers.panel import ServiceFixture, make_tree

console = Console(stderr=True)


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


@dataclass
class Run:
    """One batch of cancellations driven to completion with bounded concurrency."""

    label: str
    workers: int
    n: int
    concurrency: int
    wall_s: float = 0.0
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    request_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    verified: dict[str, int] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    @property
    def per_cancellation_s(self) -> float | None:
        return self.wall_s / self.ok if self.ok else None

    def summary(self) -> dict[str, Any]:
        lat, req = self.latency_s, self.request_s
        return {
            "label": self.label,
            "workers": self.workers,
            "n": self.n,
            "concurrency": self.concurrency,
            "ok": self.ok,
            "failed": self.failed,
            "errors": self.errors[:5],
            "wall_s": round(self.wall_s, 3),
            "per_second": round(self.per_second, 3),
            "per_cancellation_ms": _ms(self.per_cancellation_s),
            "latency_ms": {
                "p50": _ms(percentile(lat, 50)),
                "p95": _ms(percentile(lat, 95)),
                "max": _ms(max(lat) if lat else None),
                "mean": _ms(statistics.fmean(lat) if lat else None),
            },
            "request_ms": {"p50": _ms(percentile(req, 50)), "p95": _ms(percentile(req, 95))},
            "cpu_s": self.cpu,
            "cpu_ms_per_cancellation": {
                k: round(1000 * v / self.ok, 1)
                for k, v in self.cpu.items()
                if self.ok and k not in ("wall", "cores")
            },
            "client_calls": self.calls,
            "client_calls_per_cancellation": {
                k: round(v / self.ok, 2) for k, v in self.calls.items() if self.ok
            },
            "verified": self.verified,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


async def _drive(
    run: Run, items: list[Any], one: Callable[[Any, Run], Awaitable[None]], timeout: float
) -> None:
    sem = asyncio.Semaphore(run.concurrency)

    async def guarded(item: Any) -> None:
        async with sem:
            try:
                await asyncio.wait_for(one(item, run), timeout)
                run.ok += 1
            except Exception as err:  # noqa: BLE001 (counted and shown, the run goes on)
                run.failed += 1
                if len(run.errors) < 20:
                    run.errors.append(f"{type(err).__name__}: {err}")

    start = time.perf_counter()
    await asyncio.gather(*(guarded(i) for i in items))
    run.wall_s = time.perf_counter() - start


# --- bajas through its public client ----------------------------------------------------------


async def bajas_run(
    stack: Stack,
    *,
    label: str,
    n: int,
    workers: int,
    concurrency: int,
    files: int,
    mailboxes: int,
    warmup: int,
    timeout: float,
) -> Run:
    queue = f"bench-bajas-{uuid.uuid4().hex[:8]}"
    with console.status(f"[{label}] writing {n + warmup} services with their files…"):
        sites = await stack.sites(n + warmup, files=files, mailboxes=mailboxes)
    procs = await stack.start_workers(queue, workers, profile=_profile(stack, label))
    try:
        cc = CancellationClient(stack.client, queue)
        if warmup:
            with console.status(f"[{label}] warm-up ({warmup})…"):
                await _drive(
                    Run("warmup", workers, warmup, concurrency),
                    sites[:warmup],
                    _cancellation(stack, cc),
                    timeout,
                )
        run = Run(label, workers, n, concurrency)
        meter = stack.meter()
        with console.status(f"[{label}] {n} cancellations, {concurrency} at a time…"):
            stack.calls.take()
            meter.start()
            await _drive(run, sites[warmup:], _cancellation(stack, cc), timeout)
            run.cpu = meter.stop()
            run.calls = stack.calls.take()
        run.verified = await verify_cancelled(stack.pool, sites[warmup:])
    finally:
        await stack.stop_workers(procs)
    _report_errors(run)
    return run


def _cancellation(
    stack: Stack, cc: CancellationClient
) -> Callable[[ServiceFixture, Run], Awaitable[None]]:
    async def one(site: ServiceFixture, run: Run) -> None:
        t0 = time.perf_counter()
        answer = await cc.request(site.service_id, site.customer_id, requested_by="bench")
        if answer.status.state is not State.AWAITING_CONFIRMATION:
            raise RuntimeError(f"request answered {answer.status.state}")
        code = await stack.sink.code_for(site.domain)
        t1 = time.perf_counter()
        confirmed = await cc.confirm(site.service_id, code)
        if not confirmed.accepted:
            raise RuntimeError("code not accepted")
        result = await cc.result(site.service_id)
        t2 = time.perf_counter()
        if result.state is not State.CANCELLED:
            raise RuntimeError(f"ended {result.state}")
        run.request_s.append(t1 - t0)
        run.latency_s.append(t2 - t1)

    return one


# --- the bare baseline --------------------------------------------------------------------------


async def baseline_run(
    stack: Stack, *, n: int, concurrency: int, warmup: int, timeout: float
) -> Run:
    queue = f"bench-baseline-{uuid.uuid4().hex[:8]}"
    procs = await stack.start_workers(queue, 1, baseline=True, profile=_profile(stack, "baseline"))
    ids = iter(range(1, 10**9))
    try:
        one = _baseline_one(stack, queue, ids)
        if warmup:
            await _drive(Run("warmup", 1, warmup, concurrency), list(range(warmup)), one, timeout)
        run = Run("baseline", 1, n, concurrency)
        meter = stack.meter()
        with console.status(f"[baseline] {n} bare workflows, {concurrency} at a time…"):
            stack.calls.take()
            meter.start()
            await _drive(run, list(range(n)), one, timeout)
            run.cpu = meter.stop()
            run.calls = stack.calls.take()
    finally:
        await stack.stop_workers(procs)
    _report_errors(run)
    return run


def _baseline_one(stack: Stack, queue: str, ids: Any) -> Callable[[Any, Run], Awaitable[None]]:
    async def one(_: Any, run: Run) -> None:
        sid = next(ids)
        t0 = time.perf_counter()
        handle = await baseline.request(stack.client, queue, f"{queue}-{sid}", sid)
        t1 = time.perf_counter()
        await baseline.confirm(handle)
        result = await handle.result()
        t2 = time.perf_counter()
        if result.state != "cancelled":
            raise RuntimeError(f"baseline ended {result.state}")
        run.request_s.append(t1 - t0)
        run.latency_s.append(t2 - t1)

    return one


def _profile(stack: Stack, label: str) -> str | None:
    return label if stack.profiler.folder is not None else None


def _report_errors(run: Run) -> None:
    if run.failed:
        console.print(f"[red][{run.label}] {run.failed} of {run.n} failed[/red]")
        for err in run.errors[:5]:
            console.print(f"  {err}")


# --- deletion: the files activity against rm -rf -------------------------------------------------


async def deletion_run(
    stack: Stack, *, files: int, dirs: int, panel_rows: int, rounds: int
) -> dict[str, Any]:
    """`rounds` pairs of identical trees; the order alternates (activity first, then rm
    first, ...) so neither side always gets the warmer caches; the median ratio counts."""
    await stack.filler(panel_rows)
    activities = FilesActivities(stack.pool, stack.hosting_root)
    heartbeats: list[Any] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: heartbeats.append(details)
    rows: list[dict[str, Any]] = []
    cpu: dict[str, float] = {}
    other_paths = 0
    result = None
    for r in range(rounds):
        tag = uuid.uuid4().hex[:8]
        site_root = stack.hosting_root / f"deletion-{tag}.bench.test"
        copy_root = stack.hosting_root / f"rmrf-{tag}"
        with console.status(
            f"[deletion {r + 1}/{rounds}] building two trees of {files:,} files in {dirs:,} dirs…"
        ):
            await asyncio.to_thread(make_tree, site_root, files, per_dir(files, dirs))
            await asyncio.to_thread(make_tree, copy_root, files, per_dir(files, dirs))
            site = await stack.bare_service(site_root)
            other_paths = await stack.pool.fetchval(
                "select (select count(*) from services where id <> $1)"
                " + (select count(*) from mailboxes)",
                site.service_id,
            )
            await asyncio.to_thread(os.sync)

        async def by_activity(site: ServiceFixture = site) -> tuple[float, float]:
            nonlocal result, cpu
            meter = stack.meter()
            meter.start()
            r0 = _own_cpu(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            result = await env.run(
                activities.delete_files,
                FilesInput(service_id=site.service_id, customer_id=site.customer_id),
            )
            spent = time.perf_counter() - t0
            cpu = meter.stop()
            return spent, _own_cpu(resource.RUSAGE_SELF) - r0

        async def by_rm(root: Path = copy_root) -> tuple[float, float]:
            r0 = _own_cpu(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            await asyncio.to_thread(subprocess.run, ["rm", "-rf", str(root)], check=True)
            return time.perf_counter() - t0, _own_cpu(resource.RUSAGE_CHILDREN) - r0

        with console.status(f"[deletion {r + 1}/{rounds}] timing…"):
            if r == 0:
                stack.profiler.attach(os.getpid(), "deletion-bench-process")
            if r % 2 == 0:
                activity_s, activity_cpu = await by_activity()
                rm_s, rm_cpu = await by_rm()
            else:
                rm_s, rm_cpu = await by_rm()
                activity_s, activity_cpu = await by_activity()
            if r == 0:
                await stack.profiler.detach()
        assert result is not None
        rows.append(
            {
                "order": "activity first" if r % 2 == 0 else "rm -rf first",
                "activity_s": round(activity_s, 3),
                "rm_rf_s": round(rm_s, 3),
                "ratio": round(activity_s / rm_s, 3) if rm_s else None,
                "activity_cpu_s": round(activity_cpu, 3),
                "rm_rf_cpu_s": round(rm_cpu, 3),
                "files_deleted": result.files_deleted,
                "dirs_deleted": result.dirs_deleted,
                "both_trees_gone": not os.path.lexists(site_root)
                and not os.path.lexists(copy_root),
            }
        )
    activity_med = statistics.median(r["activity_s"] for r in rows)
    rm_med = statistics.median(r["rm_rf_s"] for r in rows)
    ratio_med = statistics.median(r["ratio"] for r in rows if r["ratio"] is not None)
    return {
        "files": files,
        "dirs": dirs,
        "rounds": rounds,
        "other_paths_in_panel": int(other_paths),
        "activity_s": round(activity_med, 3),
        "rm_rf_s": round(rm_med, 3),
        "ratio": round(ratio_med, 3),
        "target_ratio": 1.3,
        "activity_files_per_s": round(files / activity_med) if activity_med else None,
        "rm_rf_files_per_s": round(files / rm_med) if rm_med else None,
        "cpu_ratio": round(
            statistics.median(r["activity_cpu_s"] for r in rows)
            / max(statistics.median(r["rm_rf_cpu_s"] for r in rows), 1e-6),
            3,
        ),
        "heartbeats": len(heartbeats),
        "per_round": rows,
        "all_deleted": all(r["both_trees_gone"] and r["files_deleted"] == files for r in rows),
        "cpu_s": cpu,
    }


# --- waiting: many cancellations waiting for their code at once -----------------------------------


async def waiting_run(
    stack: Stack,
    *,
    waiting: int,
    concurrency: int,
    files: int,
    mailboxes: int,
    warmup: int,
    timeout: float,
) -> dict[str, Any]:
    queue = f"bench-waiting-{uuid.uuid4().hex[:8]}"
    with console.status(f"[waiting] writing {waiting + warmup} services with their files…"):
        sites = await stack.sites(waiting + warmup, files=files, mailboxes=mailboxes)
    (proc,) = await stack.start_workers(queue, 1, profile=_profile(stack, "waiting"))
    temporal = stack.temporal_pids()
    try:
        cc = CancellationClient(stack.client, queue)
        one = _cancellation(stack, cc)
        if warmup:
            with console.status(f"[waiting] warm-up ({warmup})…"):
                await _drive(Run("warmup", 1, warmup, concurrency), sites[:warmup], one, timeout)
        await asyncio.sleep(1.0)
        rss_idle = status_kib(proc.pid, "VmRSS")
        server_idle = _rss_kib(temporal)
        pending = sites[warmup:]
        requested = Run("waiting requests", 1, waiting, concurrency)

        async def request_only(site: ServiceFixture, run: Run) -> None:
            t0 = time.perf_counter()
            answer = await cc.request(site.service_id, site.customer_id, requested_by="bench")
            if answer.status.state is not State.AWAITING_CONFIRMATION:
                raise RuntimeError(f"request answered {answer.status.state}")
            run.request_s.append(time.perf_counter() - t0)

        with console.status(f"[waiting] requesting {waiting} cancellations…"):
            await _drive(requested, pending, request_only, timeout)
        await asyncio.sleep(2.0)
        rss_waiting = status_kib(proc.pid, "VmRSS")
        hwm_waiting = status_kib(proc.pid, "VmHWM")
        server_waiting = _rss_kib(temporal)

        confirmed = Run("waiting confirmations", 1, waiting, concurrency)

        async def confirm_only(site: ServiceFixture, run: Run) -> None:
            code = await stack.sink.code_for(site.domain)
            t1 = time.perf_counter()
            answer = await cc.confirm(site.service_id, code)
            if not answer.accepted:
                raise RuntimeError("code not accepted")
            result = await cc.result(site.service_id)
            if result.state is not State.CANCELLED:
                raise RuntimeError(f"ended {result.state}")
            run.latency_s.append(time.perf_counter() - t1)

        meter = stack.meter()
        with console.status(f"[waiting] confirming all {waiting}…"):
            stack.calls.take()
            meter.start()
            await _drive(confirmed, pending, confirm_only, timeout)
            confirmed.cpu = meter.stop()
            confirmed.calls = stack.calls.take()
        rss_after = status_kib(proc.pid, "VmRSS")
        verified = await verify_cancelled(stack.pool, pending)
    finally:
        await stack.stop_workers([proc])
    _report_errors(requested)
    _report_errors(confirmed)
    per_kib = (rss_waiting - rss_idle) / waiting if waiting else None
    return {
        "waiting": waiting,
        "worker_rss_idle_mib": round(rss_idle / 1024, 1),
        "worker_rss_waiting_mib": round(rss_waiting / 1024, 1),
        "worker_rss_peak_mib": round(hwm_waiting / 1024, 1),
        "worker_rss_after_confirm_mib": round(rss_after / 1024, 1),
        "worker_kib_per_waiting": round(per_kib, 1) if per_kib is not None else None,
        "temporal_server_rss_idle_mib": round(server_idle / 1024, 1),
        "temporal_server_rss_waiting_mib": round(server_waiting / 1024, 1),
        "request_all_s": round(requested.wall_s, 3),
        "requests_failed": requested.failed,
        "confirm_all_s": round(confirmed.wall_s, 3),
        "confirmed_ok": confirmed.ok,
        "confirm_failed": confirmed.failed,
        "errors": (requested.errors + confirmed.errors)[:5],
        "per_cancellation_ms": _ms(confirmed.per_cancellation_s),
        "latency_ms": {
            "p50": _ms(percentile(confirmed.latency_s, 50)),
            "p95": _ms(percentile(confirmed.latency_s, 95)),
        },
        "cpu_s": confirmed.cpu,
        "client_calls_confirming": confirmed.calls,
        "verified": verified,
        "worker_cache_note": "temporalio Worker default max_cached_workflows=1000",
    }


def _own_cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total
