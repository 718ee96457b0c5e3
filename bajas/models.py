"""The data that crosses Temporal: inputs, results, states. Imports nothing of bajas."""

from __future__ import annotations

import re
from collections.abc import ItemsView, Iterator, Sequence
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any, Self, TypeVar

from pydantic import AwareDatetime, BaseModel, Field, JsonValue, RootModel, ValidationError

CODE_LENGTH = 6
MAX_WRONG_CODES = 5
MAX_RESENDS = 3
# The panel's ids are PostgreSQL bigints: a larger number names no row.
MAX_ID = 2**63 - 1
# The token of a last copy: `secrets.token_urlsafe(32)`, 256 random bits. It names the
# archive's file and is the secret of its download link.
_ARCHIVE_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")

M = TypeVar("M", bound="BaseModel")


# What the free-text reason of a request may hold, in characters.
MAX_REASON_CHARS = 500

# Contract names shared by the workflow and the activities: the error type of a refused
# path or resource (non-retryable; the run waits for an operator's `retry`), and the
# kinds of `send_notice`.
PATH_REFUSED = "PathRefused"
KIND_CANCELLED = "cancelled"
KIND_SLA_AT_RISK = "sla_at_risk"
KIND_LOCKED = "locked"
# a withdrawal while scheduled, after billing had closed: the site stays, billing does not
KIND_WITHDRAWN = "withdrawn"


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
    # Since when the step's attempts fail, while they do: the backoff grows with it.
    failing_since: AwareDatetime | None = None

    def finish(self, result: StepResult) -> None:
        self.status = StepStatus.DONE
        self.done = result.done
        self.total = result.total
        self.detail = result.detail
        self.error = None
        self.failing_since = None
        self.verified = result.verified


def _first_steps() -> dict[str, StepProgress]:
    return {step.value: StepProgress() for step in Step}


class Steps(RootModel[dict[str, StepProgress]]):
    """Every step of the deprovisioning by name, as a JSON object: billing, mailboxes,
    files, and one per resource kind the service has (contract section 9). Decodes the
    three-field object of older histories and statuses as it is."""

    root: dict[str, StepProgress] = Field(default_factory=_first_steps)

    def __getitem__(self, step: str) -> StepProgress:
        return self.root[step]

    def __contains__(self, step: object) -> bool:
        return step in self.root

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        return iter(self.root)

    def items(self) -> ItemsView[str, StepProgress]:
        return self.root.items()

    def add(self, step: str) -> StepProgress:
        """The step's progress, added as pending when it is not listed yet."""
        return self.root.setdefault(step, StepProgress())

    @property
    def billing(self) -> StepProgress:
        return self.add(Step.BILLING)

    @property
    def mailboxes(self) -> StepProgress:
        return self.add(Step.MAILBOXES)

    @property
    def files(self) -> StepProgress:
        return self.add(Step.FILES)


def is_well_formed_code(code: object) -> bool:
    return isinstance(code, str) and len(code) == CODE_LENGTH and code.isascii() and code.isdigit()


def reason_refusal(reason: str | None) -> str | None:
    """Why a request's free-text reason is refused (one line), or None. Checked before
    anything starts; the workflow input takes any length, so older runs still decode."""
    if reason is not None and len(reason) > MAX_REASON_CHARS:
        return f"the reason may hold at most {MAX_REASON_CHARS} characters (it has {len(reason)})"
    return None


class MailboxInventory(BaseModel):
    address: str
    messages: int
    bytes: int


class ResourceInventory(BaseModel):
    """One listed resource as the inventory counts it (contract section 9): a database's
    bytes and tables, a restic tag's bytes and snapshots, a crontab's lines, a zone's
    records; None where the kind cannot tell."""

    kind: str
    name: str
    server: str | None = None
    bytes: int | None = None
    items: int | None = None


class Inventory(BaseModel):
    """What confirming deletes (contract section 8): the document root's files and bytes
    (as `find TOP ! -type d | wc -l` and `du -sb TOP`), each maildir's messages and bytes,
    and each resource the panel lists for the service (section 9)."""

    files: int
    bytes: int
    mailboxes: list[MailboxInventory] = Field(default_factory=list)
    resources: list[ResourceInventory] = Field(default_factory=list)


def is_archive_token(token: object) -> bool:
    return isinstance(token, str) and _ARCHIVE_TOKEN.fullmatch(token) is not None


def archive_file_name(token: str) -> str:
    """The archive's file in ARCHIVE_ROOT; only a well-formed token names one."""
    if not is_archive_token(token):
        raise ValueError("not an archive token")
    return f"{token}.tar.zst"


class ArchiveState(StrEnum):
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"
    EXPIRED = "expired"


class ArchiveStatus(BaseModel):
    """The last copy as `status` and the API show it: never its token or its path."""

    state: ArchiveState
    expires_at: AwareDatetime | None = None
    bytes: int | None = None

    def as_of(self, now: datetime) -> ArchiveStatus:
        """A ready copy reads `expired` from `expires_at` on, before the workflow's own
        timer has deleted it."""
        if self.state is ArchiveState.READY and self.expires_at and now >= self.expires_at:
            return self.model_copy(update={"state": ArchiveState.EXPIRED})
        return self


class ArchiveLink(BaseModel):
    """What the panel needs to offer and check the download: the `archive_link` query,
    kept out of `status`."""

    customer_id: int
    token: str
    archive: ArchiveStatus


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
    # The workflow code's release whose client started the run, on that release's queue
    # (workflows/search_attributes.py); None from the clients of releases before 9.
    release: int | None = None
    # Set only by the run itself when it continues as new (`Carried`); None at a start.
    carried: Carried | None = None


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


class ArchiveRequest(BaseModel):
    """`request_archive` by the customer of the cancellation. The token is made by the
    caller (`starter/client.py`) with `secrets`: workflow code cannot make a secret."""

    customer_id: int
    token: str


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
    # What confirming deletes, counted on the server that holds it; None while counting.
    inventory: Inventory | None = None
    archive: ArchiveStatus | None = None


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
    # How long a step on a node's queue may wait for a worker before it shows the node
    # as not answering (the NODE_WAIT setting; older histories lack it).
    node_wait_seconds: float = 180
    rejection_reason: str | None = None
    domain: str | None = None
    expires_on: date | None = None
    payment_method: PaymentMethod | None = None
    # services.server: the hosting server whose node worker runs the file and mailbox
    # steps; None when the central workers reach the data.
    server: str | None = None
    # ARCHIVE_TTL and ARCHIVE_DEADLINE: how long a last copy's link works, and how long
    # after the confirmation the deletion waits for one still being built.
    archive_ttl_seconds: float = 7 * 86400
    archive_deadline_seconds: float = 12 * 3600
    # Contract section 9: the service's listed resources, the order of every step
    # (billing, mailboxes, files and one per kind present), and what the kinds may need.
    resources: list[ResourceRef] = Field(default_factory=list)
    step_order: list[StepOrder] = Field(default_factory=list)
    resource_context: ResourceContext | None = None
    # Listed resources another service that is not cancelled lists too: refused.
    shared_resources: list[SharedResource] = Field(default_factory=list)

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
    node_wait_seconds: float = 180
    server: str | None = None
    archive_ttl_seconds: float
    archive_deadline_seconds: float
    resources: list[ResourceRef] = Field(default_factory=list)
    step_order: list[StepOrder] = Field(default_factory=list)
    resource_context: ResourceContext | None = None
    # Listed resources another service that is not cancelled lists too: refused.
    shared_resources: list[SharedResource] = Field(default_factory=list)

    @property
    def confirmation_window(self) -> timedelta:
        return timedelta(seconds=self.confirmation_window_seconds)

    @property
    def sla_limit(self) -> timedelta:
        return timedelta(seconds=self.sla_limit_seconds)

    @property
    def node_wait(self) -> timedelta:
        return timedelta(seconds=self.node_wait_seconds)

    @property
    def archive_ttl(self) -> timedelta:
        return timedelta(seconds=self.archive_ttl_seconds)

    @property
    def archive_deadline(self) -> timedelta:
        return timedelta(seconds=self.archive_deadline_seconds)


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
    # What confirming deletes, when known; `counting` when it is still being counted
    # (neither in inputs written before the inventory: their mail says nothing of it).
    inventory: Inventory | None = None
    counting: bool = False


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
    """A finished step's result, as `status` counts it. `verified`: the step's own check,
    at the end of the same attempt, proved the resource gone (absent in results written
    before the checks existed)."""

    verified: bool = False

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
    `close_billing` carries them out. `preflight`: check the paths first, as runs
    started before `preflight_paths` existed had it (see docs/VERSIONING.md)."""

    outcome: BillingOutcome
    revoke_mandate: bool
    void_renewal_invoices: bool
    preflight: bool = False


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
    messages_deleted: int = 0
    bytes_deleted: int = 0

    @property
    def done(self) -> int:
        return self.mailboxes_total


class FilesProgress(BaseModel):
    """Heartbeat details of the files step (and of its failures): where a next
    attempt picks up. `total`: files of the tree before its deletion began."""

    total: int
    deleted: int


class FilesSizes(BaseModel):
    """The second heartbeat detail of the files step: bytes and directories of the tree
    before its deletion began, so a resumed attempt can tell what earlier ones deleted."""

    bytes: int = 0
    dirs: int = 0


class FilesInput(DeprovisionInput):
    """`resume` (and `resume_sizes`) is where the previous attempt got to: a new activity
    execution gets no heartbeat details of the last one, so the workflow hands them over."""

    resume: FilesProgress | None = None
    resume_sizes: FilesSizes | None = None

    def resumed(self, details: Sequence[Any]) -> Self:
        progress = _valid(FilesProgress, details, 0)
        if progress is None:
            return self
        sizes = _valid(FilesSizes, details, 1)
        return self.model_copy(update={"resume": progress, "resume_sizes": sizes})


def _valid(model: type[M], details: Sequence[Any], index: int) -> M | None:
    """Detail `index` as `model`, or None: details arrive as raw JSON, maybe of another
    version."""
    try:
        return model.model_validate(details[index]) if len(details) > index else None
    except ValidationError:
        return None


class FilesResult(StepResult):
    files_deleted: int
    dirs_deleted: int
    resumed_from: int = 0
    bytes_deleted: int = 0
    # Walks of the tree: more than one when the check found it written to meanwhile.
    walks: int = 1

    @property
    def done(self) -> int:
        return self.files_deleted

    @property
    def detail(self) -> str | None:
        notes = [f"resumed after {self.resumed_from} files"] if self.resumed_from else []
        if self.walks > 1:
            notes.append(f"walked {self.walks} times: written to during deletion")
        return "; ".join(notes) or None


class InventoryInput(StepInput):
    pass


class InventoryResult(BaseModel):
    inventory: Inventory


class PreflightInput(StepInput):
    pass


class PreflightResult(BaseModel):
    """How many paths were checked (the document root and each maildir)."""

    paths: int


class FinishInput(BaseModel):
    service_id: int
    customer_id: int
    billing_outcome: BillingOutcome
    files_deleted: int
    mailboxes_deleted: int


class NoticeInput(BaseModel):
    """A mail to the customer ("dado de baja") or to operations (SLA alert, with a line
    per failing step in `problems`). `term_end` is the end of the paid period the
    deletion waited for (`end_of_term`), None when it started at confirmation.
    `archive`: how a last copy the customer asked for ended (`failed`: never delivered;
    `expired`: deleted with the rest)."""

    kind: str
    service_id: int
    customer_id: int
    billing_outcome: BillingOutcome | None = None
    problems: list[str] = Field(default_factory=list)
    term_end: AwareDatetime | None = None
    archive: ArchiveState | None = None


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


class ReceiptResource(BaseModel):
    """One resource the deletion proved gone (contract section 9); `bytes` and `items`
    None where its kind could not tell."""

    kind: str
    name: str
    server: str | None = None
    deleted_at: AwareDatetime
    bytes: int | None = None
    items: int | None = None


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
    # Everything else the panel listed (contract section 9); absent in older receipts.
    resources: list[ReceiptResource] = Field(default_factory=list)


class ArchiveInput(BaseModel):
    """`build_archive` and `delete_archive`: `generation` counts the copies asked for in
    this run (a failed or expired one may be asked for again)."""

    service_id: int
    customer_id: int
    token: str
    generation: int = 1


class ArchiveProgress(BaseModel):
    """Heartbeat details of `build_archive`: bytes of the archive written so far."""

    bytes: int


class ArchiveResult(BaseModel):
    bytes: int
    files: int
    skipped: int


class ArchiveDeleted(BaseModel):
    deleted: bool


# --- resources (contract section 9) ----------------------------------------------------


class ResourceRef(BaseModel):
    """One row of the panel's `service_resources`: what identifies the resource on its
    server. `server` None: the central workers reach it."""

    id: int
    kind: str
    name: str
    server: str | None = None


class ResourceContext(BaseModel):
    """What a kind may need about the service besides its resources, carried in the
    activity input so that a node worker needs no panel database. `other_domains`: the
    domains of the other live services (a certificate covering one is refused)."""

    service_id: int
    domain: str
    document_root: str | None = None
    maildirs: list[str] = Field(default_factory=list)
    other_domains: list[str] = Field(default_factory=list)
    # Every resource the panel lists for the service, of every kind (a role's own
    # databases are not "elsewhere").
    resources: list[ResourceRef] = Field(default_factory=list)


class ResourceOutcome(BaseModel):
    """One resource after a step's attempt: `verified` once the kind's check proved it
    gone; `detail` says what the receipt should add (e.g. files a removed user still owns
    outside the service's folders, reported and never deleted)."""

    id: int
    kind: str
    name: str
    server: str | None = None
    verified: bool = False
    bytes: int | None = None
    items: int | None = None
    detail: str | None = None


class ResourceStepInput(StepInput):
    """One attempt of a resource kind's step on one server: every listed resource of
    that kind there. Idempotent: a resource already gone is verified, not an error."""

    kind: str
    server: str | None = None
    resources: list[ResourceRef]
    context: ResourceContext


class ResourceStepResult(StepResult):
    resources: list[ResourceOutcome] = Field(default_factory=list)

    @property
    def done(self) -> int:
        return sum(1 for r in self.resources if r.verified)

    @property
    def total(self) -> int | None:
        return len(self.resources)

    @property
    def detail(self) -> str | None:
        notes = [f"{r.name}: {r.detail}" for r in self.resources if r.detail]
        return "; ".join(notes) or None


class ResourceCheckInput(BaseModel):
    """The inventory or the preflight of a service's resources on one server."""

    service_id: int
    customer_id: int
    server: str | None = None
    resources: list[ResourceRef]
    context: ResourceContext


class ResourceCheckResult(BaseModel):
    resources: list[ResourceInventory] = Field(default_factory=list)


class StepOrder(BaseModel):
    """A deprovisioning step and the steps that must be done before it starts: what the
    kinds declare (`after`, `before`), resolved by the central worker so the workflow
    gets it as data. Billing precedes every other step."""

    step: str
    after: list[str] = Field(default_factory=list)


# --- a run continued as new ------------------------------------------------------------


class Phase(StrEnum):
    """Where a continued run picks up: waiting for the end of the term, closing billing
    at the debit's eve (and waiting on), or the deletion itself."""

    SCHEDULED = "scheduled"
    BILLING_EVE = "billing_eve"
    EFFECTIVE = "effective"


class Carried(BaseModel):
    """What a run hands to the next when it continues as new: everything `status` shows,
    and what the next phase needs. `release` is the workflow code's release that wrote
    it: a worker of an older one never sees it (docs/VERSIONING.md)."""

    release: int
    phase: Phase
    state: State
    service: AcceptedService
    requested_at: AwareDatetime
    confirmed_at: AwareDatetime
    effective_at: AwareDatetime
    billing_outcome: BillingOutcome
    timeline: list[TimelineEvent]
    steps: Steps
    attempts_left: int
    resends_left: int
    code: IssueCodeResult | None = None
    inventory: Inventory | None = None
    archive: ArchiveStatus | None = None
    archive_input: ArchiveInput | None = None
    sla_at_risk: bool = False
    retry_requested: bool = False
    withdrawn_by: str | None = None


class SharedResource(BaseModel):
    """A resource of the service that another service that is not cancelled lists with
    the same kind, name and server (contract section 9): refused, never deleted."""

    id: int
    kind: str
    name: str
    server: str | None = None
    other_service_ids: list[int]

    @property
    def message(self) -> str:
        where = f" on {self.server}" if self.server else ""
        others = ", ".join(str(i) for i in self.other_service_ids)
        return (
            f"{self.kind} {self.name}{where} is also listed by service {others}, which is not"
            " cancelled: shared resources are never deleted"
        )


class ResourceRecordInput(BaseModel):
    """The outcomes of one resource step, written down centrally: `deleted_at` in
    `service_resources` for each verified one, and the audit line the receipt lists."""

    service_id: int
    customer_id: int
    kind: str
    server: str | None = None
    resources: list[ResourceOutcome]


# Models that name others defined further down are completed here, once all exist.
for _model in list(globals().values()):
    if isinstance(_model, type) and issubclass(_model, BaseModel) and _model.__module__ == __name__:
        _model.model_rebuild()
