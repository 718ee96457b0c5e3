"""The sign-in throttle: failed claves counted per customer number and per client address.

After `delay_after` failures the next clave is checked only once a delay has passed since
the last failure (1 s, then doubling); from `lock_after` failures on, only after `lock`.
An attempt that comes too soon gets the same answer as a wrong clave, without checking
it, so the answer tells nothing about the number. Counts are forgotten an hour after the
last failure, and a number's count when its clave is right. Kept in the database, so that
every API process counts the same.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from bajas.config import Settings

FIRST_DELAY = timedelta(seconds=1)
FORGET_AFTER = timedelta(hours=1)


@dataclass(frozen=True)
class Rules:
    delay_after: int = 5
    lock_after: int = 10
    lock: timedelta = timedelta(minutes=5)
    # An address's thresholds are this many times a number's (many share one behind a NAT).
    address_factor: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> Rules:
        return cls(
            delay_after=settings.sign_in_delay_after,
            lock_after=max(settings.sign_in_lock_after, settings.sign_in_delay_after),
            lock=settings.sign_in_lock,
            address_factor=settings.sign_in_address_factor,
        )

    @property
    def forget_after(self) -> timedelta:
        return max(FORGET_AFTER, 2 * self.lock)

    def wait_after(self, failures: int, *, address: bool = False) -> timedelta:
        """How long after the last failure the next clave may be checked."""
        factor = self.address_factor if address else 1
        if failures < self.delay_after * factor:
            return timedelta(0)
        if failures >= self.lock_after * factor:
            return self.lock
        return min(FIRST_DELAY * 2 ** (failures - self.delay_after * factor), self.lock)


@dataclass(frozen=True)
class Keys:
    """What a sign-in is counted under, each as a SHA-256 (nothing typed is stored)."""

    number: bytes | None
    address: bytes | None

    @classmethod
    def of(cls, number: str, address: str | None) -> Keys:
        number = number.strip().casefold()
        return cls(
            number=_digest("number", number) if number else None,
            address=_digest("address", _network(address)) if address else None,
        )

    def all(self) -> list[bytes]:
        return [k for k in (self.number, self.address) if k is not None]


def _digest(kind: str, value: str) -> bytes:
    return hashlib.sha256(f"{kind}\0{value}".encode()).digest()


def _network(address: str) -> str:
    """An IPv6 client is counted by its /64, which one subscriber usually holds whole."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


async def admit(pool: asyncpg.Pool, rules: Rules, keys: Keys) -> bool:
    """Whether this clave may be checked now; if so the attempt is counted as a failure
    already (taken back by `succeeded`), so parallel guesses cannot all slip in at once."""
    if not keys.all():
        return True
    await pool.execute(
        "delete from bajas.sign_in_failures where key_hash in (select key_hash"
        " from bajas.sign_in_failures where last_failure_at < now() - $1::interval"
        " limit 100 for update skip locked)",
        rules.forget_after,
    )
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "insert into bajas.sign_in_failures (key_hash, failures, last_failure_at)"
            " select k, 0, now() from unnest($1::bytea[]) as k on conflict do nothing",
            keys.all(),
        )
        rows = await conn.fetch(
            "select key_hash, case when last_failure_at < now() - $2::interval then 0"
            " else failures end as failures, last_failure_at, now() as now"
            " from bajas.sign_in_failures"
            " where key_hash = any($1::bytea[]) for update",
            keys.all(),
            rules.forget_after,
        )
        if any(
            r["now"]
            < r["last_failure_at"]
            + rules.wait_after(r["failures"], address=r["key_hash"] == keys.address)
            for r in rows
        ):
            return False
        await conn.execute(
            "update bajas.sign_in_failures"
            " set failures = case when last_failure_at < now() - $2::interval then 1"
            " else failures + 1 end, last_failure_at = now()"
            " where key_hash = any($1::bytea[])",
            keys.all(),
            rules.forget_after,
        )
    return True


async def succeeded(pool: asyncpg.Pool, keys: Keys) -> None:
    """The right clave: the number starts again; the address only gets its attempt back
    (it may be guessing other numbers)."""
    async with pool.acquire() as conn, conn.transaction():
        if keys.number is not None:
            await conn.execute(
                "delete from bajas.sign_in_failures where key_hash = $1", keys.number
            )
        if keys.address is not None:
            await conn.execute(
                "update bajas.sign_in_failures set failures = greatest(failures - 1, 0)"
                " where key_hash = $1",
                keys.address,
            )
