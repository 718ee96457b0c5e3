"""The `bajas` command: the dev stack, the services (migrate, worker, api) and the
operator commands of contract section 6.

Every failure an operator can cause or meet (bad input, a server that cannot be
reached) ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import re
import sys
from collections.abc import Callable, Coroutine
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from bajas.config import ConfigError, Settings, Unreachable, settings_from_env
from bajas.models import (
    MAX_ID,
    CancellationStatus,
    Effective,
    ReasonCode,
    State,
    StepProgress,
    StepStatus,
    reason_refusal,
)

if TYPE_CHECKING:
    from starter.client import CancellationClient
    from starter.report import CancellationReport

T = TypeVar("T")
app = typer.Typer(
    name="bajas",
    help="Durable cancellation of hosting services on Temporal.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console()


def _plain_id(text: str) -> int:
    """An id as the panel database has it. `int()` alone would take "102.0", " 102" or
    "1_02" for 102: an operator who typed that meant something else, so it is refused."""
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= MAX_ID:
        raise typer.BadParameter(f"{text!r} is not an id: ids are plain integers, 1 to {MAX_ID}")
    return int(text)


def _id_option(flag: str, what: str) -> Any:
    return typer.Option(
        flag, help=what, parser=_plain_id, metavar=flag.removeprefix("--")[0].upper() + "ID"
    )


CUSTOMER_ID = "customer id (customers.id)"
ServiceOpt = Annotated[int, _id_option("--service", "service id (services.id)")]
CustomerOpt = Annotated[int, _id_option("--customer", CUSTOMER_ID)]


class Failure(Exception):
    """Shown as `error: <message>`; exit code 1."""


def _settings() -> Settings:
    return settings_from_env()


def _run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coro_fn())


async def _cancellations(settings: Settings) -> CancellationClient:
    from bajas import tracing
    from bajas.temporal_client import connect
    from starter.client import CancellationClient

    tracing.setup("bajas-cli")
    client = await connect(settings)  # Unreachable names the address
    return CancellationClient(client, settings.temporal_task_queue)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


# ---- services ---------------------------------------------------------------------------


@app.command()
def dev(
    host: Annotated[
        str, typer.Option(help="address for the API, panel and SMTP sink")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port of the HTTP API and panel")] = 8000,
    smtp_port: Annotated[int, typer.Option(help="port of the SMTP sink")] = 1025,
    codec_port: Annotated[int, typer.Option(help="port of the codec server")] = 8081,
) -> None:
    """Everything on one machine with embedded defaults (state in ./.bajas/)."""
    from bajas.dev.runner import DevOptions, run_dev

    options = DevOptions(host=host, api_port=port, smtp_port=smtp_port, codec_port=codec_port)
    try:
        asyncio.run(run_dev(options))
    except KeyboardInterrupt:
        pass


@app.command()
def migrate() -> None:
    """Create the panel tables that are missing and bajas' own schema."""
    from bajas.db import migrate_url

    settings = _settings()
    applied = _run(lambda: migrate_url(settings.require_database_url()))
    out.print(f"migrations applied: {', '.join(applied)}" if applied else "database is up to date")


@app.command()
def worker(
    node: Annotated[
        str | None,
        typer.Option(
            "--node",
            help="run on hosting server NAME: only the file and mailbox steps of its services",
        ),
    ] = None,
) -> None:
    """Run the worker (same as `python worker.py`); SIGTERM drains it."""
    from bajas.observability import setup_logging
    from worker import run_worker

    settings = _settings()
    setup_logging(settings.log_format)
    settings.require_database_url()
    if node is not None and not node.strip():
        raise Failure("--node needs the hosting server's name (services.server)")
    _run(lambda: run_worker(settings, node=node))


@app.command()
def api(
    host: Annotated[str, typer.Option(help="listen address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="listen port")] = 8000,
) -> None:
    """Serve the HTTP API under /api and the customer panel under /panel/."""
    settings = _settings()
    settings.require_database_url()
    _run(lambda: _serve_api(settings, host, port))


@app.command("codec-server")
def codec_server(
    host: Annotated[str, typer.Option(help="listen address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="listen port")] = 8081,
) -> None:
    """Serve Temporal's codec protocol (POST /encode, /decode) for the Web UI and the CLI."""
    from starter.codec_server import create_codec_app

    settings = _settings()
    _run(lambda: _serve(create_codec_app(settings), host, port))


async def _serve_api(settings: Settings, host: str, port: int) -> None:
    """Check the token, reach Temporal and PostgreSQL, then serve: a server that cannot be
    reached is one line here, not a traceback from inside uvicorn's start-up."""
    from bajas import tracing
    from bajas.db import create_pool
    from bajas.temporal_client import connect
    from starter.api.app import create_app
    from starter.api.security import api_token

    api_token(settings)
    tracing.setup("bajas-api")
    client = await connect(settings)
    pool = await create_pool(settings.require_database_url(), max_size=settings.db_pool_max)
    try:
        await _serve(create_app(settings, client=client, pool=pool), host, port)
    finally:
        await pool.close()
        tracing.shutdown()


async def _serve(asgi: Any, host: str, port: int) -> None:
    import uvicorn

    # X-Forwarded-* are the app's to trust (TRUSTED_PROXIES), not uvicorn's.
    config = uvicorn.Config(asgi, host=host, port=port, proxy_headers=False)
    await uvicorn.Server(config).serve()


# ---- operator commands ------------------------------------------------------------------


@app.command()
def check(
    node: Annotated[
        str | None,
        typer.Option(
            "--node", help="check hosting server NAME's worker configuration (run it there)"
        ),
    ] = None,
    role: Annotated[
        list[str] | None,
        typer.Option(
            "--role",
            help="what this central machine runs: worker, api, codec-server (repeatable;"
            " default: all three)",
            metavar="ROLE",
        ),
    ] = None,
) -> None:
    """Check a deploy: Temporal, PostgreSQL, SMTP, the secrets, the resource kinds' settings;
    one line each, exit 1 when one fails."""
    from starter.check import Outcome, Role, run_check

    try:
        roles = [Role(r) for r in role] if role else list(Role)
    except ValueError as err:
        raise typer.BadParameter(
            f"{err}: one of worker, api, codec-server", param_hint="--role"
        ) from None
    settings = _settings()

    def echo(line: object) -> None:
        sys.stdout.write(f"{line}\n")
        sys.stdout.flush()

    lines = _run(lambda: run_check(settings, node=node, echo=echo, roles=roles))
    _leave(1 if any(line.outcome is Outcome.FAIL for line in lines) else 0)


NOT_THE_CUSTOMERS = "not the customer's service"


@app.command()
def request(
    service: ServiceOpt,
    customer: Annotated[int | None, _id_option("--customer", CUSTOMER_ID)] = None,
    customer_number: Annotated[
        str | None,
        typer.Option(
            "--customer-number",
            help='the "Número de cliente" the panel shows (customers.number)',
            metavar="NUMBER",
        ),
    ] = None,
    reason: Annotated[
        str | None, typer.Option(help="free text kept in the audit trail, at most 500 characters")
    ] = None,
    effective: Annotated[
        Effective,
        typer.Option(
            help="now: delete within 24 h of the confirmation; end_of_term: at 00:00"
            " BUSINESS_TZ on the service's expiry date"
        ),
    ] = Effective.NOW,
    reason_code: Annotated[
        ReasonCode | None, typer.Option("--reason-code", help="why the customer leaves")
    ] = None,
) -> None:
    """Start a cancellation (or show the one already running); the code goes by mail."""
    if (customer is None) == (customer_number is None):
        raise typer.BadParameter(
            "give exactly one of --customer CID (the customer's id) and "
            "--customer-number NUMBER (the número de cliente the panel shows)",
            param_hint="--customer/--customer-number",
        )
    refusal = reason_refusal(reason)
    if refusal is not None:
        raise Failure(f"--reason: {refusal}; nothing was started")
    settings = _settings()

    async def go() -> None:
        if customer is not None:
            customer_id, whose = customer, f"customer {customer}"
        else:
            number = (customer_number or "").strip()
            customer_id = await _customer_by_number(settings, number)
            whose = f"customer number {number} (id {customer_id})"
        client = await _cancellations(settings)
        await _refuse_over_limits(settings, service, customer_id)
        answer = await client.request(
            service,
            customer_id,
            requested_by="operator",
            reason=reason,
            reason_code=reason_code,
            effective=effective,
        )
        if answer.status.state.value == "rejected":
            why = answer.status.rejection_reason or "rejected"
            if why == NOT_THE_CUSTOMERS and customer is not None:
                why += (
                    " (--customer takes the customer's id; the number the panel shows"
                    " goes in --customer-number)"
                )
            raise Failure(f"service {service} cannot be cancelled for {whose}: {why}")
        _print_status(answer.status, title=f"{answer.workflow_id} (run {answer.run_id})")

    _client_command(go)


async def _refuse_over_limits(settings: Settings, service: int, customer: int) -> None:
    """The limits of docs/SECURITY.md, asked before anything starts (the worker asks
    again); without DATABASE_URL only the worker's check applies."""
    if not settings.database_url:
        return
    from bajas.db import connect
    from bajas.limits import Limits, request_refusal

    conn = await connect(settings.database_url)
    try:
        refusal = await request_refusal(
            conn, Limits.from_settings(settings), service, customer, attach_allowed=True
        )
    finally:
        await conn.close()
    if refusal is not None:
        raise Failure(refusal.message)


@app.command()
def unlock(
    service: ServiceOpt,
    by: Annotated[
        str | None, typer.Option(help="who unlocks, for the audit trail (default: your login)")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="why, for the audit trail")] = None,
) -> None:
    """Let a service be requested again after too many wrong codes (audited)."""
    from bajas.limits import Limits, request_refusal
    from bajas.limits import unlock as record_unlock
    from workflows.search_attributes import workflow_id_for

    settings = _settings()
    who = by or os.environ.get("SUDO_USER") or getpass.getuser()

    async def go() -> None:
        from bajas.db import connect

        conn = await connect(settings.require_database_url())
        try:
            async with conn.transaction():
                customer = await conn.fetchval(
                    "select customer_id from services where id = $1 for update", service
                )
                if customer is None:
                    raise Failure(f"no service with id {service}")
                was = await request_refusal(conn, Limits.from_settings(settings), service, None)
                if was is not None:
                    await record_unlock(
                        conn,
                        service_id=service,
                        customer_id=customer,
                        workflow_id=workflow_id_for(service),
                        by=f"operator:{who}",
                        was=was,
                        reason=reason,
                    )
        finally:
            await conn.close()
        if was is None:
            out.print(f"service {service} is not locked: nothing to do")
        else:
            out.print(f"service {service} unlocked by {who} (it was {was.rejection_reason})")

    _client_command(go)


async def _db_value(settings: Settings, query: str, *args: object) -> Any:
    """One value from the panel database, on a connection of its own (one-shot commands)."""
    from bajas.db import connect

    conn = await connect(settings.require_database_url())
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def _customer_by_number(settings: Settings, number: str) -> int:
    found = await _db_value(settings, "select id from customers where number = $1", number)
    if found is None:
        raise Failure(f"no customer with número de cliente {number!r}")
    return int(found)


@app.command()
def confirm(
    service: ServiceOpt,
    code: Annotated[str, typer.Option("--code", help="the 6-digit code from the mail")],
) -> None:
    """Confirm a cancellation with the customer's code."""
    settings = _settings()

    async def go() -> None:
        client = await _cancellations(settings)
        result = await client.confirm(service, code)
        if not result.accepted:
            raise Failure(
                f"code not accepted; attempts left: {result.attempts_left} (state {result.state.value})"
            )
        if result.state is State.SCHEDULED:
            at = (await client.status(service)).effective_at
            out.print(f"confirmed: service {service} is scheduled for deletion at {at}")
        else:
            out.print(f"confirmed: service {service} is being deprovisioned")

    _client_command(go)


@app.command()
def withdraw(
    service: ServiceOpt,
    reason: Annotated[str | None, typer.Option(help="why, for the audit trail")] = None,
) -> None:
    """Withdraw a cancellation that still awaits its code."""
    settings = _settings()

    async def go() -> None:
        client = await _cancellations(settings)
        status = await client.withdraw(service, reason=reason, by="operator")
        kept = status.steps.billing.status is StepStatus.DONE
        out.print(
            f"service {service}: {status.state.value}"
            + ("; billing was closed already and stays closed (renewal by hand)" if kept else "")
        )

    _client_command(go)


@app.command()
def status(
    service: ServiceOpt,
    as_json: Annotated[bool, typer.Option("--json", help="print the status query as JSON")] = False,
) -> None:
    """Show a service's cancellation: state, attempts, billing, each step's progress."""
    settings = _settings()

    async def go() -> None:
        client = await _cancellations(settings)
        current = await client.status(service)
        if as_json:
            sys.stdout.write(current.model_dump_json(indent=2) + "\n")
        else:
            _print_status(current, title=f"service-cancellation-{service}")

    _client_command(go)


@app.command()
def receipt(
    service: ServiceOpt,
    as_json: Annotated[bool, typer.Option("--json", help="print the receipt as JSON")] = False,
) -> None:
    """Show the receipt of a finished cancellation: what was deleted, when, and billing."""
    from bajas import texts
    from bajas.db import connect
    from bajas.receipts import stored_receipt

    settings = _settings()

    async def go() -> None:
        conn = await connect(settings.require_database_url())
        try:
            found = await stored_receipt(conn, service)
            status = (
                None
                if found
                else await conn.fetchval("select status from services where id = $1", service)
            )
        finally:
            await conn.close()
        if found is None:
            raise Failure(_no_receipt(service, status))
        if as_json:
            sys.stdout.write(found.model_dump_json(indent=2) + "\n")
        else:
            sys.stdout.write(texts.receipt_text(found, settings.business_tz) + "\n")

    _client_command(go)


def _no_receipt(service: int, status: str | None) -> str:
    if status is None:
        return f"no service with id {service}"
    if status == "cancelled":
        return f"service {service} was cancelled without a receipt (before receipts were kept)"
    return f"service {service} is {status}, not cancelled: a receipt comes once it is"


def _since(text: str) -> date:
    """A calendar date written YYYY-MM-DD, nothing else."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise typer.BadParameter(f"{text!r} is not a date: write it YYYY-MM-DD, e.g. 2026-01-31")


@app.command()
def report(
    since: Annotated[
        date,
        typer.Option(
            help="count the requests made from 00:00 BUSINESS_TZ that day",
            parser=_since,
            metavar="YYYY-MM-DD",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="print the counts as JSON")] = False,
) -> None:
    """Cancellations requested since a date, counted per reason_code and per billing_outcome."""
    from starter.report import cancellation_report

    settings = _settings()

    async def go() -> None:
        from bajas.db import connect

        conn = await connect(settings.require_database_url())
        try:
            counts = await cancellation_report(conn, since, settings.business_tz)
        finally:
            await conn.close()
        if as_json:
            sys.stdout.write(counts.model_dump_json(indent=2) + "\n")
        else:
            _print_report(counts)

    _client_command(go)


def _print_report(counts: CancellationReport) -> None:
    from bajas.texts import NO_REASON

    reasons = Table()
    reasons.add_column("reason_code")
    reasons.add_column("requests", justify="right")
    for r in counts.by_reason_code:
        reasons.add_row(r.reason_code.value if r.reason_code else NO_REASON, str(r.count))
    outcomes = Table()
    outcomes.add_column("billing_outcome")
    outcomes.add_column("requests", justify="right")
    for o in counts.by_billing_outcome:
        name = o.billing_outcome.value if o.billing_outcome else "not confirmed"
        outcomes.add_row(name, str(o.count))
    out.print(
        f"cancellations requested since {counts.since} ({counts.business_tz}): {counts.total}",
        highlight=False,
    )
    out.print(reasons)
    out.print(outcomes)


@app.command("set-password")
def set_password(customer: CustomerOpt) -> None:
    """Read a panel clave from standard input and store its argon2 hash; every panel
    session of the customer ends."""
    from argon2 import PasswordHasher

    settings = _settings()
    if sys.stdin.isatty():
        clave = getpass.getpass("Clave: ")
    else:
        clave = sys.stdin.readline().rstrip("\r\n")
    if len(clave) < 8:
        raise Failure("the clave must have at least 8 characters")
    hashed = PasswordHasher().hash(clave)

    async def go() -> None:
        from bajas.db import connect
        from starter.api.sessions import CLAVE_CHANGED, end_all

        conn = await connect(settings.require_database_url())
        try:
            async with conn.transaction():
                updated = await conn.fetchval(
                    "update customers set password_hash = $2 where id = $1 returning number",
                    customer,
                    hashed,
                )
                ended = await end_all(conn, customer, CLAVE_CHANGED)
        finally:
            await conn.close()
        if updated is None:
            raise Failure(f"no customer with id {customer}")
        out.print(
            f"clave set for customer {customer} (número de cliente {updated});"
            f" panel sessions ended: {ended}"
        )

    _client_command(go)


def _client_command(go: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a one-shot command and leave at once: a lingering client can abort at exit."""
    code = 0
    try:
        _run(go)
    except (Failure, ConfigError) as err:
        code = _fail(str(err))
    except Exception as err:
        code = _fail(_describe(err))
    _leave(code)


def _describe(err: Exception) -> str:
    """One line for what went wrong after the start-up checks (a server lost mid-command,
    a history encrypted under keys this process lacks)."""
    from temporalio.service import RPCError, RPCStatusCode

    from bajas.codec import PayloadKeyError
    from bajas.db import database_address
    from bajas.temporal_client import connect_config
    from starter.client import CancellationError

    if isinstance(err, CancellationError | PayloadKeyError):
        return str(err)
    if isinstance(err, RPCError) and err.status is RPCStatusCode.UNAVAILABLE:
        return str(Unreachable("Temporal", connect_config()["target_host"], "TEMPORAL_ADDRESS"))
    if isinstance(err, OSError):
        address = database_address(os.environ.get("DATABASE_URL", ""))
        return str(Unreachable("PostgreSQL", address, "DATABASE_URL", _first_line(err)))
    if "binary/encrypted" in str(err):
        return "the history is encrypted: set PAYLOAD_KEYS to the workers' keys"
    name = type(err).__module__.split(".")[0]
    if name == "asyncpg":
        return f"database error: {_first_line(err)}"
    return _first_line(err)


def _usage_message(err: typer.TyperException) -> str:
    message = err.format_message() if hasattr(err, "format_message") else str(err)
    message = message.replace("Value error, ", "")  # how typer passes on an enum's refusal
    hint = getattr(err, "param_hint", None) or getattr(getattr(err, "param", None), "opts", None)
    if isinstance(hint, list | tuple):
        hint = "/".join(hint)
    return f"{hint}: {message}" if hint and str(hint) not in message else message


def _fail(message: str) -> int:
    Console(stderr=True).print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return 1


def _print_status(status: CancellationStatus, *, title: str) -> None:
    table = Table(title=title, show_header=False)
    rows: list[tuple[str, Any]] = [
        ("state", status.state.value),
        ("service", f"{status.service_id} {status.domain or ''}".strip()),
        ("customer", status.customer_id),
        ("attempts left", status.attempts_left),
        ("resends left", status.resends_left),
        ("code sent", "yes" if status.code_sent else "no"),
        ("code expires", status.code_expires_at),
        ("billing preview", status.billing_preview and status.billing_preview.value),
        ("billing outcome", status.billing_outcome and status.billing_outcome.value),
        ("rejection", status.rejection_reason),
        ("SLA at risk", "yes" if status.sla_at_risk else None),
        ("effective", status.effective.value),
        ("effective at", status.effective_at),
        ("billing closes at", status.billing_closes_at),
        ("reason code", status.reason_code and status.reason_code.value),
    ]
    for name, step in status.steps.items():
        rows.append((f"step {name}", _step_line(step)))
    if status.archive is not None:
        copy = status.archive
        size = f", {copy.bytes} bytes" if copy.bytes is not None else ""
        until = f", until {copy.expires_at:%Y-%m-%d %H:%M} UTC" if copy.expires_at else ""
        rows.append(("last copy", f"{copy.state.value}{size}{until}"))
    for key, value in rows:
        if value is not None:
            table.add_row(key, str(value))
    out.print(table)


def _step_line(step: StepProgress) -> str:
    """What `--json` says of a step, in one line: "running, 62/82 done, attempt 3,
    last error: PermissionError: …"."""
    total = f"/{step.total}" if step.total is not None else ""
    parts = [step.status.value, f"{step.done}{total} done"]
    if step.attempts:
        parts.append(
            f"attempt {step.attempts}"
            if step.status is not StepStatus.DONE
            else f"{step.attempts} attempt{'s' if step.attempts > 1 else ''}"
        )
    if step.detail:
        parts.append(step.detail)
    if step.error:
        parts.append(f"last error: {step.error}")
    return ", ".join(parts)


def main() -> None:
    command = typer.main.get_command(app)
    try:
        command.main(standalone_mode=False)
    except typer.Abort:
        sys.exit(_fail("aborted"))
    except typer.TyperException as err:  # bad usage: unknown command, bad option value
        sys.exit(_fail(_usage_message(err)) + 1)
    except (Failure, ConfigError) as err:
        _leave(_fail(str(err)))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:
        _leave(_fail(_describe(err)))


def _leave(code: int) -> None:
    """Exit at once: a client connected before the failure can abort interpreter shutdown."""
    tracing = sys.modules.get("bajas.tracing")
    if tracing is not None:
        tracing.shutdown()  # spans still buffered leave first
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
