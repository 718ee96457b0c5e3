"""bajas's own metrics, beside the SDK's on the worker's METRICS_PORT (docs/RUNBOOK.md
says which alert watches which).

They are counted here, from what the activities take and return, in an activity
interceptor: the workflow and the activities stay as they are. The SDK's runtime
meter serves them on the same Prometheus endpoint as its own metrics.

- `bajas_cancellations_total{state, billing_outcome}`: transitions recorded, by the
  state reached (`cancelled` once the service is marked cancelled).
- `bajas_deleted_bytes_total{kind}`, `bajas_deleted_items_total{kind}`: what the steps
  that finished deleted: `files`, `mailboxes` (messages) and each resource kind.
- `bajas_steps_failing{step}`: steps whose last attempt on this worker failed and has
  not been followed by another (forgotten after STALE_FAILURE: another worker took it).
- `bajas_runs_at_sla_risk`: running cancellations with SlaAtRisk set, counted in the
  namespace's visibility by every central worker (alert on the max).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.common import MetricMeter
from temporalio.exceptions import CancelledError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from bajas.models import (
    FilesResult,
    FinishInput,
    MailboxesResult,
    ResourceStepResult,
    State,
    TransitionInput,
)

log = logging.getLogger("bajas.metrics")

STALE_FAILURE = timedelta(minutes=10)
REFRESH = timedelta(seconds=30)
SLA_RISK_QUERY = "SlaAtRisk = true AND ExecutionStatus = 'Running'"


class BajasMetrics:
    """The instruments, on one meter (the worker's runtime, or a test's)."""

    def __init__(self, meter: MetricMeter) -> None:
        self.cancellations = meter.create_counter(
            "bajas_cancellations_total", "cancellation transitions, by state reached"
        )
        self.deleted_bytes = meter.create_counter(
            "bajas_deleted_bytes_total", "bytes deleted by finished steps", "By"
        )
        self.deleted_items = meter.create_counter(
            "bajas_deleted_items_total", "files, messages or resource items deleted"
        )
        self.steps_failing = meter.create_gauge(
            "bajas_steps_failing", "steps whose last attempt here failed"
        )
        self.runs_at_sla_risk = meter.create_gauge(
            "bajas_runs_at_sla_risk", "running cancellations with SlaAtRisk set"
        )
        # (workflow id, step) -> when its last attempt here failed
        self._failing: dict[tuple[str, str], float] = {}
        self._steps: set[str] = set()

    def step_started(self, workflow_id: str, step: str) -> None:
        if self._failing.pop((workflow_id, step), None) is not None:
            self.refresh_failing()

    def step_failed(self, workflow_id: str, step: str) -> None:
        self._failing[(workflow_id, step)] = time.monotonic()
        self.refresh_failing()

    def refresh_failing(self) -> None:
        """Set the gauge per step, forgetting failures older than STALE_FAILURE."""
        oldest = time.monotonic() - STALE_FAILURE.total_seconds()
        self._failing = {key: at for key, at in self._failing.items() if at >= oldest}
        counts: dict[str, int] = {}
        for _, step in self._failing:
            counts[step] = counts.get(step, 0) + 1
        self._steps |= set(counts)
        for step in self._steps:
            self.steps_failing.set(counts.get(step, 0), {"step": step})

    def count_result(self, arg: Any, result: Any) -> None:
        """Count what a finished activity did, from its input and result."""
        if isinstance(arg, TransitionInput) and arg.to_state is not None:
            self._cancellation(arg.to_state.value, arg.billing_outcome)
        elif isinstance(arg, FinishInput):
            self._cancellation(State.CANCELLED.value, arg.billing_outcome)
        if isinstance(result, FilesResult):
            self._deleted("files", result.bytes_deleted, result.files_deleted)
        elif isinstance(result, MailboxesResult):
            self._deleted("mailboxes", result.bytes_deleted, result.messages_deleted)
        elif isinstance(result, ResourceStepResult):
            for resource in result.resources:
                if resource.verified:
                    self._deleted(resource.kind, resource.bytes or 0, resource.items or 0)

    def _cancellation(self, state: str, outcome: Any) -> None:
        labels = {"state": state, "billing_outcome": outcome.value if outcome else "none"}
        self.cancellations.add(1, labels)

    def _deleted(self, kind: str, size: int, items: int) -> None:
        self.deleted_bytes.add(size, {"kind": kind})
        self.deleted_items.add(items, {"kind": kind})

    async def refresh(self, client: Client | None) -> None:
        """Forget stale failures; with a client (a central worker's), count the runs at
        SLA risk in the namespace's visibility."""
        self.refresh_failing()
        if client is None:
            return
        try:
            counted = await client.count_workflows(SLA_RISK_QUERY)
        except Exception as err:  # the metric waits; the worker goes on
            log.warning("cannot count the runs at SLA risk: %s", err)
            return
        self.runs_at_sla_risk.set(counted.count, {})

    async def watch(self, client: Client | None, stop: asyncio.Event) -> None:
        """`refresh` every REFRESH until `stop` is set."""
        while not stop.is_set():
            await self.refresh(client)
            try:
                await asyncio.wait_for(stop.wait(), REFRESH.total_seconds())
            except TimeoutError:
                pass


class _CountingInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, metrics: BajasMetrics) -> None:
        super().__init__(next)
        self.metrics = metrics

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        step, workflow_id = info.activity_type, info.workflow_id or ""
        self.metrics.step_started(workflow_id, step)
        try:
            result = await super().execute_activity(input)
        except CancelledError:
            raise
        except Exception:
            self.metrics.step_failed(workflow_id, step)
            raise
        try:
            self.metrics.count_result(input.args[0] if input.args else None, result)
        except Exception as err:  # a metric must never fail the step it counts
            log.warning("metrics of %s not counted: %s", step, err)
        return result


class ActivityMetrics(Interceptor):
    """Counts every activity's outcome into `metrics` (see the module's docstring)."""

    def __init__(self, metrics: BajasMetrics) -> None:
        self.metrics = metrics

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _CountingInbound(next, self.metrics)
