"""Parsing what auditors type: instants, durations, opaque cursors, identifiers.

Every parser raises :class:`ValueError` with a short message that is safe to show (it never
echoes the input back); the HTTP layer turns it into ``invalid_request``.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

from broker.common.canonical import canonical_json, sha256_hex
from broker.common.durations import parse_duration
from broker.ledger.events import utc_timestamp

_EPOCH = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,6})?$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_RFC3339 = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
                      r"([Zz]|[+-][0-9]{2}:[0-9]{2})$")
_MAX_TEXT = 512


def parse_instant(text: str, *, now: float | None = None, relative: bool = False) -> str:
    """An instant as the ledger writes ``ts`` (RFC 3339 UTC, microseconds).

    Accepts RFC 3339 with ``Z`` or an offset (``2026-03-01T10:00:00Z``), a date
    (``2026-03-01``, midnight UTC) or epoch seconds (``1772359200``); with ``relative=True``
    also a duration meaning "that long ago" (``90s``, ``15m``, ``24h``, ``7d``).
    """
    text = text.strip()
    if not text or len(text) > 64:
        raise ValueError("not a time")
    if _EPOCH.match(text):
        return utc_timestamp(float(text))
    if _DATE.match(text):
        try:
            moment = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise ValueError("not a valid date") from None
        return utc_timestamp(moment.timestamp())
    if _RFC3339.match(text):
        normalized = text.replace("t", "T").replace(" ", "T").replace("z", "Z")
        if "." in normalized:                     # fromisoformat takes at most 6 digits
            head, _, rest = normalized.partition(".")
            digits = re.match(r"[0-9]+", rest)
            assert digits is not None
            normalized = f"{head}.{digits.group(0)[:6]:0<6}{rest[len(digits.group(0)):]}"
        try:
            moment = datetime.fromisoformat(normalized.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("not a valid RFC 3339 time") from None
        if moment.year < 1970:
            raise ValueError("time before 1970")
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if relative:
        try:
            seconds = parse_duration(text)
        except ValueError:
            raise ValueError("not a time or a duration") from None
        return utc_timestamp((time.time() if now is None else now) - seconds)
    raise ValueError("not an RFC 3339 time, a date or epoch seconds")


def check_text(value: str, name: str, *, max_len: int = _MAX_TEXT) -> str:
    """A free identifier (run id, principal): 1..max_len characters, no control characters."""
    if not value or len(value) > max_len:
        raise ValueError(f"{name} must be 1 to {max_len} characters")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
        raise ValueError(f"{name} must not contain control characters")
    return value


# -- cursors ---------------------------------------------------------------------------------

def query_digest(filters: dict[str, Any]) -> str:
    """Binds a cursor to the filters of the query that produced it."""
    return sha256_hex(canonical_json({k: v for k, v in filters.items() if v is not None}))[:16]


def encode_cursor(after_seq: int, filters: dict[str, Any]) -> str:
    """An opaque cursor: continue after ``after_seq`` with the same ``filters``."""
    body = canonical_json({"v": 1, "after": int(after_seq), "q": query_digest(filters)})
    return base64.urlsafe_b64encode(body).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, filters: dict[str, Any]) -> int:
    """The ``seq`` to continue after; ValueError for a malformed cursor or one made for other
    filters."""
    if len(cursor) > 200:
        raise ValueError("malformed cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        body = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValueError("malformed cursor") from None
    if (not isinstance(body, dict) or body.get("v") != 1 or type(body.get("after")) is not int
            or body["after"] < 0 or not isinstance(body.get("q"), str)):
        raise ValueError("malformed cursor")
    if body["q"] != query_digest(filters):
        raise ValueError("the cursor belongs to a query with other filters")
    return int(body["after"])
