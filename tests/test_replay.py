"""Replay stored histories against today's workflow code: a change that would break
running cancellations (non-determinism) fails here, before it reaches a worker."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.workflow import NondeterminismError

from workflows.cancellation import ServiceCancellation
from workflows.sandbox import workflow_runner

HISTORIES = Path(__file__).parent / "histories"
# Patch ids (workflows/patches.py: the attribute names with `-` for `_`).
END_OF_TERM = "end-of-term"
END_OF_TERM_BILLING = "end-of-term-billing"
INVENTORY_AND_PREFLIGHT = "inventory-and-preflight"
ENDINGS = ("cancelled", "expired", "withdrawn", "locked", "rejected")


def load(path: Path) -> WorkflowHistory:
    data = json.loads(path.read_text())
    workflow_id = data["events"][0]["workflowExecutionStartedEventAttributes"].get(
        "workflowId", path.stem
    )
    return WorkflowHistory.from_json(workflow_id, data)


def stored() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


def test_every_final_state_has_a_stored_history() -> None:
    names = {p.stem.split("-")[0] for p in stored()}
    assert set(ENDINGS) <= names, f"missing histories: {set(ENDINGS) - names}"


@pytest.mark.parametrize("path", stored(), ids=lambda p: p.stem)
async def test_stored_history_replays(path: Path) -> None:
    replayer = Replayer(
        workflows=[ServiceCancellation],
        data_converter=pydantic_data_converter,
        workflow_runner=workflow_runner(),
    )
    result = await replayer.replay_workflow(load(path), raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


async def replay_failure_with(
    monkeypatch: pytest.MonkeyPatch, patched: Callable[[str], bool], history: str
) -> BaseException | None:
    """Replay a stored history with `workflow.patched` answered by `patched`; the failure."""
    monkeypatch.setattr(workflow, "patched", patched)
    replayer = Replayer(
        workflows=[ServiceCancellation],
        data_converter=pydantic_data_converter,
        workflow_runner=UnsandboxedWorkflowRunner(),
    )
    result = await replayer.replay_workflow(
        load(HISTORIES / f"{history}.json"), raise_on_replay_failure=False
    )
    return result.replay_failure


def forcing(patch_id: str, value: bool) -> Callable[[str], bool]:
    """`workflow.patched` with one patch forced to `value`, the others as they are."""
    real = workflow.patched
    return lambda asked: value if asked == patch_id else real(asked)


async def test_an_unguarded_change_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wrong-code audit step shipped behind `workflow.patched`; without the guard,
    the runs recorded before it (v1) would no longer replay. Prove the suite sees that."""
    failure = await replay_failure_with(monkeypatch, lambda patch_id: True, "locked-v1")
    assert isinstance(failure, NondeterminismError)


async def test_the_end_of_term_needs_its_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that waited for the end of its term replays only with `end-of-term` on: the
    guard is what keeps the older runs, all `now`, on their path."""
    failure = await replay_failure_with(
        monkeypatch, forcing(END_OF_TERM, False), "scheduled_then_cancelled-v6"
    )
    assert isinstance(failure, NondeterminismError)


@pytest.mark.parametrize(("history", "forced"), [("cancelled-v3", True), ("cancelled-v5", False)])
async def test_the_inventory_and_preflight_patch_is_needed(
    monkeypatch: pytest.MonkeyPatch, history: str, forced: bool
) -> None:
    """`inventory-and-preflight` adds the inventory before the code mail and the preflight
    before billing: forced on, a run recorded before it fails to replay; forced off, one
    recorded after it does."""
    failure = await replay_failure_with(
        monkeypatch, forcing(INVENTORY_AND_PREFLIGHT, forced), history
    )
    assert isinstance(failure, NondeterminismError)


@pytest.mark.parametrize(
    ("history", "forced"),
    [("billed_early_then_cancelled-v7", True), ("billed_early_then_cancelled-v8", False)],
)
async def test_the_end_of_term_billing_needs_its_patch(
    monkeypatch: pytest.MonkeyPatch, history: str, forced: bool
) -> None:
    """`end-of-term-billing` closes a scheduled `debit_cancelled` at the debit cut-off's
    eve, a timer and the billing step before the end of the term. The same cancellation
    recorded before it (v7: billing at the end of the term) fails to replay with the
    patch forced on, and the one recorded after it with the patch forced off."""
    failure = await replay_failure_with(monkeypatch, forcing(END_OF_TERM_BILLING, forced), history)
    assert isinstance(failure, NondeterminismError)
