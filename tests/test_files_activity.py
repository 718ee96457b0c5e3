"""The files deletion activity alone, in an ActivityEnvironment: a real document root on
disk and the session's PostgreSQL, no worker and no server.

Only what the activity shows to the world is judged: the heartbeats it records (its
progress, what a retried attempt gets back), its result, the tree on disk.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import asyncpg
import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import CancelledError
from temporalio.testing import ActivityEnvironment

from activities.files import FilesActivities
from bajas.models import FilesInput, FilesProgress, FilesResult
from tests.helpers.panel import Panel, ServiceFixture, tree_files

pytestmark = pytest.mark.integration


class Run:
    """One attempt of `delete_files`, its heartbeats recorded."""

    def __init__(
        self, pool: asyncpg.Pool, panel: Panel, svc: ServiceFixture, *, cancel: bool = False
    ) -> None:
        self.activities = FilesActivities(pool, panel.hosting_root)
        self.input = FilesInput(service_id=svc.service_id, customer_id=svc.customer_id)
        self.env = ActivityEnvironment()
        self.heartbeats: list[FilesProgress] = []
        self.cancel = cancel
        self.env.on_heartbeat = self._heartbeat

    def _heartbeat(self, *details: Any) -> None:
        self.heartbeats.append(FilesProgress.model_validate(details[0]))
        if self.cancel:
            self.env.cancel()

    def resuming(self, heartbeats: list[FilesProgress]) -> Run:
        """A later attempt, given the last heartbeat as the server hands it back."""
        payloads = pydantic_data_converter.payload_converter.to_payloads(heartbeats[-1:])
        details: list[Any] = pydantic_data_converter.payload_converter.from_payloads(payloads)
        self.env.info = dataclasses.replace(self.env.info, attempt=2, heartbeat_details=details)
        return self

    async def __call__(self) -> FilesResult:
        return await self.env.run(self.activities.delete_files, self.input)


async def test_progress_is_heartbeated_up_to_the_total(pool: asyncpg.Pool, panel: Panel) -> None:
    svc = await panel.service(files=250, mailboxes=0)
    root = svc.document_root
    assert root is not None and tree_files(root) == 250

    run = Run(pool, panel, svc)
    result = await run()

    assert (result.files_deleted, result.resumed_from) == (250, 0)
    assert not root.exists()
    assert run.heartbeats[0] == FilesProgress(total=250, deleted=0)
    assert run.heartbeats[-1] == FilesProgress(total=250, deleted=250)
    assert {h.total for h in run.heartbeats} == {250}
    done = [h.deleted for h in run.heartbeats]
    assert done == sorted(done), "progress went backwards"


async def test_a_retry_resumes_where_the_last_attempt_got_to(
    pool: asyncpg.Pool, panel: Panel
) -> None:
    svc = await panel.service(files=300, mailboxes=0)
    root = svc.document_root
    assert root is not None
    # What an earlier attempt got through before its worker died: 120 files gone.
    gone = sorted(p for p in root.rglob("*.html"))[:120]
    for path in gone:
        path.unlink()
    assert tree_files(root) == 180

    run = Run(pool, panel, svc).resuming([FilesProgress(total=300, deleted=120)])
    result = await run()

    assert not root.exists()
    assert (result.files_deleted, result.resumed_from) == (300, 120)
    assert run.heartbeats[0] == FilesProgress(total=300, deleted=120)
    assert run.heartbeats[-1] == FilesProgress(total=300, deleted=300)


async def test_cancel_stops_the_deletion_and_the_retry_resumes(
    pool: asyncpg.Pool, panel: Panel
) -> None:
    total = 5000
    svc = await panel.service(files=total, mailboxes=0)
    root = svc.document_root
    assert root is not None

    # Cancelled at its first heartbeat, which says the work has begun: the deletion
    # stops with most of the tree still there (removing 5,000 files takes far longer
    # than the activity takes to see the cancellation).
    first = Run(pool, panel, svc, cancel=True)
    with pytest.raises((asyncio.CancelledError, CancelledError)):
        await first()
    assert first.heartbeats[0] == FilesProgress(total=total, deleted=0)
    left = tree_files(root)
    assert left > 0, "the whole tree went although the attempt was cancelled"

    # The next attempt finishes the tree and counts what the first one deleted.
    second = Run(pool, panel, svc).resuming(first.heartbeats)
    result = await second()

    assert not root.exists()
    assert (result.files_deleted, result.resumed_from) == (total, total - left)
    assert second.heartbeats[0] == FilesProgress(total=total, deleted=total - left)
    assert second.heartbeats[-1] == FilesProgress(total=total, deleted=total)
