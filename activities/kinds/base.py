"""What a resource kind is (contract section 9): a class registered under the entry point
group `bajas.resources`, found at worker start. The built-in kinds are registered the same
way as a provider's own (pyproject.toml), so this module is the whole plugin interface.

A kind runs on the worker of the resource's `server` (a node worker, or a central one when
`server` is null). Everything it needs arrives in the activity input (`ResourceRef`,
`ResourceContext`) or in its settings: no kind reads the panel database.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO, ClassVar

from bajas.models import ResourceContext, ResourceRef

# Names a kind may put in `after` / `before` besides other kinds: the core steps.
BILLING, MAILBOXES, FILES = "billing", "mailboxes", "files"
# In `after`: every other step present for the service (the system user goes last).
EVERYTHING = "*"


class ResourceRefused(Exception):
    """The resource must not be deleted (a system database, a name the kind does not
    accept, a uid below 1000, …): the run waits for an operator's `retry`, as for a
    refused path. The message names the resource and says why, in one line."""


class ServerUnavailable(Exception):
    """The server that holds the resource is not answering ("MariaDB at 10.0.0.5:3306
    is not answering"): the attempt fails and the step is tried again, never skipped."""


class NotConfigured(ResourceRefused):
    """A setting the kind needs is missing or unusable; the message names the setting."""


@dataclass(frozen=True)
class Measure:
    """A resource's size for the inventory and the receipt; None where unknown."""

    bytes: int | None = None
    items: int | None = None


@dataclass(frozen=True)
class Removal:
    """What `delete` did: the size it had, and a note for the receipt (or None)."""

    bytes: int | None = None
    items: int | None = None
    detail: str | None = None


class ResourceKind(ABC):
    """One kind of resource. Instances are built once per worker from its environment;
    every method may be called again after a crash and must then change nothing more
    (a resource already gone is not an error for `delete`)."""

    # The kind as `service_resources.kind` names it.
    kind: ClassVar[str]
    # The environment variables it reads (for `bajas check` and the refusal message).
    settings: ClassVar[tuple[str, ...]] = ()
    # Steps (core names above, or other kinds) that must be done before / after it.
    after: ClassVar[frozenset[str]] = frozenset()
    before: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def configuration_error(self) -> str | None:
        """Why this worker cannot handle the kind (a missing setting, named), or None."""
        return None

    @abstractmethod
    def name_error(self, name: str) -> str | None:
        """Why `name` is not one this kind accepts, or is a system one; None if fine.
        Pure: no I/O, so the central worker can judge it too."""

    @abstractmethod
    async def inventory(self, resource: ResourceRef, context: ResourceContext) -> Measure:
        """The resource's size, changing nothing; Measure() when it is already gone."""

    @abstractmethod
    async def preflight(self, resource: ResourceRef, context: ResourceContext) -> None:
        """Raise ResourceRefused when deleting it would be unsafe, as it stands now."""

    @abstractmethod
    async def delete(self, resource: ResourceRef, context: ResourceContext) -> Removal:
        """Delete it; idempotent."""

    @abstractmethod
    async def verify(self, resource: ResourceRef, context: ResourceContext) -> str | None:
        """None once the resource is proven gone (the contract's "gone when"), else
        what is left, in one line."""

    supports_dump: ClassVar[bool] = False

    async def dump(
        self, resource: ResourceRef, context: ResourceContext, out: BinaryIO
    ) -> int:  # pragma: no cover - only kinds with supports_dump
        """Stream the resource's content into `out` (the last copy's `databases/NAME.sql`),
        never staged whole on disk or in memory; the bytes written."""
        raise NotImplementedError
