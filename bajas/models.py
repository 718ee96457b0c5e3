"""The data that crosses Temporal: inputs, results, states. Imports nothing of bajas."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from enum import StrEnum
from typing import Any, Self

from pydantic import AwareDatetime, BaseModel, Field, JsonValue, ValidationError

CODE_LENGTH = 6
MAX_WRONG_CODES = 5
MAX_RESENDS = 3
# The panel's ids are PostgreSQL bigints: a larger number names no row.
MAX_ID = 2**63 - 1


# What the free-text reason of a request may hold, in characters.
MAX_REASON_CHARS = 500


class State(StrEnum):
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    # confirmed with `effective: end_of_term`: waiting for `effective_at`, site and mail working
    SCHEDULED = "scheduled"
    DEPROVISIONING = "deprovisioning"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"
    LOCKED = "locked"
    REJECTED = "rejected"

    @property
    def is_final(self) -> bool:
        return self not in IN_PROGRESS

    @property
    def withdrawable(self) -> bool:
        """Nothing is deleted yet: the customer may still change their mind."""
        return self in (State.AWAITING_CONFIRMATION, State.SCHEDULED)


IN_PROGRESS = (State.AWAITING_CONFIRMATION, State.SCHEDULED, State.DEPROVISIONING)


class Effective(StrEnum):
    """When the deletion starts once confirmed: at once, or at 00:00 BUSINESS_TZ on
    `expires_on`, the end of the paid period."""

    NOW = "now"
    END_OF_TERM = "end_of_term"


class ReasonCode(StrEnum):
    """Why the customer leaves (contract section 8); the panel's words are in bajas/texts.py."""

    PRECIO = "precio"
    CAMBIO_DE_PROVEEDOR = "cambio_de_proveedor"
    CIERRE_DEL_PROYECTO = "cierre_del_proyecto"
    PROBLEMAS_TECNICOS = "problemas_tecnicos"
    OTRO = "otro"


class BillingOutcome(StrEnum):
    LATE_NO_REFUND = "late_no_refund"
    DEBIT_PROCESSED_NO_REFUND = "debit_processed_no_refund"
    DEBIT_CANCELLED = "debit_cancelled"
    NO_FURTHER_CHARGES = "no_further_charges"


class PaymentMethod(StrEnum):
    AUTO_DEBIT = "auto_debit"
    MANUAL = "manual"


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    REFUSED = "refused"
    FAILED = "failed"


class Step(StrEnum):
    """The deprovisioning steps, in the order they start."""

    BILLING = "billing"
    MAILBOXES = "mailboxes"
    FILES = "files"


class StepProgress(BaseModel):
    """One step as `status` shows it.

    `attempts` counts the step's activity executions so far; `error` is the last
    failure in one line, kept while the next attempt runs and cleared when one
    succeeds (`attempts` then says how many it took). `verified` is set once a check
    has proven the resource gone.
    """

    status: StepStatus = StepStatus.PENDING
    done: int = 0
    total: int | None = None
    detail: str | None = None
    attempts: int = 0
    error: str | None = None
    verified: bool = False

    def finish(self, result: StepResult) -> None:
        self.status = StepStatus.DONE
        self.done = result.done
        self.total = result.total
        self.detail = result.detail
        self.error = None


class Steps(BaseModel):
    billing: StepProgress = Field(default_factory=StepProgress)
    mailboxes: StepProgress = Field(default_factory=StepProgress)
    files: StepProgress = Field(default_factory=StepProgress)

    def __getitem__(self, step: Step) -> StepProgress:
        return {Step.BILLING: self.billing, Step.MAILBOXES: self.mailboxes, Step.FILES: self.files}[
            step
        ]


def is_well_formed_code(code: object) -> bool:
    return isinstance(code, str) and len(code) == CODE_LENGTH and code.isascii() and code.isdigit()


def reason_refusal(reason: str | None) -> str | None:
    """Why a request's free-text reason is refused (one line), or None. Checked before
    anything starts; the workflow input takes any length, so older runs still decode."""
    if reason is not None and len(reason) > MAX_REASON_CHARS:
        return f"the reason may hold at most {MAX_REASON_CHARS} characters (it has {len(reason)})"
    return None


# --- workflow input, messages and result -------------------------------------------


class CancellationInput(BaseModel):
    """`reason` and `reason_code` are the customer's: they stay out of search attributes
    and of the Web UI's summary and details."""

    service_id: int
    customer_id: int
    requested_by: str = "panel"
    reason: str | None = None
    effective: Effective = Effective.NOW
    reason_code: ReasonCode | None = None


class ConfirmInput(BaseModel):
    code: str = ""


class WithdrawInput(BaseModel):
    reason: str | None = None
    by: str | None = None


class RetryInput(BaseModel):
    """Operator's go-ahead to run a refused step again after fixing its data."""

    by: str | None = None


class ResendInput(BaseModel):
    pass


class ConfirmResult(BaseModel):
    accepted: bool
    attempts_left: int
    state: State


class ResendResult(BaseModel):
    code_expires_at: AwareDatetime
    resends_left: int


class TimelineEvent(BaseModel):
    """One moment of a cancellation, for the panel's timeline: `requested`, `code_sent`,
    `code_resent`, `confirmed`, a state reached (`scheduled`, `deprovisioning`, and the
    final ones), or a step done (`billing_done`, `mailboxes_done`, `files_done`)."""

    event: str
    at: AwareDatetime


class CancellationStatus(BaseModel):
    """What the `status` query answers; the panel and operators read this.

    `effective_at` is when the deletion starts or started: the confirmation instant for
    `now`, 00:00 BUSINESS_TZ on `expires_on` for `end_of_term` (or the confirmation, if
    that came later); None while unknown. `billing_closes_at` is when the billing step
    runs or ran, once confirmed: `effective_at`, or earlier for a `scheduled`
    `debit_cancelled`, so that the debit of the 1st never reaches the bank.
    """

    state: State
    service_id: int
    customer_id: int
    requested_by: str
    domain: str | None = None
    attempts_left: int
    resends_left: int
    code_sent: bool = False
    code_expires_at: AwareDatetime | None = None
    requested_at: AwareDatetime | None = None
    confirmed_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None
    billing_preview: BillingOutcome | None = None
    billing_outcome: BillingOutcome | None = None
    rejection_reason: str | None = None
    sla_at_risk: bool = False
    steps: Steps = Field(default_factory=Steps)
    effective: Effective = Effective.NOW
    effective_at: AwareDatetime | None = None
    billing_closes_at: AwareDatetime | None = None
    reason_code: ReasonCode | None = None
    timeline: list[TimelineEvent] = Field(default_factory=list)


class CancellationResult(BaseModel):
    state: State
    billing_outcome: BillingOutcome | None = None
    service_id: int
    rejection_reason: str | None = None
    files_deleted: int = 0
    mailboxes_deleted: int = 0


# --- activity inputs and results ---------------------------------------------------


class ServiceCheckInput(BaseModel):
    """The request as the audit trail and `bajas.cancellation_requests` keep it."""

    service_id: int
    customer_id: int
    requested_by: str = "panel"
    reason: str | None = None
    effective: Effective = Effective.NOW
    reason_code: ReasonCode | None = None


class ServiceCheck(BaseModel):
    """The facts the workflow decides on. No personal data: it lands in history.

    The worker's timing settings travel here too, so the workflow reads them from
    history instead of the environment. This is the wire shape recorded in every
    history; the workflow works with `accepted_service()`.
    """

    accepted: bool
    business_tz: str = "America/Argentina/Buenos_Aires"
    confirmation_window_seconds: float = 86400
    sla_limit_seconds: float = 20 * 3600
    rejection_reason: str | None = None
    domain: str | None = None
    expires_on: date | None = None
    payment_method: PaymentMethod | None = None
    # services.server: the hosting server whose node worker runs the file and mailbox
    # steps; None when the central workers reach the data.
    server: str | None = None

    def accepted_service(self) -> AcceptedService | None:
        """The facts of an accepted service, none missing; None for a rejection."""
        if not self.accepted:
            return None
        return AcceptedService.model_validate(
            self.model_dump(exclude={"accepted", "rejection_reason"})
        )


class AcceptedService(BaseModel):
    """A service the check accepted: what the workflow needs from it, nothing optional."""

    domain: str
    expires_on: date
    payment_method: PaymentMethod
    business_tz: str
    confirmation_window_seconds: float
    sla_limit_seconds: float

    @property
    def confirmation_window(self) -> timedelta:
        return timedelta(seconds=self.confirmation_window_seconds)

    @property
    def sla_limit(self) -> timedelta:
        return timedelta(seconds=self.sla_limit_seconds)


class IssueCodeInput(BaseModel):
    """`debit_cutoff` is the day from which an automatic debit is at the bank (None for
    manual payers, and in inputs written before the field: their mail has no warning).
    `term_end` is when the deletion will start if the customer chose `end_of_term` and
    that is still ahead (None otherwise: it starts at confirmation)."""

    service_id: int
    customer_id: int
    generation: int
    expires_at: AwareDatetime
    billing_preview: BillingOutcome
    debit_cutoff: date | None = None
    term_end: AwareDatetime | None = None


class IssueCodeResult(BaseModel):
    generation: int
    expires_at: AwareDatetime


class VerifyCodeInput(BaseModel):
    generation: int
    code: str
    service_id: int | None = None  # for the logs


class VerifyCodeResult(BaseModel):
    accepted: bool


# The details of an audit line: any JSON object (the receipt's line holds the whole receipt).
Details = dict[str, JsonValue]


class TransitionInput(BaseModel):
    """One line of the audit trail; `event` makes a retried write a no-op."""

    event: str
    service_id: int
    customer_id: int
    actor: str
    from_state: State | None = None
    to_state: State | None = None
    billing_outcome: BillingOutcome | None = None
    details: Details = Field(default_factory=dict)


class StepInput(BaseModel):
    """The input of a deprovisioning step's activity; the workflow runs each attempt."""

    service_id: int
    customer_id: int

    def resumed(self, details: Sequence[Any]) -> Self:
        """The input of the next attempt, given the details a failed one left (its
        last heartbeat, or its failure's details). Most steps simply start over."""
        return self


class StepResult(BaseModel):
    """A finished step's result, as `status` counts it."""

    @property
    def done(self) -> int:
        raise NotImplementedError

    @property
    def total(self) -> int | None:
        return self.done

    @property
    def detail(self) -> str | None:
        return None


class BillingInput(StepInput):
    """The billing effects are decided by the workflow (the contract's table);
    `close_billing` carries them out."""

    outcome: BillingOutcome
    revoke_mandate: bool
    void_renewal_invoices: bool


class BillingResult(StepResult):
    """The counts, and the ids the receipt lists (empty in results written before them)."""

    invoices_voided: int
    mandates_revoked: int
    voided_invoice_ids: list[int] = Field(default_factory=list)
    revoked_mandate_ids: list[int] = Field(default_factory=list)

    @property
    def done(self) -> int:
        return self.invoices_voided + self.mandates_revoked

    @property
    def total(self) -> int | None:
        return None

    @property
    def detail(self) -> str | None:
        return f"{self.invoices_voided} invoices voided, {self.mandates_revoked} mandates revoked"


class DeprovisionInput(StepInput):
    pass


class MailboxesResult(StepResult):
    mailboxes_deleted: int
    mailboxes_total: int

    @property
    def done(self) -> int:
        return self.mailboxes_total


class FilesProgress(BaseModel):
    """Heartbeat details of the files step (and of its failures): where a next
    attempt picks up."""

    total: int
    deleted: int


class FilesInput(DeprovisionInput):
    """`resume` is where the previous attempt got to: a new activity execution gets no
    heartbeat details of the last one, so the workflow hands them over."""

    resume: FilesProgress | None = None

    def resumed(self, details: Sequence[Any]) -> Self:
        try:
            progress = FilesProgress.model_validate(details[0]) if details else None
        except ValidationError:
            progress = None
        return self.model_copy(update={"resume": progress}) if progress else self


class FilesResult(StepResult):
    files_deleted: int
    dirs_deleted: int
    resumed_from: int = 0

    @property
    def done(self) -> int:
        return self.files_deleted

    @property
    def detail(self) -> str | None:
        return f"resumed after {self.resumed_from} files" if self.resumed_from else None


class FinishInput(BaseModel):
    service_id: int
    customer_id: int
    billing_outcome: BillingOutcome
    files_deleted: int
    mailboxes_deleted: int


class NoticeInput(BaseModel):
    """A mail to the customer ("dado de baja") or to operations (SLA alert, with a line
    per failing step in `problems`). `term_end` is the end of the paid period the
    deletion waited for (`end_of_term`), None when it started at confirmation."""

    kind: str
    service_id: int
    customer_id: int
    billing_outcome: BillingOutcome | None = None
    problems: list[str] = Field(default_factory=list)
    term_end: AwareDatetime | None = None


class NoticeResult(BaseModel):
    sent: bool


# --- the receipt ---------------------------------------------------------------------


class ReceiptFiles(BaseModel):
    """The site's files the files step deleted (`deleted_at`: when it finished); `bytes`
    is None where the step recorded no size."""

    deleted: int
    bytes: int | None = None
    deleted_at: AwareDatetime


class ReceiptMailbox(BaseModel):
    """One deleted mailbox; `messages` and `bytes` are None where the step recorded none."""

    address: str
    messages: int | None = None
    bytes: int | None = None
    deleted_at: AwareDatetime | None = None


class Receipt(BaseModel):
    """What a finished cancellation did, built once from its audit lines and stored as the
    `receipt` line: the final mail, the API, the CLI and the panel all show this."""

    service_id: int
    customer_id: int
    domain: str
    requested_at: AwareDatetime
    confirmed_at: AwareDatetime
    finished_at: AwareDatetime
    billing_outcome: BillingOutcome
    billing_closed_at: AwareDatetime
    voided_invoice_ids: list[int]
    revoked_mandate_ids: list[int]
    files: ReceiptFiles
    mailboxes: list[ReceiptMailbox]
