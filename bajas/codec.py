"""Encryption of every payload that goes through Temporal (history, queries, heartbeats).

Domains, e-mail addresses, reasons and inventories are personal data; the Temporal server
stores only what this codec made of them. AES-GCM with 256-bit keys from `PAYLOAD_KEYS`
(`ID:BASE64KEY[,ID:BASE64KEY...]`): the first key encrypts, every listed key decrypts, so a
key is rotated by putting a new one first and keeping the old one listed until no history
that needs it is kept. Payloads that are not encrypted pass through, so histories written
before encryption was turned on still read.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from bajas.config import ConfigError

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12
KEY_BYTES = 32
_KEY_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class PayloadKeyError(Exception):
    """A payload cannot be decrypted: its key is not listed, or it was altered."""


class AesGcmCodec(PayloadCodec):
    """Encrypts each payload whole (metadata and data) under the first key; the key id
    travels in clear in the metadata, and is bound to the ciphertext as associated data."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("at least one key")
        self._current = keys[0][0]
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys}

    @classmethod
    def from_setting(cls, value: str) -> AesGcmCodec:
        return cls(parse_payload_keys(value))

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decrypt(p) for p in payloads]

    def _encrypt(self, payload: Payload) -> Payload:
        key_id = self._current.encode()
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self._current].encrypt(nonce, payload.SerializeToString(), key_id)
        return Payload(metadata={"encoding": ENCODING, KEY_ID: key_id}, data=nonce + sealed)

    def _decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadKeyError(
                f"payload encrypted with key {key_id!r}, which PAYLOAD_KEYS does not list"
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            plain = cipher.decrypt(nonce, sealed, key_id.encode())
        except InvalidTag:
            raise PayloadKeyError(f"payload under key {key_id!r} does not authenticate") from None
        return Payload.FromString(plain)


def parse_payload_keys(value: str) -> list[tuple[str, bytes]]:
    """`ID:BASE64KEY[,ID:BASE64KEY...]` into (id, 32 bytes) pairs; errors name PAYLOAD_KEYS."""
    keys: list[tuple[str, bytes]] = []
    for n, entry in enumerate((e.strip() for e in value.split(",")), start=1):
        if not entry:
            continue
        key_id, sep, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not sep or not _KEY_ID_RE.fullmatch(key_id):
            raise ConfigError(
                f"PAYLOAD_KEYS: entry {n} is not ID:BASE64KEY (ID of letters, digits, . _ -)"
            )
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"PAYLOAD_KEYS: key {key_id!r} is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise ConfigError(
                f"PAYLOAD_KEYS: key {key_id!r} has {len(key) * 8} bits, not {KEY_BYTES * 8}"
            )
        if any(key_id == known for known, _ in keys):
            raise ConfigError(f"PAYLOAD_KEYS: key id {key_id!r} is listed twice")
        keys.append((key_id, key))
    if not keys:
        raise ConfigError("PAYLOAD_KEYS is set but lists no key")
    return keys


def new_payload_key(key_id: str) -> str:
    """One `ID:BASE64KEY` entry with a fresh random key (what `bajas dev` keeps)."""
    return f"{key_id}:{base64.b64encode(os.urandom(KEY_BYTES)).decode()}"
