"""The phases after the confirmation: the wait until the end of the term (site and mail
working), billing closed at the debit's eve, and the deletion within the 24-hour promise.
Each returns the phase that follows, or None when the run has ended."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.panel_db import PanelDbActivities
    from bajas.models import (
        KIND_CANCELLED,
        KIND_SLA_AT_RISK,
        KIND_WITHDRAWN,
        FinishInput,
        Phase,
        State,
        StepStatus,
    )
    from workflows.details import problems
    from workflows.state import RETRY, SHORT
    from workflows.steps import StepEnd, StepRunner


class Phases(StepRunner):
    """What happens once confirmed, phase by phase."""

    async def _confirmed(self) -> Phase:
        """Audit the confirmation: the deletion starts now, or waits for the term's end."""
        if self.state is State.DEPROVISIONING:
            await self._transition("confirmed", State.DEPROVISIONING)
            return Phase.EFFECTIVE
        await self._transition("confirmed", State.SCHEDULED, details=self._until())
        return Phase.SCHEDULED

    async def _scheduled(self) -> Phase | None:
        """Wait (site and mail working) until the debit's eve, when billing must close
        before it (`_billing_closes_at`), or until `effective_at`, on a durable timer."""
        assert self.effective_at is not None  # set with the confirmation
        billing_at = self._billing_closes_at()
        if (
            billing_at is not None
            and billing_at < self.effective_at
            and self.steps.billing.status is not StepStatus.DONE
        ):
            if await self._scheduled_until(billing_at, "billing closes before the debit"):
                return Phase.BILLING_EVE
        elif await self._scheduled_until(self.effective_at, "end of term"):
            return Phase.EFFECTIVE
        await self._withdrawn_while_scheduled()
        return None

    async def _billing_eve(self) -> Phase | None:
        """Billing closes, beside the wait for `effective_at`. A withdrawal stops it
        between attempts, never during one: an attempt that committed shows as done."""
        assert self.effective_at is not None
        term_ended = False

        def stop() -> bool:
            return self.patches.phases and (term_ended or self.state is State.WITHDRAWN)

        billing = self.billing_task or self._close_billing(stop)
        try:
            await workflow.wait_condition(
                lambda: self.state is not State.SCHEDULED or _handed_over(billing),
                timeout=max(self.effective_at - workflow.now(), timedelta(seconds=1)),
                timeout_summary="end of term",
            )
        except TimeoutError:
            pass
        if self.state is State.SCHEDULED:
            if _handed_over(billing):
                return Phase.BILLING_EVE
            if self.patches.phases:  # the attempt under way ends in this run
                term_ended = True
                await workflow.wait_condition(lambda: billing.done() or self.awaiting_retry)
                term_ended = False  # one waiting for its `retry` goes on under the deletion
            return Phase.EFFECTIVE
        if self.patches.phases:
            await billing  # the attempt under way ends and shows as it ended
        await self._withdrawn_while_scheduled(billing)
        return None

    async def _withdrawn_while_scheduled(
        self, billing: asyncio.Task[StepEnd] | None = None
    ) -> None:
        await self._transition("withdrawn", State.WITHDRAWN, State.SCHEDULED)
        if billing is not None and not billing.done():
            billing.cancel()  # runs before `phases`: a failed or refused attempt changed nothing
        if self.steps.billing.status is StepStatus.DONE:
            await self._notice(KIND_WITHDRAWN)  # the site stays; billing stays closed

    async def _scheduled_until(self, at: datetime, summary: str) -> bool:
        """Wait on a durable timer until `at`; True when still `scheduled` then."""
        try:
            await workflow.wait_condition(
                lambda: self.state is not State.SCHEDULED,
                timeout=max(at - workflow.now(), timedelta(seconds=1)),
                timeout_summary=summary,
            )
        except TimeoutError:
            pass
        return self.state is State.SCHEDULED

    async def _effective(self) -> Phase | None:
        """The deletion, within the 24-hour promise counted from `effective_at`; the same
        phase again when a failing step hands the run over."""
        if self.state is State.SCHEDULED:
            self._set_state(State.DEPROVISIONING)
            await self._transition(
                "term_ended", State.DEPROVISIONING, State.SCHEDULED, details=self._until()
            )
        service, started_at = self.service, self.effective_at
        assert service is not None and started_at is not None
        work = asyncio.ensure_future(self._deprovision())
        if not self.sla_at_risk:
            deadline = started_at + service.sla_limit
            try:
                await workflow.wait_condition(
                    work.done,
                    timeout=max(deadline - workflow.now(), timedelta(seconds=1)),
                    timeout_summary="24-hour promise",
                )
            except TimeoutError:
                await self._raise_sla_alert()
        end = await work
        return Phase.EFFECTIVE if end is StepEnd.HANDED_OVER else None

    async def _deprovision(self) -> StepEnd:
        """The steps in their order, then the final mark and the customer's mail."""
        end = await self._run_steps()
        if end is not StepEnd.DONE:
            return end
        await self._archive_gone()
        await workflow.execute_local_activity_method(
            PanelDbActivities.finish_cancellation,
            FinishInput(
                service_id=self.input.service_id,
                customer_id=self.input.customer_id,
                billing_outcome=self.billing_outcome,
                files_deleted=self.steps.files.done,
                mailboxes_deleted=self.steps.mailboxes.done,
            ),
            start_to_close_timeout=SHORT,
            retry_policy=RETRY,
            summary="mark the service cancelled",
        )
        self._set_state(State.CANCELLED)
        await self._notice(KIND_CANCELLED)
        return StepEnd.DONE

    async def _raise_sla_alert(self) -> None:
        self._flag_sla_at_risk()
        await self._transition("sla_at_risk", None, State.DEPROVISIONING)
        await self._notice(KIND_SLA_AT_RISK, problems(self.steps))

    def _until(self) -> dict[str, str | None]:
        return {"effective_at": self.effective_at.isoformat() if self.effective_at else None}


def _handed_over(step: asyncio.Task[StepEnd]) -> bool:
    return (
        step.done()
        and not step.cancelled()
        and step.exception() is None
        and step.result() is StepEnd.HANDED_OVER
    )
