"""Which changes a run's history carries (docs/VERSIONING.md), decided once at the top
of `run`: a `patched()` asked later, after a local activity, can fall in another
workflow task on replay."""

from __future__ import annotations

from dataclasses import dataclass, fields

from temporalio import workflow

# Asked at a boundary of an earlier release's run, once it runs live on this one: true
# there, it hands the run over to a continued one. A patch asked at the top of `run` is
# false for every run replaying its history, so it could move none; and `patched()`
# remembers its first answer, so each boundary asks under its own id
# (`move-to-phases@scheduled`, `move-to-phases@files#12`, ...): the one asked live is
# the first and last this run records.
MOVE_TO_PHASES = "move-to-phases"


@dataclass(frozen=True)
class Patches:
    """One flag per patch; the attribute's name is the patch id with `_` for `-`.
    `phases` is no patch: a run of this release is one on its own queue (no marker)."""

    audit_wrong_codes: bool = True
    mail_as_activity: bool = True
    lock_notice: bool = True
    end_of_term: bool = True
    inventory_and_preflight: bool = True
    last_copy: bool = True
    end_of_term_billing: bool = True
    phases: bool = True

    @classmethod
    def decide(cls, phases: bool) -> Patches:
        """A run of this release takes every change without asking; a run started on the
        configured queue asks for each, in the order the earlier releases asked."""
        if phases:
            return cls()
        earlier = {
            field.name: workflow.patched(field.name.replace("_", "-"))
            for field in fields(cls)
            if field.name != "phases"
        }
        return cls(**earlier, phases=False)


def moves_open_run(where: str) -> bool:
    """At boundary `where` of an earlier release's run: whether it hands over here."""
    return workflow.patched(f"{MOVE_TO_PHASES}@{where}")
