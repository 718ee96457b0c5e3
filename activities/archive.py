"""The last copy: a service's site and mailboxes as one tar + zstd file, and its deletion.

Built on the node that holds the data. The deletion engine's walk (`read_tree`:
descriptor-relative, never following a link, never entering another mount) hands each
entry to a writer that streams it, a chunk at a time, through zstd into ARCHIVE_ROOT:
memory stays the same whatever the sizes. Names of any bytes and paths of any length
go in PAX headers; links are stored as links, a hard-linked file once; FIFOs, sockets,
devices, other mounts and what cannot be read are left out and listed in the
archive's manifest.

The file is named by the copy's token (the secret of its download link) and written
under a temporary name, renamed only once complete: a file with the final name is
always a whole archive.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import stat
import tarfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, BinaryIO, Protocol, cast

import asyncpg
import zstandard
from temporalio import activity

from activities.archive_databases import DatabaseDump, database_dumps, dump_databases
from activities.audit import record_work
from activities.deletion import Progress, Stopped, read_tree
from activities.kinds.base import ResourceKind
from activities.paths import FileId
from activities.safety import PanelPaths, check_paths
from bajas.models import (
    ArchiveDeleted,
    ArchiveInput,
    ArchiveProgress,
    ArchiveResult,
    Step,
    archive_file_name,
)

HEARTBEAT_EVERY = 1.0
# The most of a file held in memory at once.
CHUNK = 1 << 20
ZSTD_LEVEL = 3
SITE = "sitio"
MAIL = "correo"
MANIFEST = "MANIFEST.json"
# Skipped entries named one by one in the manifest; the rest are only counted.
SKIPPED_LISTED = 10_000
_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9@._+-]")


class ArchiveBroken(Exception):
    """The archive itself could not be written (a full disk, ARCHIVE_ROOT gone)."""


@dataclass(frozen=True)
class Part:
    """One tree of the copy: where it is, and its folder in the archive."""

    path: str
    folder: str


@dataclass(frozen=True)
class ArchiveFiles:
    """The archive of one token in ARCHIVE_ROOT, and its name while being written."""

    root: Path
    token: str

    @property
    def final(self) -> Path:
        return self.root / archive_file_name(self.token)

    @property
    def partial(self) -> Path:
        return self.final.with_name(self.final.name + ".partial")

    def delete(self) -> bool:
        """Remove both names; whether a finished archive was there."""
        found = False
        for path in (self.final, self.partial):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            found = found or path == self.final
        return found


class ArchiveActivities:
    """Builds and deletes the last copy of a service whose data is below HOSTING_ROOT and
    MAIL_ROOT, in ARCHIVE_ROOT (which the API reads: a shared volume in a fleet)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        hosting_root: Path,
        mail_root: Path,
        archive_root: Path,
        panel: PanelPaths | None = None,
        kinds: Mapping[str, ResourceKind] | None = None,
    ) -> None:
        self.pool = pool
        # The resource kinds of this worker: those that dump put the databases in the copy.
        self.kinds = kinds or {}
        self.roots = {Step.FILES: hosting_root, Step.MAILBOXES: mail_root}
        self.archive_root = archive_root
        self.panel = panel or PanelPaths(pool)

    @activity.defn(name="build_archive")
    async def build_archive(self, data: ArchiveInput) -> ArchiveResult:
        """One attempt writes the whole archive, heartbeating the bytes written; one that
        fails or is cancelled leaves no file behind. The paths are those the deletion
        will take, checked the same way (a refusal is non-retryable)."""
        files = ArchiveFiles(self.archive_root, data.token)
        folder, parts = await self._parts(data.service_id)
        databases = await database_dumps(self.pool, self.kinds, data.service_id)
        written = Progress()
        stop = threading.Event()
        activity.heartbeat(ArchiveProgress(bytes=0))
        work = asyncio.create_task(
            asyncio.to_thread(write_archive, parts, files, folder, stop, written, databases)
        )
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=HEARTBEAT_EVERY)
                activity.heartbeat(ArchiveProgress(bytes=written.snapshot().bytes))
            result = await work
        except asyncio.CancelledError:
            stop.set()
            await asyncio.wait({work})
            await asyncio.to_thread(files.delete)  # also when it finished meanwhile
            raise
        await record_work(
            self.pool,
            data,
            f"archive_built:{data.generation}",
            {"bytes": result.bytes, "files": result.files, "skipped": result.skipped},
        )
        return result

    @activity.defn(name="delete_archive")
    async def delete_archive(self, data: ArchiveInput) -> ArchiveDeleted:
        """Idempotent: afterwards neither the archive nor a partial one is there."""
        deleted = await asyncio.to_thread(ArchiveFiles(self.archive_root, data.token).delete)
        await record_work(
            self.pool, data, f"archive_deleted:{data.generation}", {"deleted": deleted}
        )
        return ArchiveDeleted(deleted=deleted)

    async def _parts(self, service_id: int) -> tuple[str, list[Part]]:
        """The archive's top folder (the domain) and its trees: the document root as
        `sitio`, each live mailbox as `correo/<address>`."""
        paths = await check_paths(self.pool, service_id, self.roots, self.panel)
        domain = await self.pool.fetchval("select domain from services where id = $1", service_id)
        parts = [Part(paths.document_root, SITE)] if paths.document_root else []
        parts += [Part(m.target, f"{MAIL}/{folder_name(m.address)}") for m in paths.maildirs]
        return folder_name(domain or f"servicio-{service_id}"), parts


def folder_name(text: str) -> str:
    """A domain or an address as one folder name of the archive."""
    name = _UNSAFE_NAME.sub("_", text)
    return name if name.strip(".") else "_"


def write_archive(
    parts: Sequence[Part],
    files: ArchiveFiles,
    folder: str,
    stop: threading.Event,
    written: Progress,
    databases: Sequence[DatabaseDump] = (),
) -> ArchiveResult:
    """Write the archive of `parts` under `folder/`, manifest last; `written` counts
    the bytes of the file as they go out, `stop` ends it at the next chunk (Stopped)."""
    files.root.mkdir(mode=0o750, parents=True, exist_ok=True)
    fd = os.open(
        files.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640
    )
    try:
        with os.fdopen(fd, "wb") as raw:
            output = _Output(raw, written)
            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
            # zstd calls only write() and flush() of what it writes into
            with compressor.stream_writer(cast(IO[bytes], output), closefd=False) as zstd:
                writer = _TarWriter(_Tar(zstd), folder, stop)
                for part in parts:
                    writer.add_tree(part)
                writer.parts += dump_databases(databases, writer.tar.add, folder, files.root, stop)
                writer.add_manifest()
            output.sync()
        os.replace(files.partial, files.final)
    except BaseException:
        files.partial.unlink(missing_ok=True)
        raise
    return ArchiveResult(
        bytes=files.final.stat().st_size, files=writer.files, skipped=writer.skipped_total
    )


class _Output:
    """The archive file as zstd writes into it: counts the bytes, and reports a failure
    to write as ArchiveBroken, never as an OSError the walk would take for a bad entry."""

    def __init__(self, raw: BinaryIO, written: Progress) -> None:
        self.raw = raw
        self.written = written

    def write(self, data: bytes) -> int:
        try:
            self.raw.write(data)
        except OSError as err:
            raise ArchiveBroken(f"cannot write the archive: {err}") from err
        self.written.add(bytes=len(data))
        return len(data)

    def flush(self) -> None:
        self.raw.flush()

    def sync(self) -> None:
        try:
            self.raw.flush()
            os.fsync(self.raw.fileno())
        except OSError as err:
            raise ArchiveBroken(f"cannot write the archive: {err}") from err


class _Source(Protocol):
    def read(self, n: int, /) -> bytes: ...


class _Tar:
    """A tar stream written entry by entry with tarfile's PAX headers, keeping nothing
    per entry (tarfile.TarFile remembers every member it wrote)."""

    def __init__(self, out: zstandard.ZstdCompressionWriter) -> None:
        self.out = out
        self.offset = 0

    def add(self, info: tarfile.TarInfo, data: _Source | None = None) -> None:
        """One entry; `data` gives exactly `info.size` bytes."""
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if data is not None:
            while chunk := data.read(CHUNK):
                self._write(chunk)
            self._write(tarfile.NUL * (-info.size % tarfile.BLOCKSIZE))

    def close(self) -> None:
        """The end-of-archive marker, padded to a whole record as tar writes it."""
        self._write(tarfile.NUL * 2 * tarfile.BLOCKSIZE)
        self._write(tarfile.NUL * (-self.offset % tarfile.RECORDSIZE))

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.offset += len(data)


class _Exactly:
    """`size` bytes of an open file, at most CHUNK at a time; zeros where the file ended
    early or could not be read, since its header already promised `size`."""

    def __init__(self, fd: int, size: int, stop: threading.Event) -> None:
        self.fd = fd
        self.left = size
        self.stop = stop
        self.problem: str | None = None

    def read(self, n: int) -> bytes:
        if self.stop.is_set():
            raise Stopped("the archive was stopped")
        n = min(n, self.left, CHUNK)
        pieces: list[bytes] = []
        got = 0
        while got < n and self.problem is None:
            try:
                piece = os.read(self.fd, n - got)
            except OSError as err:
                self.problem = f"{type(err).__name__}: {err.strerror} (the rest is zeros)"
                break
            if not piece:
                self.problem = "it shrank while being read (the rest is zeros)"
                break
            pieces.append(piece)
            got += len(piece)
        if got < n:
            pieces.append(bytes(n - got))
        self.left -= n
        return b"".join(pieces)


@dataclass
class _TarWriter:
    """The `Reader` of the walk: each entry into the tar under `folder/<part>/`."""

    tar: _Tar
    folder: str
    stop: threading.Event
    prefix: str = ""
    files: int = 0
    skipped_total: int = 0
    parts: list[dict[str, object]] = field(default_factory=list)
    skipped_list: list[dict[str, str]] = field(default_factory=list)
    # the name under which each hard-linked inode went in first
    linked: dict[FileId, str] = field(default_factory=dict)

    def add_tree(self, part: Part) -> None:
        self.prefix = f"{self.folder}/{part.folder}"
        before = self.files
        read_tree(part.path, self, self.stop)
        self.parts.append({"folder": part.folder, "files": self.files - before})

    def add_manifest(self) -> None:
        manifest = {
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "parts": self.parts,
            "files": self.files,
            "skipped": self.skipped_list,
            "skipped_total": self.skipped_total,
        }
        text = json.dumps(manifest, ensure_ascii=False, indent=2).encode()
        info = tarfile.TarInfo(f"{self.folder}/{MANIFEST}")
        info.size, info.mode, info.mtime = len(text), 0o644, int(datetime.now(UTC).timestamp())
        self.tar.add(info, io.BytesIO(text))
        self.tar.close()

    # ---- the Reader protocol of activities/deletion.py ---------------------------------

    def directory(self, names: tuple[str, ...], st: os.stat_result) -> None:
        self.tar.add(self._info(names, st, tarfile.DIRTYPE))

    def entry(self, dir_fd: int, names: tuple[str, ...], st: os.stat_result) -> None:
        if stat.S_ISREG(st.st_mode):
            self._file(dir_fd, names, st)
        elif stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(names[-1], dir_fd=dir_fd)
            except OSError as err:
                self.skipped(names, f"{type(err).__name__}: {err.strerror}")
                return
            info = self._info(names, st, tarfile.SYMTYPE)
            info.linkname = target
            self.tar.add(info)
            self.files += 1
        else:
            self.skipped(names, f"{_KINDS.get(stat.S_IFMT(st.st_mode), 'not a file')}: left out")

    def skipped(self, names: tuple[str, ...], why: str) -> None:
        self.skipped_total += 1
        if len(self.skipped_list) < SKIPPED_LISTED:
            self.skipped_list.append({"path": _readable(self._name(names)), "why": why})

    # ---- one entry -------------------------------------------------------------------

    def _file(self, dir_fd: int, names: tuple[str, ...], st: os.stat_result) -> None:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.linked:
            info = self._info(names, st, tarfile.LNKTYPE)
            info.linkname = self.linked[key]
            self.tar.add(info)
            self.files += 1
            return
        try:
            fd = os.open(names[-1], _O_FILE, dir_fd=dir_fd)
        except OSError as err:
            self.skipped(names, f"{type(err).__name__}: {err.strerror}")
            return
        try:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != key or not stat.S_ISREG(now.st_mode):
                self.skipped(names, "replaced while being read: left out")
                return
            info = self._info(names, now, tarfile.REGTYPE)
            info.size = now.st_size
            data = _Exactly(fd, now.st_size, self.stop)
            self.tar.add(info, data)
        finally:
            os.close(fd)
        if data.problem is not None:
            self.skipped(names, data.problem)
        if st.st_nlink > 1:
            self.linked[key] = info.name
        self.files += 1

    def _name(self, names: tuple[str, ...]) -> str:
        return "/".join((self.prefix, *names))

    def _info(self, names: tuple[str, ...], st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
        """Name, type, permission bits and time; owners are the hosting server's and mean
        nothing where the customer unpacks, so they are left at 0."""
        info = tarfile.TarInfo(self._name(names))
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode)
        info.mtime = int(st.st_mtime)
        return info


def _readable(name: str) -> str:
    """A name of any bytes as JSON can carry it: undecodable bytes as `\\xNN`."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")
