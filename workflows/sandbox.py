"""How the workflow code runs: in the SDK's sandbox, or directly.

The sandbox re-imports the workflow module for every run and proxies the standard
library to catch non-deterministic calls; on a 2-core machine that costs about a
third of the worker's CPU (docs/PERFORMANCE.md). The tests always run the workflow
in the sandbox (`workflow_runner(sandboxed=True)`), so a forbidden call fails CI;
production workers choose with WORKFLOW_SANDBOX (off by default).

`zoneinfo` must pass through the sandbox or `ZoneInfo` comes back as a restricted
proxy that `datetime.astimezone` refuses; the rules and models hold no I/O.
"""

from __future__ import annotations

from temporalio.worker import UnsandboxedWorkflowRunner, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

PASSTHROUGH = ("zoneinfo", "workflows.rules", "bajas.models", "pydantic", "pydantic_core")


def workflow_runner(sandboxed: bool = True) -> WorkflowRunner:
    if not sandboxed:
        return UnsandboxedWorkflowRunner()
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
    )
