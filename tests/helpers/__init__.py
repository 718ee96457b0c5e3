"""What the tests and the benchmark share: one wait, free ports, fresh ids.

The real stack answers asynchronously (mails arrive, workers start, servers come back),
so a test waits for the outcome it is about to assert with `assert_eventually`, never
for a fixed time. The rest of the harness lives beside this module:

- `tests.helpers.temporal`: the Temporal servers (`--workflow-environment`);
- `tests.helpers.processes`: real processes (worker, dev server, PostgreSQL);
- `tests.helpers.panel`: panel rows and the files they point at;
- `tests.helpers.mail`: the SMTP sink and the codes in its mails.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar, overload

REPO = Path(__file__).resolve().parents[2]

DEFAULT_TIMEOUT = 30.0

T = TypeVar("T")


def free_port() -> int:
    """A TCP port nothing listens on right now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# Workflows are keyed by service id, and a server given by --workflow-environment keeps the
# runs of earlier sessions: ids start from the clock so no two sessions share one.
_ids = itertools.count(int(time.time()) * 1000)


def new_id() -> int:
    """An id (customer, service, mailbox, invoice...) no earlier session has used."""
    return next(_ids)


@overload
async def assert_eventually(
    probe: Callable[[], Awaitable[T | None]],
    what: str = ...,
    *,
    timeout: float = ...,
    interval: float = ...,
    retry: tuple[type[Exception], ...] = ...,
) -> T: ...


@overload
async def assert_eventually(
    probe: Callable[[], T | None],
    what: str = ...,
    *,
    timeout: float = ...,
    interval: float = ...,
    retry: tuple[type[Exception], ...] = ...,
) -> T: ...


async def assert_eventually(
    probe: Callable[[], object],
    what: str = "the condition",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.1,
    retry: tuple[type[Exception], ...] = (),
) -> object:
    """Call `probe` (sync or async) until it returns something truthy; return that.

    A probe that raises AssertionError, or one of `retry`, is not there yet and is called
    again; anything else it raises fails at once (a process that died, say). After
    `timeout` seconds an AssertionError names `what` and the last answer.
    """
    not_yet: tuple[type[Exception], ...] = (AssertionError, *retry)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        error: Exception | None = None
        value: object = None
        try:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
        except not_yet as err:
            error = err
        if error is None and value:
            return value
        if loop.time() >= deadline:
            last = f"{type(error).__name__}: {error}" if error is not None else repr(value)
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what} (last: {last})"
            ) from error
        await asyncio.sleep(interval)
