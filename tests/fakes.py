"""Fake activities under the real activity names, recording every call.

The fake `issue_code` "mails" a code the tests can compute: generation 1 gets
"123456", generation g >= 2 gets the digit g six times ("222222", "333333", ...).
`verify_code` accepts only the current generation's code, once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from bajas.models import (
    ArchiveDeleted,
    ArchiveInput,
    ArchiveProgress,
    ArchiveResult,
    BillingInput,
    BillingResult,
    DeprovisionInput,
    FilesResult,
    FinishInput,
    Inventory,
    InventoryInput,
    InventoryResult,
    IssueCodeInput,
    IssueCodeResult,
    MailboxesResult,
    MailboxInventory,
    NoticeInput,
    NoticeResult,
    PaymentMethod,
    PreflightInput,
    PreflightResult,
    ResourceCheckInput,
    ResourceCheckResult,
    ResourceInventory,
    ResourceOutcome,
    ResourceRecordInput,
    ResourceStepInput,
    ResourceStepResult,
    ServiceCheck,
    ServiceCheckInput,
    TransitionInput,
    VerifyCodeInput,
    VerifyCodeResult,
)

DEPROVISIONING = ("close_billing", "delete_mailboxes", "delete_files", "finish_cancellation")

INVOICES_VOIDED = 2
MANDATES_REVOKED = 1
MAILBOXES = 3
FILES = 120
DIRS = 7
EXPIRES_IN = timedelta(days=400)
LOCKED_FILE = "/srv/www/ejemplo.com.ar/locked.php"
INVENTORY = Inventory(
    files=FILES,
    bytes=1_800_000,
    mailboxes=[
        MailboxInventory(address=f"buzon{n}@ejemplo.com.ar", messages=10, bytes=20_000)
        for n in range(MAILBOXES)
    ],
)
ARCHIVE_BYTES = 4096


def code_for(generation: int) -> str:
    return "123456" if generation == 1 else str(generation) * 6


def accepted_check(**overrides: Any) -> ServiceCheck:
    """A service that may be cancelled, paid by automatic debit.

    Without `expires_on` the fake `check_service` puts the expiry `EXPIRES_IN` after
    the activity's (skipped) time, so the outcome is debit_cancelled however far the
    shared test server's clock has moved.
    """
    values: dict[str, Any] = {
        "accepted": True,
        "domain": "ejemplo.com.ar",
        "payment_method": PaymentMethod.AUTO_DEBIT,
    }
    values.update(overrides)
    return ServiceCheck(**values)


@dataclass
class Call:
    name: str
    input: Any
    # when it was scheduled on the test server's (skipped) clock; a local activity's own
    # scheduled time is the worker's wall clock, so it reads `clock` when given
    at: datetime | None = None


@dataclass
class FakeActivities:
    check: ServiceCheck = field(default_factory=accepted_check)
    calls: list[Call] = field(default_factory=list)
    # check_service waits on this gate when it is set to an Event
    check_gate: asyncio.Event | None = None
    check_started: asyncio.Event = field(default_factory=asyncio.Event)
    # delete_files raises PathRefused this many times before it succeeds
    files_refusals: int = 0
    # close_billing's preflight refuses the files step's path this many times
    billing_refusals: int = 0
    # close_billing fails this many times (the panel database away) before it works
    billing_failures: int = 0
    # delete_files fails this many times on LOCKED_FILE (EPERM) before it goes on
    files_failures: int = 0
    # delete_files stops heartbeating (a dead worker, as the server sees it) this many times
    files_hangs: int = 0
    # delete_files returns this many times without its check having passed (`verified`)
    files_unverified: int = 0
    # delete_files raises a retryable error asking for these retry delays, one per attempt
    files_retry_delays: list[timedelta] = field(default_factory=list)
    # take_inventory waits on this gate when it is set to an Event
    inventory_gate: asyncio.Event | None = None
    # delete_files waits on this gate when it is set to an Event
    files_gate: asyncio.Event | None = None
    files_started: asyncio.Event = field(default_factory=asyncio.Event)
    # build_archive heartbeats until this gate is set, when it is set to an Event
    archive_gate: asyncio.Event | None = None
    archive_started: asyncio.Event = field(default_factory=asyncio.Event)
    # builds that saw their cancellation
    archive_cancelled: int = 0
    used_codes: set[tuple[int, str]] = field(default_factory=set)
    # what check_service answered, expiry filled in
    returned_checks: list[ServiceCheck] = field(default_factory=list)
    # the test server's clock: local activities see the wall clock, not skipped time
    clock: Callable[[], Awaitable[datetime]] | None = None
    # close_billing and verify_code wait on these gates when set to an Event
    billing_gate: asyncio.Event | None = None
    billing_started: asyncio.Event = field(default_factory=asyncio.Event)
    verify_gate: asyncio.Event | None = None
    verify_started: asyncio.Event = field(default_factory=asyncio.Event)
    # check_service raises this business error (non-retryable) instead of answering
    check_refusal: str | None = None
    # delete_resources fails this many times (a database server away) before it works
    resource_failures: int = 0
    # record_transition of this event waits on `transition_gate` (set `transition_held`)
    held_transition: str | None = None
    transition_gate: asyncio.Event = field(default_factory=asyncio.Event)
    transition_held: asyncio.Event = field(default_factory=asyncio.Event)

    # ---- what the tests read ------------------------------------------------------

    def names(self) -> list[str]:
        return [c.name for c in self.calls]

    def inputs(self, name: str) -> list[Any]:
        return [c.input for c in self.calls if c.name == name]

    def deprovisioning_calls(self) -> list[str]:
        return [c.name for c in self.calls if c.name in DEPROVISIONING]

    def notice_kinds(self) -> list[str]:
        return [n.kind for n in self.inputs("send_notice")]

    def events(self) -> list[str]:
        return [t.event for t in self.inputs("record_transition")]

    def activities(self) -> list[Any]:
        return [
            self.check_service,
            self.issue_code,
            self.verify_code,
            self.record_transition,
            self.take_inventory,
            self.preflight_paths,
            self.close_billing,
            self.delete_mailboxes,
            self.delete_files,
            self.finish_cancellation,
            self.send_notice,
            self.build_archive,
            self.delete_archive,
            self.check_shared_resources,
            self.record_resources,
            *self.resource_activities(),
        ]

    def resource_activities(self) -> list[Any]:
        """What a node worker of a resource's server runs too (contract section 9)."""
        return [self.inventory_resources, self.preflight_resources, self.delete_resources]

    async def _record(self, name: str, data: BaseModel) -> None:
        info = activity.info()
        at = info.current_attempt_scheduled_time
        if info.is_local and self.clock is not None:
            at = await self.clock()
        self.calls.append(Call(name, data.model_copy(deep=True), at))

    def first_at(self, name: str) -> datetime:
        return next(c.at for c in self.calls if c.name == name and c.at is not None)

    # ---- the fakes ------------------------------------------------------------------

    @activity.defn(name="check_service")
    async def check_service(self, data: ServiceCheckInput) -> ServiceCheck:
        await self._record("check_service", data)
        self.check_started.set()
        if self.check_gate is not None:
            await self.check_gate.wait()
        if self.check_refusal is not None:
            raise ApplicationError(self.check_refusal, type="BadResources", non_retryable=True)
        check = self.check.model_copy()
        if check.accepted and check.expires_on is None:
            now = (
                await self.clock()
                if self.clock is not None
                else activity.info().current_attempt_scheduled_time
            )
            local_today = now.astimezone(ZoneInfo(check.business_tz)).date()
            check.expires_on = local_today + EXPIRES_IN
        self.returned_checks.append(check)
        return check

    @activity.defn(name="issue_code")
    async def issue_code(self, data: IssueCodeInput) -> IssueCodeResult:
        await self._record("issue_code", data)
        return IssueCodeResult(generation=data.generation, expires_at=data.expires_at)

    @activity.defn(name="verify_code")
    async def verify_code(self, data: VerifyCodeInput) -> VerifyCodeResult:
        await self._record("verify_code", data)
        self.verify_started.set()
        if self.verify_gate is not None:
            await self.verify_gate.wait()
        key = (data.generation, data.code)
        accepted = data.code == code_for(data.generation) and key not in self.used_codes
        if accepted:
            self.used_codes.add(key)
        return VerifyCodeResult(accepted=accepted)

    @activity.defn(name="record_transition")
    async def record_transition(self, entry: TransitionInput) -> None:
        await self._record("record_transition", entry)
        if entry.event == self.held_transition:
            self.transition_held.set()
            await self.transition_gate.wait()

    @activity.defn(name="take_inventory")
    async def take_inventory(self, data: InventoryInput) -> InventoryResult:
        await self._record("take_inventory", data)
        if self.inventory_gate is not None:
            await self.inventory_gate.wait()
        return InventoryResult(inventory=INVENTORY)

    @activity.defn(name="preflight_paths")
    async def preflight_paths(self, data: PreflightInput) -> PreflightResult:
        await self._record("preflight_paths", data)
        return PreflightResult(paths=1 + MAILBOXES)

    @activity.defn(name="close_billing")
    async def close_billing(self, data: BillingInput) -> BillingResult:
        await self._record("close_billing", data)
        self.billing_started.set()
        if self.billing_gate is not None:
            await self.billing_gate.wait()
        if self.billing_refusals > 0:
            self.billing_refusals -= 1
            raise ApplicationError(
                "document_root /srv/otro is not inside HOSTING_ROOT",
                "files",
                type="PathRefused",
                non_retryable=True,
            )
        if self.billing_failures > 0:
            self.billing_failures -= 1
            raise ConnectionError("the panel database went away")
        return BillingResult(
            invoices_voided=INVOICES_VOIDED, mandates_revoked=MANDATES_REVOKED, verified=True
        )

    @activity.defn(name="delete_mailboxes")
    async def delete_mailboxes(self, data: DeprovisionInput) -> MailboxesResult:
        await self._record("delete_mailboxes", data)
        return MailboxesResult(
            mailboxes_deleted=MAILBOXES, mailboxes_total=MAILBOXES, verified=True
        )

    @activity.defn(name="delete_files")
    async def delete_files(self, data: DeprovisionInput) -> FilesResult:
        await self._record("delete_files", data)
        self.files_started.set()
        if self.files_refusals > 0:
            self.files_refusals -= 1
            raise ApplicationError(
                "document_root /srv/otro is not inside HOSTING_ROOT",
                type="PathRefused",
                non_retryable=True,
            )
        if self.files_failures > 0:
            self.files_failures -= 1
            raise PermissionError(1, "Operation not permitted", LOCKED_FILE)
        if self.files_hangs > 0:
            self.files_hangs -= 1
            activity.heartbeat()
            await asyncio.Event().wait()  # until the heartbeat timeout cancels it
        if self.files_retry_delays:
            raise ApplicationError(
                "file server busy", type="Busy", next_retry_delay=self.files_retry_delays.pop(0)
            )
        if self.files_gate is not None:
            await self.files_gate.wait()
        if self.files_unverified > 0:
            self.files_unverified -= 1
            return FilesResult(files_deleted=FILES, dirs_deleted=DIRS)
        return FilesResult(files_deleted=FILES, dirs_deleted=DIRS, verified=True)

    @activity.defn(name="finish_cancellation")
    async def finish_cancellation(self, data: FinishInput) -> None:
        await self._record("finish_cancellation", data)

    @activity.defn(name="send_notice")
    async def send_notice(self, data: NoticeInput) -> NoticeResult:
        await self._record("send_notice", data)
        return NoticeResult(sent=True)

    @activity.defn(name="build_archive")
    async def build_archive(self, data: ArchiveInput) -> ArchiveResult:
        await self._record("build_archive", data)
        self.archive_started.set()
        try:
            while self.archive_gate is not None and not self.archive_gate.is_set():
                activity.heartbeat(ArchiveProgress(bytes=1))
                await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            self.archive_cancelled += 1
            raise
        return ArchiveResult(bytes=ARCHIVE_BYTES, files=FILES, skipped=1)

    @activity.defn(name="delete_archive")
    async def delete_archive(self, data: ArchiveInput) -> ArchiveDeleted:
        await self._record("delete_archive", data)
        return ArchiveDeleted(deleted=True)

    @activity.defn(name="inventory_resources")
    async def inventory_resources(self, data: ResourceCheckInput) -> ResourceCheckResult:
        await self._record("inventory_resources", data)
        return ResourceCheckResult(
            resources=[
                ResourceInventory(kind=r.kind, name=r.name, server=r.server, bytes=1024, items=3)
                for r in data.resources
            ]
        )

    @activity.defn(name="check_shared_resources")
    async def check_shared_resources(self, data: ResourceCheckInput) -> ResourceCheckResult:
        await self._record("check_shared_resources", data)
        return ResourceCheckResult()

    @activity.defn(name="record_resources")
    async def record_resources(self, data: ResourceRecordInput) -> None:
        await self._record("record_resources", data)

    @activity.defn(name="preflight_resources")
    async def preflight_resources(self, data: ResourceCheckInput) -> ResourceCheckResult:
        await self._record("preflight_resources", data)
        return ResourceCheckResult()

    @activity.defn(name="delete_resources")
    async def delete_resources(self, data: ResourceStepInput) -> ResourceStepResult:
        await self._record("delete_resources", data)
        if self.resource_failures > 0:
            self.resource_failures -= 1
            raise ApplicationError(
                f"{data.kind} server {data.server} away", type="ServerUnavailable"
            )
        return ResourceStepResult(
            verified=True,
            resources=[
                ResourceOutcome(id=r.id, kind=r.kind, name=r.name, server=r.server, verified=True)
                for r in data.resources
            ],
        )
