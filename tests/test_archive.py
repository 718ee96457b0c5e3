"""The last copy alone: `build_archive` and `delete_archive` in an ActivityEnvironment, on
a real messy tree and the session's PostgreSQL, no worker and no server.

Each archive is read back as a customer would, streamed (zstandard + tarfile in stream
mode), extracted into a folder of its own and compared with the tree it was made from:
names as bytes, contents, permission bits, link targets, hard links.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import stat
import subprocess
import tarfile
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import zstandard
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import ActivityEnvironment

from activities.archive import (
    CHUNK,
    MAIL,
    MANIFEST,
    SITE,
    ArchiveActivities,
    ArchiveFiles,
    Part,
    folder_name,
    write_archive,
)
from activities.deletion import Progress
from bajas.models import ArchiveInput, ArchiveProgress, ArchiveResult
from tests.helpers.panel import Panel, ServiceFixture
from tests.test_deletion_engine import bind, chain, unmount

pytestmark = pytest.mark.integration

BIG = 3 * CHUNK + 123  # read in several pieces
NON_UTF8 = [b"caf\xe9.html", b"\xff\xfe carpeta", b"\xff\xfe carpeta/\x80\x81.txt"]
LONG_NAME = "ñ" * 127 + "x"  # 255 bytes in UTF-8, the most a name can hold
DEEP = ["carpeta-profunda"] * 60  # a path of a thousand bytes


# ---- trees --------------------------------------------------------------------------


def write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def messy_site(root: Path) -> None:
    """What hosting trees hold and naive archivers get wrong."""
    write(root / "index.html", b"<h1>hola</h1>\n" * 40)
    write(root / "privado.txt", "solo el dueño".encode(), 0o600)
    write(root / "grupo.txt", b"el grupo lee", 0o640)
    write(root / "deploy.sh", b"#!/bin/sh\necho hola\n", 0o755)
    write(root / "vacio.txt", b"")
    write(root / "grande.bin", os.urandom(BIG))
    (root / "secreto").mkdir(mode=0o700)
    write(root / "secreto" / "clave.php", b"<?php // 1234", 0o600)
    (root / "vacía").mkdir()
    for name in NON_UTF8[:2]:
        path = os.path.join(os.fsencode(root), name)
        if name.startswith(b"\xff"):
            os.mkdir(path, 0o750)
        else:
            write(Path(os.fsdecode(path)), b"nombre en latin-1")
    write(Path(os.fsdecode(os.path.join(os.fsencode(root), NON_UTF8[2]))), b"bytes sueltos")
    write(root / LONG_NAME, b"nombre de 255 bytes")
    deep = root.joinpath(*DEEP)
    deep.mkdir(parents=True)
    write(deep / "fondo.txt", b"en el fondo")
    os.symlink("index.html", root / "enlace.html")
    os.symlink("../index.html", root / "secreto" / "arriba.html")
    os.symlink("no-existe.html", root / "roto.html")
    os.symlink("secreto", root / "atajo")
    os.link(root / "index.html", root / "secreto" / "mismo-index.html")
    os.mkfifo(root / "tubo")


def snapshot(root: Path) -> dict[bytes, tuple[Any, ...]]:
    """Every entry below `root`, by its name in bytes, links never followed: what it is,
    its permission bits, and its content's digest or its link's target."""
    top = os.fsencode(root)
    found: dict[bytes, tuple[Any, ...]] = {}
    for base, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, top)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                found[rel] = ("file", stat.S_IMODE(st.st_mode), digest(path))
            else:
                found[rel] = ("special", stat.S_IFMT(st.st_mode))
    return found


def digest(path: bytes) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def without_specials(tree: dict[bytes, tuple[Any, ...]]) -> dict[bytes, tuple[Any, ...]]:
    return {name: entry for name, entry in tree.items() if entry[0] != "special"}


def members(archive: Path) -> Iterator[tarfile.TarInfo]:
    """The archive's entries, streamed: nothing is loaded whole."""
    with (
        archive.open("rb") as raw,
        zstandard.ZstdDecompressor().stream_reader(raw) as stream,
        tarfile.open(fileobj=stream, mode="r|", errors="surrogateescape") as tar,
    ):
        yield from tar


def extract(archive: Path, dest: Path) -> dict[str, Any]:
    """Unpack as a customer would (`tar --zstd -xf`), streamed; the manifest."""
    with (
        archive.open("rb") as raw,
        zstandard.ZstdDecompressor().stream_reader(raw) as stream,
        tarfile.open(fileobj=stream, mode="r|", errors="surrogateescape") as tar,
    ):
        tar.extractall(dest, filter="tar")
    [manifest] = dest.glob(f"*/{MANIFEST}")
    loaded: dict[str, Any] = json.loads(manifest.read_text())
    return loaded


# ---- running the activities ---------------------------------------------------------


class Builder:
    """`build_archive` and `delete_archive` of one service, heartbeats recorded."""

    def __init__(self, pool: asyncpg.Pool, panel: Panel, archives: Path, svc: ServiceFixture):
        self.activities = ArchiveActivities(pool, panel.hosting_root, panel.mail_root, archives)
        self.input = ArchiveInput(
            service_id=svc.service_id,
            customer_id=svc.customer_id,
            token=secrets.token_urlsafe(32),
        )
        self.files = ArchiveFiles(archives, self.input.token)
        self.env = ActivityEnvironment()
        self.heartbeats: list[ArchiveProgress] = []
        self.env.on_heartbeat = lambda *d: self.heartbeats.append(
            ArchiveProgress.model_validate(d[0])
        )

    async def build(self) -> ArchiveResult:
        return await self.env.run(self.activities.build_archive, self.input)

    async def delete(self) -> bool:
        return (await self.env.run(self.activities.delete_archive, self.input)).deleted


@pytest.fixture
def archives(tmp_path: Path) -> Path:
    return tmp_path / "archives"


@pytest.fixture
def panel(pool: asyncpg.Pool, tmp_path: Path) -> Panel:
    """Rows in the session's database, trees in roots of this test's own: other tests
    read the shared roots as text."""
    (tmp_path / "www").mkdir()
    (tmp_path / "mail").mkdir()
    return Panel(pool, tmp_path / "www", tmp_path / "mail")


async def messy_service(panel: Panel) -> ServiceFixture:
    svc = await panel.service(files=0, mailboxes=2)
    assert svc.document_root is not None
    messy_site(svc.document_root)
    return svc


# ---- the tests ----------------------------------------------------------------------


async def test_extracted_copy_is_the_tree_it_was_made_from(
    pool: asyncpg.Pool, panel: Panel, archives: Path, tmp_path: Path
) -> None:
    svc = await messy_service(panel)
    assert svc.document_root is not None
    site, maildirs = snapshot(svc.document_root), [snapshot(m) for m in svc.maildirs]
    build = Builder(pool, panel, archives, svc)

    result = await build.build()

    assert build.files.final.is_file() and not build.files.partial.exists()
    assert result.bytes == build.files.final.stat().st_size
    assert stat.S_IMODE(build.files.final.stat().st_mode) == 0o640
    # heartbeats count the bytes written, up to the whole file
    assert build.heartbeats[-1].bytes == result.bytes
    counts = [h.bytes for h in build.heartbeats]
    assert counts == sorted(counts)

    manifest = extract(build.files.final, tmp_path / "out")
    top = tmp_path / "out" / folder_name(svc.domain)
    assert snapshot(top / SITE) == without_specials(site)
    for maildir, expected in zip(svc.maildirs, maildirs, strict=True):
        address = f"{maildir.name}@{svc.domain}"
        assert snapshot(top / MAIL / address) == expected
    # the hard link stays one file, the links stay links (never followed)
    index, same = top / SITE / "index.html", top / SITE / "secreto" / "mismo-index.html"
    assert os.stat(index).st_ino == os.stat(same).st_ino
    assert os.readlink(top / SITE / "atajo") == "secreto"
    # the FIFO is left out, and said so
    assert result.skipped == manifest["skipped_total"] == 1
    assert manifest["skipped"] == [
        {"path": f"{folder_name(svc.domain)}/{SITE}/tubo", "why": "a FIFO: left out"}
    ]
    assert [p["folder"] for p in manifest["parts"]] == [
        SITE,
        *(f"{MAIL}/{m.name}@{svc.domain}" for m in svc.maildirs),
    ]
    assert (
        result.files
        == manifest["files"]
        == sum(1 for t in (site, *maildirs) for e in t.values() if e[0] in ("file", "link"))
    )


async def test_delete_archive_is_idempotent(
    pool: asyncpg.Pool, panel: Panel, archives: Path
) -> None:
    svc = await panel.service(files=3, mailboxes=1)
    build = Builder(pool, panel, archives, svc)
    await build.build()
    build.files.partial.write_bytes(b"left by a dead attempt")
    assert await build.delete() is True
    assert list(archives.iterdir()) == []
    assert await build.delete() is False
    assert list(archives.iterdir()) == []


async def test_a_cancelled_build_leaves_no_file(
    pool: asyncpg.Pool, panel: Panel, archives: Path
) -> None:
    svc = await panel.service(files=0, mailboxes=0)
    assert svc.document_root is not None
    write(svc.document_root / "grande.bin", os.urandom(16 * CHUNK))
    build = Builder(pool, panel, archives, svc)
    build.env.on_heartbeat = lambda *d: build.env.cancel()  # at its first heartbeat
    with pytest.raises((asyncio.CancelledError, CancelledError)):
        await build.build()
    assert list(archives.iterdir()) == []


async def test_a_path_outside_the_roots_builds_nothing(
    pool: asyncpg.Pool, panel: Panel, archives: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    svc = await panel.service(files=0, mailboxes=0, document_root=elsewhere)
    build = Builder(pool, panel, archives, svc)
    with pytest.raises(ApplicationError) as refused:
        await build.build()
    assert (refused.value.type, refused.value.non_retryable) == ("PathRefused", True)
    assert not archives.exists() or list(archives.iterdir()) == []


def test_a_mount_inside_is_not_entered(tmp_path: Path) -> None:
    site, other = tmp_path / "site", tmp_path / "other"
    (site / "jail").mkdir(parents=True)
    other.mkdir()
    write(other / "ajeno.txt", b"de otro")
    write(site / "propio.txt", b"propio")
    bind(other, site / "jail")
    try:
        files = ArchiveFiles(tmp_path / "archives", secrets.token_urlsafe(32))
        write_archive([Part(str(site), SITE)], files, "d", threading.Event(), Progress())
    finally:
        unmount(site / "jail")
    manifest = extract(files.final, tmp_path / "out")
    assert snapshot(tmp_path / "out" / "d" / SITE) == {b"propio.txt": snapshot(site)[b"propio.txt"]}
    assert manifest["skipped"] == [{"path": f"d/{SITE}/jail", "why": "on another mount"}]


def test_paths_longer_than_path_max(tmp_path: Path) -> None:
    """The walk is relative to descriptors and the names go in PAX headers: no length is
    too long (extraction by path would not get there, so the entries are read)."""
    site = tmp_path / "site"
    site.mkdir()
    chain(site, 20, "p" * 250)  # 20 x 251 bytes below the top
    files = ArchiveFiles(tmp_path / "archives", secrets.token_urlsafe(32))
    try:
        write_archive([Part(str(site), SITE)], files, "d", threading.Event(), Progress())
    finally:
        subprocess.run(["rm", "-rf", str(site)], check=True)
    names = {m.name: m for m in members(files.final)}
    [bottom] = [n for n in names if n.endswith("/bottom.txt")]
    assert len(os.fsencode(bottom)) > os.pathconf("/", "PC_PATH_MAX")
    assert names[bottom].size == len(b"bottom")
    assert sum(n.endswith(".php") for n in names) == 20


def test_memory_stays_flat_whatever_the_file_size(tmp_path: Path) -> None:
    """A file is read CHUNK bytes at a time and nothing is kept per entry: building the
    archive of a 48-chunk file allocates a few chunks at most (tracemalloc sees every
    Python allocation, in every thread)."""
    site = tmp_path / "site"
    site.mkdir()
    write(site / "grande.bin", os.urandom(48 * CHUNK))
    files = ArchiveFiles(tmp_path / "archives", secrets.token_urlsafe(32))
    tracemalloc.start()
    try:
        write_archive([Part(str(site), SITE)], files, "d", threading.Event(), Progress())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * CHUNK, f"peak {peak} bytes"
    [big] = [m for m in members(files.final) if m.name.endswith("grande.bin")]
    assert big.size == 48 * CHUNK
