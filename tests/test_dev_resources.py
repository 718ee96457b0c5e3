"""`bajas dev`'s demo resources: the shop gets a PostgreSQL database and its role, a
folder of backups and, with Debian's mariadbd installed, a MariaDB database and user on
a MariaDB started under the state folder; the kinds count them all, and a second start
makes nothing twice."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import pytest

from activities.kinds import load_kinds
from activities.resources import ResourceActivities
from bajas.config import Settings
from bajas.db import create_pool, migrate
from bajas.dev.demo import load_demo
from bajas.dev.resources import SHOP, demo_resources, load_resources, mariadbd
from bajas.models import ResourceCheckInput, ResourceContext, ResourceRef
from tests.helpers.processes import Postgres

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_the_demo_shop_has_databases_and_backups_the_kinds_count(
    pg: Postgres, tmp_path: Path
) -> None:
    if mariadbd() is None:
        pytest.skip("needs Debian's mariadb-server (./scripts/test installs it)")
    panel_db = f"demo_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg.url)
    await admin.execute(f"create database {panel_db}")
    url = pg.server.get_uri(database=panel_db)
    settings = Settings(database_url=url, backup_root=tmp_path / "backups")
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await load_demo(conn, tmp_path / "www", tmp_path / "mail")
    await conn.close()
    pool = await create_pool(url)
    state = tmp_path / "state"
    state.mkdir()
    try:
        async with demo_resources(state, settings, pool, embedded_pg=True) as dev:
            await load_resources(dev, pool)  # as a second start does: nothing made twice
            rows = await pool.fetch(
                "select id, kind, name, server from service_resources where service_id = $1"
                " order by id",
                SHOP,
            )
            resources = [ResourceRef(**dict(r)) for r in rows]
            counted = await ResourceActivities(load_kinds(dev.kind_env())).inventory_resources(
                ResourceCheckInput(
                    service_id=SHOP,
                    customer_id=1,
                    resources=resources,
                    context=ResourceContext(service_id=SHOP, domain="tiendadeana.com"),
                )
            )
        found = {r.kind: (r.bytes, r.items) for r in counted.resources}
        assert set(found) == {
            "postgresql_database",
            "postgresql_role",
            "backup_directory",
            "mariadb_database",
            "mariadb_user",
        }
        assert found["postgresql_database"][1] == 1 and found["mariadb_database"][1] == 1
        assert found["backup_directory"][1] == 6 and found["mariadb_user"][1] == 1
    finally:
        await pool.close()
        await admin.execute(f"drop database if exists {panel_db} with (force)")
        await admin.execute("drop database if exists tiendadeana with (force)")
        await admin.execute("drop role if exists tiendadeana")
        await admin.close()
