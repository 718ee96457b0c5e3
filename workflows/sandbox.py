"""The sandbox the workflow runs in: our deterministic helpers pass through unchanged.

`zoneinfo` must pass through or `ZoneInfo` comes back as a restricted proxy that
`datetime.astimezone` refuses; the rules and models hold no I/O.
"""

from __future__ import annotations

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

PASSTHROUGH = ("zoneinfo", "workflows.rules", "bajas.models", "pydantic", "pydantic_core")


def workflow_runner() -> SandboxedWorkflowRunner:
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
    )
