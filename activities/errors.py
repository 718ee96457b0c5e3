"""Business errors that no retry can fix: raised non-retryable, matched by type name."""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

PATH_REFUSED = "PathRefused"


def path_refused(message: str, step: str) -> ApplicationError:
    """`step` ("files" or "mailboxes") names the deprovisioning step whose path is unsafe."""
    return ApplicationError(message, step, type=PATH_REFUSED, non_retryable=True)
