"""Where deletion may happen: strictly inside a root, after resolving `..` and links."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

FileId = tuple[int, int]  # (device, inode): one directory, however it is spelled


class UnsafePath(Exception):
    """A path that deletion must not touch; the message says why, for the operator."""


def _real(path: str | os.PathLike[str]) -> str:
    # realpath resolves each link before the `..` after it; abspath first would not.
    return os.path.realpath(path)


def _inside(child: str, parent: str) -> bool:
    return child != parent and child.startswith(parent.rstrip(os.sep) + os.sep)


def _overlaps(a: str, b: str) -> bool:
    return a == b or _inside(a, b) or _inside(b, a)


def checked_target(path: str | None, root: Path, *, what: str) -> str:
    """The resolved path to delete, or UnsafePath when it is not strictly inside `root`."""
    if not path:
        raise UnsafePath(f"{what} is empty")
    if not os.path.isabs(path):
        raise UnsafePath(f"{what} {path!r} is not an absolute path")
    real_root = _real(root)
    roots = {os.path.normpath(os.path.abspath(root)), real_root}
    # Judge both the written path (no `..` escape) and where links lead.
    lexical = os.path.normpath(path)
    if not any(_inside(lexical, r) for r in roots):
        raise UnsafePath(f"{what} {path!r} is not strictly inside {real_root}")
    real = _real(path)
    if not _inside(real, real_root):
        raise UnsafePath(f"{what} {path!r} resolves to {real}, outside {real_root}")
    return real


def file_id(path: str) -> FileId | None:
    """The directory (or file) a path names on disk, links and `..` resolved by the
    kernel; None when nothing is there."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def file_ids(paths: Iterable[str]) -> list[FileId | None]:
    return [file_id(p) for p in paths]


def ancestry(target: str) -> set[FileId]:
    """`target` and every directory above it: another service living at one of them
    would contain ours."""
    ids: set[FileId] = set()
    current = target
    while True:
        found = file_id(current)
        if found is not None:
            ids.add(found)
        parent = os.path.dirname(current)
        if parent == current:
            return ids
        current = parent


def lexically_overlaps(target: str, other: str) -> bool:
    """Overlap as written, for paths not (yet) on disk. A `..` is left to the kernel:
    collapsing it by hand could cross a link the wrong way."""
    if not other or ".." in other.split(os.sep):
        return False
    return _overlaps(target, os.path.normpath(other))
