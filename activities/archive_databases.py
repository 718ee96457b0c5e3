"""The last copy's databases (contract section 9): each database resource the service
lists, dumped by its kind (`mariadb-dump --single-transaction`, `pg_dump`) straight
into the archive as `databases/NAME.sql`.

A tar entry states its size before its content, and a dump's size is known only once it
ends; the archive is a zstd stream that cannot go back. So the dump goes into the tar in
pieces of at most PIECE bytes, each held in a spool (memory, then a temporary file in
ARCHIVE_ROOT) while it fills: the whole dump is never staged, only one piece. A dump of
one piece is `databases/NAME.sql`; a longer one is `databases/NAME.sql.001`, `.002`, …
to be joined with `cat NAME.sql.* > NAME.sql`, as the manifest says.
"""

from __future__ import annotations

import asyncio
import tarfile
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, cast

import asyncpg

from activities.deletion import Stopped
from activities.kinds.base import ResourceKind
from bajas.models import ResourceContext, ResourceRef

DATABASES = "databases"
PIECE = 256 << 20
_IN_MEMORY = 8 << 20
# What adds one entry to the archive: its TarInfo and a reader of exactly its size.
AddEntry = Callable[[tarfile.TarInfo, BinaryIO], None]


@dataclass(frozen=True)
class DatabaseDump:
    """One database of the copy and the kind that dumps it."""

    kind: ResourceKind
    resource: ResourceRef
    context: ResourceContext


def dump_databases(
    dumps: Sequence[DatabaseDump],
    add: AddEntry,
    folder: str,
    spool_dir: Path,
    stop: threading.Event,
    piece: int = PIECE,
) -> list[dict[str, object]]:
    """Write every dump into the archive (run in the archive's own thread, each dump on
    an event loop of its own); what the manifest says of each."""
    written = []
    for dump in dumps:
        name = f"{folder}/{DATABASES}/{dump.resource.name}.sql"
        pieces = _Pieces(add, name, spool_dir, stop, piece)
        asyncio.run(dump.kind.dump(dump.resource, dump.context, cast(BinaryIO, pieces)))
        pieces.close()
        entry: dict[str, object] = {"folder": name.split("/", 1)[1], "bytes": pieces.total}
        if pieces.names != [name]:
            entry["pieces"] = [n.rsplit("/", 1)[1] for n in pieces.names]
            entry["join"] = f"cat {dump.resource.name}.sql.* > {dump.resource.name}.sql"
        written.append(entry)
    return written


async def database_dumps(
    pool: asyncpg.Pool, kinds: Mapping[str, ResourceKind], service_id: int
) -> list[DatabaseDump]:
    """The service's live resources that a kind of this worker dumps, when configured."""
    dumping = [
        name
        for name, kind in kinds.items()
        if kind.supports_dump and kind.configuration_error() is None
    ]
    if not dumping:
        return []
    rows = await pool.fetch(
        "select r.id, r.kind, r.name, r.server, s.domain from service_resources r"
        " join services s on s.id = r.service_id"
        " where r.service_id = $1 and r.deleted_at is null and r.kind = any($2::text[])"
        " order by r.kind, r.name",
        service_id,
        dumping,
    )
    return [
        DatabaseDump(
            kinds[r["kind"]],
            ResourceRef(id=r["id"], kind=r["kind"], name=r["name"], server=r["server"]),
            ResourceContext(service_id=service_id, domain=r["domain"]),
        )
        for r in rows
        if kinds[r["kind"]].name_error(r["name"]) is None
    ]


class _Pieces:
    """Where a dump writes: a spool that goes into the archive as one entry each time it
    holds `piece` bytes, and once more at the end."""

    def __init__(
        self, add: AddEntry, name: str, spool_dir: Path, stop: threading.Event, piece: int
    ) -> None:
        self.add, self.name, self.spool_dir, self.stop, self.piece = (
            add,
            name,
            spool_dir,
            stop,
            piece,
        )
        self.names: list[str] = []
        self.total = 0
        self.spool = self._new_spool()

    def write(self, data: bytes) -> int:
        if self.stop.is_set():
            raise Stopped("the archive was stopped")
        view = memoryview(data)
        while view:
            room = self.piece - self.spool.tell()
            self.spool.write(view[:room])
            view = view[room:]
            if self.spool.tell() >= self.piece:
                self._flush(last=False)
        self.total += len(data)
        return len(data)

    def flush(self) -> None:
        """Nothing to do: a piece goes out once full."""

    def close(self) -> None:
        if not self.names or self.spool.tell():
            self._flush(last=True)
        self.spool.close()

    def _flush(self, *, last: bool) -> None:
        size = self.spool.tell()
        single = last and not self.names
        self.names.append(self.name if single else f"{self.name}.{len(self.names) + 1:03d}")
        info = tarfile.TarInfo(self.names[-1])
        info.size, info.mode, info.mtime = size, 0o600, int(datetime.now(UTC).timestamp())
        self.spool.seek(0)
        self.add(info, cast(BinaryIO, self.spool))
        self.spool.close()
        self.spool = self._new_spool()

    def _new_spool(self) -> tempfile.SpooledTemporaryFile[bytes]:
        return tempfile.SpooledTemporaryFile(
            max_size=_IN_MEMORY, mode="w+b", dir=str(self.spool_dir), prefix=".dump-"
        )
