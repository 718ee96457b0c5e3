"""Where deletion may happen: strictly inside a root, after resolving `..` and links."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


class UnsafePath(Exception):
    """A path that deletion must not touch; the message says why, for the operator."""


def _real(path: str | os.PathLike[str]) -> str:
    # realpath resolves each link before the `..` after it; abspath first would not.
    return os.path.realpath(path)


def resolve_all(paths: Iterable[str]) -> list[str]:
    """Resolve many paths, each parent directory once: for the whole panel's paths."""
    parents: dict[str, str] = {}
    resolved = []
    for path in paths:
        if ".." in path.split(os.sep):
            resolved.append(_real(path))  # a `..` after a link: only the full walk is right
            continue
        head, tail = os.path.split(os.path.normpath(path))
        if head not in parents:
            parents[head] = _real(head)
        candidate = os.path.join(parents[head], tail)
        resolved.append(_real(candidate) if os.path.islink(candidate) else candidate)
    return resolved


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


def refuse_shared(target: str, others: Iterable[tuple[str, str]], *, what: str) -> None:
    """Refuse a path that is, contains or lies inside another service's data.

    `others` holds (as written, resolved) pairs, resolved with `resolve_all`."""
    for written, real in others:
        if _overlaps(target, real):
            raise UnsafePath(f"{what} is shared with another service ({written!r})")


def scan_tree(top: str) -> tuple[int, int]:
    """Count files and directories below `top`; refuse any link that points out of it.

    Runs before the first unlink, so a refused tree loses nothing.
    """
    files = dirs = 0
    stack = [top]
    prefix = top.rstrip(os.sep) + os.sep
    while stack:
        current = stack.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                if entry.is_symlink():
                    target = _real(entry.path)
                    if not (target == top or target.startswith(prefix)):
                        raise UnsafePath(
                            f"symbolic link {entry.path!r} points outside {top!r} (to {target!r})"
                        )
                    files += 1
                elif entry.is_dir(follow_symlinks=False):
                    dirs += 1
                    stack.append(entry.path)
                else:
                    files += 1
    return files, dirs
