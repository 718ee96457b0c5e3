"""The real parts the integration tests run against, started for real."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg

from bajas.dev.mailsink import MailSink, SunkMessage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_ids = itertools.count(int(time.time()) % 100_000 * 100)


@dataclass
class ServiceFixture:
    customer_id: int
    service_id: int
    email: str
    domain: str
    document_root: Path | None
    maildirs: list[Path] = field(default_factory=list)


@dataclass
class Panel:
    """Writes panel rows and the files they point at, as a hosting company would have them."""

    pool: asyncpg.Pool
    hosting_root: Path
    mail_root: Path

    async def customer(self, *, password_hash: str | None = None) -> tuple[int, str]:
        cid = next(_ids)
        email = f"cliente{cid}@example.test"
        await self.pool.execute(
            "insert into customers (id, number, email, name, password_hash)"
            " values ($1, $2, $3, $4, $5)",
            cid,
            f"C{cid}",
            email,
            f"Cliente {cid}",
            password_hash,
        )
        return cid, email

    async def service(
        self,
        customer: tuple[int, str] | None = None,
        *,
        expires_on: date = date(2099, 6, 15),
        payment_method: str = "manual",
        files: int = 5,
        mailboxes: int = 2,
        document_root: Path | None | str = "default",
        status: str = "active",
        invoices: bool = True,
    ) -> ServiceFixture:
        cid, email = customer or await self.customer()
        sid = next(_ids)
        domain = f"sitio{sid}.example.test"
        root: Path | None
        if document_root == "default":
            root = self.hosting_root / domain
            make_tree(root, files)
        else:
            root = Path(document_root) if document_root is not None else None
        await self.pool.execute(
            "insert into services (id, customer_id, domain, plan, status, expires_on,"
            " payment_method, auto_renew, document_root) values ($1,$2,$3,'basico',$4,$5,$6,true,$7)",
            sid,
            cid,
            domain,
            status,
            expires_on,
            payment_method,
            str(root) if root is not None else None,
        )
        maildirs = []
        for n in range(mailboxes):
            maildir = self.mail_root / domain / f"buzon{n}"
            for sub in ("cur", "new", "tmp"):
                (maildir / sub).mkdir(parents=True, exist_ok=True)
            (maildir / "cur" / f"{n}.mail:2,S").write_text(f"Subject: hola {n}\n\ncuerpo\n")
            await self.pool.execute(
                "insert into mailboxes (id, service_id, address, maildir) values ($1,$2,$3,$4)",
                next(_ids),
                sid,
                f"buzon{n}@{domain}",
                str(maildir),
            )
            maildirs.append(maildir)
        if invoices:
            # one paid past period, one open renewal invoice (period_start >= expires_on)
            for start, end, status_ in (
                (date(expires_on.year - 1, 1, 1), expires_on, "paid"),
                (expires_on, date(expires_on.year + 1, expires_on.month, 1), "open"),
            ):
                await self.pool.execute(
                    "insert into invoices (id, service_id, period_start, period_end,"
                    " amount_cents, status) values ($1,$2,$3,$4,1000,$5)",
                    next(_ids),
                    sid,
                    start,
                    end,
                    status_,
                )
        if payment_method == "auto_debit":
            await self.pool.execute(
                "insert into debit_mandates (id, service_id, status) values ($1,$2,'active')",
                next(_ids),
                sid,
            )
        return ServiceFixture(cid, sid, email, domain, root, maildirs)


def make_tree(root: Path, files: int, per_dir: int = 100) -> None:
    for n in range(files):
        folder = root / f"d{n // per_dir:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{n:06d}.html").write_text("<p>hola</p>")
    root.mkdir(parents=True, exist_ok=True)


CODE_RE = re.compile(r"es: (\d{6})")


def code_in(message: SunkMessage) -> str:
    match = CODE_RE.search(message.body)
    assert match, f"no code in mail {message.subject!r}"
    return match.group(1)


def mails_about(sink: MailSink, domain: str) -> list[SunkMessage]:
    return [m for m in sink.messages if domain in m.subject]


def tree_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


# --- helpers added for tests/test_integration.py (append-only) ----------------------


async def add_mailbox(pool: asyncpg.Pool, service_id: int, maildir: Path) -> int:
    """One more mailbox row for `service_id`, pointing at `maildir` (created with a mail)."""
    mid = next(_ids)
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    (maildir / "cur" / f"{mid}.mail:2,S").write_text("Subject: extra\n\ncuerpo\n")
    await pool.execute(
        "insert into mailboxes (id, service_id, address, maildir) values ($1,$2,$3,$4)",
        mid,
        service_id,
        f"extra{mid}@example.test",
        str(maildir),
    )
    return mid


async def add_invoice(
    pool: asyncpg.Pool, service_id: int, period_start: date, period_end: date, status: str
) -> int:
    iid = next(_ids)
    await pool.execute(
        "insert into invoices (id, service_id, period_start, period_end, amount_cents, status)"
        " values ($1,$2,$3,$4,1000,$5)",
        iid,
        service_id,
        period_start,
        period_end,
        status,
    )
    return iid


async def add_mandate(pool: asyncpg.Pool, service_id: int, status: str = "active") -> int:
    mid = next(_ids)
    await pool.execute(
        "insert into debit_mandates (id, service_id, status) values ($1,$2,$3)",
        mid,
        service_id,
        status,
    )
    return mid


def tree_snapshot(root: Path) -> dict[str, str]:
    """Every entry below `root` (links not followed) with its content or link target."""
    snap: dict[str, str] = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(base) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                snap[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                snap[rel] = path.read_text()
            else:
                snap[rel] = "<dir>"
    return snap


async def wait_for(
    what: str, probe: Callable[[], Any], *, timeout: float = 30.0, every: float = 0.1
) -> Any:
    """Poll `probe` (sync or async) until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out waiting for {what} (last value {value!r})")
        await asyncio.sleep(every)
