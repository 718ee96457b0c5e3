"""A provider's fleet on the real stack (issue 12, item 2): two hosting servers, each
with its own node worker (`build_worker(..., node=NAME)`) and its own HOSTING_ROOT and
MAIL_ROOT, and a central worker that runs the workflow, billing and mail.

Each service's files and mail are deleted by its own node, which the audit line names.
A node that is down holds only its own services, says so in `status`, and its steps go
on when it comes back: nothing is lost, nothing is deleted twice or by the wrong node.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from temporalio.worker import Worker

from bajas.config import Settings
from bajas.dev.mailsink import SunkMessage
from bajas.models import CancellationStatus, State
from starter.client import CancellationClient
from tests.conftest import Stack
from tests.helpers import assert_eventually
from tests.helpers.mail import code_in, mails_about
from tests.helpers.panel import Panel, ServiceFixture, tree_files
from worker import Workers, build_worker

pytestmark = pytest.mark.integration

NODES = ("web01", "web02")


@asynccontextmanager
async def running(worker: Worker | Workers) -> AsyncIterator[Worker | Workers]:
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        await worker.shutdown()
        await task


async def wait_status(
    cc: CancellationClient, sid: int, pred: Callable[[CancellationStatus], bool], what: str
) -> CancellationStatus:
    async def probe() -> CancellationStatus | None:
        status = await cc.status(sid)
        return status if pred(status) else None

    return await assert_eventually(probe, what, timeout=60)


def code_mails(stack: Stack, domain: str) -> list[SunkMessage]:
    return [m for m in mails_about(stack.mail, domain) if "Código" in m.subject]


async def audit(stack: Stack, service_id: int) -> list[tuple[str, dict[str, Any]]]:
    rows = await stack.pool.fetch(
        "select event, details from bajas.audit_trail where service_id = $1 order by id",
        service_id,
    )
    return [
        (r["event"], json.loads(r["details"]) if isinstance(r["details"], str) else r["details"])
        for r in rows
    ]


async def test_each_node_deletes_its_own_services_and_a_down_node_holds_only_its_own(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    queue = f"bajas-nodes-{uuid.uuid4().hex[:8]}"
    # the central worker's own roots hold none of these services' data
    central = stack.settings.model_copy(
        update={"temporal_task_queue": queue, "node_wait": timedelta(seconds=2)}
    )
    roots: dict[str, tuple[Path, Path]] = {}
    for node in NODES:
        base = tmp_path_factory.mktemp(node)
        roots[node] = (base / "www", base / "mail")
        for root in roots[node]:
            root.mkdir()

    def node_settings(node: str) -> Settings:
        www, mail = roots[node]
        return central.model_copy(update={"hosting_root": www, "mail_root": mail})

    services: dict[str, list[ServiceFixture]] = {}
    for node in NODES:
        services[node] = await Panel(stack.pool, *roots[node]).services(2, files=30, mailboxes=2)
        await stack.pool.execute(
            "update services set server = $2 where id = any($1::bigint[])",
            [s.service_id for s in services[node]],
            node,
        )
    cc = CancellationClient(stack.client, queue)
    first, second = NODES
    everyone = services[first] + services[second]

    async with (
        running(build_worker(stack.client, central, stack.pool)),
        running(build_worker(stack.client, node_settings(first), stack.pool, node=first)),
    ):
        node_two = build_worker(stack.client, node_settings(second), stack.pool, node=second)
        async with running(node_two):
            codes = {}
            for svc in everyone:
                answer = await cc.request(svc.service_id, svc.customer_id)
                assert answer.status.code_sent, answer.status
                mail = await assert_eventually(
                    partial(code_mails, stack, svc.domain), "the code mail"
                )
                codes[svc.service_id] = code_in(mail[0])
            for svc in everyone:  # each counted on its own node
                status = await wait_status(
                    cc, svc.service_id, lambda s: s.inventory is not None, "the inventory"
                )
                assert status.inventory is not None and status.inventory.files == 30
        # the second node is down now, mid-wave: every service is confirmed
        for svc in everyone:
            assert (await cc.confirm(svc.service_id, codes[svc.service_id])).accepted
        for svc in services[first]:
            result = await asyncio.wait_for(cc.result(svc.service_id), 60)
            assert result.state is State.CANCELLED
        for svc in services[second]:
            status = await wait_status(
                cc,
                svc.service_id,
                lambda s: s.steps.billing.error is not None,
                "the second node's services waiting for it",
            )
            assert status.state is State.DEPROVISIONING
            assert status.steps.billing.error == (
                f"node {second} is not answering (no worker took the attempt)"
            )
            assert svc.document_root is not None and tree_files(svc.document_root) == 30
        # it comes back: its services go on where they were
        async with running(
            build_worker(stack.client, node_settings(second), stack.pool, node=second)
        ):
            for svc in services[second]:
                result = await asyncio.wait_for(cc.result(svc.service_id), 60)
                assert result.state is State.CANCELLED

    for node in NODES:
        for svc in services[node]:
            assert svc.document_root is not None and not svc.document_root.exists()
            assert not any(m.exists() for m in svc.maildirs)
            trail = await audit(stack, svc.service_id)
            events = [event for event, _ in trail]
            for event in ("files_deleted", "mailboxes_deleted", "billing_closed", "cancelled"):
                assert events.count(event) == 1, events
            deleted = dict(trail)
            assert deleted["files_deleted"]["node"] == node
            assert deleted["files_deleted"]["files"] == 30
            assert deleted["mailboxes_deleted"]["node"] == node
            assert len(deleted["mailboxes_deleted"]["mailboxes"]) == 2
        assert roots[node][0].is_dir() and roots[node][1].is_dir()
