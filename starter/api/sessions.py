"""Panel sessions kept on the server, so that "Salir", a new clave or 8 hours end them.

The signed cookie holds only a random session id (besides the CSRF token and the next
page's message); `bajas.panel_sessions` keeps its SHA-256, the customer, and an expiry
fixed at sign-in that no later request moves.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

import asyncpg

LIFETIME = timedelta(hours=8)
# Ended sessions stay this long, for whoever investigates an abuse.
KEPT = timedelta(days=30)
SIGNED_OUT = "signed out"
CLAVE_CHANGED = "clave changed"


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


async def open_session(pool: asyncpg.Pool, customer_id: int) -> str:
    """A new session of the customer; returns the id for the cookie."""
    session_id = secrets.token_urlsafe(32)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "delete from bajas.panel_sessions where expires_at < now() - $1::interval", KEPT
        )
        await conn.execute(
            "insert into bajas.panel_sessions (id_hash, customer_id, expires_at)"
            " values ($1, $2, now() + $3::interval)",
            _digest(session_id),
            customer_id,
            LIFETIME,
        )
    return session_id


async def customer_of(pool: asyncpg.Pool, session_id: object) -> int | None:
    """The customer of a live session: not ended, not past its 8 hours."""
    if not isinstance(session_id, str) or not session_id:
        return None
    customer_id: int | None = await pool.fetchval(
        "select customer_id from bajas.panel_sessions"
        " where id_hash = $1 and revoked_at is null and expires_at > now()",
        _digest(session_id),
    )
    return customer_id


async def end_session(pool: asyncpg.Pool, session_id: object, because: str) -> None:
    if isinstance(session_id, str) and session_id:
        await pool.execute(
            "update bajas.panel_sessions set revoked_at = now(), revoked_because = $2"
            " where id_hash = $1 and revoked_at is null",
            _digest(session_id),
            because,
        )


async def end_all(db: asyncpg.Pool | asyncpg.Connection, customer_id: int, because: str) -> int:
    """End every session of the customer (a new clave); returns how many were open."""
    ended: str = await db.execute(
        "update bajas.panel_sessions set revoked_at = now(), revoked_because = $2"
        " where customer_id = $1 and revoked_at is null and expires_at > now()",
        customer_id,
        because,
    )
    return int(ended.split()[-1])
