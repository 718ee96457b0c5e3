"""Panel rows and the files they point at, as a hosting company would have them.

One writer for the tests (a service at a time, with its options) and the benchmark
(thousands at once): rows go in with COPY in one transaction, trees are written in a
thread.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg

from tests.helpers import new_id

_COLUMNS = {
    "customers": ["id", "number", "email", "name", "password_hash"],
    "services": [
        "id",
        "customer_id",
        "domain",
        "plan",
        "status",
        "expires_on",
        "payment_method",
        "auto_renew",
        "document_root",
    ],
    "mailboxes": ["id", "service_id", "address", "maildir"],
    "invoices": ["id", "service_id", "period_start", "period_end", "amount_cents", "status"],
    "debit_mandates": ["id", "service_id", "status"],
}

DEFAULT_ROOT = "default"


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
    """Writes panel rows and the files they point at."""

    pool: asyncpg.Pool
    hosting_root: Path
    mail_root: Path

    async def customer(self, *, password_hash: str | None = None) -> tuple[int, str]:
        """A customer of its own: (id, e-mail)."""
        row = _customer_row(new_id(), password_hash)
        await self._copy({"customers": [row]})
        return row[0], row[2]

    async def service(
        self,
        customer: tuple[int, str] | None = None,
        *,
        expires_on: date = date(2099, 6, 15),
        payment_method: str = "manual",
        files: int = 5,
        mailboxes: int = 2,
        document_root: Path | None | str = DEFAULT_ROOT,
        status: str = "active",
        invoices: bool = True,
    ) -> ServiceFixture:
        """One service (of a new customer unless `customer` is given) with a document
        root of `files` files, `mailboxes` maildirs, a paid and an open invoice."""
        (svc,) = await self.services(
            1,
            customer,
            expires_on=expires_on,
            payment_method=payment_method,
            files=files,
            mailboxes=mailboxes,
            document_root=document_root,
            status=status,
            invoices=invoices,
        )
        return svc

    async def services(
        self,
        count: int,
        customer: tuple[int, str] | None = None,
        *,
        expires_on: date = date(2099, 6, 15),
        payment_method: str = "manual",
        files: int = 5,
        per_dir: int = 100,
        mailboxes: int = 2,
        document_root: Path | None | str = DEFAULT_ROOT,
        status: str = "active",
        invoices: bool = True,
        on_disk: bool = True,
    ) -> list[ServiceFixture]:
        """`count` services as `service` makes one, each of its own customer unless
        `customer` is given. With `on_disk=False` the rows point at paths never made."""
        rows: dict[str, list[tuple[Any, ...]]] = {table: [] for table in _COLUMNS}
        made: list[ServiceFixture] = []
        for _ in range(count):
            if customer is None:
                row = _customer_row(new_id())
                rows["customers"].append(row)
                cid, email = row[0], row[2]
            else:
                cid, email = customer
            sid = new_id()
            domain = f"sitio{sid}.example.test"
            root: Path | None
            if document_root == DEFAULT_ROOT:
                root = self.hosting_root / domain
            else:
                root = Path(document_root) if document_root is not None else None
            rows["services"].append(
                (sid, cid, domain, "basico", status, expires_on, payment_method, True)
                + (str(root) if root is not None else None,)
            )
            maildirs = [self.mail_root / domain / f"buzon{n}" for n in range(mailboxes)]
            for n, maildir in enumerate(maildirs):
                rows["mailboxes"].append((new_id(), sid, f"buzon{n}@{domain}", str(maildir)))
            if invoices:
                # one paid past period, one open renewal invoice (period_start >= expires_on)
                for start, end, paid in (
                    (date(expires_on.year - 1, 1, 1), expires_on, "paid"),
                    (expires_on, date(expires_on.year + 1, expires_on.month, 1), "open"),
                ):
                    rows["invoices"].append((new_id(), sid, start, end, 1000, paid))
            if payment_method == "auto_debit":
                rows["debit_mandates"].append((new_id(), sid, "active"))
            made.append(ServiceFixture(cid, sid, email, domain, root, maildirs))

        def write_files() -> None:
            for svc in made:
                if svc.document_root is not None and document_root == DEFAULT_ROOT:
                    make_tree(svc.document_root, files, per_dir)
                for n, maildir in enumerate(svc.maildirs):
                    write_maildir(maildir, f"{n}.mail:2,S", f"Subject: hola {n}\n\ncuerpo\n")

        if on_disk:
            await asyncio.to_thread(write_files)
        await self._copy(rows)
        return made

    async def _copy(self, rows: dict[str, list[tuple[Any, ...]]]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            for table, records in rows.items():
                if records:
                    await conn.copy_records_to_table(
                        table, records=records, columns=_COLUMNS[table]
                    )


def _customer_row(cid: int, password_hash: str | None = None) -> tuple[Any, ...]:
    return (cid, f"C{cid}", f"cliente{cid}@example.test", f"Cliente {cid}", password_hash)


def make_tree(root: Path, files: int, per_dir: int = 100) -> None:
    """`root` with `files` small files in folders of `per_dir` (d0000/f000000.html...)."""
    root.mkdir(parents=True, exist_ok=True)
    for d in range(-(-files // per_dir)):
        folder = root / f"d{d:04d}"
        folder.mkdir(exist_ok=True)
        for n in range(d * per_dir, min(files, (d + 1) * per_dir)):
            fd = os.open(folder / f"f{n:06d}.html", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, b"<p>hola</p>")
            os.close(fd)


def write_maildir(maildir: Path, name: str, text: str) -> None:
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    (maildir / "cur" / name).write_text(text)


def tree_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


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


async def add_mailbox(pool: asyncpg.Pool, service_id: int, maildir: Path) -> int:
    """One more mailbox row for `service_id`, pointing at `maildir` (created with a mail)."""
    mid = new_id()
    write_maildir(maildir, f"{mid}.mail:2,S", "Subject: extra\n\ncuerpo\n")
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
    iid = new_id()
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
    mid = new_id()
    await pool.execute(
        "insert into debit_mandates (id, service_id, status) values ($1,$2,$3)",
        mid,
        service_id,
        status,
    )
    return mid
