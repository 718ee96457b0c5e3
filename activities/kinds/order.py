"""The order of a cancellation's deprovisioning steps, from what each kind declares.

Pure: the central worker resolves it once (in `check_service`) for the kinds the panel
lists for the service, and the workflow gets it as data. The core steps are billing,
mailboxes and files; billing precedes every other step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from activities.kinds.base import BILLING, EVERYTHING, FILES, MAILBOXES, ResourceKind
from bajas.models import StepOrder

CORE = (BILLING, MAILBOXES, FILES)


class StepOrderError(Exception):
    """The kinds' declarations cannot all hold (a cycle, or something before billing)."""


@dataclass(frozen=True)
class Declared:
    """What one kind says about its place: steps done before it, and steps it precedes."""

    after: frozenset[str] = field(default_factory=frozenset)
    before: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, kind: type[ResourceKind]) -> Declared:
        return cls(frozenset(kind.after), frozenset(kind.before))


def step_order(kinds: Mapping[str, Declared]) -> list[StepOrder]:
    """Every step present (the core ones and one per kind), each with the steps that must
    be done before it starts, listed in an order that satisfies them all.

    A name in `after`/`before` that is not present is ignored; `*` in `after` means every
    step present that does not itself say `*`. Raises StepOrderError on a cycle or on a
    kind that would run before billing."""
    steps = [*CORE, *sorted(k for k in kinds if k not in CORE)]
    present = set(steps)
    last = {name for name, d in kinds.items() if EVERYTHING in d.after}
    needs: dict[str, set[str]] = {s: set() for s in steps}
    for step in steps:
        if step != BILLING:
            needs[step].add(BILLING)
    for name, declared in kinds.items():
        if BILLING in declared.before:
            raise StepOrderError(f"{name} says it runs before billing: billing comes first")
        needs[name] |= {s for s in declared.after if s in present and s != name}
        if name in last:
            needs[name] |= present - last
        for later in declared.before:
            if later in present and later != name:
                needs[later].add(name)
    ordered = _topological(steps, needs)
    return [StepOrder(step=s, after=sorted(needs[s], key=ordered.index)) for s in ordered]


def order_for(classes: Mapping[str, type[ResourceKind]], present: Iterable[str]) -> list[StepOrder]:
    """The order for the kinds in `present`, from their installed classes; a kind not
    installed on this worker still gets a step (its own declarations unknown)."""
    return step_order(
        {
            name: Declared.of(classes[name]) if name in classes else Declared()
            for name in set(present)
        }
    )


def _topological(steps: list[str], needs: Mapping[str, set[str]]) -> list[str]:
    """Kahn's algorithm, stable on `steps`' order; the steps left over form a cycle."""
    done: list[str] = []
    waiting = list(steps)
    while waiting:
        ready = [s for s in waiting if needs[s] <= set(done)]
        if not ready:
            raise StepOrderError(
                "the resource kinds' order has a cycle among: " + ", ".join(waiting)
            )
        done.extend(ready)
        waiting = [s for s in waiting if s not in ready]
    return done
