"""Reading a failed attempt: pure functions over an exception and its causes."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

from temporalio.exceptions import ApplicationError, CancelledError, FailureError, TimeoutType
from temporalio.exceptions import TimeoutError as AttemptTimeout

from bajas.models import PATH_REFUSED

# A dead worker is noticed this fast during a deletion; progress reaches the server
# about every 0.8 of it (the SDK throttles heartbeats).
HEARTBEAT = timedelta(seconds=10)
# An error line stays readable whatever it quotes.
ERROR_CHARS = 300
QUOTED_PATH = re.compile(r"'(/[^']*)'")
ATTEMPT_TIMEOUTS = {
    TimeoutType.HEARTBEAT: (
        f"the worker stopped answering (no heartbeat for {HEARTBEAT.seconds} s)"
    ),
    TimeoutType.START_TO_CLOSE: "the attempt ran past its time limit",
    TimeoutType.SCHEDULE_TO_START: "no worker took the attempt",
}
# The wait before the next attempt of a failing step: doubling from a second, capped
# near a minute in the first hour of failures, then longer, so that a step failing for
# weeks adds a few hundred attempts, not tens of thousands (`retry` wakes it at once).
FIRST_BACKOFF = timedelta(seconds=1)
BACKOFF_CAPS = (
    (timedelta(hours=1), timedelta(seconds=60)),
    (timedelta(days=1), timedelta(minutes=15)),
)
LONG_BACKOFF = timedelta(hours=1)


def causes(err: BaseException | None) -> Iterator[BaseException]:
    """`err` and what caused it, down to the root (an ActivityError's cause is the
    activity's failure; a local activity's failure comes bare)."""
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        yield err
        err = err.__cause__


def path_refusal(err: BaseException | None) -> ApplicationError | None:
    """The PathRefused error behind `err`, if any."""
    return next(
        (e for e in causes(err) if isinstance(e, ApplicationError) and e.type == PATH_REFUSED),
        None,
    )


def business_error(err: BaseException) -> ApplicationError | None:
    """A non-retryable application error behind `err`: no attempt will ever pass."""
    return next(
        (e for e in causes(err) if isinstance(e, ApplicationError) and e.non_retryable), None
    )


def cancelled(err: BaseException) -> bool:
    """The workflow itself is being cancelled: not a failed attempt."""
    return any(isinstance(e, CancelledError) for e in causes(err))


def timed_out(err: BaseException, kind: TimeoutType) -> bool:
    return any(isinstance(e, AttemptTimeout) and e.type == kind for e in causes(err))


def one_line(err: BaseException) -> str:
    """A failed attempt as `status` shows it: what timed out, or the root cause's type
    and message. Quoted paths keep their last name only: they can be longer than a
    screen and name a customer's domain or mailbox."""
    chain = list(causes(err))
    timeout = next((e for e in chain if isinstance(e, AttemptTimeout)), None)
    if timeout is not None:
        known = ATTEMPT_TIMEOUTS.get(timeout.type) if timeout.type is not None else None
        text = known or "the attempt timed out"
    else:
        root = chain[-1]
        kind = (
            root.type if isinstance(root, ApplicationError) and root.type else type(root).__name__
        )
        text = f"{kind}: {root.message if isinstance(root, FailureError) else root}"
    text = QUOTED_PATH.sub(lambda m: f"'…/{m[1].rstrip('/').rsplit('/', 1)[-1]}'", text)
    text = " ".join(text.split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def left_behind(err: BaseException | None) -> Sequence[Any]:
    """What a failed attempt left for the next one: its last heartbeat when it timed
    out, else its failure's details."""
    for cause in causes(err):
        if isinstance(cause, AttemptTimeout) and cause.last_heartbeat_details:
            return cause.last_heartbeat_details
        if isinstance(cause, ApplicationError) and cause.details:
            return cause.details
    return ()


def backoff(attempts: int, failing_for: timedelta, err: BaseException | None) -> timedelta:
    """The wait before the next attempt: longer only where the activity asked for it
    (`next_retry_delay`), else doubling up to the cap of how long the step has failed."""
    asked = [
        cause.next_retry_delay
        for cause in causes(err)
        if isinstance(cause, ApplicationError) and cause.next_retry_delay
    ]
    if asked:
        return asked[0]
    cap = next((c for within, c in BACKOFF_CAPS if failing_for < within), LONG_BACKOFF)
    return min(FIRST_BACKOFF * 2 ** min(attempts - 1, 12), cap)
