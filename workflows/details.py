"""The Web UI's "current details" of a run: state and progress, no personal data."""

from __future__ import annotations

from bajas.models import MAX_WRONG_CODES, CancellationStatus, State, Steps, StepStatus


def problems(steps: Steps) -> list[str]:
    """A line per failing step: "files: attempt 7, PermissionError: …"."""
    return [
        f"{name}: attempt {progress.attempts}, {progress.error}"
        for name, progress in steps.items()
        if progress.error is not None
    ]


def details(status: CancellationStatus, server: str | None) -> str:
    """What `set_current_details` shows for `status` (markdown)."""
    lines = [f"**{status.state.value}** — service {status.service_id}"]
    if status.state is State.AWAITING_CONFIRMATION and status.code_expires_at is not None:
        lines.append(
            f"waiting for the code until {status.code_expires_at:%Y-%m-%d %H:%M} UTC, "
            f"{status.attempts_left} of {MAX_WRONG_CODES} tries left, "
            f"{status.resends_left} resends left"
        )
    billing_at, effective_at = status.billing_closes_at, status.effective_at
    if status.state is State.SCHEDULED and effective_at is not None:
        lines.append(f"deletion scheduled for {effective_at:%Y-%m-%d %H:%M} UTC")
        early = billing_at is not None and billing_at < effective_at
        if early and billing_at and status.steps.billing.status is StepStatus.PENDING:
            lines.append(f"billing closes {billing_at:%Y-%m-%d %H:%M} UTC, before the debit")
    if status.billing_outcome:
        lines.append(f"billing outcome: {status.billing_outcome.value}")
    if server:
        lines.append(f"files and mail on node {server}")
    if status.inventory is not None:
        boxes = status.inventory.mailboxes
        lines.append(
            f"inventory: {status.inventory.files:,} files ({status.inventory.bytes:,} bytes),"
            f" {len(boxes)} mailboxes ({sum(m.messages for m in boxes):,} messages)"
        )
    for name, progress in status.steps.items():
        if progress.status is not StepStatus.PENDING:
            lines.append(
                f"- {name}: {progress.status.value}"
                + (f" ({progress.detail})" if progress.detail else "")
            )
    if status.archive is not None:
        lines.append(f"- last copy: {status.archive.state.value}")
    lines += problems(status.steps)
    if status.sla_at_risk:
        lines.append("**SLA at risk**")
    return "\n\n".join(lines)
