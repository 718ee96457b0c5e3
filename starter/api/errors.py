"""Every error the API and the panel raise: JSON `{"detail": ...}` for the API, a Spanish page
or a redirect for the panel."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bajas.limits import Refusal
from bajas.models import CancellationStatus, State
from starter.api.schemas import ErrorBody


class ApiError(Exception):
    def __init__(
        self,
        status_code: int,
        detail: str,
        *,
        state: State | None = None,
        attempts_left: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.body = ErrorBody(detail=detail, state=state, attempts_left=attempts_left)
        self.headers = headers

    @classmethod
    def too_many(cls, refusal: Refusal | str) -> ApiError:
        """429 for a limit of docs/SECURITY.md; `Retry-After` unless an operator must act."""
        if isinstance(refusal, str):  # a worker's rejection reason: "code: message"
            return cls(429, refusal.partition(": ")[2] or refusal)
        after = refusal.retry_after(datetime.now(UTC))
        headers = {"Retry-After": str(after)} if after is not None else None
        return cls(429, refusal.message, headers=headers)

    @classmethod
    def conflict(cls, detail: str, status: CancellationStatus | None = None) -> ApiError:
        return cls(
            409,
            detail,
            state=status.state if status else None,
            attempts_left=status.attempts_left if status else None,
        )


class TemporalUnavailable(Exception):
    """Temporal (or a worker to answer the query) did not answer in time."""


class PanelRedirect(Exception):
    """Send the browser elsewhere (sign-in page) with a 303."""

    def __init__(self, url: str) -> None:
        self.url = url


class PanelError(Exception):
    """An error page in Spanish."""

    def __init__(self, status_code: int, title: str, message: str) -> None:
        self.status_code = status_code
        self.title = title
        self.message = message


def panel_not_found() -> PanelError:
    return PanelError(404, "No encontrado", "No encontramos esa página o ese servicio.")


def validation_message(errors: list[dict[str, Any]]) -> str:
    """One readable line out of pydantic's error list."""
    parts = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "path", "query")]
        msg = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            msg = "the body is not valid JSON"
            loc = []
        elif not loc and error.get("type") in ("model_attributes_type", "dict_type"):
            msg = "the body must be a JSON object"
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return "invalid request: " + "; ".join(parts)
