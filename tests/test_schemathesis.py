"""Schemathesis against the real API: a uvicorn server on the real worker, dev server,
PostgreSQL and SMTP sink, with the bearer token.

The path values are a seeded customer and its services (active, auto-debit, suspended,
cancelled, and one cancelled through the workflow with its receipt) plus a stranger's service, so generated cases reach past the 404s and start,
confirm, resend and withdraw real cancellations. The run fails on any 5xx and on any
answer the OpenAPI schema does not document (status, headers, body, `Allow`).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from tests.conftest import Stack
from tests.conftest_api import (  # noqa: F401 - fixtures
    TOKEN,
    Server,
    api_settings,
    app,
    cancel_through,
    server,
)

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 25
TIMEOUT = 300.0
# Left out, as not about conformance: valid data may meet a state that refuses it (409, a
# wrong code's 422, a stranger's 404), and DELETE withdraws a cancellation, whose GET then
# answers "withdrawn" (the contract's status query), not 404.
NOT_CHECKED = "positive_data_acceptance,use_after_free"


def _schemathesis() -> list[str]:
    script = Path(sys.executable).with_name("st")
    return [str(script)] if script.exists() else [sys.executable, "-m", "schemathesis.cli"]


def _config(customer_id: int, service_ids: list[int]) -> str:
    values = ", ".join(str(sid) for sid in service_ids)
    return (
        "[dictionaries.services]\n"
        f"values = [{values}]\n\n"
        "[parameters]\n"
        f'"path.cid" = {customer_id}\n'
        '"path.sid" = { dictionary = "services" }\n'
    )


async def _terminate(stack: Stack, service_id: int) -> None:
    handle = stack.cancellations.handle(service_id)
    try:
        if (await handle.describe()).status is WorkflowExecutionStatus.RUNNING:
            await handle.terminate(reason="schemathesis run over")
    except RPCError:
        pass


async def test_the_api_answers_as_its_schema_says(
    stack: Stack,
    server: Server,  # noqa: F811
    tmp_path: Path,
) -> None:
    customer = await stack.panel.customer()
    mine = [
        await stack.panel.service(customer, files=2, mailboxes=1),
        await stack.panel.service(customer, payment_method="auto_debit", files=1, mailboxes=0),
        await stack.panel.service(customer, status="suspended", files=1, mailboxes=0),
        await stack.panel.service(customer, status="cancelled", files=1, mailboxes=0),
    ]
    # one cancelled through the workflow, so that its receipt is there to read
    done = await stack.panel.service(customer, files=1, mailboxes=1)
    await cancel_through(stack, done)
    mine.append(done)
    stranger = await stack.panel.service(files=1, mailboxes=0)
    ids = [s.service_id for s in mine] + [stranger.service_id]
    # One waits for its code already, so confirm, resend and withdraw meet a cancellation
    # whichever operation comes first.
    await stack.cancellations.request(mine[1].service_id, customer[0])
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(customer[0], ids))
    report = tmp_path / "report.json"
    try:
        proc = await asyncio.create_subprocess_exec(
            *_schemathesis(),
            "--no-color",
            "--config-file",
            str(config),
            "run",
            f"{server.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--checks",
            "all",
            "--exclude-checks",
            NOT_CHECKED,
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "20240601",
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--report",
            "json",
            "--report-json-path",
            str(report),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    finally:
        for sid in ids:
            await _terminate(stack, sid)
    text = out.decode(errors="replace")
    print(text)  # shown by pytest on failure, or with -s
    assert proc.returncode == 0, text[-12000:]
    # It reached past the 404s: every operation on a cancellation was answered, at least
    # once, by one (2xx, or a 409/422 from its state) ...
    rates = json.loads(report.read_text())["valid_rates"]
    on_cancellations = {op: r for op, r in rates.items() if "/cancellation" in op}
    assert len(on_cancellations) == 8, rates
    for op, by_phase in on_cancellations.items():
        answered = sum(
            n for phase in by_phase.values() for k, n in phase.items() if k != "unreachable"
        )
        assert answered > 0, (op, by_phase)
    # ... and the stranger's service stayed out of reach.
    assert (
        await stack.pool.fetchval(
            "select count(*) from bajas.cancellation_requests where service_id = $1",
            stranger.service_id,
        )
        == 0
    )
