"""What one run of `ServiceCancellation` keeps, and the calls every phase makes: audit
lines, mails, steps on the data's node, the state shown to operators."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.mail import NoticeActivities
    from activities.panel_db import PanelDbActivities
    from bajas.models import (
        MAX_RESENDS,
        MAX_WRONG_CODES,
        PATH_REFUSED,
        AcceptedService,
        ArchiveInput,
        ArchiveStatus,
        BillingOutcome,
        CancellationInput,
        CancellationStatus,
        Carried,
        Effective,
        Inventory,
        IssueCodeResult,
        NoticeInput,
        Phase,
        ResourceCheckInput,
        State,
        Steps,
        TimelineEvent,
        TransitionInput,
    )
    from workflows import rules
    from workflows.details import details
    from workflows.failures import HEARTBEAT
    from workflows.patches import Patches
    from workflows.search_attributes import (
        CANCELLATION_STATE,
        RELEASE,
        SLA_AT_RISK,
        node_task_queue,
    )

RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=[PATH_REFUSED],
)
SHORT = timedelta(seconds=30)
T = TypeVar("T")
# What a run hands to the next (`Carried`), each an attribute of the same name.
CARRIED = [name for name in Carried.model_fields if name not in ("release", "phase")]


class RunState:
    """The run's state as plain attributes; each phase's module adds its steps."""

    def __init__(self, data: CancellationInput) -> None:
        self.input = data
        self.patches = Patches()
        self.state = State.AWAITING_CONFIRMATION
        self.requested_at = workflow.now()
        # Set once the service check has accepted the request.
        self.service: AcceptedService | None = None
        self.rejection_reason: str | None = None
        # The code out by mail; a resend replaces it.
        self.code: IssueCodeResult | None = None
        self.attempts_left = MAX_WRONG_CODES
        self.resends_left = MAX_RESENDS
        self.confirmed_at: datetime | None = None
        self.billing_outcome: BillingOutcome | None = None
        self.finished_at: datetime | None = None
        self.steps = Steps()
        self.sla_at_risk = False
        # When the deletion starts, set at the confirmation (rules.effective_at).
        self.effective_at: datetime | None = None
        self.timeline = [TimelineEvent(event="requested", at=self.requested_at)]
        self.retry_requested = False
        self.withdrawn_by: str | None = None
        # Checking a code, sending a new one and expiring the window each read and
        # change the current code across an activity: one at a time.
        self.code_lock = asyncio.Lock()
        # What confirming deletes, once counted; the counting runs beside the code.
        self.inventory: Inventory | None = None
        self.inventory_task: asyncio.Task[None] | None = None
        # The last copy (`request_archive`): its token, the build, and the task that
        # keeps it until it expires or goes with the rest.
        self.archive: ArchiveStatus | None = None
        self.archive_input: ArchiveInput | None = None
        self.archive_build: workflow.ActivityHandle[Any] | None = None
        self.archive_work: asyncio.Task[None] | None = None
        self.archive_released = False
        # The billing step once started (it may run ahead of the deletion while
        # scheduled), and the one wait for a copy still being built.
        self.billing_task: asyncio.Task[Any] | None = None
        self.settled: asyncio.Task[None] | None = None
        # A step refused is waiting for an operator's `retry`.
        self.awaiting_retry = False
        if data.carried is not None:
            self._restore(data.carried)

    # ---- across continue-as-new ----------------------------------------------------------

    def _restore(self, carried: Carried) -> None:
        for name in CARRIED:
            setattr(self, name, getattr(carried, name))
        self.timeline = list(carried.timeline)
        self.steps = carried.steps.model_copy(deep=True)

    def _carried(self, phase: Phase) -> Carried:
        state = {name: getattr(self, name) for name in CARRIED}
        state["timeline"] = list(self.timeline)
        state["steps"] = self.steps.model_copy(deep=True)
        return Carried(release=RELEASE, phase=phase, **state)

    # ---- activities used in several places ------------------------------------------------

    async def _transition(
        self,
        event: str,
        to_state: State | None,
        from_state: State | None = None,
        *,
        details: Mapping[str, int | str | bool | None] | None = None,
    ) -> None:
        actor = self.withdrawn_by if to_state is State.WITHDRAWN else None
        await workflow.execute_local_activity_method(
            PanelDbActivities.record_transition,
            TransitionInput(
                event=event,
                service_id=self.input.service_id,
                customer_id=self.input.customer_id,
                actor=actor or self.input.requested_by,
                from_state=from_state or State.AWAITING_CONFIRMATION,
                to_state=to_state,
                billing_outcome=self.billing_outcome,
                details={"attempts_left": self.attempts_left, **(details or {})},
            ),
            start_to_close_timeout=SHORT,
            retry_policy=RETRY,
            summary=f"audit: {event}",
        )

    async def _notice(self, kind: str, problems: list[str] | None = None) -> None:
        await self._mail_step(
            NoticeActivities.send_notice,
            NoticeInput(
                kind=kind,
                service_id=self.input.service_id,
                customer_id=self.input.customer_id,
                billing_outcome=self.billing_outcome,
                problems=problems or [],
                term_end=self.effective_at if self._was_scheduled() else None,
                archive=self.archive.state if self.archive else None,
            ),
            summary=f"mail: {kind}",
        )

    async def _mail_step(
        self, activity: Callable[[Any, Any], Awaitable[object]], arg: object, *, summary: str
    ) -> None:
        """A step that talks SMTP. v1/v2 ran it as a local activity, whose retries during
        a mail outage hold the workflow task and so delay every query by seconds; since
        `mail-as-activity` it is a regular activity."""
        await self._short(activity, arg, summary=summary, local=not self.patches.mail_as_activity)

    async def _short(
        self,
        activity: Callable[[Any, Any], Awaitable[T]],
        arg: object,
        *,
        summary: str,
        local: bool,
    ) -> T:
        """A short activity under RETRY, local or regular."""
        run = workflow.execute_local_activity_method if local else workflow.execute_activity_method
        return await run(
            activity, arg, start_to_close_timeout=SHORT, retry_policy=RETRY, summary=summary
        )

    def _node_queue(self, server: str | None = None) -> str | None:
        """The task queue of the steps that read or delete data on hosting server
        `server` (its node worker, `bajas worker --node`), by default the service's; None
        (this workflow's queue, the central workers) when there is no server."""
        server = server or (self.service.server if self.service else None)
        return node_task_queue(workflow.info().task_queue, server) if server else None

    def _server(self) -> str | None:
        """The hosting server of the service's files and mailboxes (None: central)."""
        return self.service.server if self.service else None

    async def _on_server(
        self,
        server: str | None,
        activity: Callable[[Any, Any], Awaitable[T]],
        arg: object,
        *,
        start_to_close_timeout: timedelta,
        retry_policy: RetryPolicy,
        summary: str,
    ) -> T:
        """Run a step that touches data on `server` (None: the central workers reach it)
        there. A node that is down holds only this service's steps: its task waits
        NODE_WAIT (a few minutes, from the service check) for a worker, then fails as not
        taken (`status` names the node) and is asked again."""
        assert self.service is not None  # these steps follow the service check
        return await workflow.execute_activity_method(
            activity,
            arg,
            task_queue=node_task_queue(workflow.info().task_queue, server) if server else None,
            start_to_close_timeout=start_to_close_timeout,
            schedule_to_start_timeout=self.service.node_wait,
            heartbeat_timeout=HEARTBEAT,
            retry_policy=retry_policy,
            summary=summary,
        )

    def _resource_groups(self) -> list[ResourceCheckInput]:
        """The service's listed resources by server, as the inventory and the preflight
        take them: none for a service without resources."""
        service = self.service
        if service is None or not service.resources or service.resource_context is None:
            return []
        servers = sorted({r.server or "" for r in service.resources})
        return [
            ResourceCheckInput(
                service_id=self.input.service_id,
                customer_id=self.input.customer_id,
                server=server or None,
                resources=[r for r in service.resources if (r.server or "") == server],
                context=service.resource_context,
            )
            for server in servers
        ]

    # ---- state shown to operators -------------------------------------------------------

    def _set_state(self, state: State) -> None:
        self.state = state
        if state.is_final and self.finished_at is None:
            self.finished_at = workflow.now()
        self._note(state.value)
        workflow.upsert_search_attributes([CANCELLATION_STATE.value_set(state.value)])
        self._publish()

    def _flag_sla_at_risk(self) -> None:
        self.sla_at_risk = True
        workflow.upsert_search_attributes([SLA_AT_RISK.value_set(True)])
        self._publish()

    def _note(self, event: str, at: datetime | None = None) -> None:
        """A moment of the panel's timeline (no personal data: names and times only)."""
        self.timeline.append(TimelineEvent(event=event, at=at or workflow.now()))

    def _was_scheduled(self) -> bool:
        return any(e.event == State.SCHEDULED for e in self.timeline)

    def _publish(self) -> None:
        """The Web UI's "current details"; nothing else."""
        server = self.service.server if self.service else None
        workflow.set_current_details(details(self._status(), server))

    def _status(self) -> CancellationStatus:
        service = self.service
        return CancellationStatus(
            state=self.state,
            service_id=self.input.service_id,
            customer_id=self.input.customer_id,
            requested_by=self.input.requested_by,
            domain=service.domain if service else None,
            attempts_left=self.attempts_left,
            resends_left=self.resends_left,
            code_sent=self.code is not None,
            code_expires_at=self.code.expires_at if self.code else None,
            requested_at=self.requested_at,
            confirmed_at=self.confirmed_at,
            finished_at=self.finished_at,
            billing_preview=self._outcome_at(service, self.requested_at) if service else None,
            billing_outcome=self.billing_outcome,
            rejection_reason=self.rejection_reason,
            sla_at_risk=self.sla_at_risk,
            steps=self.steps.model_copy(deep=True),
            effective=self.input.effective,
            effective_at=self.effective_at or self._planned_term_end(),
            billing_closes_at=self._billing_closes_at(),
            reason_code=self.input.reason_code,
            timeline=[e.model_copy() for e in self.timeline],
            inventory=self.inventory,
            archive=self.archive.model_copy() if self.archive else None,
        )

    def _billing_closes_at(self) -> datetime | None:
        """When the billing step runs (rules.billing_closes_at), once confirmed; runs
        recorded before `end-of-term-billing` close it with the deletion."""
        service, outcome, confirmed_at, effective_at = (
            self.service,
            self.billing_outcome,
            self.confirmed_at,
            self.effective_at,
        )
        if service is None or outcome is None or confirmed_at is None or effective_at is None:
            return None
        if not self.patches.end_of_term_billing:
            return effective_at
        return rules.billing_closes_at(
            outcome, confirmed_at, effective_at, service.expires_on, service.business_tz
        )

    def _planned_term_end(self) -> datetime | None:
        """Before the confirmation, when an `end_of_term` deletion would start."""
        service = self.service
        if not self._end_of_term() or service is None:
            return None
        return rules.term_end(service.expires_on, service.business_tz)

    def _end_of_term(self) -> bool:
        # Runs recorded before `end-of-term` carry no `effective`: they all confirm for `now`.
        return self.patches.end_of_term and self.input.effective is Effective.END_OF_TERM

    @staticmethod
    def _outcome_at(service: AcceptedService, instant: datetime) -> BillingOutcome:
        """The contract's table, judged in BUSINESS_TZ at `instant`."""
        return rules.outcome_at(
            instant, service.business_tz, service.expires_on, service.payment_method
        )
