"""The resource steps (contract section 9): inventory, preflight and verified deletion of
what `service_resources` lists, each through its kind (`activities/kinds`).

Run on the worker of the resources' `server`; everything arrives in the input, so a node
worker needs no panel database. A refusal is `PathRefused` naming the kind's step (the
run waits for an operator's `retry`); a server that does not answer fails the attempt
with its name, and the workflow tries again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import path_refused
from activities.kinds.base import ResourceKind, ResourceRefused, ServerUnavailable
from bajas.models import (
    ResourceCheckInput,
    ResourceCheckResult,
    ResourceInventory,
    ResourceOutcome,
    ResourceRef,
    ResourceStepInput,
    ResourceStepResult,
    SharedResource,
)

NOT_GONE = "NotGone"
UNAVAILABLE = "ServerUnavailable"
T = TypeVar("T")


class ResourceActivities:
    """The three resource activities over every kind this worker has loaded."""

    def __init__(self, kinds: Mapping[str, ResourceKind]) -> None:
        self.kinds = kinds

    @activity.defn(name="inventory_resources")
    async def inventory_resources(self, data: ResourceCheckInput) -> ResourceCheckResult:
        """Each resource's size, changing nothing; a kind that cannot tell gives None."""
        counted = []
        for resource in data.resources:
            kind = self._kind(resource)
            measure = await _answering(resource, kind.inventory(resource, data.context))
            counted.append(
                ResourceInventory(
                    kind=resource.kind,
                    name=resource.name,
                    server=resource.server,
                    bytes=measure.bytes,
                    items=measure.items,
                )
            )
        return ResourceCheckResult(resources=counted)

    @activity.defn(name="preflight_resources")
    async def preflight_resources(self, data: ResourceCheckInput) -> ResourceCheckResult:
        """Refuse, before billing, every resource whose deletion would be unsafe."""
        for resource in data.resources:
            kind = self._kind(resource)
            await _answering(resource, kind.preflight(resource, data.context))
        return ResourceCheckResult()

    @activity.defn(name="delete_resources")
    async def delete_resources(self, data: ResourceStepInput) -> ResourceStepResult:
        """Delete every resource of one kind on one server, each checked again right
        before, and each proven gone by the kind's own check."""
        outcomes = []
        for resource in data.resources:
            kind = self._kind(resource)
            await _answering(resource, kind.preflight(resource, data.context))
            removal = await _answering(resource, kind.delete(resource, data.context))
            left = await _answering(resource, kind.verify(resource, data.context))
            if left is not None:
                raise ApplicationError(f"{resource.kind} {resource.name}: {left}", type=NOT_GONE)
            outcomes.append(
                ResourceOutcome(
                    id=resource.id,
                    kind=resource.kind,
                    name=resource.name,
                    server=resource.server,
                    verified=True,
                    bytes=removal.bytes,
                    items=removal.items,
                    detail=removal.detail,
                )
            )
        return ResourceStepResult(resources=outcomes, verified=True)

    def _kind(self, resource: ResourceRef) -> ResourceKind:
        """The loaded kind, refused with a clear error when missing, misconfigured or
        when the name is not one it accepts."""
        kind = self.kinds.get(resource.kind)
        if kind is None:
            raise path_refused(
                f"{resource.kind} {resource.name}: no such resource kind installed on this worker",
                resource.kind,
            )
        problem = kind.configuration_error() or kind.name_error(resource.name)
        if problem is not None:
            raise path_refused(f"{resource.kind} {resource.name}: {problem}", resource.kind)
        return kind


async def _answering(resource: ResourceRef, work: Awaitable[T]) -> T:
    """A kind's call, its refusal and its server's outage turned into the errors the
    workflow's step runner knows: PathRefused naming the kind's step, or a retryable
    one-line failure that names the server."""
    try:
        return await work
    except ResourceRefused as err:
        raise path_refused(f"{resource.kind} {resource.name}: {err}", resource.kind) from None
    except ServerUnavailable as err:
        raise ApplicationError(str(err), type=UNAVAILABLE) from None


@dataclass(frozen=True)
class Listing:
    """A `service_resources` row of another service that is not cancelled."""

    kind: str
    name: str
    server: str | None
    service_id: int


def shared_resources(
    ours: Sequence[ResourceRef], others: Iterable[Listing]
) -> list[SharedResource]:
    """Each of our resources that another live service lists with the same kind, name and
    server (a null server matches a null one), with those services; pure, in our order."""
    by_key: dict[tuple[str, str, str | None], set[int]] = {}
    for other in others:
        by_key.setdefault((other.kind, other.name, other.server or None), set()).add(
            other.service_id
        )
    return [
        SharedResource(
            id=r.id,
            kind=r.kind,
            name=r.name,
            server=r.server,
            other_service_ids=sorted(by_key[(r.kind, r.name, r.server or None)]),
        )
        for r in ours
        if (r.kind, r.name, r.server or None) in by_key
    ]
