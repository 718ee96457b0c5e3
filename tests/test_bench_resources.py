"""`python -m bench.resources` still runs, at the smallest sizes: both figures printed,
and its own checks (every other service's snapshots whole) passed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.servers import have


def test_the_resource_benchmark_runs_small(tmp_path: Path) -> None:
    if not (have("mariadbd") and have("restic")):
        pytest.skip("needs Debian's mariadb-server and restic (./scripts/test installs them)")
    figures = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.resources", "--db-mb", "1", "--services", "3"]
        + ["--service-mb", "0.2", "--repeat", "1", "--json", str(figures)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("database") and "DROP DATABASE" in line for line in lines)
    assert any(line.startswith("restic") and "forget --prune" in line for line in lines)
    result = json.loads(figures.read_text())
    assert len(result["database"]["kind_s"]) == 1 and result["restic"]["services"] == 3
