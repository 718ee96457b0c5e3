"""The summary table (rich), the JSON file and the PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def _num(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{unit}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b in (None, 0):
        return None
    return a / b


def summary_table(results: dict[str, Any]) -> Table:
    table = Table(title="bajas benchmark", show_lines=False)
    table.add_column("figure")
    table.add_column("bajas", justify="right")
    table.add_column("reference", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("note")
    bajas = results.get("bajas")
    base = results.get("baseline")
    if bajas and base:
        table.add_row(
            "1. throughput",
            _num(bajas["per_second"], "/s", 2),
            _num(base["per_second"], "/s", 2),
            _num(_ratio(bajas["per_second"], base["per_second"]), "×", 3),
            f"n={bajas['n']}, {bajas['concurrency']} at a time; reference: bare baseline",
        )
        for q in ("p50", "p95"):
            table.add_row(
                f"2. latency {q}",
                _num(bajas["latency_ms"][q], " ms", 0),
                _num(base["latency_ms"][q], " ms", 0),
                _num(_ratio(bajas["latency_ms"][q], base["latency_ms"][q]), "×", 2),
                "confirmation sent → workflow completed",
            )
    elif bajas:
        table.add_row("1. throughput", _num(bajas["per_second"], "/s", 2), "—", "—", "")
    deletion = results.get("deletion")
    if deletion:
        table.add_row(
            "3. deletion",
            _num(deletion["activity_s"], " s", 2),
            _num(deletion["rm_rf_s"], " s", 2),
            _num(deletion["ratio"], "×", 2),
            f"{deletion['files']:,} files / {deletion['dirs']:,} dirs; reference: rm -rf; "
            f"target ≤ {deletion['target_ratio']}; median of {deletion['rounds']} rounds; "
            f"CPU ratio {deletion['cpu_ratio']}",
        )
    waiting = results.get("waiting")
    if waiting:
        table.add_row(
            "4. waiting: worker RSS",
            _num(waiting["worker_rss_waiting_mib"], " MiB"),
            _num(waiting["worker_rss_idle_mib"], " MiB"),
            "—",
            f"{waiting['waiting']:,} waiting; "
            f"{_num(waiting['worker_kib_per_waiting'], ' KiB')} each; reference: idle worker",
        )
        ref = bajas["per_cancellation_ms"] if bajas else None
        table.add_row(
            "4. waiting: confirm all",
            _num(waiting["per_cancellation_ms"], " ms/canc."),
            _num(ref, " ms/canc."),
            _num(_ratio(waiting["per_cancellation_ms"], ref), "×", 2),
            f"all {waiting['waiting']:,} in {_num(waiting['confirm_all_s'], ' s')}; "
            "reference: item 1",
        )
    scale = results.get("scale")
    if scale:
        table.add_row(
            f"5. throughput, {scale['workers']} workers",
            _num(scale["per_second"], "/s", 2),
            _num(bajas["per_second"], "/s", 2) if bajas else "—",
            _num(_ratio(scale["per_second"], bajas["per_second"]) if bajas else None, "×", 2),
            "reference: item 1 (1 worker process)",
        )
        table.add_row(
            "5. latency p50 / p95",
            f"{_num(scale['latency_ms']['p50'], '', 0)} / {_num(scale['latency_ms']['p95'], ' ms', 0)}",
            (
                f"{_num(bajas['latency_ms']['p50'], '', 0)} / {_num(bajas['latency_ms']['p95'], ' ms', 0)}"
                if bajas
                else "—"
            ),
            "—",
            "",
        )
    return table


def cpu_table(results: dict[str, Any]) -> Table | None:
    phases = [
        (name, results[key]["cpu_s"])
        for key, name in (
            ("baseline", "baseline"),
            ("bajas", "bajas, 1 worker"),
            ("scale", "bajas, scale"),
            ("waiting", "confirm waiting"),
            ("deletion", "deletion (activity)"),
        )
        if results.get(key) and results[key].get("cpu_s")
    ]
    if not phases:
        return None
    table = Table(title="where the CPU went (seconds; % of the machine's cores over the phase)")
    table.add_column("component")
    for name, _ in phases:
        table.add_column(name, justify="right")
    components = [
        "temporal dev server",
        "postgresql",
        "workers",
        "bench client + smtp sink",
        "other (kernel, other users)",
        "machine busy",
    ]
    for comp in components:
        row = [comp]
        for _, cpu in phases:
            spent = cpu.get(comp)
            capacity = cpu.get("wall", 0) * cpu.get("cores", 1)
            share = f" ({100 * spent / capacity:.0f}%)" if spent is not None and capacity else ""
            row.append(_num(spent, "", 1) + share)
        table.add_row(*row)
    table.add_row("wall", *[_num(cpu.get("wall"), " s", 1) for _, cpu in phases])
    return table


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


def plot(results: dict[str, Any], path: Path) -> bool:
    """Throughput and latency percentiles per run (and deletion times when measured)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print("[yellow]matplotlib missing: pip install -e '.[bench]'; no plot[/yellow]")
        return False
    runs = [
        (label, results[key])
        for key, label in (
            ("baseline", "bare baseline"),
            ("bajas", "bajas, 1 worker"),
            ("scale", "bajas, {} workers"),
        )
        if results.get(key)
    ]
    runs = [(label.format(r.get("workers")), r) for label, r in runs]
    deletion = results.get("deletion")
    panels = (1 if runs else 0) * 2 + (1 if deletion else 0)
    if not panels:
        return False
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2), squeeze=False)
    axes = list(axes[0])
    colours = ["#9e9e9e", "#1f77b4", "#2ca02c"]
    if runs:
        ax = axes.pop(0)
        names = [label for label, _ in runs]
        values = [r["per_second"] for _, r in runs]
        bars = ax.bar(names, values, color=colours[: len(runs)])
        ax.bar_label(bars, fmt="%.1f")
        ax.set_title("throughput (cancellations/s)")
        ax.margins(y=0.15)
        ax.set_ylabel("completed per second")
        ax.tick_params(axis="x", labelrotation=10)
        ax = axes.pop(0)
        width = 0.38
        xs = range(len(runs))
        p50 = [r["latency_ms"]["p50"] or 0 for _, r in runs]
        p95 = [r["latency_ms"]["p95"] or 0 for _, r in runs]
        b1 = ax.bar([x - width / 2 for x in xs], p50, width, label="p50", color="#1f77b4")
        b2 = ax.bar([x + width / 2 for x in xs], p95, width, label="p95", color="#ff7f0e")
        ax.bar_label(b1, fmt="%.0f")
        ax.bar_label(b2, fmt="%.0f")
        ax.set_xticks(list(xs), names, rotation=10)
        ax.set_title("latency: confirmation → completed")
        ax.margins(y=0.15)
        ax.set_ylabel("ms")
        ax.legend()
    if deletion:
        ax = axes.pop(0)
        bars = ax.bar(
            ["files activity", "rm -rf"],
            [deletion["activity_s"], deletion["rm_rf_s"]],
            color=["#1f77b4", "#9e9e9e"],
        )
        ax.bar_label(bars, fmt="%.2f s")
        ax.set_title(
            f"deleting {deletion['files']:,} files (ratio {deletion['ratio']:.2f}, target ≤ 1.3)"
        )
        ax.set_ylabel("seconds")
        ax.margins(y=0.15)
    options = results.get("options", {})
    fig.suptitle(
        f"bajas benchmark — n={options.get('n')}, concurrency {options.get('concurrency')}, "
        f"{results.get('machine', {}).get('cpus')} CPUs ({results.get('started_at', '')[:16]})",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
