"""Trees as hosting servers hold them, each through a whole cancellation on the real stack.

Depth 2,000, paths past PATH_MAX, 255-byte names, names that are not UTF-8, links in
and out, a FIFO, a bind mount, an immutable file, a cron job writing during deletion:
each is requested, counted (the inventory, judged against `find` and `du`), confirmed
and deleted by the real worker, and the audit line says what went. pytest cannot clean
up trees this deep or long, so every document root here is removed with `rm -rf`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus

from bajas.models import CancellationResult, CancellationStatus, State, Step, StepStatus
from tests.conftest import Stack
from tests.helpers import assert_eventually, new_id
from tests.helpers.mail import code_in, mails_about
from tests.helpers.panel import ServiceFixture, add_mailbox, make_tree

pytestmark = pytest.mark.integration

CODE_SUBJECT = "Código de confirmación"
FAR = date(2099, 6, 15)  # an auto-debit payer long before the cut-off: debit_cancelled


# ---- trees ------------------------------------------------------------------------------


@pytest.fixture
def site(stack: Stack) -> Iterator[Path]:
    """A document root below HOSTING_ROOT, removed with `rm -rf` whatever is left."""
    top = stack.settings.hosting_root / f"raro-{uuid.uuid4().hex[:10]}.example.test"
    top.mkdir()
    try:
        yield top
    finally:
        subprocess.run(["rm", "-rf", str(top)], check=True)


def sh(command: str) -> str:
    return subprocess.run(command, shell=True, check=True, capture_output=True, text=True).stdout


def find_files(top: Path) -> int:
    """`find TOP ! -type d | wc -l` (no name below holds a newline)."""
    return int(sh(f"find '{top}' ! -type d | wc -l"))


def find_dirs(top: Path) -> int:
    return int(sh(f"find '{top}' -type d | wc -l"))


def du_bytes(top: Path) -> int:
    return int(sh(f"du -sb '{top}'").split()[0])


def write(dir_fd: int, name: str | bytes, data: bytes = b"x") -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
    os.write(fd, data)
    os.close(fd)


def chain(top: Path, depth: int, name: str) -> None:
    """`depth` directories each inside the last, a file in each, made relative to
    descriptors (the path to the bottom may be far longer than PATH_MAX)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for level in range(depth):
        write(fd, f"f{level}.php", b"<?php\n")
        os.mkdir(name, dir_fd=fd)
        below = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = below
    write(fd, "bottom.txt", b"bottom")
    os.close(fd)


def depth_2000(top: Path, _: Path) -> None:
    chain(top, 2000, "d")


def path_of_10000_bytes(top: Path, _: Path) -> None:
    chain(top, 40, "p" * 250)  # 40 x 251 bytes below the document root


def names_of_255_bytes(top: Path, _: Path) -> None:
    longest = "ñ" * 127 + "a"  # 255 bytes in UTF-8
    assert len(os.fsencode(longest)) == 255
    (top / longest).mkdir()
    (top / longest / longest).write_text("hola")
    (top / ("x" * 255)).write_text("chau")


def names_not_utf8(top: Path, _: Path) -> None:
    raw = os.fsencode(top)
    os.mkdir(raw + b"/caf\xe9")
    with open(raw + b"/caf\xe9/\xff\xfe.php", "wb") as f:
        f.write(b"<?php")
    with open(raw + b"/\x80\x81.html", "wb") as f:
        f.write(b"<p>")


def links_in_and_out(top: Path, outside: Path) -> None:
    (top / "in").mkdir()
    (top / "in" / "page.html").write_text("<p>")
    os.symlink(outside / "dir", top / "to-outside-dir")
    os.symlink(outside / "file.txt", top / "in" / "to-outside-file")
    os.symlink("page.html", top / "in" / "relative")
    os.symlink(top / "in", top / "loop")
    os.symlink("/nowhere/at/all", top / "dangling")


def a_fifo(top: Path, _: Path) -> None:
    (top / "logs").mkdir()
    os.mkfifo(top / "logs" / "pipe")  # no writer: opening it would block for ever
    (top / "index.php").write_text("<?php")


SHAPES: dict[str, Callable[[Path, Path], None]] = {
    "depth_2000": depth_2000,
    "path_of_10000_bytes": path_of_10000_bytes,
    "names_of_255_bytes": names_of_255_bytes,
    "names_not_utf8": names_not_utf8,
    "links_in_and_out": links_in_and_out,
    "fifo": a_fifo,
}


def outside_tree(tmp_path: Path) -> Path:
    """What links point at outside the document root: it must survive."""
    outside = tmp_path / "afuera"
    (outside / "dir").mkdir(parents=True)
    (outside / "dir" / "keep.txt").write_text("another customer's data")
    (outside / "file.txt").write_text("other data")
    return outside


def snapshot(top: Path) -> dict[str, str]:
    return {str(p.relative_to(top)): p.read_text() for p in sorted(top.rglob("*")) if p.is_file()}


# ---- the cancellation ----------------------------------------------------------------------


async def status_of(stack: Stack, svc: ServiceFixture) -> CancellationStatus:
    return await stack.cancellations.status(svc.service_id)


async def wait_status(
    stack: Stack, svc: ServiceFixture, pred: Callable[[CancellationStatus], bool], what: str
) -> CancellationStatus:
    async def probe() -> CancellationStatus | None:
        status = await status_of(stack, svc)
        return status if pred(status) else None

    return await assert_eventually(probe, what, timeout=60)


async def request(stack: Stack, svc: ServiceFixture) -> tuple[str, str]:
    """Request the cancellation: (run id, the code from the mail)."""
    answer = await stack.cancellations.request(svc.service_id, svc.customer_id)
    assert answer.status.state is State.AWAITING_CONFIRMATION, answer.status
    mail = await assert_eventually(
        lambda: [m for m in mails_about(stack.mail, svc.domain) if CODE_SUBJECT in m.subject],
        f"the code mail for {svc.domain}",
    )
    return answer.run_id, code_in(mail[0])


async def confirm(stack: Stack, svc: ServiceFixture, code: str) -> None:
    answer = await stack.cancellations.confirm(svc.service_id, code)
    assert answer.accepted and answer.state is State.DEPROVISIONING, answer


async def cancelled(
    stack: Stack, svc: ServiceFixture
) -> tuple[CancellationResult, CancellationStatus]:
    """The result of a cancellation that ended `cancelled`, every step's check passed."""
    result = await asyncio.wait_for(stack.cancellations.result(svc.service_id), 120)
    assert result.state is State.CANCELLED, result
    status = await status_of(stack, svc)
    assert all(status.steps[step].verified for step in Step), status.steps
    return result, status


async def audit_details(stack: Stack, run_id: str) -> dict[str, Any]:
    rows = await stack.pool.fetch(
        "select event, details from bajas.audit_trail where run_id = $1 order by id", run_id
    )
    return {
        r["event"]: json.loads(r["details"]) if isinstance(r["details"], str) else r["details"]
        for r in rows
    }


async def terminate(stack: Stack, svc: ServiceFixture) -> None:
    handle = stack.cancellations.handle(svc.service_id)
    if (await handle.describe()).status is WorkflowExecutionStatus.RUNNING:
        await handle.terminate(reason="test over")


# ---- every shape, counted and deleted ---------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
async def test_odd_tree_is_counted_and_deleted(
    stack: Stack, site: Path, tmp_path: Path, shape: str
) -> None:
    outside = outside_tree(tmp_path)
    outside_before = snapshot(outside)
    await asyncio.to_thread(SHAPES[shape], site, outside)
    files, dirs, size = find_files(site), find_dirs(site), du_bytes(site)
    svc = await stack.panel.service(document_root=site, mailboxes=1)
    try:
        run_id, code = await request(stack, svc)
        known = await wait_status(
            stack, svc, lambda s: s.inventory is not None, "the inventory to be known"
        )
        assert known.inventory is not None
        assert (known.inventory.files, known.inventory.bytes) == (files, size)
        await confirm(stack, svc, code)
        _, status = await cancelled(stack, svc)
    finally:
        await terminate(stack, svc)

    assert not os.path.lexists(site)
    assert snapshot(outside) == outside_before  # links were removed as links
    assert status.steps.files.done == files
    trail = await audit_details(stack, run_id)
    deleted = trail["files_deleted"]
    assert (deleted["files"], deleted["bytes"], deleted["dirs"]) == (files, size, dirs), deleted
    assert deleted["node"] is None  # a central worker: the service names no server


# ---- the inventory against find and du, and what the audit keeps ------------------------------


def messy(top: Path, outside: Path) -> None:
    """Every kind of entry a hosting tree holds, hard links included."""
    (top / "a" / "b" / "c").mkdir(parents=True)
    (top / "empty").mkdir()
    (top / "a" / "index.php").write_bytes(b"<?php echo 1;\n" * 300)
    os.link(top / "a" / "index.php", top / "a" / "b" / "hard.php")
    (top / "a" / "b" / "c" / "big.bin").write_bytes(os.urandom(70_000))
    with open(top / "sparse.img", "wb") as f:
        f.truncate(5_000_000)
    os.symlink(outside, top / "a" / "out")
    os.mkfifo(top / "a" / "pipe")
    make_tree(top / "web", 250, 50)


def maildir_with_folders(maildir: Path, messages: int) -> None:
    for folder in ("", ".Sent/"):
        for sub in ("cur", "new", "tmp"):
            (maildir / folder / sub).mkdir(parents=True, exist_ok=True)
    for n in range(messages):
        (maildir / "cur" / f"{n}.mail:2,S").write_bytes(b"Subject: hola\n\n" + b"x" * n)
    (maildir / "new" / "nuevo.mail").write_text("nuevo")
    (maildir / ".Sent" / "cur" / "enviado.mail:2,S").write_text("enviado")
    (maildir / "tmp" / "half-written").write_text("not yet a message")
    (maildir / "dovecot.index").write_bytes(b"\0" * 1000)


def find_messages(maildir: Path) -> int:
    return int(sh(f"find '{maildir}' -type f \\( -path '*/cur/*' -o -path '*/new/*' \\) | wc -l"))


async def test_inventory_matches_find_and_du_and_the_audit_keeps_it(
    stack: Stack, site: Path, tmp_path: Path
) -> None:
    await asyncio.to_thread(messy, site, outside_tree(tmp_path))
    svc = await stack.panel.service(
        document_root=site, mailboxes=2, payment_method="auto_debit", expires_on=FAR
    )
    for n, maildir in enumerate(svc.maildirs):
        maildir_with_folders(maildir, 5 + 10 * n)
    expected_files = {"files": find_files(site), "bytes": du_bytes(site)}
    expected_boxes = [
        {
            "address": f"buzon{n}@{svc.domain}",
            "messages": find_messages(m),
            "bytes": du_bytes(m),
        }
        for n, m in enumerate(svc.maildirs)
    ]
    # 5 and 15 written here (one over the mail the panel wrote), one new, one sent
    assert [b["messages"] for b in expected_boxes] == [7, 17]
    try:
        run_id, code = await request(stack, svc)
        status = await wait_status(stack, svc, lambda s: s.inventory is not None, "the inventory")
        assert status.inventory is not None
        inventory = status.inventory.model_dump()
        assert {k: inventory[k] for k in ("files", "bytes")} == expected_files
        assert inventory["mailboxes"] == expected_boxes
        # the API answers the same figures (contract section 8)
        assert status.model_dump(mode="json")["inventory"]["mailboxes"][1]["messages"] == 17
        await confirm(stack, svc, code)
        await cancelled(stack, svc)
    finally:
        await terminate(stack, svc)

    trail = await audit_details(stack, run_id)
    files = trail["files_deleted"]
    assert {k: files[k] for k in ("files", "bytes")} == expected_files
    boxes = trail["mailboxes_deleted"]["mailboxes"]
    assert [{k: b[k] for k in ("address", "messages", "bytes")} for b in boxes] == expected_boxes
    rows = {
        r["address"]: r["deleted_at"]
        for r in await stack.pool.fetch(
            "select address, deleted_at from mailboxes where service_id = $1", svc.service_id
        )
    }
    assert {b["address"]: b["deleted_at"] for b in boxes} == {
        address: at.isoformat() for address, at in rows.items()
    }
    assert trail["mailboxes_deleted"]["node"] is None


async def test_code_mail_carries_the_inventory(stack: Stack) -> None:
    svc = await stack.panel.service(files=3, mailboxes=1)
    try:
        await request(stack, svc)
        [mail] = [m for m in mails_about(stack.mail, svc.domain) if CODE_SUBJECT in m.subject]
        # the small site was counted within the seconds the mail waits for it
        assert "En total se eliminarán 3 archivos (" in mail.body, mail.body
        assert "y 1 casilla con 1 mensaje (" in mail.body, mail.body
    finally:
        await stack.cancellations.withdraw(svc.service_id)


# ---- mounts, immutable files, cron jobs ---------------------------------------------------------


def mount_bind(source: Path, target: Path) -> None:
    done = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()}")


async def billing_rows(stack: Stack, svc: ServiceFixture) -> dict[str, list[str]]:
    invoices = await stack.pool.fetch(
        "select status from invoices where service_id = $1 order by period_start", svc.service_id
    )
    mandates = await stack.pool.fetch(
        "select status from debit_mandates where service_id = $1", svc.service_id
    )
    return {
        "invoices": [r["status"] for r in invoices],
        "mandates": [r["status"] for r in mandates],
    }


async def test_bind_mount_inside_is_refused_before_billing_then_retried(
    stack: Stack, site: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "compartido"
    shared.mkdir()
    (shared / "lib.so").write_text("shared by every jail")
    (site / "jail" / "lib").mkdir(parents=True)
    (site / "index.php").write_text("<?php")
    svc = await stack.panel.service(
        document_root=site, mailboxes=1, payment_method="auto_debit", expires_on=FAR
    )
    mount_bind(shared, site / "jail" / "lib")
    mounted = True
    try:
        _, code = await request(stack, svc)
        await confirm(stack, svc, code)
        status = await wait_status(
            stack,
            svc,
            lambda s: s.steps.files.status is StepStatus.REFUSED,
            "the files step refused",
        )
        detail = status.steps.files.detail or ""
        assert f"holds the mount point {site / 'jail' / 'lib'}" in detail, detail
        # refused by the preflight: billing did not close, nothing was deleted
        assert status.steps.billing.status is StepStatus.PENDING, status.steps
        assert "waiting for the files step" in (status.steps.billing.detail or "")
        assert await billing_rows(stack, svc) == {
            "invoices": ["paid", "open"],
            "mandates": ["active"],
        }
        assert (site / "index.php").exists() and svc.maildirs[0].exists()
        assert (shared / "lib.so").read_text() == "shared by every jail"

        subprocess.run(["umount", str(site / "jail" / "lib")], check=True)
        mounted = False
        await stack.cancellations.handle(svc.service_id).signal("retry")
        await cancelled(stack, svc)
    finally:
        if mounted:
            subprocess.run(["umount", str(site / "jail" / "lib")], check=False)
        await terminate(stack, svc)
    assert not site.exists()
    assert (shared / "lib.so").read_text() == "shared by every jail"
    assert await billing_rows(stack, svc) == {"invoices": ["paid", "void"], "mandates": ["revoked"]}


async def test_another_services_directory_inside_is_refused_before_billing(
    stack: Stack, site: Path
) -> None:
    """Another service's live maildir lies inside this document root, its row spelled
    through a link (so no comparison of paths sees it): the preflight's walk finds its
    (dev, ino) and refuses before billing; no walk ever enters it."""
    (site / "index.php").write_text("<?php")
    inside = site / "correo-de-otro"
    inside.mkdir()
    (inside / "cur").mkdir()
    (inside / "cur" / "1.mail:2,S").write_text("Subject: de otro cliente\n\n")
    alias = stack.settings.mail_root / f"alias-{uuid.uuid4().hex[:8]}"
    alias.symlink_to(inside, target_is_directory=True)
    other = await stack.panel.service(files=1, mailboxes=0)
    await add_mailbox(stack.pool, other.service_id, alias)
    svc = await stack.panel.service(
        document_root=site, mailboxes=1, payment_method="auto_debit", expires_on=FAR
    )
    try:
        _, code = await request(stack, svc)
        await confirm(stack, svc, code)
        status = await wait_status(
            stack,
            svc,
            lambda s: s.steps.files.status is StepStatus.REFUSED,
            "the files step refused",
        )
        detail = status.steps.files.detail or ""
        assert "correo-de-otro is one of another service's directories" in detail, detail
        assert status.steps.billing.status is StepStatus.PENDING
        assert await billing_rows(stack, svc) == {
            "invoices": ["paid", "open"],
            "mandates": ["active"],
        }
        assert (site / "index.php").exists()
        assert (inside / "cur" / "1.mail:2,S").exists()
    finally:
        await terminate(stack, svc)
        alias.unlink()


def chattr(flag: str, path: Path) -> bool:
    """Set or clear a file attribute; False where chattr is missing or not allowed."""
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


async def test_undeletable_file_shows_in_status_until_it_is_fixed(stack: Stack) -> None:
    """An immutable file (even root cannot unlink it): the files step keeps trying, says
    why in one line, finishes nothing, and the cancellation completes once it is fixed.
    (Moved here from test_integration.py.)"""
    svc = await stack.panel.service(files=5, mailboxes=1)
    sid = svc.service_id
    assert svc.document_root is not None
    locked = svc.document_root / "d0000" / "locked.php"
    locked.write_text("<?php // still written by a cron job")
    if not chattr("+i", locked):
        pytest.skip(
            "chattr +i does not work here (no chattr, no CAP_LINUX_IMMUTABLE, or no such flag)"
        )
    try:
        run_id, code = await request(stack, svc)
        await confirm(stack, svc, code)
        # two attempts failed: a third has begun
        status = await wait_status(
            stack,
            svc,
            lambda s: s.steps.files.attempts >= 3 and s.steps.files.error is not None,
            "the files step failing twice",
        )
        error = status.steps.files.error or ""
        assert error == "PermissionError: [Errno 1] Operation not permitted: '…/locked.php'"
        assert status.state is State.DEPROVISIONING
        assert status.steps.files.status is StepStatus.RUNNING
        assert not status.steps.files.verified
        assert locked.exists()
        assert (
            await stack.pool.fetchval("select status from services where id = $1", sid)
        ) == "active"
        assert [m for m in mails_about(stack.mail, svc.domain) if "dado de baja" in m.subject] == []
    finally:
        chattr("-i", locked)

    result, status = await cancelled(stack, svc)
    assert result.files_deleted == 6  # what the failed attempts deleted counts too
    assert not svc.document_root.exists()
    assert status.steps.files.status is StepStatus.DONE
    assert status.steps.files.error is None and status.steps.files.attempts >= 3
    trail = await audit_details(stack, run_id)
    assert trail["files_deleted"]["files"] == 6
    assert trail["cancelled"] == {"files_deleted": 6, "mailboxes_deleted": 1}


class CronJob(threading.Thread):
    """A customer's cron job still writing logs while the site is deleted: once the
    deletion has listed the top folder (its sentinel is gone) and while folders below
    remain, it writes into the top folder, which that walk will not list again."""

    def __init__(self, top: Path, sentinel: Path) -> None:
        super().__init__(daemon=True)
        self.top, self.sentinel = top, sentinel
        self.written = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while self.sentinel.exists() and not self.stop.is_set():
            self.stop.wait(0.001)
        while not self.stop.is_set():
            try:
                with os.scandir(self.top) as entries:
                    if not any(e.name.startswith("d0") for e in entries):
                        return
                fd = os.open(self.top / f"cron-{self.written}.log", os.O_WRONLY | os.O_CREAT)
            except FileNotFoundError:
                return
            os.write(fd, b"still running\n")
            os.close(fd)
            self.written += 1
            self.stop.wait(0.002)


async def test_file_written_during_deletion_is_found_and_the_tree_walked_again(
    stack: Stack,
) -> None:
    svc = await stack.panel.service(files=20_000, mailboxes=1)
    top = svc.document_root
    assert top is not None
    sentinel = top / "0-sentinel.txt"
    sentinel.write_text("listed with the top folder")
    cron = CronJob(top, sentinel)
    try:
        run_id, code = await request(stack, svc)
        cron.start()
        await confirm(stack, svc, code)
        _, status = await cancelled(stack, svc)
    finally:
        cron.stop.set()
        cron.join()
        await terminate(stack, svc)
    assert cron.written > 0, "the cron job never wrote during the deletion"
    assert not top.exists()
    trail = await audit_details(stack, run_id)
    files = trail["files_deleted"]
    assert files["walks"] >= 2, files
    assert files["files"] == 20_001 + cron.written  # the cron job's logs went too
    assert status.steps.files.verified
    assert "written to during deletion" in (status.steps.files.detail or "")


# ---- mail folders left empty -----------------------------------------------------------------


async def test_empty_domain_folders_go_unless_a_live_mailbox_lies_there(stack: Stack) -> None:
    mail_root = stack.settings.mail_root
    svc = await stack.panel.service(files=1, mailboxes=2)
    shared = mail_root / f"compartida-{uuid.uuid4().hex[:8]}"
    await add_mailbox(stack.pool, svc.service_id, shared / "mio")
    neighbour = await stack.panel.service(files=1, mailboxes=0)
    # another service's mailbox in that folder, not made on disk yet
    await stack.pool.execute(
        "insert into mailboxes (id, service_id, address, maildir) values ($1, $2, $3, $4)",
        new_id(),
        neighbour.service_id,
        f"nuevo@{neighbour.domain}",
        str(shared / "nuevo"),
    )
    domain_folder = svc.maildirs[0].parent
    try:
        _, code = await request(stack, svc)
        await confirm(stack, svc, code)
        await cancelled(stack, svc)
    finally:
        await terminate(stack, svc)
    assert not domain_folder.exists()  # emptied by the deletion, used by no one
    assert shared.is_dir() and os.listdir(shared) == []  # empty, but a live mailbox lies there
    assert mail_root.is_dir()
