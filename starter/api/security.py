"""Secrets of the API and the panel: the bearer token, the session key, claves, CSRF tokens."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from bajas.config import ConfigError, Settings

MIN_TOKEN_LENGTH = 16
_hasher = PasswordHasher()
# Verified when the number is unknown, so both misses cost the same time.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def api_token(settings: Settings) -> str:
    """PANEL_API_TOKEN, refused when missing or too short to be a secret."""
    if settings.panel_api_token is None:
        raise ConfigError("PANEL_API_TOKEN is required")
    token = settings.panel_api_token.get_secret_value()
    if len(token.strip()) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"PANEL_API_TOKEN must be at least {MIN_TOKEN_LENGTH} characters")
    return token


def token_matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def session_secret(settings: Settings) -> str:
    """PANEL_SESSION_SECRET, else a key derived from the API token (same on every process)."""
    if settings.panel_session_secret is not None:
        secret = settings.panel_session_secret.get_secret_value()
        if len(secret) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"PANEL_SESSION_SECRET must be at least {MIN_TOKEN_LENGTH} characters"
            )
        return secret
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


async def verify_clave(password_hash: str | None, clave: str) -> bool:
    """argon2 is deliberately slow: keep it off the event loop."""
    return await asyncio.to_thread(_verify, password_hash, clave)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)
