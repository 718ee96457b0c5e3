"""The `bajas` command as an operator runs it: a subprocess against the session stack.

Each command reads TEMPORAL_ADDRESS, TEMPORAL_TASK_QUEUE and DATABASE_URL from its
environment. Bad input and unreachable servers must end in one `error: ...` line on
stderr and a non-zero exit, never a traceback (contract section 6). The worker runs in
this test process, so commands are awaited with asyncio, never with a blocking call.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from argon2 import PasswordHasher
from rich.console import Console
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from bajas.models import MAX_WRONG_CODES, ReasonCode, State
from tests.conftest import Stack
from tests.helpers import assert_eventually, free_port
from tests.helpers.mail import code_in, mails_about
from tests.helpers.panel import tree_snapshot
from tests.helpers.processes import clean_env

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
CODE_SUBJECT = "Código de confirmación"


@dataclass
class Run:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"bajas {' '.join(self.args)} -> {self.code}\nstdout: {self.out!r}\nstderr: {self.err!r}"


def _command() -> list[str]:
    script = Path(sys.executable).with_name("bajas")
    return [str(script)] if script.exists() else [sys.executable, "-m", "starter.cli"]


def stack_env(stack: Stack, **overrides: str) -> dict[str, str]:
    """A clean environment pointing at the session stack, plus `overrides`."""
    return clean_env(
        dict(
            TEMPORAL_ADDRESS=stack.client.service_client.config.target_host,
            TEMPORAL_NAMESPACE=stack.client.namespace,
            TEMPORAL_TASK_QUEUE=stack.settings.temporal_task_queue,
            DATABASE_URL=stack.settings.database_url or "",
            COLUMNS="200",
            NO_COLOR="1",
            TERM="dumb",
        )
        | overrides
    )


async def bajas(
    stack: Stack, *args: str, stdin: str | None = None, timeout: float = TIMEOUT, **env: str
) -> Run:
    proc = await asyncio.create_subprocess_exec(
        *_command(),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=stack_env(stack, **env),
        cwd=stack.settings.hosting_root.parent,  # a scratch folder: no ./.bajas in the repo
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate((stdin or "").encode()), timeout=timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"bajas {' '.join(args)} still running after {timeout}s") from None
    assert proc.returncode is not None
    return Run(args, proc.returncode, out.decode(), err.decode())


def assert_one_error_line(run: Run, code: int, *words: str) -> str:
    """Exit `code`, exactly one stderr line `error: ...` holding every word, no traceback."""
    assert run.code == code, run
    assert "Traceback" not in run.err + run.out, run
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run
    line = lines[0]
    assert line.startswith("error: "), run
    for word in words:
        assert word in line, run
    return line


def code_mails(stack: Stack, domain: str) -> list[Any]:
    return [m for m in mails_about(stack.mail, domain) if CODE_SUBJECT in m.subject]


async def wait_code(stack: Stack, domain: str) -> str:
    mails = await assert_eventually(lambda: code_mails(stack, domain), f"a code mail for {domain}")
    return code_in(mails[0])


async def terminate(stack: Stack, service_id: int) -> None:
    handle = stack.cancellations.handle(service_id)
    try:
        desc = await handle.describe()
    except RPCError:
        return
    if desc.status is WorkflowExecutionStatus.RUNNING:
        await handle.terminate(reason="cli test over")


async def service_rows(stack: Stack, service_id: int) -> dict[str, Any]:
    async def table(name: str) -> list[dict[str, Any]]:
        recs = await stack.pool.fetch(
            f"select * from {name} where service_id = $1 order by id", service_id
        )
        return [dict(r) for r in recs]

    row = await stack.pool.fetchrow("select * from services where id = $1", service_id)
    return {
        "service": dict(row),
        "mailboxes": await table("mailboxes"),
        "invoices": await table("invoices"),
        "mandates": await table("debit_mandates"),
    }


def unknown_id() -> int:
    return 8_000_000_000_000 + uuid.uuid4().int % 1_000_000


# ---- bad usage: exit 2 ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param(("status", "--service", "abc"), ("--service", "integer"), id="status_abc"),
        pytest.param(("status", "--service", "0"), ("--service",), id="status_zero"),
        pytest.param(("confirm", "--service", "1"), ("--code",), id="confirm_without_code"),
        pytest.param(("request", "--service", "1"), ("--customer",), id="request_no_customer"),
        pytest.param(
            ("request", "--customer", "1", "--customer-number", "C1", "--service", "1"),
            ("exactly one of --customer", "--customer-number"),
            id="request_both_customers",
        ),
        pytest.param(("status", "--service", "102.0"), ("--service", "102.0"), id="float"),
        pytest.param(("status", "--service", " 102"), ("--service", "plain"), id="blank"),
        pytest.param(("status", "--service", "+102"), ("--service", "plain"), id="sign"),
        pytest.param(("withdraw", "--service", "1_02"), ("--service", "plain"), id="underscore"),
        pytest.param(
            ("confirm", "--service", "1e2", "--code", "123456"), ("--service",), id="exponent"
        ),
        pytest.param(
            ("request", "--customer", "7.0", "--service", "1"), ("--customer",), id="customer_float"
        ),
        pytest.param(
            ("set-password", "--customer", "0x7"), ("--customer", "plain"), id="set_password_hex"
        ),
        pytest.param(
            ("status", "--service", str(2**63)), ("--service", str(2**63)), id="beyond_bigint"
        ),
        pytest.param(("status",), ("--service",), id="status_no_service"),
        pytest.param(("bajar", "--service", "1"), ("bajar",), id="unknown_command"),
        pytest.param(
            ("status", "--service", "1", "--colour", "red"), ("--colour",), id="unknown_option"
        ),
    ],
)
async def test_bad_usage_is_one_line_and_exit_2(
    stack: Stack, args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    run = await bajas(stack, *args)
    assert_one_error_line(run, 2, *words)
    assert run.out == ""


# ---- bad input: exit 1 ----------------------------------------------------------------------


async def test_malformed_code_is_refused_and_counts_nothing(stack: Stack) -> None:
    svc = await stack.panel.service()
    before = await service_rows(stack, svc.service_id)
    files = tree_snapshot(svc.document_root) if svc.document_root else None
    answer = await stack.cancellations.request(svc.service_id, svc.customer_id)
    assert answer.status.state is State.AWAITING_CONFIRMATION
    try:
        for bad in ("12", "abcdef", "1234567", "١٢٣٤٥٦", " 123456", ""):
            run = await bajas(stack, "confirm", "--service", str(svc.service_id), "--code", bad)
            assert_one_error_line(run, 1, "6 digits")
        status = await stack.cancellations.status(svc.service_id)
        assert status.state is State.AWAITING_CONFIRMATION
        assert status.attempts_left == MAX_WRONG_CODES
        assert await service_rows(stack, svc.service_id) == before
        assert svc.document_root is not None and tree_snapshot(svc.document_root) == files
        assert len(code_mails(stack, svc.domain)) == 1
    finally:
        await terminate(stack, svc.service_id)


async def test_wrong_code_says_the_attempts_left(stack: Stack) -> None:
    svc = await stack.panel.service(mailboxes=0)
    await stack.cancellations.request(svc.service_id, svc.customer_id)
    code = await wait_code(stack, svc.domain)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    try:
        run = await bajas(stack, "confirm", "--service", str(svc.service_id), "--code", wrong)
        assert_one_error_line(run, 1, "not accepted", "attempts left: 4")
        assert (await stack.cancellations.status(svc.service_id)).attempts_left == 4
    finally:
        await terminate(stack, svc.service_id)


async def test_status_of_an_unknown_service(stack: Stack) -> None:
    sid = unknown_id()
    for args in (("status", "--service", str(sid)), ("status", "--service", str(sid), "--json")):
        run = await bajas(stack, *args)
        assert_one_error_line(run, 1, "no cancellation", str(sid))
        assert run.out == ""
    run = await bajas(stack, "withdraw", "--service", str(sid))
    assert_one_error_line(run, 1, "no cancellation", str(sid))
    run = await bajas(stack, "confirm", "--service", str(sid), "--code", "123456")
    assert_one_error_line(run, 1, "no cancellation", str(sid))


async def test_request_for_another_customers_service(stack: Stack) -> None:
    svc = await stack.panel.service()
    stranger, _ = await stack.panel.customer()
    before = await service_rows(stack, svc.service_id)
    files = tree_snapshot(svc.document_root) if svc.document_root else None
    try:
        run = await bajas(
            stack, "request", "--customer", str(stranger), "--service", str(svc.service_id)
        )
        # the error says why a number copied from the panel does not work here
        assert_one_error_line(
            run, 1, str(svc.service_id), "not the customer's service", "--customer-number"
        )
        await asyncio.sleep(0.3)
        assert await service_rows(stack, svc.service_id) == before
        assert svc.document_root is not None and tree_snapshot(svc.document_root) == files
        assert mails_about(stack.mail, svc.domain) == []
    finally:
        await terminate(stack, svc.service_id)


async def test_request_for_an_unknown_service(stack: Stack) -> None:
    cid, _ = await stack.panel.customer()
    sid = unknown_id()
    run = await bajas(stack, "request", "--customer", str(cid), "--service", str(sid))
    assert_one_error_line(run, 1, str(sid), "unknown service")


async def test_an_id_with_a_decimal_point_starts_nothing(stack: Stack) -> None:
    """`--service 102.0` once meant 102 and started a real cancellation."""
    svc = await stack.panel.service()
    run = await bajas(
        stack, "request", "--customer", str(svc.customer_id), "--service", f"{svc.service_id}.0"
    )
    assert_one_error_line(run, 2, "--service", "plain integers")
    await asyncio.sleep(0.3)
    assert (
        await stack.pool.fetchval(
            "select count(*) from bajas.cancellation_requests where service_id = $1", svc.service_id
        )
        == 0
    )
    assert mails_about(stack.mail, svc.domain) == []


async def test_request_by_the_customer_number_the_panel_shows(stack: Stack) -> None:
    svc = await stack.panel.service(mailboxes=0)
    number = await stack.pool.fetchval(
        "select number from customers where id = $1", svc.customer_id
    )
    assert number != str(svc.customer_id)  # the panel's number is not the id
    try:
        run = await bajas(
            stack, "request", "--customer-number", number, "--service", str(svc.service_id)
        )
        assert run.code == 0, run
        assert "awaiting_confirmation" in run.out and run.err == "", run
        status = await stack.cancellations.status(svc.service_id)
        assert status.customer_id == svc.customer_id
        await wait_code(stack, svc.domain)
    finally:
        await terminate(stack, svc.service_id)

    run = await bajas(
        stack, "request", "--customer-number", "no-such-number", "--service", str(svc.service_id)
    )
    assert_one_error_line(run, 1, "no customer with número de cliente", "no-such-number")
    stranger, _ = await stack.panel.customer()
    run = await bajas(
        stack, "request", "--customer-number", f"C{stranger}", "--service", str(svc.service_id)
    )
    assert_one_error_line(run, 1, f"customer number C{stranger}", "not the customer's service")


# ---- the whole life through the CLI ----------------------------------------------------------


async def test_happy_path_through_the_cli(stack: Stack) -> None:
    svc = await stack.panel.service(files=4, mailboxes=1)
    sid = str(svc.service_id)
    try:
        run = await bajas(
            stack,
            "request",
            "--customer",
            str(svc.customer_id),
            "--service",
            sid,
            "--reason",
            "cli",
        )
        assert run.code == 0, run
        assert "awaiting_confirmation" in run.out and run.err == "", run
        code = await wait_code(stack, svc.domain)

        # a repeated request shows the one in progress, and sends no second mail
        run = await bajas(stack, "request", "--customer", str(svc.customer_id), "--service", sid)
        assert run.code == 0 and "awaiting_confirmation" in run.out, run

        run = await bajas(stack, "status", "--service", sid, "--json")
        assert run.code == 0, run
        pending = json.loads(run.out)
        assert pending["state"] == "awaiting_confirmation"
        assert pending["attempts_left"] == MAX_WRONG_CODES and pending["code_sent"] is True

        run = await bajas(stack, "confirm", "--service", sid, "--code", code)
        assert run.code == 0, run
        assert "confirmed" in run.out and run.err == "", run
        result = await asyncio.wait_for(stack.cancellations.result(svc.service_id), TIMEOUT)
        assert result.state is State.CANCELLED

        run = await bajas(stack, "status", "--service", sid, "--json")
        assert run.code == 0, run
        final = json.loads(run.out)
        assert final["state"] == "cancelled"
        assert final["service_id"] == svc.service_id
        assert final["billing_outcome"] == "no_further_charges"
        assert {final["steps"][s]["status"] for s in ("billing", "mailboxes", "files")} == {"done"}
        run = await bajas(stack, "status", "--service", sid)
        assert run.code == 0 and "cancelled" in run.out, run
        assert len(code_mails(stack, svc.domain)) == 1
        assert svc.document_root is not None and not svc.document_root.exists()
        row = await stack.pool.fetchrow(
            "select status, cancelled_at from services where id = $1", svc.service_id
        )
        assert row["status"] == "cancelled" and row["cancelled_at"] is not None

        # afterwards: withdrawing is refused in one line
        run = await bajas(stack, "withdraw", "--service", sid)
        assert_one_error_line(run, 1, "cannot withdraw", "cancelled")
    finally:
        await terminate(stack, svc.service_id)


# ---- set-password ---------------------------------------------------------------------------


async def test_set_password_reads_the_clave_from_stdin(stack: Stack) -> None:
    cid, _ = await stack.panel.customer()
    clave = "una clave de prueba ñ"
    run = await bajas(stack, "set-password", "--customer", str(cid), stdin=clave + "\n")
    assert run.code == 0, run
    assert clave not in run.out + run.err
    stored = await stack.pool.fetchval("select password_hash from customers where id = $1", cid)
    assert stored and clave not in stored
    assert PasswordHasher().verify(stored, clave)

    # too short: refused, the stored hash stays
    run = await bajas(stack, "set-password", "--customer", str(cid), stdin="corta\n")
    assert_one_error_line(run, 1, "8 characters")
    assert (
        await stack.pool.fetchval("select password_hash from customers where id = $1", cid)
        == stored
    )

    unknown = unknown_id()
    run = await bajas(stack, "set-password", "--customer", str(unknown), stdin=clave + "\n")
    assert_one_error_line(run, 1, "no customer", str(unknown))
    assert await stack.pool.fetchval("select count(*) from customers where id = $1", unknown) == 0


# ---- migrate --------------------------------------------------------------------------------


def _url_with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


TABLES = (
    "select table_schema, table_name from information_schema.tables"
    " where table_schema in ('public', 'bajas') order by 1, 2"
)


async def test_migrate_twice_is_idempotent(stack: Stack) -> None:
    """On a fresh database: the first run creates everything, the second changes nothing."""
    url = stack.settings.database_url
    assert url
    name = f"bajas_cli_{uuid.uuid4().hex[:10]}"
    # Not dropped afterwards: it goes with the session's throwaway server. DROP DATABASE
    # forces a checkpoint, which aborts the embedded server when a concurrent pytest
    # session has meanwhile reset the permissions of the shared /tmp/pytest-of-<user>.
    await stack.pool.execute(f"create database {name}")
    fresh = _url_with_database(url, name)
    first = await bajas(stack, "migrate", DATABASE_URL=fresh)
    assert first.code == 0, first
    assert "migrations applied" in first.out, first
    conn = await asyncpg.connect(fresh)
    try:
        await conn.execute(
            "insert into customers (id, number, email, name) values (1, 'C1', 'a@b.c', 'A')"
        )
        tables = await conn.fetch(TABLES)
        second = await bajas(stack, "migrate", DATABASE_URL=fresh)
        assert second.code == 0, second
        assert "up to date" in second.out, second
        assert second.err == "", second
        assert await conn.fetch(TABLES) == tables
        assert await conn.fetchval("select count(*) from customers") == 1
    finally:
        await conn.close()
    # and the session's own database, already migrated
    run = await bajas(stack, "migrate")
    assert run.code == 0 and "up to date" in run.out, run


# ---- servers that cannot be reached -------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("status", "--service", "1"), id="status"),
        pytest.param(("status", "--service", "1", "--json"), id="status_json"),
        pytest.param(("request", "--customer", "1", "--service", "1"), id="request"),
        pytest.param(("confirm", "--service", "1", "--code", "123456"), id="confirm"),
        pytest.param(("withdraw", "--service", "1"), id="withdraw"),
    ],
)
async def test_temporal_unreachable(stack: Stack, args: tuple[str, ...]) -> None:
    run = await bajas(stack, *args, TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}")
    assert_one_error_line(run, 1, "cannot reach Temporal")
    assert run.out == ""


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        pytest.param(("migrate",), None, id="migrate"),
        pytest.param(("set-password", "--customer", "1"), "una clave larga\n", id="set_password"),
    ],
)
async def test_database_unreachable(stack: Stack, args: tuple[str, ...], stdin: str | None) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    run = await bajas(stack, *args, stdin=stdin, DATABASE_URL=closed)
    assert_one_error_line(run, 1, "cannot reach")
    assert run.out == ""


async def test_database_url_missing(stack: Stack) -> None:
    env = stack_env(stack)
    env.pop("DATABASE_URL")
    proc = await asyncio.create_subprocess_exec(
        *_command(),
        "migrate",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=stack.settings.hosting_root.parent,
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    run = Run(("migrate",), proc.returncode or 0, out.decode(), err.decode())
    assert_one_error_line(run, 1, "DATABASE_URL")


# ---- the wrappers that need no activated .venv -------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


async def _script(path: Path, *args: str) -> Run:
    proc = await asyncio.create_subprocess_exec(
        str(path),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")},
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    return Run((path.name, *args), proc.returncode or 0, out.decode(), err.decode())


async def test_scripts_run_bajas_and_temporal_from_the_venv(tmp_path: Path) -> None:
    """`./scripts/bajas` and `./scripts/temporal` work from a shell where neither is on PATH."""
    assert (ROOT / ".venv" / "bin" / "bajas").exists(), "install bajas into .venv first"
    run = await _script(ROOT / "scripts" / "bajas", "request", "--help")
    assert run.code == 0 and "--customer-number" in run.out, run
    run = await _script(ROOT / "scripts" / "bajas", "status", "--service", "102.0")
    assert_one_error_line(run, 2, "--service")
    run = await _script(ROOT / "scripts" / "temporal", "--version")
    assert run.code == 0 and run.out.startswith("temporal version"), run
    # a checkout without .venv: one line that says what to do
    (tmp_path / "scripts").mkdir()
    copy = tmp_path / "scripts" / "bajas"
    copy.write_bytes((ROOT / "scripts" / "bajas").read_bytes())
    copy.chmod(0o755)
    run = await _script(copy, "status", "--service", "1")
    assert_one_error_line(run, 1, ".venv/bin/bajas not found", "./scripts/dev")


# ---- when and why, and the report (contract section 8) -----------------------------------


async def test_request_for_the_end_of_the_term(stack: Stack) -> None:
    svc = await stack.panel.service(expires_on=date(2099, 6, 15), files=2, mailboxes=1)
    sid, cid = str(svc.service_id), str(svc.customer_id)
    try:
        run = await bajas(
            stack,
            "request",
            "--customer",
            cid,
            "--service",
            sid,
            "--effective",
            "end_of_term",
            "--reason-code",
            "cambio_de_proveedor",
        )
        assert run.code == 0, run
        assert "end_of_term" in run.out and "cambio_de_proveedor" in run.out, run
        code = await wait_code(stack, svc.domain)
        run = await bajas(stack, "confirm", "--service", sid, "--code", code)
        assert run.code == 0, run
        assert "scheduled for deletion at 2099-06-15 03:00:00+00:00" in run.out, run
        run = await bajas(stack, "status", "--service", sid, "--json")
        status = json.loads(run.out)
        assert (status["state"], status["effective"], status["effective_at"]) == (
            "scheduled",
            "end_of_term",
            "2099-06-15T03:00:00Z",
        )
        assert status["reason_code"] == "cambio_de_proveedor"
        run = await bajas(stack, "withdraw", "--service", sid)
        assert run.code == 0 and "withdrawn" in run.out, run
        assert svc.document_root is not None and svc.document_root.exists()
    finally:
        await terminate(stack, svc.service_id)


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        pytest.param(("--reason", "x" * 501), 1, ("at most 500 characters", "501"), id="long"),
        pytest.param(("--reason-code", "caro"), 2, ("--reason-code", "precio"), id="code"),
        pytest.param(("--effective", "mañana"), 2, ("--effective", "end_of_term"), id="when"),
    ],
)
async def test_bad_reasons_start_nothing(
    stack: Stack, args: tuple[str, ...], code: int, words: tuple[str, ...]
) -> None:
    svc = await stack.panel.service()
    run = await bajas(
        stack,
        "request",
        "--customer",
        str(svc.customer_id),
        "--service",
        str(svc.service_id),
        *args,
    )
    assert_one_error_line(run, code, *words)
    with pytest.raises(RPCError):
        await stack.cancellations.handle(svc.service_id).describe()
    assert not await stack.pool.fetchval(
        "select count(*) from bajas.cancellation_requests where service_id = $1", svc.service_id
    )


def _counts(report: dict[str, Any], by: str, key: str) -> dict[str | None, int]:
    return {entry[key]: entry["count"] for entry in report[by]}


async def test_report_counts_the_requests_per_reason_and_outcome(stack: Stack) -> None:
    since = datetime.now(ZoneInfo(stack.settings.business_tz)).date().isoformat()

    async def report() -> dict[str, Any]:
        run = await bajas(stack, "report", "--since", since, "--json")
        assert run.code == 0, run
        return dict(json.loads(run.out))

    before = await report()
    assert before["since"] == since and before["business_tz"] == stack.settings.business_tz

    # confirmed, for the price; withdrawn, for the price; withdrawn, no reason given
    done, kept, quiet = [await stack.panel.service(files=1, mailboxes=0) for _ in range(3)]
    for svc, reason in ((done, ReasonCode.PRECIO), (kept, ReasonCode.PRECIO), (quiet, None)):
        await stack.cancellations.request(svc.service_id, svc.customer_id, reason_code=reason)
    await stack.cancellations.confirm(done.service_id, await wait_code(stack, done.domain))
    assert (await stack.cancellations.result(done.service_id)).state is State.CANCELLED
    for svc in (kept, quiet):
        await stack.cancellations.withdraw(svc.service_id)
    # a request the check rejected never became a cancellation: not counted
    stranger = await stack.panel.service()
    rejected = await stack.cancellations.request(stranger.service_id, done.customer_id)
    assert rejected.status.state is State.REJECTED

    after = await report()
    assert after["total"] - before["total"] == 3
    reasons_before = _counts(before, "by_reason_code", "reason_code")
    reasons = _counts(after, "by_reason_code", "reason_code")
    assert list(reasons) == [*(c.value for c in ReasonCode), None]
    assert {
        k: reasons[k] - reasons_before[k] for k in reasons if reasons[k] != reasons_before[k]
    } == {
        "precio": 2,
        None: 1,
    }
    outcomes_before = _counts(before, "by_billing_outcome", "billing_outcome")
    outcomes = _counts(after, "by_billing_outcome", "billing_outcome")
    assert {
        k: outcomes[k] - outcomes_before[k] for k in outcomes if outcomes[k] != outcomes_before[k]
    } == {"no_further_charges": 1, None: 2}
    # the counts are the rows' own
    rows = await stack.pool.fetchval(
        "select count(*) from bajas.cancellation_requests where state <> 'rejected'"
        " and requested_at >= ($1::date::timestamp at time zone $2)",
        date.fromisoformat(since),
        stack.settings.business_tz,
    )
    assert after["total"] == rows

    table = await bajas(stack, "report", "--since", since)
    assert table.code == 0, table
    assert "sin motivo" in table.out and "precio" in table.out and "not confirmed" in table.out
    assert f"cancellations requested since {since}" in table.out


@pytest.mark.parametrize("text", ["2026-13-01", "20260101", "ayer", "2026-2-1"])
async def test_report_with_a_bad_date_is_one_line(stack: Stack, text: str) -> None:
    run = await bajas(stack, "report", "--since", text)
    assert_one_error_line(run, 2, "--since", "YYYY-MM-DD", text)


def test_the_status_table_shows_each_steps_attempts_error_and_progress(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What `--json` says of a stuck step is in the table too: a user sees the files step
    on its seventh attempt, why it fails, and how far it got."""
    from bajas.models import CancellationStatus, StepProgress, Steps, StepStatus
    from starter import cli

    status = CancellationStatus(
        state=State.DEPROVISIONING,
        service_id=1,
        customer_id=2,
        requested_by="panel",
        attempts_left=MAX_WRONG_CODES,
        resends_left=3,
        steps=Steps(
            {
                "billing": StepProgress(status=StepStatus.DONE, done=3, attempts=1),
                "mailboxes": StepProgress(status=StepStatus.DONE, done=2, total=2, attempts=1),
                "files": StepProgress(
                    status=StepStatus.RUNNING,
                    done=62,
                    total=82,
                    attempts=7,
                    error="PermissionError: [Errno 1] Operation not permitted: '…/locked.php'",
                ),
            }
        ),
    )
    monkeypatch.setattr(cli, "out", Console(width=400))
    with cli.out.capture() as captured:
        cli._print_status(status, title="service-cancellation-1")
    text = " ".join(captured.get().split())
    assert "running, 62/82 done, attempt 7" in text
    assert "last error: PermissionError" in text and "locked.php" in text
    assert "done, 2/2 done, 1 attempt" in text
