"""The deletion engine: one walk of a directory tree that counts, deletes or verifies it,
or hands it entry by entry to a reader (the last copy's archive).

`shutil.rmtree` and path-based walks recurse (RecursionError past ~1,000 levels), build
paths (ENAMETOOLONG past PATH_MAX) and walk into bind mounts, which `st_dev` does not
reveal. This walk works relative to directory descriptors, keeps no list of paths, and
never follows a link, opens anything but a directory, or enters another mount. A small
pool of threads takes one directory each from a shared stack: unlinks in separate
directories overlap, which is what beats `rm -rf` (on ext4 with `discard`, each freed
block waits for the device).

Pure filesystem and threads: the activities run it in a thread and heartbeat `Progress`.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import stat
import threading
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from activities.paths import FileId, UnsafePath

MOUNTINFO = "/proc/self/mountinfo"
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FLUSH_EVERY = 1024  # entries between progress updates and stop checks
_MAX_FDS = 512  # more open directories than this buys no speed
_MESSAGE_DIRS = frozenset({"cur", "new"})
_SHOWN_MAX = 120  # characters of a path in an error message


@dataclass(frozen=True)
class TreeCount:
    """What a walk found or deleted.

    `files`: entries that are not directories (files, links, FIFOs, sockets, devices),
    each name once, as `find TOP ! -type d | wc -l`; `bytes`: apparent size as `du -sb
    TOP` (every entry's st_size, directories and TOP included, a hard-linked inode once);
    `dirs`: directories, TOP included.
    """

    files: int = 0
    bytes: int = 0
    dirs: int = 0


@dataclass(frozen=True)
class MaildirCount:
    """A maildir's `messages` (files directly in a `cur/` or `new/`, its folders' too)
    and `bytes` (`du -sb` of the maildir)."""

    messages: int = 0
    bytes: int = 0


class Progress:
    """Work done so far, updated by the walk's threads and readable from any other
    thread while it runs, so an async activity can heartbeat it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files = self._bytes = self._dirs = 0

    def add(self, files: int = 0, bytes: int = 0, dirs: int = 0) -> None:
        with self._lock:
            self._files += files
            self._bytes += bytes
            self._dirs += dirs

    def snapshot(self) -> TreeCount:
        with self._lock:
            return TreeCount(self._files, self._bytes, self._dirs)


class TreeError(Exception):
    """Entries the walk could not delete (or read); everything else was done. The
    message is one line: the first failure, its path shortened, and how many failed."""

    def __init__(self, first: OSError, path: str, failed: int) -> None:
        self.first = first
        self.path = path
        self.failed = failed
        name = type(first).__name__
        more = "1 entry failed" if failed == 1 else f"{failed} entries failed"
        super().__init__(
            f"{name}: [Errno {first.errno}] {first.strerror}: '{shown(path)}' ({more})"
        )


class Stopped(Exception):
    """The stop event ended the walk at a safe point; calling again finishes the work."""


class Reader(Protocol):
    """What `read_tree` hands the entries to, one at a time, each directory before what
    it holds. `names` are the entry's names below the top, `()` for the top itself
    (str with surrogate escapes: any byte round-trips). An exception from a reader
    ends the walk and is raised by `read_tree`; so a reader keeps OSErrors of its own
    output out of it."""

    def directory(self, names: tuple[str, ...], st: os.stat_result) -> None:
        """A directory the walk entered."""

    def entry(self, dir_fd: int, names: tuple[str, ...], st: os.stat_result) -> None:
        """Anything else (`st` from lstat); `names[-1]` opens it relative to `dir_fd`."""

    def skipped(self, names: tuple[str, ...], why: str) -> None:
        """A directory not entered (another mount), or what could not be read."""


def mounts_below(path: str) -> list[str]:
    """Every mount point at `path` or strictly below it, bind mounts included (st_dev does
    not reveal a bind mount of the same filesystem), compared on the realpath."""
    real = os.fsencode(os.path.realpath(path))
    prefix = real.rstrip(b"/") + b"/"
    found = []
    with open(MOUNTINFO, "rb") as lines:
        for line in lines:
            point = _unescape(line.split(b" ", 5)[4])
            if point == real or point.startswith(prefix):
                found.append(os.fsdecode(point))
    return found


def count_tree(
    top: str,
    threads: int = 4,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    protected: Collection[FileId] = (),
) -> TreeCount:
    """The inventory: files, bytes and directories of `top`, nothing deleted. A missing
    `top` counts zero. Refuses (UnsafePath) a tree holding another mount."""
    return _Walk(top, False, threads, progress, stop, protected).run().total.snapshot()


def count_maildir(
    maildir: str,
    threads: int = 4,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    protected: Collection[FileId] = (),
) -> MaildirCount:
    """A maildir's messages and bytes, in one walk."""
    walk = _Walk(maildir, False, threads, progress, stop, protected).run()
    return MaildirCount(messages=walk.messages, bytes=walk.total.snapshot().bytes)


def delete_tree(
    top: str,
    threads: int = 4,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    protected: Collection[FileId] = (),
) -> TreeCount:
    """Delete `top` and everything below it; returns what was deleted.

    Idempotent: a missing `top` is 0, and a call after a partial one deletes what is left.
    Before anything changes, a mount at or below `top` raises UnsafePath naming it; a
    directory found on another mount during the walk, or one of `protected` ((dev, ino)
    of other services' live directories), is not entered and raises UnsafePath at the
    end. An entry that cannot be deleted does not stop the rest: TreeError at the end.
    A directory that is not empty when its turn comes (a file written meanwhile) is left
    without error: `remaining(top)` is the proof that the tree is gone.
    """
    return _Walk(top, True, threads, progress, stop, protected).run().total.snapshot()


def read_tree(top: str, reader: Reader, stop: threading.Event | None = None) -> TreeCount:
    """Hand every entry of `top` to `reader`, in one thread, deleting nothing; returns
    what was read. A mount below `top` is not entered but handed to `reader.skipped`,
    as is what cannot be read; only a `top` that is itself a mount point is refused
    (UnsafePath). A missing `top` reads nothing."""
    return _Walk(top, False, 1, None, stop, (), reader).run().total.snapshot()


def remaining(top: str, threads: int = 4, protected: Collection[FileId] = ()) -> TreeCount | None:
    """None when `top` is gone; else what is still there, for the caller to delete again."""
    if not os.path.lexists(top):
        return None
    return count_tree(top, threads, protected=protected)


def shown(path: str) -> str:
    """A path for a one-line message: undecodable bytes and control characters escaped,
    a long one shortened in the middle with `…`."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    if len(text) <= _SHOWN_MAX:
        return text
    head = _SHOWN_MAX // 3
    return text[:head] + "…" + text[len(text) - (_SHOWN_MAX - head - 1) :]


def _unescape(field: bytes) -> bytes:
    """mountinfo writes space, tab, newline and backslash as octal escapes (`\\040`)."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)


def _mount_id(fd: int) -> int | None:
    """The mount an open descriptor lies on: the one test no bind mount escapes, even
    one made after the walk began."""
    try:
        info = os.open(f"/proc/self/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = os.read(info, 4096)
    finally:
        os.close(info)
    found = re.search(rb"^mnt_id:\s*(\d+)", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def _fd_budget(threads: int) -> int:
    """Directory descriptors the walk may keep open: half of what the soft limit leaves
    free, less one scandir and one opening in flight per thread."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    free = soft - len(os.listdir("/proc/self/fd"))
    return max(4, min(_MAX_FDS, free // 2 - 2 * threads))


class _Dir:
    """A directory of the walk: alive from its discovery until it and all below it are
    done. Remembers its name in the parent and its (dev, ino); its descriptor may be
    closed to stay in budget and is then reopened and checked against that identity."""

    __slots__ = ("parent", "name", "fd", "users", "pending", "id", "size", "messages")

    def __init__(self, parent: _Dir | None, name: str, messages: bool = False) -> None:
        self.parent = parent
        self.name = name  # str with surrogate escapes: any byte round-trips
        self.fd = -1
        self.users = 0  # threads using fd now; an unused fd may be closed
        self.pending = 1  # its own listing, plus one per subdirectory not done yet
        self.id: FileId | None = None
        self.size = 0
        self.messages = messages


class _Walk:
    """The one walk behind counting and deleting (`delete` says which)."""

    def __init__(
        self,
        top: str,
        delete: bool,
        threads: int,
        progress: Progress | None,
        stop: threading.Event | None,
        protected: Collection[FileId],
        reader: Reader | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        if reader is not None and (delete or threads != 1):
            raise ValueError("a reader reads in one thread and deletes nothing")
        self.top = os.path.abspath(top)
        self.delete = delete
        self.threads = threads
        self.progress = progress
        self.stop = stop or threading.Event()
        self.protected = frozenset(protected)
        self.reader = reader
        self.total = Progress()
        self.messages = 0
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)
        self.todo: list[_Dir] = []  # directories to list, deepest last
        self.busy = 0
        self.opened: set[_Dir] = set()
        self.idle: OrderedDict[_Dir, None] = OrderedDict()  # open, unused; oldest first
        self.budget = _fd_budget(threads)
        self.seen: set[FileId] = set()  # hard-linked inodes already counted
        self.dev: int | None = None
        self.mount: int | None = None
        self.failed = 0
        self.first_failure: tuple[OSError, str] | None = None
        self.refused = 0
        self.first_refusal = ""
        self.interrupted = False
        self.crash: BaseException | None = None

    # --- the pool --------------------------------------------------------------------

    def run(self) -> _Walk:
        found = mounts_below(self.top)
        real = os.path.realpath(self.top)
        # A reader is told of each mount below as the walk meets it (`_refusal`).
        if found and (self.reader is None or real in found):
            where = (
                f"is itself a mount point ({shown(real)})"
                if real in found
                else f"holds the mount point {shown(found[0])}"
                + (f" and {len(found) - 1} more" if len(found) > 1 else "")
            )
            raise UnsafePath(f"{shown(self.top)} {where}; deletion never enters another mount")
        head, name = os.path.split(self.top)
        try:
            base_fd = os.open(os.path.realpath(head), _O_DIR)
        except FileNotFoundError:
            return self
        base = _Dir(None, head)
        base.users = 1  # kept open: every reopening can start from it
        with self.lock:
            self._track(base, base_fd)
        self.todo.append(_Dir(base, name))
        workers = [threading.Thread(target=self._work) for _ in range(self.threads)]
        started = []
        try:
            for worker in workers:
                worker.start()
                started.append(worker)
        finally:
            for worker in started:
                worker.join()
            for node in list(self.opened):
                os.close(node.fd)
        return self._outcome()

    def _outcome(self) -> _Walk:
        if self.crash is not None:
            raise self.crash
        if self.interrupted:
            raise Stopped(f"stopped after {self.total.snapshot()}")
        if self.refused:
            more = f" ({self.refused} directories refused)" if self.refused > 1 else ""
            raise UnsafePath(self.first_refusal + more)
        if self.first_failure is not None:
            raise TreeError(*self.first_failure, self.failed)
        return self

    def _work(self) -> None:
        try:
            while (node := self._next()) is not None:
                try:
                    self._visit(node)
                finally:
                    with self.lock:
                        self.busy -= 1
                        if not self.todo and not self.busy:
                            self.ready.notify_all()
        except BaseException as crash:  # a bug must not leave the other threads waiting
            with self.lock:
                self.crash = self.crash or crash
                self.ready.notify_all()

    def _next(self) -> _Dir | None:
        with self.lock:
            while not self.todo and self.busy and not self._halted():
                self.ready.wait()
            if not self.todo or self._halted():
                if self.todo and self.crash is None:
                    self.interrupted = True
                self.ready.notify_all()
                return None
            self.busy += 1
            return self.todo.pop()

    def _halted(self) -> bool:
        return self.stop.is_set() or self.crash is not None

    def _push(self, parent: _Dir, name: str) -> None:
        child = _Dir(parent, name, name in _MESSAGE_DIRS)
        with self.lock:
            parent.pending += 1
            self.todo.append(child)
            self.ready.notify()

    # --- one directory ---------------------------------------------------------------

    def _visit(self, node: _Dir) -> None:
        parent = node.parent
        assert parent is not None
        try:
            parent_fd = self._pin(parent)
        except OSError as err:
            self._fail(err, parent)
            return
        fd = self._enter(node, parent_fd)
        if fd is None:
            self._complete(parent)
            return
        self._unpin(parent)
        if self._list(node, fd):
            self._complete(node)
        else:
            self._unpin(node)

    def _enter(self, node: _Dir, parent_fd: int) -> int | None:
        """Open `node` if it is a directory the walk may enter; None when it is not
        (then it was handled here as a plain entry, or refused, or it is gone)."""
        assert node.parent is not None
        try:
            fd = os.open(node.name, _O_DIR, dir_fd=parent_fd)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno in (errno.ENOTDIR, errno.ELOOP):  # a link, or no longer a directory
                self._leaves(parent_fd, node.parent, [node.name])
            else:
                self._fail(err, node)
            return None
        st = os.fstat(fd)
        why = self._refusal(st, _mount_id(fd))
        if why is not None:
            os.close(fd)
            if self.reader is not None:
                self.reader.skipped(self._names(node), why)
                return None
            with self.lock:
                self.refused += 1
                if self.refused == 1:
                    self.first_refusal = f"{shown(self._path(node))} is {why}; not entered"
            return None
        node.id, node.size = (st.st_dev, st.st_ino), st.st_size
        node.users = 1
        with self.lock:
            self._track(node, fd)
        if not self.delete:
            self._add(dirs=1, bytes=st.st_size)
        if self.reader is not None:
            self.reader.directory(self._names(node), st)
        return fd

    def _refusal(self, st: os.stat_result, mount: int | None) -> str | None:
        """Why a directory just opened must not be entered; None when it may be."""
        if (st.st_dev, st.st_ino) in self.protected:
            return "one of another service's directories"
        if self.dev is None:  # the top: what every other directory is compared with
            self.dev, self.mount = st.st_dev, mount
        if st.st_dev != self.dev:
            return "on another filesystem"
        if mount != self.mount:
            return "on another mount"
        return None

    def _list(self, node: _Dir, fd: int) -> bool:
        """Every entry of `node`: subdirectories pushed, the rest counted or unlinked
        while the listing streams. False when stopped half-way."""
        batch: list[str] = []
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        is_dir = False
                    if is_dir:
                        self._push(node, entry.name)
                        continue
                    batch.append(entry.name)
                    if len(batch) == _FLUSH_EVERY:
                        self._leaves(fd, node, batch)
                        batch.clear()
                        if self._halted():
                            if self.crash is None:
                                self.interrupted = True
                            return False
        except OSError as err:  # the listing broke off: what it did not reach stays
            self._fail(err, node)
        self._leaves(fd, node, batch)
        return True

    def _leaves(self, fd: int, node: _Dir, names: list[str]) -> None:
        """Count or unlink entries of `node` that are not directories, never opening one."""
        files = size = 0
        for name in names:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    self._push(node, name)
                    continue
                if self.delete:
                    os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                continue
            except IsADirectoryError:
                self._push(node, name)
                continue
            except OSError as err:
                self._fail(err, node, name)
                continue
            if self.reader is not None:
                self.reader.entry(fd, self._names(node, name), st)
            files += 1
            size += self._once(st) if st.st_nlink > 1 or self.seen else st.st_size
        if files:
            self._add(files=files, bytes=size, messages=files if node.messages else 0)

    def _once(self, st: os.stat_result) -> int:
        """A hard-linked inode's size, the first time it is met."""
        key = (st.st_dev, st.st_ino)
        with self.lock:
            if key in self.seen:
                return 0
            if st.st_nlink > 1:
                self.seen.add(key)
        return st.st_size

    def _complete(self, node: _Dir) -> None:
        """One piece of `node`'s work is done (its listing, or one subdirectory). After
        the last, `node` is removed (when deleting) and the parent gets the news. Takes
        over the caller's pin on `node`."""
        while True:
            with self.lock:
                node.pending -= 1
                last = node.pending == 0
            parent = node.parent
            if not last or parent is None:
                self._unpin(node)
                return
            try:
                parent_fd = self._pin(parent, via=node)
            except OSError as err:
                self._fail(err, parent)
                self._unpin(node)
                return
            self._retire(node)
            if self.delete:
                self._rmdir(node, parent_fd)
            node = parent

    def _rmdir(self, node: _Dir, parent_fd: int) -> None:
        try:
            os.rmdir(node.name, dir_fd=parent_fd)
        except OSError as err:
            # Not empty: something below failed, was refused or was written meanwhile;
            # reported elsewhere or found by `remaining`.
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                self._fail(err, node)
            return
        self._add(dirs=1, bytes=node.size)

    # --- descriptors -----------------------------------------------------------------

    def _pin(self, node: _Dir, via: _Dir | None = None) -> int:
        """`node`'s descriptor, held until `_unpin`. If it was closed for the budget it is
        reopened: through `..` of `via` (a pinned child) or down from the nearest open
        ancestor, each step checked against the (dev, ino) seen on first opening."""
        with self.lock:
            if node.fd >= 0:
                node.users += 1
                self.idle.pop(node, None)
                return node.fd
            if via is None:
                chain = []
                while node.fd < 0:  # ends at the latest at the base, always open
                    chain.append(node)
                    node = node.parent  # type: ignore[assignment]
                node.users += 1
                self.idle.pop(node, None)
        if via is not None:
            return self._reopen(node, "..", via.fd)
        for child in reversed(chain):
            try:
                self._reopen(child, child.name, node.fd)
            finally:
                self._unpin(node)
            node = child
        return node.fd

    def _reopen(self, node: _Dir, name: str, dir_fd: int) -> int:
        fd = os.open(name, _O_DIR, dir_fd=dir_fd)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != node.id:
            os.close(fd)
            raise OSError(errno.ESTALE, "directory moved during the walk", self._path(node))
        with self.lock:
            if node.fd >= 0:  # another thread reopened it meanwhile
                os.close(fd)
            else:
                self._track(node, fd)
            node.users += 1
            self.idle.pop(node, None)
            return node.fd

    def _unpin(self, node: _Dir) -> None:
        with self.lock:
            node.users -= 1
            if node.users == 0 and node.fd >= 0:
                self.idle[node] = None

    def _track(self, node: _Dir, fd: int) -> None:
        """Record an open descriptor (lock held); close unused ones beyond the budget."""
        node.fd = fd
        self.opened.add(node)
        while len(self.opened) > self.budget and self.idle:
            victim, _ = self.idle.popitem(last=False)
            os.close(victim.fd)
            victim.fd = -1
            self.opened.discard(victim)

    def _retire(self, node: _Dir) -> None:
        with self.lock:
            if node.fd >= 0:
                os.close(node.fd)
                self.opened.discard(node)
                node.fd = -1
            self.idle.pop(node, None)

    # --- accounting ------------------------------------------------------------------

    def _add(self, files: int = 0, bytes: int = 0, dirs: int = 0, messages: int = 0) -> None:
        self.total.add(files, bytes, dirs)
        if messages:
            with self.lock:
                self.messages += messages
        if self.progress is not None:
            self.progress.add(files, bytes, dirs)

    def _fail(self, err: OSError, node: _Dir, name: str | None = None) -> None:
        if self.reader is not None:
            self.reader.skipped(self._names(node, name), f"{type(err).__name__}: {err.strerror}")
            return
        with self.lock:
            self.failed += 1
            if self.first_failure is None:
                self.first_failure = (err, self._path(node, name))

    def _names(self, node: _Dir, name: str | None = None) -> tuple[str, ...]:
        """`node` (and `name` in it) as names below the top: `()` for the top itself."""
        names = [name] if name is not None else []
        at = node
        while at.parent is not None and at.parent.parent is not None:
            names.append(at.name)
            at = at.parent
        return tuple(reversed(names))

    def _path(self, node: _Dir, name: str | None = None) -> str:
        names = [name] if name is not None else []
        at: _Dir | None = node
        while at is not None:
            names.append(at.name)
            at = at.parent
        return "/".join(reversed(names))
