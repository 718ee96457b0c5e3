"""Demo data for `bajas dev`: two customers, services with real files and mailboxes.

Inserted once: rows that exist are left alone, and trees are made only for services
that are not cancelled and have no document root on disk yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import asyncpg
from argon2 import PasswordHasher

DEMO_PASSWORD = "demo1234"


@dataclass(frozen=True)
class DemoService:
    id: int
    customer_id: int
    domain: str
    plan: str
    status: str
    payment_method: str
    months_left: int
    mailboxes: tuple[str, ...]


CUSTOMERS = (
    (1, "10001", "ana@example.com", "Ana Pérez"),
    (2, "10002", "bruno@example.com", "Bruno Gómez"),
)
SERVICES = (
    DemoService(
        101, 1, "anaperez.com.ar", "Hosting Plus", "active", "auto_debit", 2, ("info", "ventas")
    ),
    DemoService(102, 1, "tiendadeana.com", "Hosting Básico", "active", "manual", 4, ("contacto",)),
    DemoService(
        103, 1, "viejo-blog.net", "Hosting Básico", "suspended", "auto_debit", 1, ("blog",)
    ),
    DemoService(201, 2, "brunogomez.dev", "Hosting Plus", "active", "manual", 3, ("hola",)),
)


def add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    return date(day.year + month // 12, month % 12 + 1, min(day.day, 28))


async def load_demo(conn: asyncpg.Connection, hosting_root: Path, mail_root: Path) -> None:
    today = date.today()
    hasher = PasswordHasher()
    async with conn.transaction():
        for cid, number, email, name in CUSTOMERS:
            await conn.execute(
                "insert into customers (id, number, email, name, password_hash)"
                " values ($1, $2, $3, $4, $5) on conflict do nothing",
                cid,
                number,
                email,
                name,
                hasher.hash(DEMO_PASSWORD),
            )
        for svc in SERVICES:
            expires = add_months(today, svc.months_left).replace(day=15)
            root = (hosting_root / svc.domain).resolve()
            inserted = await conn.fetchval(
                "insert into services (id, customer_id, domain, plan, status, expires_on,"
                " payment_method, document_root) values ($1,$2,$3,$4,$5,$6,$7,$8)"
                " on conflict do nothing returning id",
                svc.id,
                svc.customer_id,
                svc.domain,
                svc.plan,
                svc.status,
                expires,
                svc.payment_method,
                str(root),
            )
            if inserted is None:
                continue
            for n, local in enumerate(svc.mailboxes):
                maildir = (mail_root / svc.domain / local).resolve()
                await conn.execute(
                    "insert into mailboxes (id, service_id, address, maildir)"
                    " values ($1, $2, $3, $4) on conflict do nothing",
                    svc.id * 100 + n,
                    svc.id,
                    f"{local}@{svc.domain}",
                    str(maildir),
                )
                fill_maildir(maildir, f"{local}@{svc.domain}")
            invoices = (
                (1, add_months(expires, -12), expires, "paid"),
                (2, expires, add_months(expires, 12), "open"),
            )
            for n, start, end, status in invoices:
                await conn.execute(
                    "insert into invoices (id, service_id, period_start, period_end,"
                    " amount_cents, status) values ($1,$2,$3,$4,$5,$6) on conflict do nothing",
                    svc.id * 100 + n,
                    svc.id,
                    start,
                    end,
                    120000,
                    status,
                )
            if svc.payment_method == "auto_debit":
                await conn.execute(
                    "insert into debit_mandates (id, service_id, status)"
                    " values ($1, $2, 'active') on conflict do nothing",
                    svc.id,
                    svc.id,
                )
            fill_site(root, svc.domain)


def fill_site(root: Path, domain: str, pages: int = 40) -> None:
    """A small but real-looking site: pages, styles and images in a few folders."""
    for folder in ("", "css", "img", "blog", "blog/2025", "blog/2026"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text(f"<h1>{domain}</h1>\n")
    (root / "css" / "site.css").write_text("body { font-family: sans-serif }\n")
    for n in range(pages):
        year = "2025" if n % 2 else "2026"
        (root / "blog" / year / f"entrada-{n:03d}.html").write_text(f"<p>Entrada {n}</p>\n")
        (root / "img" / f"foto-{n:03d}.jpg").write_bytes(bytes(range(256)) * 4)


def fill_maildir(maildir: Path, address: str, messages: int = 3) -> None:
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    for n in range(messages):
        (maildir / "cur" / f"17000000{n:02d}.M{n}P1.demo:2,S").write_text(
            f"From: alguien@example.org\nTo: {address}\nSubject: Mensaje {n}\n\nHola.\n"
        )
