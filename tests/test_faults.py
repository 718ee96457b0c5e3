"""Fault tests: real processes broken for real, and the cancellation still right.

Everything here is this module's own (tests/helpers/processes.py): an embedded PostgreSQL, a
Temporal dev server, an SMTP sink, `python worker.py` subprocesses on task queues of
their own, and the hosting and mail roots. The session stack of tests/conftest.py is
not used, so nothing broken here reaches other test files.

1. the worker SIGKILLed while it deletes a large document root, then started again;
2. the SMTP server down when the code must leave, up a few seconds later;
3. PostgreSQL stopped right after the confirmation and started again;
4. the Temporal dev server stopped and started again on its database file while three
   cancellations wait for their codes.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from bajas.dev.mailsink import MailSink, SunkMessage, start_sink
from bajas.models import (
    BillingOutcome,
    CancellationResult,
    CancellationStatus,
    State,
    StepStatus,
)
from bajas.texts import local_time
from starter.client import CancellationClient, CancellationNotFound
from tests.helpers import assert_eventually, free_port, port_open
from tests.helpers.mail import code_in, mails_about
from tests.helpers.panel import Panel, ServiceFixture, make_tree, tree_files
from tests.helpers.processes import (
    Postgres,
    TemporalDevServer,
    WorkerProcess,
    migrated_pool,
    running_worker,
)
from tests.helpers.temporal import connect

pytestmark = pytest.mark.integration

TIMEOUT = 60.0


CODE_SUBJECT = "Código de confirmación"
DONE_SUBJECT = "dado de baja"
EXPIRES_ON = date(2099, 6, 15)  # an auto-debit payer confirming long before: debit_cancelled
BUSINESS_TZ = "America/Argentina/Buenos_Aires"


# ---- the module's own world ---------------------------------------------------------------


def _roots_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, bool]:
    """Where the hosting and mail roots live, and how many files the big tree gets.

    On a tmpfs (/dev/shm) 80,000 files are built in about 1.5 s; on a disk, creating
    files can be far slower (measured here between 2,000 and 25,000 files/s), so the
    tree is smaller there. Deleting runs at 80,000-160,000 files/s on either, so the
    deletion lasts several hundred milliseconds, while the kill lands within tens of
    milliseconds of the first folder going.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * 1024**3:
        return Path(tempfile.mkdtemp(prefix="bajas-faults-", dir=shm)), 80_000, True
    return tmp_path_factory.mktemp("faults-roots"), 40_000, False


@dataclass
class World:
    pg: Postgres
    pool: asyncpg.Pool
    temporal: TemporalDevServer
    client: Client
    mail: MailSink
    mail_port: int
    hosting_root: Path
    mail_root: Path
    logs: Path
    big_tree: int
    panel: Panel

    def worker_env(self, **overrides: object) -> dict[str, object]:
        env: dict[str, object] = {
            "TEMPORAL_ADDRESS": self.temporal.address,
            "TEMPORAL_NAMESPACE": "default",
            "TEMPORAL_TASK_QUEUE": f"bajas-faults-{uuid.uuid4().hex[:12]}",
            "DATABASE_URL": self.pg.url,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": self.mail_port,
            "HOSTING_ROOT": self.hosting_root,
            "MAIL_ROOT": self.mail_root,
            "CODE_HMAC_KEY": "faults-" + uuid.uuid4().hex,
            "CONFIRMATION_WINDOW": 3600,
            "BUSINESS_TZ": BUSINESS_TZ,
        }
        env.update(overrides)
        return env

    def cancellations(
        self, env: dict[str, object], client: Client | None = None
    ) -> CancellationClient:
        return CancellationClient(client or self.client, str(env["TEMPORAL_TASK_QUEUE"]))


@pytest_asyncio.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    logs = tmp_path_factory.mktemp("faults-logs")
    base, big_tree, on_tmpfs = _roots_base(tmp_path_factory)
    pg_base: Path | None = None
    (base / "www").mkdir()
    (base / "mail").mkdir()
    pg: Postgres | None = None
    pool: asyncpg.Pool | None = None
    controller = None
    temporal = TemporalDevServer(
        port=free_port(), ui_port=free_port(), log_path=logs / "temporal.log"
    )
    try:
        # Not under pytest's basetemp: every pytest session that starts makes
        # /tmp/pytest-of-<user> private again, and the server (run as a user of its own
        # when tests run as root) could then no longer reach its data on a restart.
        pg_base = Path(tempfile.mkdtemp(prefix="bajas-faults-pg-"))
        pg = await asyncio.to_thread(Postgres, pg_base / "data")
        pool = await migrated_pool(pg.url, max_size=5)
        mail = MailSink()
        mail_port = free_port()
        controller = start_sink(mail, port=mail_port)
        await temporal.start_listening()
        client = await connect(temporal.address)
        print(f"roots in {base} ({'tmpfs' if on_tmpfs else 'disk'}), logs in {logs}")
        yield World(
            pg=pg,
            pool=pool,
            temporal=temporal,
            client=client,
            mail=mail,
            mail_port=mail_port,
            hosting_root=base / "www",
            mail_root=base / "mail",
            logs=logs,
            big_tree=big_tree,
            panel=Panel(pool, base / "www", base / "mail"),
        )
    finally:
        temporal.stop()
        if controller is not None:
            controller.stop()
        if pool is not None:
            pool.terminate()
        if pg is not None:
            await asyncio.to_thread(pg.cleanup)
        if pg_base is not None:
            shutil.rmtree(pg_base, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


# ---- helpers ---------------------------------------------------------------------------------


def mails(sink: MailSink, svc: ServiceFixture, subject: str) -> list[SunkMessage]:
    return [m for m in mails_about(sink, svc.domain) if subject in m.subject]


async def code_mail(sink: MailSink, svc: ServiceFixture, timeout: float = TIMEOUT) -> SunkMessage:
    found = await assert_eventually(
        lambda: mails(sink, svc, CODE_SUBJECT), f"the code mail for {svc.domain}", timeout=timeout
    )
    return found[0]


async def exactly_one_mail(sink: MailSink, svc: ServiceFixture, subject: str) -> SunkMessage:
    """Wait for the mail, then give a duplicate time to show up."""
    await assert_eventually(
        lambda: mails(sink, svc, subject), f"{subject!r} for {svc.domain}", timeout=TIMEOUT
    )
    await asyncio.sleep(1.0)
    found = mails(sink, svc, subject)
    assert len(found) == 1, [(m.subject, m.received_at) for m in found]
    return found[0]


async def result_of(cc: CancellationClient, service_id: int) -> CancellationResult:
    return await asyncio.wait_for(cc.result(service_id), TIMEOUT)


async def audit_rows(pool: asyncpg.Pool, service_id: int) -> list[dict[str, Any]]:
    """Every audit line of the service, over all runs."""
    recs = await pool.fetch(
        "select run_id, event, details, at from bajas.audit_trail"
        " where service_id = $1 order by id",
        service_id,
    )
    out = []
    for rec in recs:
        row = dict(rec)
        if isinstance(row["details"], str):
            row["details"] = json.loads(row["details"])
        out.append(row)
    return out


EVENTS = {
    "requested",
    "code_sent:1",
    "confirmed",
    "billing_closed",
    "mailboxes_deleted",
    "files_deleted",
    "cancelled",
}


async def assert_audit_once(pool: asyncpg.Pool, svc: ServiceFixture, run_id: str) -> dict:
    """One run, each event of a completed cancellation exactly once; returns them by event."""
    rows = await audit_rows(pool, svc.service_id)
    assert {r["run_id"] for r in rows} == {run_id}, rows
    counts = Counter(r["event"] for r in rows)
    assert EVENTS <= set(counts), sorted(counts)
    assert all(n == 1 for n in counts.values()), counts
    return {r["event"]: r for r in rows}


async def assert_cancelled_once(
    world: World, svc: ServiceFixture, run_id: str, files: int
) -> dict[str, dict[str, Any]]:
    """Rows, disk, billing and audit of a debit_cancelled cancellation carried out once."""
    pool = world.pool
    service = await pool.fetchrow("select * from services where id = $1", svc.service_id)
    assert service["status"] == "cancelled" and service["cancelled_at"] is not None
    assert service["auto_renew"] is False
    assert svc.document_root is not None and not svc.document_root.exists()
    for maildir in svc.maildirs:
        assert not maildir.exists(), maildir
    mailboxes = await pool.fetch("select * from mailboxes where service_id = $1", svc.service_id)
    assert mailboxes and all(m["deleted_at"] is not None for m in mailboxes)

    trail = await assert_audit_once(pool, svc, run_id)
    billing = trail["billing_closed"]
    invoices = {
        r["status"]: r
        for r in await pool.fetch("select * from invoices where service_id = $1", svc.service_id)
    }
    assert set(invoices) == {"paid", "void"}, invoices  # the renewal voided, the paid kept
    assert invoices["void"]["period_start"] >= EXPIRES_ON
    mandates = await pool.fetch(
        "select * from debit_mandates where service_id = $1", svc.service_id
    )
    assert [m["status"] for m in mandates] == ["revoked"]
    assert billing["details"] == {
        "invoices_voided": 1,
        "mandates_revoked": 1,
        "voided_invoice_ids": [invoices["void"]["id"]],
        "revoked_mandate_ids": [mandates[0]["id"]],
    }, billing
    # revoked in the very transaction that wrote the single billing_closed line
    assert mandates[0]["revoked_at"] == billing["at"]
    assert trail["files_deleted"]["details"]["files"] == files
    assert trail["cancelled"]["details"] == {"files_deleted": files, "mailboxes_deleted": 2}

    requests = await pool.fetch(
        "select run_id, state from bajas.cancellation_requests where service_id = $1",
        svc.service_id,
    )
    assert [(r["run_id"], r["state"]) for r in requests] == [(run_id, State.CANCELLED)]
    codes = await pool.fetch(
        "select generation, sent_at, used_at from bajas.confirmation_codes where run_id = $1",
        run_id,
    )
    assert len(codes) == 1 and codes[0]["sent_at"] and codes[0]["used_at"], codes
    assert len(mails(world.mail, svc, CODE_SUBJECT)) <= 1
    return trail


async def attempts_of(cc: CancellationClient, service_id: int, activity_type: str) -> list[int]:
    """The attempt of each completed `activity_type` activity, read from the history."""
    history = await cc.handle(service_id).fetch_history()
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    }
    return [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and scheduled[e.activity_task_started_event_attributes.scheduled_event_id] == activity_type
    ]


async def new_service(world: World, *, files: int = 3) -> ServiceFixture:
    """An auto-debit service with a paid invoice, an open renewal one and a mandate."""
    svc = await world.panel.service(
        expires_on=EXPIRES_ON, payment_method="auto_debit", files=files, mailboxes=2
    )
    assert svc.document_root is not None
    return svc


# ---- 1. the worker killed in the middle of the files step -------------------------------------


async def test_worker_killed_while_deleting_resumes_the_files_step(world: World) -> None:
    n = world.big_tree
    svc = await new_service(world, files=0)
    root = svc.document_root
    assert root is not None
    started = time.monotonic()
    await asyncio.to_thread(make_tree, root, n)
    built = time.monotonic() - started
    assert tree_files(root) == n
    folders = len(os.listdir(root))

    env = world.worker_env()
    cc = world.cancellations(env)
    first = WorkerProcess(env, world.logs / "worker-killed.log", "first worker")
    second = WorkerProcess(env, world.logs / "worker-killed.log", "second worker")
    try:
        await first.start_ready()
        answer = await cc.request(svc.service_id, svc.customer_id)
        assert answer.status.state is State.AWAITING_CONFIRMATION and answer.status.code_sent
        code = code_in(await code_mail(world.mail, svc))
        confirm = await cc.confirm(svc.service_id, code)
        assert confirm.accepted and confirm.state is State.DEPROVISIONING
        confirmed = time.monotonic()

        # Deletion under way: folders vanish from the document root, and the status
        # shows the files step running with the server holding its first heartbeat.
        seen_running = None
        deadline = confirmed + 30
        while True:
            assert time.monotonic() < deadline, "the deletion never started"
            assert root.exists(), "the whole tree went before the kill"
            if len(os.listdir(root)) < folders:
                status = await cc.status(svc.service_id)
                files_step = status.steps.files
                if files_step.status is StepStatus.RUNNING and files_step.total == n:
                    seen_running = files_step
                    break
            await asyncio.sleep(0.002)
        first.kill()
        killed = time.monotonic()
        assert not first.alive()
        remaining = tree_files(root)
        deleted_before_kill = n - remaining
        assert 0 < deleted_before_kill < n, (deleted_before_kill, n)
        await asyncio.sleep(0.5)
        assert tree_files(root) == remaining, "something still deletes after the kill"

        await second.start_ready()
        result = await result_of(cc, svc.service_id)
        finished = time.monotonic()
        status = await cc.status(svc.service_id)  # a query needs a worker
    finally:
        first.stop(timeout=5)
        second.stop(timeout=10)

    assert result.state is State.CANCELLED
    assert result.billing_outcome is BillingOutcome.DEBIT_CANCELLED
    assert result.files_deleted == n
    assert not root.exists()
    trail = await assert_cancelled_once(world, svc, answer.run_id, n)
    files = trail["files_deleted"]["details"]
    # the retry picked up where the killed attempt stopped, and counted what it had deleted
    assert files["resumed_from"] == deleted_before_kill > 0, files
    assert files["files"] == n, files

    assert status.state is State.CANCELLED
    assert status.steps.files.status is StepStatus.DONE
    assert status.steps.files.done == status.steps.files.total == n
    assert status.steps.files.detail == f"resumed after {deleted_before_kill} files", status.steps
    # two executions of the step, each a one-attempt activity run by the workflow: the
    # killed one and the one that resumed it
    assert await attempts_of(cc, svc.service_id, "delete_files") == [1, 1]
    assert (status.steps.files.attempts, status.steps.files.error) == (2, None)
    await exactly_one_mail(world.mail, svc, DONE_SUBJECT)
    assert len(mails(world.mail, svc, CODE_SUBJECT)) == 1
    print(
        f"tree of {n} files built in {built:.1f}s; killed {killed - confirmed:.2f}s after the"
        f" confirmation with {deleted_before_kill} deleted (status then: {seen_running});"
        f" resumed_from={files['resumed_from']}; done {finished - killed:.1f}s after the kill"
    )


# ---- 2. the SMTP server down when the code must leave -----------------------------------------


async def first_status(cc: CancellationClient, service_id: int) -> CancellationStatus:
    """The status query, once the workflow exists."""

    async def probe() -> CancellationStatus | None:
        try:
            return await cc.status(service_id)
        except CancellationNotFound:
            return None

    return await assert_eventually(probe, f"the cancellation of service {service_id}", timeout=30)


async def test_code_mail_waits_for_the_smtp_server(world: World) -> None:
    smtp_port = free_port()  # nothing listens there until the sink starts
    window = 3600
    env = world.worker_env(SMTP_PORT=smtp_port, CONFIRMATION_WINDOW=window)
    cc = world.cancellations(env)
    svc = await new_service(world)
    sink = MailSink()
    controller = None
    async with running_worker(env, world.logs / "worker-smtp.log"):
        # A long `wait`: the request answers once the mail has left (a short one answers
        # with the state as it stands: test_request_answers_after_wait_while_smtp_is_down).
        requesting = asyncio.create_task(
            cc.request(svc.service_id, svc.customer_id, wait=timedelta(seconds=45))
        )
        try:
            asked = time.monotonic()
            early = await first_status(cc, svc.service_id)
            answered = time.monotonic()
            assert early.state is State.AWAITING_CONFIRMATION, early
            assert early.code_sent is False and early.code_expires_at is None, early
            assert early.requested_at is not None
            assert not requesting.done()
            run_id = (await cc.handle(svc.service_id).describe()).run_id
            # an attempt made a code and could not mail it: nothing sent, nothing audited
            codes = await world.pool.fetch(
                "select sent_at from bajas.confirmation_codes where run_id = $1", run_id
            )
            assert [c["sent_at"] for c in codes] in ([], [None]), codes
            trail = Counter(r["event"] for r in await audit_rows(world.pool, svc.service_id))
            assert "code_sent:1" not in trail, trail
            assert not port_open(smtp_port)
            assert not mails(world.mail, svc, CODE_SUBJECT)

            await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - asked)))
            controller = start_sink(sink, port=smtp_port)
            up, up_wall = time.monotonic(), datetime.now(UTC)
            mail = await code_mail(sink, svc, timeout=45)
            arrived = time.monotonic()
            answer = await asyncio.wait_for(requesting, 45)
            assert answer.run_id == run_id

            status = answer.status
            assert status.state is State.AWAITING_CONFIRMATION and status.code_sent is True
            assert status.requested_at == early.requested_at
            assert status.code_expires_at is not None
            # the window counts from the request, not from when the mail could leave
            assert up_wall - status.requested_at > timedelta(seconds=4)
            assert status.code_expires_at == status.requested_at + timedelta(seconds=window)
            assert local_time(status.code_expires_at, BUSINESS_TZ) in mail.body
            assert svc.domain in mail.subject and svc.email in mail.to

            await asyncio.sleep(2.0)
            assert len(mails(sink, svc, CODE_SUBJECT)) == 1
            codes = await world.pool.fetch(
                "select generation, sent_at from bajas.confirmation_codes where run_id = $1",
                run_id,
            )
            assert [c["generation"] for c in codes] == [1] and codes[0]["sent_at"], codes

            confirm = await cc.confirm(svc.service_id, code_in(mail))
            assert confirm.accepted and confirm.state is State.DEPROVISIONING
            result = await result_of(cc, svc.service_id)
            assert result.state is State.CANCELLED
            await exactly_one_mail(sink, svc, DONE_SUBJECT)
            assert len(mails(sink, svc, CODE_SUBJECT)) == 1
        finally:
            requesting.cancel()
            if controller is not None:
                controller.stop()
    await assert_cancelled_once(world, svc, run_id, 3)
    print(
        f"status while SMTP down: code_sent={early.code_sent}, answered in {answered - asked:.1f}s;"
        f" SMTP up {up - asked:.1f}s after the request, code mail {arrived - up:.1f}s later;"
        f" expires {status.code_expires_at} = requested {status.requested_at} + {window}s"
    )


async def test_request_answers_after_wait_while_smtp_is_down(world: World) -> None:
    env = world.worker_env(SMTP_PORT=free_port())  # no SMTP server at all
    cc = world.cancellations(env)
    svc = await new_service(world)
    # the code's activity keeps retrying: no graceful drain to wait for
    async with running_worker(env, world.logs / "worker-smtp-down.log", stop_timeout=1):
        answer = await cc.request(svc.service_id, svc.customer_id, wait=timedelta(seconds=2))
        assert answer.status.state is State.AWAITING_CONFIRMATION
        assert answer.status.code_sent is False
        assert answer.run_id == (await cc.handle(svc.service_id).describe()).run_id


# ---- 3. PostgreSQL restarted during deprovisioning --------------------------------------------


async def test_postgres_restarted_during_deprovisioning(world: World) -> None:
    files = 20_000 if world.big_tree > 40_000 else 5_000
    svc = await new_service(world, files=0)
    assert svc.document_root is not None
    await asyncio.to_thread(make_tree, svc.document_root, files)
    env = world.worker_env()
    cc = world.cancellations(env)
    pid_before = world.pg.pid
    async with running_worker(env, world.logs / "worker-pg.log"):
        try:
            answer = await cc.request(svc.service_id, svc.customer_id)
            assert answer.status.code_sent
            code = code_in(await code_mail(world.mail, svc))
            confirm = await cc.confirm(svc.service_id, code)
            assert confirm.accepted
            await asyncio.to_thread(world.pg.stop)
            stopped = time.monotonic()
            assert not world.pg.running()
            at_stop = await cc.status(svc.service_id)
            assert at_stop.state is State.DEPROVISIONING, at_stop
            await asyncio.sleep(4.0)
            during = await cc.status(svc.service_id)
            # marking the service cancelled needs the database: it cannot have finished
            assert during.state is State.DEPROVISIONING, during
        finally:
            await asyncio.to_thread(world.pg.start)
        restarted = time.monotonic()
        assert world.pg.pid != pid_before
        result = await result_of(cc, svc.service_id)
        finished = time.monotonic()
    assert result.state is State.CANCELLED
    assert result.billing_outcome is BillingOutcome.DEBIT_CANCELLED
    assert result.files_deleted == files
    await assert_cancelled_once(world, svc, answer.run_id, files)
    await exactly_one_mail(world.mail, svc, DONE_SUBJECT)
    assert len(mails(world.mail, svc, CODE_SUBJECT)) == 1
    retried = {
        name: await attempts_of(cc, svc.service_id, name)
        for name in ("delete_files", "delete_mailboxes")
    }
    print(
        f"PostgreSQL down {restarted - stopped:.1f}s; steps when it stopped:"
        f" {at_stop.steps.model_dump(mode='json')}; attempts {retried};"
        f" cancelled {finished - restarted:.1f}s after the restart"
    )


# ---- 4. the Temporal server restarted while cancellations wait for their codes ----------------


async def test_temporal_restarted_while_awaiting_confirmation(world: World, tmp_path: Path) -> None:
    server = TemporalDevServer(
        port=free_port(),
        ui_port=free_port(),
        log_path=world.logs / "temporal-restarted.log",
        db_file=tmp_path / "temporal.db",
    )
    try:
        await server.start_listening()
        client = await connect(server.address)
        env = world.worker_env(TEMPORAL_ADDRESS=server.address)
        async with running_worker(env, world.logs / "worker-temporal.log") as worker:
            cc = world.cancellations(env, client)
            services = [await new_service(world) for _ in range(3)]
            runs: dict[int, str] = {}
            codes: dict[int, str] = {}
            for svc in services:
                answer = await cc.request(svc.service_id, svc.customer_id)
                assert answer.status.state is State.AWAITING_CONFIRMATION
                assert answer.status.code_sent
                runs[svc.service_id] = answer.run_id
                codes[svc.service_id] = code_in(await code_mail(world.mail, svc))

            down = time.monotonic()
            exit_code = await asyncio.to_thread(server.stop)
            assert not server.alive() and not port_open(server.port), exit_code
            await asyncio.sleep(1.0)
            await server.start_listening()
            client = await connect(server.address)
            up = time.monotonic()
            cc = world.cancellations(env, client)

            for svc in services:
                status = await cc.status(svc.service_id)
                assert status.state is State.AWAITING_CONFIRMATION, status
                desc = await cc.handle(svc.service_id).describe()
                assert desc.run_id == runs[svc.service_id]
            for svc in services:
                confirm = await cc.confirm(svc.service_id, codes[svc.service_id])
                assert confirm.accepted and confirm.state is State.DEPROVISIONING, confirm
            results = await asyncio.gather(*(result_of(cc, s.service_id) for s in services))
            done = time.monotonic()
            assert worker.alive(), "the worker did not survive the server restart"
        assert [r.state for r in results] == [State.CANCELLED] * 3
        for svc in services:
            await assert_cancelled_once(world, svc, runs[svc.service_id], 3)
            await exactly_one_mail(world.mail, svc, DONE_SUBJECT)
            assert len(mails(world.mail, svc, CODE_SUBJECT)) == 1
        print(
            f"server restarted in {up - down:.1f}s (exit {exit_code});"
            f" 3 confirmed and cancelled {done - up:.1f}s later"
        )
    finally:
        server.stop()
