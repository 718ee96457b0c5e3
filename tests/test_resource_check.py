"""The central side of the resource kinds (contract section 9), on the session's panel
database: what `check_service` hands the workflow (the listed resources, their context,
the order of every step, the shared ones), the sharing refusal before billing, and the
`deleted_at` and receipt lines `record_resources` writes."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta

import asyncpg
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.panel_db import PanelDbActivities
from activities.resources import Listing, shared_resources
from bajas.models import (
    ResourceCheckInput,
    ResourceContext,
    ResourceOutcome,
    ResourceRecordInput,
    ResourceRef,
    ServiceCheckInput,
)
from bajas.receipts import receipt_resources
from tests.helpers import new_id
from tests.helpers.panel import Panel, ServiceFixture

pytestmark = pytest.mark.asyncio(loop_scope="session")


def activities(pool: asyncpg.Pool) -> PanelDbActivities:
    return PanelDbActivities(
        pool,
        business_tz="America/Argentina/Buenos_Aires",
        confirmation_window=timedelta(days=1),
        sla_limit=timedelta(hours=20),
    )


def in_run() -> tuple[ActivityEnvironment, str]:
    """An activity environment of a run of its own (the audit lines are per run)."""
    env = ActivityEnvironment()
    run_id = f"resources-{uuid.uuid4()}"
    env.info = dataclasses.replace(env.info, workflow_run_id=run_id, workflow_id=run_id)
    return env, run_id


async def listed(
    pool: asyncpg.Pool, svc: ServiceFixture, *rows: tuple[str, str, str | None]
) -> list[ResourceRef]:
    refs = [ResourceRef(id=new_id(), kind=k, name=n, server=s) for k, n, s in rows]
    await pool.executemany(
        "insert into service_resources (id, service_id, kind, name, server)"
        " values ($1, $2, $3, $4, $5)",
        [(r.id, svc.service_id, r.kind, r.name, r.server) for r in refs],
    )
    return refs


async def test_check_service_lists_the_resources_their_context_and_the_order(
    pool: asyncpg.Pool, panel: Panel
) -> None:
    svc = await panel.service(mailboxes=2, files=1)
    sub = await panel.service(files=0, mailboxes=0)
    await pool.execute(
        "update services set domain = $1 where id = $2", "tienda." + svc.domain, sub.service_id
    )
    refs = await listed(
        pool,
        svc,
        ("postgresql_role", "tienda", None),
        ("postgresql_database", "tienda", None),
        ("backup_directory", "/srv/backups/tienda", "web1"),
    )
    gone = await listed(pool, svc, ("mariadb_database", "vieja", None))
    await pool.execute("update service_resources set deleted_at = now() where id = $1", gone[0].id)

    check = await ActivityEnvironment().run(
        activities(pool).check_service,
        ServiceCheckInput(service_id=svc.service_id, customer_id=svc.customer_id),
    )

    assert check.accepted and check.resources == refs
    context = check.resource_context
    assert context is not None
    assert context.document_root == str(svc.document_root)
    assert context.maildirs == sorted(str(m) for m in svc.maildirs)
    assert context.other_domains == ["tienda." + svc.domain]
    assert context.resources == refs
    after = {s.step: s.after for s in check.step_order}
    assert check.step_order[0].step == "billing"
    assert after["postgresql_role"] == ["billing", "postgresql_database"]
    assert set(after) == {"billing", "mailboxes", "files"} | {r.kind for r in refs}
    assert check.shared_resources == []
    accepted = check.accepted_service()
    assert accepted is not None and accepted.step_order == check.step_order


async def test_a_resource_another_live_service_lists_is_refused_before_billing(
    pool: asyncpg.Pool, panel: Panel
) -> None:
    ours, theirs, cancelled = [await panel.service(files=0, mailboxes=0) for _ in range(3)]
    await pool.execute(
        "update services set status = 'cancelled' where id = $1", cancelled.service_id
    )
    name = f"shop_{new_id()}"
    refs = await listed(
        pool,
        ours,
        ("mariadb_database", name, "db1"),
        ("mariadb_user", name, "db1"),
        ("restic_snapshots", name, None),
    )
    await listed(pool, theirs, ("mariadb_database", name, "db1"), ("mariadb_user", name, "db2"))
    await listed(pool, cancelled, ("restic_snapshots", name, None))
    acts = activities(pool)

    check = await ActivityEnvironment().run(
        acts.check_service,
        ServiceCheckInput(service_id=ours.service_id, customer_id=ours.customer_id),
    )
    assert [(s.id, s.other_service_ids) for s in check.shared_resources] == [
        (refs[0].id, [theirs.service_id])
    ]
    preflight = ResourceCheckInput(
        service_id=ours.service_id,
        customer_id=ours.customer_id,
        resources=refs,
        context=ResourceContext(service_id=ours.service_id, domain=ours.domain),
    )
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(
            acts.check_shared_resources,
            preflight,
        )
    assert err.value.type == "PathRefused" and err.value.details == ("mariadb_database",)
    assert f"mariadb_database {name} on db1 is also listed by service {theirs.service_id}" in (
        err.value.message
    )
    # once the other service is cancelled, nothing is shared any more
    await pool.execute("update services set status = 'cancelled' where id = $1", theirs.service_id)
    await ActivityEnvironment().run(
        acts.check_shared_resources,
        preflight,
    )


def test_shared_resources_match_kind_name_and_server_only() -> None:
    ours = [
        ResourceRef(id=1, kind="mariadb_database", name="a", server=None),
        ResourceRef(id=2, kind="mariadb_database", name="b", server="db1"),
        ResourceRef(id=3, kind="postgresql_database", name="a", server=None),
    ]
    others = [
        Listing("mariadb_database", "a", None, 10),
        Listing("mariadb_database", "a", None, 11),
        Listing("mariadb_database", "b", "db2", 12),
        Listing("postgresql_role", "a", None, 13),
    ]
    shared = shared_resources(ours, others)
    assert [(s.id, s.other_service_ids) for s in shared] == [(1, [10, 11])]


async def test_record_resources_writes_deleted_at_and_the_receipts_lines_once(
    pool: asyncpg.Pool, panel: Panel
) -> None:
    svc = await panel.service(files=0, mailboxes=0)
    refs = await listed(
        pool, svc, ("mariadb_database", "tienda", "db1"), ("mariadb_database", "blog", "db1")
    )
    env, run_id = in_run()
    outcomes = [
        ResourceOutcome(**refs[0].model_dump(), verified=True, bytes=340_000_000, items=12),
        ResourceOutcome(**refs[1].model_dump(), verified=False),
    ]
    record = ResourceRecordInput(
        service_id=svc.service_id,
        customer_id=svc.customer_id,
        kind="mariadb_database",
        server="db1",
        resources=outcomes,
    )
    acts = activities(pool)
    await env.run(acts.record_resources, record)
    first = await pool.fetch(
        "select id, deleted_at from service_resources where service_id = $1 order by id",
        svc.service_id,
    )
    await env.run(acts.record_resources, record)  # a retry changes nothing

    again = await pool.fetch(
        "select id, deleted_at from service_resources where service_id = $1 order by id",
        svc.service_id,
    )
    assert first == again
    assert [r["deleted_at"] is not None for r in again] == [True, False]
    receipt = await receipt_resources(pool, run_id)
    assert [(r.kind, r.name, r.server, r.bytes, r.items) for r in receipt] == [
        ("mariadb_database", "tienda", "db1", 340_000_000, 12)
    ]
