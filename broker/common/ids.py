"""Credential ids: unique, time-sortable, safe inside a PostgreSQL role name.

A credential id is a ULID (48-bit millisecond timestamp + 80 random bits) written in
lower-case Crockford base32: 26 characters, ``[0-9a-hjkmnp-tv-z]``. Lexicographic order is
creation order to the millisecond.
"""
from __future__ import annotations

import os
import re
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
CREDENTIAL_ID_RE = re.compile(r"^[0-9a-hjkmnp-tv-z]{26}$")


def new_credential_id(*, now: float | None = None) -> str:
    millis = int((time.time() if now is None else now) * 1000)
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def is_credential_id(value: str) -> bool:
    return bool(CREDENTIAL_ID_RE.match(value))


def credential_id_time(credential_id: str) -> float:
    """Creation time (seconds since the epoch) encoded in a credential id."""
    value = 0
    for ch in credential_id[:10]:
        value = (value << 5) | _ALPHABET.index(ch)
    return value / 1000.0
