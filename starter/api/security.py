"""Secrets of the API and the panel: the bearer token, the session key, claves, CSRF tokens."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import secrets
from collections import Counter
from itertools import pairwise

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from bajas.config import ConfigError, Settings

MIN_TOKEN_LENGTH = 16
# Below these a value was typed, not drawn: 16 × "a", "abcdefghijklmnop", "passwordpassword".
# (The bits are a letter-frequency estimate: a random 16-character hex token scores ~50.)
MIN_DISTINCT = 7
MIN_BITS = 40
_hasher = PasswordHasher()
# Verified when the number is unknown, so both misses cost the same time.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def weakness(secret: str) -> str | None:
    """Why `secret` cannot be a secret, or None: too short, too few different characters,
    too little entropy in its letters, mostly runs ("aaaa", "abcd"), or one word repeated."""
    if len(secret.strip()) < MIN_TOKEN_LENGTH:
        return f"must be at least {MIN_TOKEN_LENGTH} characters"
    counts = Counter(secret)
    bits = -sum(n * math.log2(n / len(secret)) for n in counts.values())
    runs = sum(1 for a, b in pairwise(secret) if abs(ord(a) - ord(b)) <= 1)
    repeated = secret in (secret + secret)[1:-1]
    if len(counts) < MIN_DISTINCT or bits < MIN_BITS or runs > len(secret) // 2 or repeated:
        return (
            "is too predictable to be a secret: use a random value, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return None


def _checked(name: str, secret: str) -> str:
    problem = weakness(secret)
    if problem:
        raise ConfigError(f"{name} {problem}")
    return secret


def api_token(settings: Settings) -> str:
    """PANEL_API_TOKEN, refused when missing or too weak to be a secret."""
    if settings.panel_api_token is None:
        raise ConfigError("PANEL_API_TOKEN is required")
    return _checked("PANEL_API_TOKEN", settings.panel_api_token.get_secret_value())


def token_matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def session_secret(settings: Settings) -> str:
    """PANEL_SESSION_SECRET; only `bajas dev` may do without, with a key derived from its
    API token (whoever holds a production token must not be able to sign cookies)."""
    if settings.panel_session_secret is not None:
        return _checked("PANEL_SESSION_SECRET", settings.panel_session_secret.get_secret_value())
    if not settings.dev_mode:
        raise ConfigError("PANEL_SESSION_SECRET is required (only `bajas dev` makes its own)")
    return hmac.new(
        api_token(settings).encode(), b"bajas panel session cookie", hashlib.sha256
    ).hexdigest()


def hash_clave(clave: str) -> str:
    return _hasher.hash(clave)


def _verify(password_hash: str | None, clave: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, clave) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def verify_clave(password_hash: str | None, clave: str, slots: asyncio.Semaphore) -> bool:
    """argon2 is deliberately slow: keep it off the event loop, and at most `slots` at once
    so that a flood of guesses queues instead of slowing every sign-in."""
    async with slots:
        return await asyncio.to_thread(_verify, password_hash, clave)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)
