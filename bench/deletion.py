"""`python -m bench.deletion`: the deletion engine against `rm -rf`, side by side.

    python -m bench.deletion --files 100000 --dirs 1000 --threads 4 --repeat 3
    python -m bench.deletion --files 1000000 --dirs 10000 --threads 4 --repeat 3

Each repetition builds two identical trees (`--files` small files spread over `--dirs`
directories, as the harness's `deletion` item builds them), then deletes one with
`rm -rf` and the other with `activities.deletion.delete_tree` in a child process of its
own, the order alternating, with `sync` and a pause before each. The child heartbeats
its Progress every second as the activity does, and reports the peak RSS (VmHWM) of
the deleting process. No stack is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.deletion",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--dirs", type=int, default=1_000)
    p.add_argument("--threads", type=int, default=4, help="DELETE_THREADS of the engine")
    p.add_argument("--repeat", type=int, default=3, help="pairs of runs; the order alternates")
    p.add_argument("--pause", type=float, default=5.0, help="seconds after each sync")
    p.add_argument("--workdir", type=Path, default=None, help="where the trees go (default /tmp)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument(
        "--inventory",
        action="store_true",
        help="also time count_tree on both trees before deleting them (the code mail's figures)",
    )
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--count-only", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(top: Path, threads: int, count_only: bool = False) -> dict[str, Any]:
    """In the deleting (or counting) process: walk `top`, heartbeating, and say what it
    cost."""
    from activities.deletion import Progress, count_tree, delete_tree, remaining

    progress = Progress()
    done = threading.Event()
    beats = 0

    def heartbeat() -> None:
        nonlocal beats
        while not done.wait(1.0):
            progress.snapshot()
            beats += 1

    beater = threading.Thread(target=heartbeat)
    beater.start()
    t0 = time.perf_counter()
    try:
        walked = (count_tree if count_only else delete_tree)(str(top), threads, progress)
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        beater.join()
    return {
        "seconds": seconds,
        "files": walked.files,
        "dirs": walked.dirs,
        "bytes": walked.bytes,
        "gone": remaining(str(top)) is None,
        "heartbeats": beats,
        "vmhwm_kib": _status_kib("VmHWM"),
        "cpu_s": sum(os.times()[:2]),
    }


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _settle(pause: float) -> None:
    os.sync()
    time.sleep(pause)


def _by_rm(top: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["rm", "-rf", str(top)], check=True)
    return time.perf_counter() - t0


def _by_engine(top: Path, threads: int, count_only: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    command = [sys.executable, "-m", "bench.deletion", "--child", str(top), "--threads"]
    out = subprocess.run(
        [*command, str(threads), *(["--count-only"] if count_only else [])],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    figures: dict[str, Any] = json.loads(out.stdout)
    figures["process_seconds"] = time.perf_counter() - t0
    return figures


def main(args: argparse.Namespace) -> dict[str, Any]:
    # the harness's builder; heavy, so not in the child
    from bench.stack import per_dir
    from tests.helpers.panel import make_tree

    work = Path(tempfile.mkdtemp(prefix="bench-deletion-", dir=args.workdir))
    rows: list[dict[str, Any]] = []
    try:
        for r in range(args.repeat):
            engine_top, rm_top = work / f"engine-{r}", work / f"rm-{r}"
            print(
                f"[{r + 1}/{args.repeat}] building two trees of {args.files:,} files…", flush=True
            )
            make_tree(engine_top, args.files, per_dir(args.files, args.dirs))
            make_tree(rm_top, args.files, per_dir(args.files, args.dirs))
            engine_first = r % 2 == 0
            counts = []
            if args.inventory:  # both trees, so both sides start equally warm
                _settle(args.pause)
                counts = [
                    _by_engine(top, args.threads, count_only=True) for top in (engine_top, rm_top)
                ]
            for side in ("engine", "rm") if engine_first else ("rm", "engine"):
                _settle(args.pause)
                if side == "rm":
                    rm_s = _by_rm(rm_top)
                else:
                    engine = _by_engine(engine_top, args.threads)
            row = {
                "order": "engine first" if engine_first else "rm -rf first",
                "rm_rf_s": round(rm_s, 3),
                "engine_s": round(engine["seconds"], 3),
                "engine_process_s": round(engine["process_seconds"], 3),
                "ratio": round(engine["seconds"] / rm_s, 3),
                "files": engine["files"],
                "dirs": engine["dirs"],
                "gone": engine["gone"] and not rm_top.exists(),
                "heartbeats": engine["heartbeats"],
                "peak_rss_kib": engine["vmhwm_kib"],
                "engine_cpu_s": round(engine["cpu_s"], 3),
            }
            if counts:
                row["count_s"] = [round(c["seconds"], 3) for c in counts]
                row["counted_right"] = all(
                    (c["files"], c["dirs"]) == (args.files, args.dirs + 1) for c in counts
                )
            rows.append(row)
            print(
                f"  {row['order']}: rm -rf {row['rm_rf_s']} s, engine {row['engine_s']} s"
                f" (process {row['engine_process_s']} s), ratio {row['ratio']},"
                f" engine CPU {row['engine_cpu_s']} s, peak RSS {row['peak_rss_kib'] / 1024:.1f} MiB,"
                f" gone: {row['gone']}" + (f"; count_tree {row['count_s']} s" if counts else ""),
                flush=True,
            )
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return {
        "command": " ".join(["python -m bench.deletion", *sys.argv[1:]]),
        "files": args.files,
        "dirs": args.dirs,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "rm_rf_s_median": statistics.median(r["rm_rf_s"] for r in rows),
        "engine_s_median": statistics.median(r["engine_s"] for r in rows),
        "ratio_median": statistics.median(r["ratio"] for r in rows),
        "ratio_max": max(r["ratio"] for r in rows),
        "peak_rss_kib_max": max(r["peak_rss_kib"] for r in rows),
        "count_s_median": statistics.median(c for r in rows for c in r.get("count_s", [0])),
        "all_gone": all(
            r["gone"] and r["files"] == args.files and r.get("counted_right", True) for r in rows
        ),
        "per_run": rows,
    }


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.threads, args.count_only)))
        return 0
    results = main(args)
    print(
        f"median: rm -rf {results['rm_rf_s_median']} s, engine {results['engine_s_median']} s,"
        f" ratio {results['ratio_median']} (worst {results['ratio_max']});"
        f" peak RSS {results['peak_rss_kib_max'] / 1024:.1f} MiB;"
        + (f" count_tree {results['count_s_median']} s;" if args.inventory else "")
        + f" every tree gone: {results['all_gone']}"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if results["all_gone"] else 1


if __name__ == "__main__":
    sys.exit(run())
