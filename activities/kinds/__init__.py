"""The resource kinds a worker knows: every entry point of the group `bajas.resources`."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points

from activities.kinds.base import ResourceKind

GROUP = "bajas.resources"


class KindLoadError(Exception):
    """An entry point that does not load, or names something that is not a kind."""


def kind_classes() -> dict[str, type[ResourceKind]]:
    """Each installed kind's class by its name; an entry point's name must be its kind."""
    found: dict[str, type[ResourceKind]] = {}
    for point in entry_points(group=GROUP):
        try:
            loaded = point.load()
        except Exception as err:  # a provider's broken package: say which
            raise KindLoadError(f"resource kind {point.name!r} ({point.value}): {err}") from err
        if not (isinstance(loaded, type) and issubclass(loaded, ResourceKind)):
            raise KindLoadError(
                f"resource kind {point.name!r} ({point.value}) is not a ResourceKind"
            )
        if loaded.kind != point.name:
            raise KindLoadError(
                f"entry point {point.name!r} names the kind {loaded.kind!r}: they must match"
            )
        found[point.name] = loaded
    return found


def load_kinds(env: Mapping[str, str]) -> dict[str, ResourceKind]:
    """Every installed kind, built with this worker's environment."""
    return {name: cls(env) for name, cls in kind_classes().items()}
