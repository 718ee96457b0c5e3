"""Business errors that no retry can fix: raised non-retryable, matched by type name."""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

from bajas.models import PATH_REFUSED, Step

__all__ = ["PATH_REFUSED", "path_refused"]


def path_refused(message: str, step: Step | str) -> ApplicationError:
    """`step` names the deprovisioning step whose path (or resource) is unsafe."""
    return ApplicationError(message, step, type=PATH_REFUSED, non_retryable=True)
