"""An example resource kind: one marker file per resource, named `name`, in the folder
EXAMPLE_MARKER_ROOT. Small on purpose: it shows every part a provider's kind has."""

from __future__ import annotations

import os
import re
from pathlib import Path

from activities.kinds.base import MAILBOXES, Measure, Removal, ResourceKind, ResourceRefused
from bajas.models import ResourceContext, ResourceRef

ROOT = "EXAMPLE_MARKER_ROOT"
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class ExampleMarker(ResourceKind):
    kind = "example_marker"
    settings = (ROOT,)
    after = frozenset({MAILBOXES})

    def configuration_error(self) -> str | None:
        return None if self.env.get(ROOT) else f"{ROOT} is not set"

    def name_error(self, name: str) -> str | None:
        return None if _NAME.fullmatch(name) else "not a marker name (a-z, 0-9, -)"

    def path(self, resource: ResourceRef) -> Path:
        return Path(self.env[ROOT]) / resource.name

    async def inventory(self, resource: ResourceRef, context: ResourceContext) -> Measure:
        path = self.path(resource)
        return Measure(bytes=path.stat().st_size, items=1) if path.exists() else Measure()

    async def preflight(self, resource: ResourceRef, context: ResourceContext) -> None:
        if self.path(resource).is_dir():
            raise ResourceRefused("is a folder, not a marker")

    async def delete(self, resource: ResourceRef, context: ResourceContext) -> Removal:
        measure = await self.inventory(resource, context)
        try:
            os.unlink(self.path(resource))
        except FileNotFoundError:
            pass
        return Removal(bytes=measure.bytes, items=measure.items)

    async def verify(self, resource: ResourceRef, context: ResourceContext) -> str | None:
        return "the marker is still there" if self.path(resource).exists() else None
