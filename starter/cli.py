"""The `bajas` command: the dev stack, the services (migrate, worker, api) and the
operator commands of contract section 6.

Every failure an operator can cause or meet (bad input, a server that cannot be
reached) ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from bajas.config import ConfigError, Settings
from bajas.models import MAX_ID, CancellationStatus

if TYPE_CHECKING:
    from starter.client import CancellationClient

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
    try:
        return Settings()
    except Exception as err:  # pydantic's ValidationError, many lines: keep the first
        first = str(err).splitlines()
        raise Failure(f"bad configuration: {' '.join(first[:3])}") from err


def _run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coro_fn())


async def _cancellations(settings: Settings) -> CancellationClient:
    from bajas.temporal_client import connect
    from starter.client import CancellationClient

    try:
        client = await connect()
    except Exception as err:
        reason = "connection refused" if "Connection refused" in str(err) else _first_line(err)
        raise Failure(f"cannot reach Temporal: {reason}") from err
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
) -> None:
    """Everything on one machine with embedded defaults (state in ./.bajas/)."""
    from bajas.dev.runner import DevOptions, run_dev

    try:
        asyncio.run(run_dev(DevOptions(host=host, api_port=port, smtp_port=smtp_port)))
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
def worker() -> None:
    """Run the worker (same as `python worker.py`); SIGTERM drains it."""
    from bajas.observability import setup_logging
    from worker import run_worker

    settings = _settings()
    setup_logging(settings.log_format)
    settings.require_database_url()
    _run(lambda: run_worker(settings))


@app.command()
def api(
    host: Annotated[str, typer.Option(help="listen address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="listen port")] = 8000,
) -> None:
    """Serve the HTTP API under /api and the customer panel under /panel/."""
    import uvicorn

    from starter.api.app import create_app

    settings = _settings()
    settings.require_database_url()
    uvicorn.run(create_app(settings), host=host, port=port)


# ---- operator commands ------------------------------------------------------------------


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
    reason: Annotated[str | None, typer.Option(help="free text kept in the audit trail")] = None,
) -> None:
    """Start a cancellation (or show the one already running); the code goes by mail."""
    if (customer is None) == (customer_number is None):
        raise typer.BadParameter(
            "give exactly one of --customer CID (the customer's id) and "
            "--customer-number NUMBER (the número de cliente the panel shows)",
            param_hint="--customer/--customer-number",
        )
    settings = _settings()

    async def go() -> None:
        if customer is not None:
            customer_id, whose = customer, f"customer {customer}"
        else:
            number = (customer_number or "").strip()
            customer_id = await _customer_by_number(settings, number)
            whose = f"customer number {number} (id {customer_id})"
        client = await _cancellations(settings)
        answer = await client.request(service, customer_id, requested_by="operator", reason=reason)
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


async def _db_value(settings: Settings, query: str, *args: object) -> Any:
    """One value from the panel database, on a connection of its own (one-shot commands)."""
    import asyncpg

    conn = await asyncpg.connect(settings.require_database_url())
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
        out.print(f"service {service}: {status.state.value}")

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


@app.command("set-password")
def set_password(customer: CustomerOpt) -> None:
    """Read a panel clave from standard input and store its argon2 hash."""
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
        updated = await _db_value(
            settings,
            "update customers set password_hash = $2 where id = $1 returning number",
            customer,
            hashed,
        )
        if updated is None:
            raise Failure(f"no customer with id {customer}")
        out.print(f"clave set for customer {customer} (número de cliente {updated})")

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
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _describe(err: Exception) -> str:
    from starter.client import CancellationError

    if isinstance(err, CancellationError):
        return str(err)
    if isinstance(err, OSError):
        return f"cannot reach the server: {_first_line(err)}"
    if "Connection refused" in str(err):
        return "cannot reach the server: connection refused"
    name = type(err).__module__.split(".")[0]
    if name == "asyncpg":
        return f"database error: {_first_line(err)}"
    return _first_line(err)


def _usage_message(err: typer.TyperException) -> str:
    message = err.format_message() if hasattr(err, "format_message") else str(err)
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
    ]
    for name in ("billing", "mailboxes", "files"):
        step = getattr(status.steps, name)
        total = f"/{step.total}" if step.total is not None else ""
        detail = f" — {step.detail}" if step.detail else ""
        rows.append((f"step {name}", f"{step.status.value} {step.done}{total}{detail}"))
    for key, value in rows:
        if value is not None:
            table.add_row(key, str(value))
    out.print(table)


def main() -> None:
    command = typer.main.get_command(app)
    try:
        command.main(standalone_mode=False)
    except typer.Abort:
        sys.exit(_fail("aborted"))
    except typer.TyperException as err:  # bad usage: unknown command, bad option value
        sys.exit(_fail(_usage_message(err)) + 1)
    except (Failure, ConfigError) as err:
        sys.exit(_fail(str(err)))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:
        sys.exit(_fail(_describe(err)))


if __name__ == "__main__":
    main()
