"""Bodies and answers of the HTTP API (contract section 5)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from bajas.models import (
    CODE_LENGTH,
    MAX_REASON_CHARS,
    BillingOutcome,
    CancellationStatus,
    Effective,
    PaymentMethod,
    ReasonCode,
    State,
    is_well_formed_code,
)


class ErrorBody(BaseModel):
    """Every error answer: a message fit to show, sometimes with the cancellation's state."""

    detail: str
    state: State | None = None
    attempts_left: int | None = None
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="on a malformed request: pydantic's errors, one per field"
    )


class BillingPreview(BaseModel):
    """What cancelling now would mean for billing (contract section 1), in the customer's words."""

    outcome: BillingOutcome
    text: str = Field(description="OUTCOME_TEXT_ES of the outcome")
    debit_warning: str | None = Field(
        default=None, description="the automatic-debit deadline warning, for auto-debit payers"
    )


class CancellationView(CancellationStatus):
    """The `status` query of a service's cancellation, with the workflow id and the preview
    spelled out in the customer's words."""

    workflow_id: str
    run_id: str | None = Field(default=None, description="set on the answer to a request")
    # The query names the outcome only; the API adds its text and the debit warning.
    billing_preview: BillingPreview | None = None  # type: ignore[assignment]


class ServiceView(BaseModel):
    """One of the customer's services as the panel database has it."""

    id: int
    domain: str
    plan: str
    status: str = Field(description="active | suspended | cancelled")
    expires_on: date
    payment_method: PaymentMethod | str
    auto_renew: bool
    cancelled_at: datetime | None = None
    cancellation: CancellationView | None = Field(
        default=None, description="the cancellation in progress, if any"
    )


class ServiceList(BaseModel):
    customer_id: int
    services: list[ServiceView]


class RequestBody(BaseModel):
    """Optional body of a cancellation request."""

    model_config = ConfigDict(extra="forbid")

    requested_by: str = Field(default="panel", min_length=1, max_length=200)
    effective: Effective = Field(
        default=Effective.NOW,
        description="now: delete within 24 h of the confirmation; end_of_term: at 00:00"
        " BUSINESS_TZ on expires_on (site and mail keep working until then)",
    )
    reason_code: ReasonCode | None = Field(default=None, description="why the customer leaves")
    reason: str | None = Field(
        default=None,
        max_length=MAX_REASON_CHARS,
        description=f"free text, at most {MAX_REASON_CHARS} characters; kept in the audit trail",
    )


# What a pasted code may carry around it; the schema's pattern says the same.
CODE_PADDING = " \t\r\n"


class ConfirmBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(
        description=f"the {CODE_LENGTH}-digit code from the mail",
        json_schema_extra={"pattern": f"^[ \\t\\r\\n]*[0-9]{{{CODE_LENGTH}}}[ \\t\\r\\n]*$"},
    )

    @field_validator("code")
    @classmethod
    def _six_digits(cls, value: str) -> str:
        value = value.strip(CODE_PADDING)
        if not is_well_formed_code(value):
            raise ValueError(f"the confirmation code must be exactly {CODE_LENGTH} digits")
        return value


class ConfirmAnswer(BaseModel):
    accepted: bool
    attempts_left: int
    state: State


class ResendAnswer(BaseModel):
    code_expires_at: AwareDatetime
    resends_left: int


class ApiRoute(BaseModel):
    method: str
    path: str
    does: str = Field(description="the first line of the route's description")


class ApiIndex(BaseModel):
    """What `GET /api` answers: where the docs are, and every route of the API."""

    title: str
    version: str
    docs: str = Field(description="Swagger UI")
    openapi: str = Field(description="the OpenAPI schema")
    authentication: str
    routes: list[ApiRoute]
