"""`python -m bench.resources`: the resource kinds against the servers' own commands.

    python -m bench.resources --db-mb 1024 --services 50 --repeat 3
    python -m bench.resources --db-mb 8 --services 5 --repeat 1      # a quick run

`database`: two identical MariaDB databases of `--db-mb` MB (a MariaDB of the bench's
own, as the tests start it: tests/servers.py); one goes through the `mariadb_database`
kind (`ResourceActivities.delete_resources`: preflight, sessions ended, DROP, proven
gone), the other through a plain `DROP DATABASE`, the order alternating.

`restic`: a repository holding `--services` services' snapshots (each its own tag,
their data sharing packs as real sites do); copied, then one service's snapshots
removed from each copy, by the `restic_snapshots` kind (forget by id, then prune) and by
restic's own `forget --prune --tag TAG --keep-tag …` (no other tag kept), the order
alternating. Both must leave the other services' snapshots whole (`restic check`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from activities.kinds import load_kinds
from activities.resources import ResourceActivities
from bajas.models import ResourceContext, ResourceRef, ResourceStepInput
from tests.servers import MariaDB, Restic

# restic's own way to forget every snapshot with a tag: keep only those with a tag
# nothing has.
NO_SUCH_TAG = "bajas-bench-keep-none"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.resources",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", default="database,restic", help="database, restic or both")
    p.add_argument("--db-mb", type=int, default=1024, help="size of each database, MB")
    p.add_argument("--services", type=int, default=50, help="services in the restic repository")
    p.add_argument("--service-mb", type=float, default=4, help="data per service, MB")
    p.add_argument("--repeat", type=int, default=3, help="pairs of runs; the order alternates")
    p.add_argument("--workdir", type=Path, default=None, help="where the data goes (a tmp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return p.parse_args(argv)


async def timed(work: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await work()
    return time.perf_counter() - start


def step(kind: str, name: str) -> ResourceStepInput:
    ref = ResourceRef(id=1, kind=kind, name=name)
    return ResourceStepInput(
        service_id=1,
        customer_id=1,
        kind=kind,
        resources=[ref],
        context=ResourceContext(service_id=1, domain="bench.example", resources=[ref]),
    )


async def database_item(args: argparse.Namespace) -> dict[str, Any]:
    server = MariaDB()
    try:
        await server.start()
        server.create_admin()
        kinds = ResourceActivities(load_kinds({"MARIADB_URL": server.url}))
        rows = max(1, args.db_mb * 1024 // 2)  # about 2 kB per row, indexes aside
        kind_s: list[float] = []
        plain_s: list[float] = []
        for n in range(args.repeat):
            names = (f"kind_{n}", f"plain_{n}")
            for name in names:
                await server.asql(
                    f"create database {name}; create table {name}.t (id int primary key,"
                    " body varchar(2100)) engine=innodb;"
                    f" insert into {name}.t select seq, repeat(md5(seq), 64)"
                    f" from mysql.seq_1_to_{rows};"
                )
            await server.asql("flush tables")

            async def through_kind(name: str = names[0]) -> None:
                result = await kinds.delete_resources(step("mariadb_database", name))
                assert result.verified

            async def plain(name: str = names[1]) -> None:
                await server.asql(f"drop database {name}")

            order = [(through_kind, kind_s), (plain, plain_s)]
            for work, times in order if n % 2 == 0 else order[::-1]:
                times.append(await timed(work))
        return {"db_mb": args.db_mb, "kind_s": kind_s, "drop_database_s": plain_s}
    finally:
        server.cleanup()


async def restic_item(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    base = workdir / "restic"
    base.mkdir()
    repo = await asyncio.to_thread(Restic, base)
    shared = os.urandom(int(args.service_mb * 1024 * 1024 / 2))
    for s in range(args.services):
        site = base / f"site{s}"
        site.mkdir()
        (site / "comun.bin").write_bytes(shared)  # the same CMS files everywhere
        (site / "propio.bin").write_bytes(os.urandom(int(args.service_mb * 1024 * 1024 / 2)))
        await asyncio.to_thread(repo.backup, site, f"svc{s}")
        shutil.rmtree(site)
    kind_s: list[float] = []
    restic_s: list[float] = []
    for n in range(args.repeat):
        tag = f"svc{n % args.services}"
        copies = [base / f"copy-kind-{n}", base / f"copy-restic-{n}"]
        for copy in copies:
            await asyncio.to_thread(shutil.copytree, repo.repository, copy)
        kinds = ResourceActivities(
            load_kinds(
                {**repo.env, "RESTIC_REPOSITORY": str(copies[0]), "RESTIC_PRUNE_WITHIN": "0"}
            )
        )
        through_kind = partial(kind_forgets, kinds, tag)
        restic_own = partial(restic_forgets, repo.at(copies[1]), tag)
        order = [(through_kind, kind_s), (restic_own, restic_s)]
        for work, times in order if n % 2 == 0 else order[::-1]:
            times.append(await timed(work))
        for copy in copies:
            checker = repo.at(copy)
            left = json.loads(await asyncio.to_thread(checker.run, "snapshots", "--json") or "[]")
            assert len(left) == args.services - 1, (copy, len(left))
            await asyncio.to_thread(checker.run, "check")
            shutil.rmtree(copy)
    return {"services": args.services, "kind_s": kind_s, "restic_forget_prune_s": restic_s}


async def kind_forgets(kinds: ResourceActivities, tag: str) -> None:
    assert (await kinds.delete_resources(step("restic_snapshots", tag))).verified


async def restic_forgets(repo: Restic, tag: str) -> None:
    await asyncio.to_thread(repo.run, "forget", "--prune", "--tag", tag, "--keep-tag", NO_SUCH_TAG)


def line(label: str, ours: list[float], theirs: list[float], against: str) -> str:
    a, b = statistics.median(ours), statistics.median(theirs)
    return f"{label:<9} bajas {a:8.2f} s   {against} {b:8.2f} s   ratio {a / b:5.2f}"


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    items = {i.strip() for i in args.only.split(",") if i.strip()}
    workdir = Path(tempfile.mkdtemp(prefix="bajas-bench-res-", dir=args.workdir))
    figures: dict[str, Any] = {}
    try:
        if "database" in items:
            figures["database"] = d = await database_item(args)
            print(line("database", d["kind_s"], d["drop_database_s"], "DROP DATABASE"))
        if "restic" in items:
            figures["restic"] = r = await restic_item(args, workdir)
            print(line("restic", r["kind_s"], r["restic_forget_prune_s"], "forget --prune"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
