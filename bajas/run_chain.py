"""The run a cancellation's audit lines, request row and receipt belong to: the first
run of its chain of runs continued as new, whose id the lines have always been keyed
by. The workflow sends it to every activity in a header; activities read it with
`chain_run_id()` (a run that never continued sends its own id)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from temporalio import activity, workflow
from temporalio.converter import PayloadConverter
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    StartActivityInput,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

HEADER = "bajas-chain-run"
_chain_run: ContextVar[str | None] = ContextVar("bajas_chain_run", default=None)


def chain_run_id() -> str:
    """In an activity: the first run of the workflow's chain."""
    return _chain_run.get() or activity.info().workflow_run_id or ""


class _ActivityInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        payload = input.headers.get(HEADER)
        run = PayloadConverter.default.from_payload(payload, str) if payload else None
        token = _chain_run.set(run)
        try:
            return await super().execute_activity(input)
        finally:
            _chain_run.reset(token)


class _WorkflowOutbound(WorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        input.headers = {**input.headers, HEADER: _first_run()}
        return super().start_activity(input)

    def start_local_activity(self, input: StartLocalActivityInput) -> workflow.ActivityHandle[Any]:
        input.headers = {**input.headers, HEADER: _first_run()}
        return super().start_local_activity(input)


def _first_run() -> Any:
    return PayloadConverter.default.to_payload(workflow.info().first_execution_run_id)


class _WorkflowInbound(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_WorkflowOutbound(outbound))


class RunChain(Interceptor):
    """On every worker that runs the workflow or an activity writing audit lines."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityInbound(next)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return _WorkflowInbound
