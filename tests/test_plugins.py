"""Resource kinds as plugins: the built-in kinds are entry points like a provider's own,
a kind installed from a separate package (tests/plugins/bajas-example-kind) is found and
run, and the step order follows what the kinds declare."""

from __future__ import annotations

import importlib
import json
import site
import subprocess
import sys
import sysconfig
import textwrap
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

from activities.kinds import kind_classes
from activities.kinds.base import EVERYTHING
from activities.kinds.order import Declared, StepOrderError, order_for, step_order
from tests.helpers import REPO

EXAMPLE = REPO / "tests" / "plugins" / "bajas-example-kind"
BUILT_IN = {
    "mariadb_database",
    "mariadb_user",
    "postgresql_database",
    "postgresql_role",
    "restic_snapshots",
    "backup_directory",
}


def install_example() -> None:
    """`pip install -e` of the example package into this interpreter's environment, once."""
    try:
        direct = distribution("bajas-example-kind").read_text("direct_url.json") or "{}"
        if json.loads(direct).get("url", "").rstrip("/").endswith(str(EXAMPLE)):
            return
    except PackageNotFoundError:
        pass
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        + ["--no-deps", "-e", str(EXAMPLE)],
        check=True,
        capture_output=True,
    )
    # This process started before the install: read its .pth now, so that loading the
    # kinds here (other tests) finds the package too.
    site.addsitedir(sysconfig.get_paths()["purelib"])
    importlib.invalidate_caches()


def test_the_built_in_kinds_are_registered_as_entry_points() -> None:
    assert BUILT_IN <= set(kind_classes())


def test_a_kind_from_a_separate_package_is_found_and_run(tmp_path: Path) -> None:
    install_example()
    markers = tmp_path / "markers"
    markers.mkdir()
    (markers / "sitio-1").write_text("marca")
    (markers / "otro-2").write_text("ajena")
    # A fresh interpreter outside the repository: only the installed packages are seen.
    script = textwrap.dedent(
        f"""
        import asyncio, json
        from activities.kinds import kind_classes, load_kinds
        from activities.kinds.order import order_for
        from activities.resources import ResourceActivities
        from bajas.models import ResourceCheckInput, ResourceContext, ResourceRef, ResourceStepInput

        kinds = load_kinds({{"EXAMPLE_MARKER_ROOT": {str(markers)!r}}})
        acts = ResourceActivities(kinds)
        ref = ResourceRef(id=1, kind="example_marker", name="sitio-1")
        ctx = ResourceContext(service_id=1, domain="sitio.example.test")
        check = ResourceCheckInput(service_id=1, customer_id=1, resources=[ref], context=ctx)
        step = ResourceStepInput(service_id=1, customer_id=1, kind=ref.kind, resources=[ref], context=ctx)

        async def main():
            counted = await acts.inventory_resources(check)
            done = await acts.delete_resources(step)
            order = order_for(kind_classes(), ["example_marker"])
            print(json.dumps({{
                "module": type(kinds["example_marker"]).__module__,
                "bytes": counted.resources[0].bytes,
                "verified": done.verified,
                "after": [s.after for s in order if s.step == "example_marker"][0],
            }}))

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen == {
        "module": "bajas_example_kind",
        "bytes": 5,
        "verified": True,
        "after": ["billing", "mailboxes"],
    }
    assert not (markers / "sitio-1").exists() and (markers / "otro-2").exists()


def test_billing_comes_first_and_each_kind_after_what_it_names() -> None:
    order = order_for(kind_classes(), ["postgresql_role", "postgresql_database", "mariadb_user"])
    steps = [s.step for s in order]
    after = {s.step: s.after for s in order}
    assert steps[0] == "billing" and after["billing"] == []
    assert set(steps) == {"billing", "mailboxes", "files"} | {
        "postgresql_role",
        "postgresql_database",
        "mariadb_user",
    }
    assert after["postgresql_role"] == ["billing", "postgresql_database"]
    # mariadb_database is not present: its name in `after` is ignored
    assert after["mariadb_user"] == ["billing"]
    assert steps.index("postgresql_database") < steps.index("postgresql_role")


def test_star_runs_after_every_other_step_and_before_is_honoured() -> None:
    order = step_order(
        {
            "system_user": Declared(after=frozenset({EVERYTHING})),
            "cron": Declared(before=frozenset({"system_user", "files"})),
            "dns_zone": Declared(),
        }
    )
    after = {s.step: s.after for s in order}
    assert set(after["system_user"]) == {"billing", "mailboxes", "files", "cron", "dns_zone"}
    assert "cron" in after["files"]
    assert [s.step for s in order][-1] == "system_user"


@pytest.mark.parametrize(
    "kinds",
    [
        {"a": Declared(after=frozenset({"b"})), "b": Declared(after=frozenset({"a"}))},
        {"a": Declared(before=frozenset({"files"})), "files": Declared()}
        | {"b": Declared(after=frozenset({"files"}), before=frozenset({"a"}))},
        {"a": Declared(before=frozenset({"billing"}))},
    ],
)
def test_a_cycle_or_a_kind_before_billing_is_refused(kinds: dict[str, Declared]) -> None:
    with pytest.raises(StepOrderError):
        step_order(kinds)
