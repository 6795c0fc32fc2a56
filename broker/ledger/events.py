"""Ledger records: events (append-only, hash-chained) and the credential projection.

An event's hash is ``sha256(canonical_json(event without "hash"))`` (:meth:`Event.canonical_bytes`
is the definition; :class:`broker.ledger.chain.Sealer` is the one code path that seals); the canonical form
includes ``seq`` and ``prev_hash``, so altering, removing or reordering any row breaks the
chain at that row. The first event's ``prev_hash`` is :data:`GENESIS_HASH`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker.common.canonical import canonical_json, sha256_hex

GENESIS_HASH = "0" * 64

EVENT_TYPES = frozenset({
    "mint", "deny", "introspect", "revoke", "expire", "usage",
    "approval_requested", "approved", "denied", "delegate",
    # the gateway (broker/gateway/service.py): a login through it (accepted or refused), its
    # end, and facts about the gateway itself (records a best-effort gateway had to drop)
    "connect", "disconnect", "gateway",
    # refusals because a dependency was down, aggregated (broker/exchange/outage.py)
    "outage",
})
#: Event types that may be recorded with a dedupe key (``usage_lines``): re-delivered records
#: (a log read twice, a gateway spool drained again after a crash) are recorded once.
KEYED_EVENT_TYPES = frozenset({"usage", "connect", "disconnect", "gateway"})


#: ``[(whole second, its "YYYY-MM-DDTHH:MM:SS" text)]``, the last used: one tuple, replaced whole
#: (a single assignment), so concurrent threads never see a second with another's text
_SECOND: list[tuple[Any, str]] = [(None, "")]


def utc_timestamp(when: float | None = None) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2026-11-29T10:24:17.123456Z`` (sorts as text).

    The date-and-time part is formatted once per second (a drain of many records from the same
    second formats it once); the microseconds come from the same rounding ``datetime`` uses."""
    dt = datetime.now(UTC) if when is None else datetime.fromtimestamp(when, UTC)
    second = (dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second)
    cached_second, text = _SECOND[0]
    if cached_second != second:
        text = dt.strftime("%Y-%m-%dT%H:%M:%S")
        _SECOND[0] = (second, text)
    return f"{text}.{dt.microsecond:06d}Z"


@dataclass(frozen=True)
class EventDraft:
    """What a caller hands to the ledger; the store assigns seq, ts, prev_hash and hash."""
    type: str
    credential_id: str | None = None
    parent_id: str | None = None
    principal: str | None = None
    run: dict[str, Any] | None = None
    authorizer: dict[str, Any] | None = None
    target: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    seq: int
    ts: str
    type: str
    credential_id: str | None
    parent_id: str | None
    principal: str | None
    run: dict[str, Any] | None
    authorizer: dict[str, Any] | None
    target: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def body(self) -> dict[str, Any]:
        """Every field but ``hash``: what the hash covers."""
        return {
            "seq": self.seq, "ts": self.ts, "type": self.type,
            "credential_id": self.credential_id, "parent_id": self.parent_id,
            "principal": self.principal, "run": self.run, "authorizer": self.authorizer,
            "target": self.target, "details": self.details, "prev_hash": self.prev_hash,
        }

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.body())

    def computed_hash(self) -> str:
        return sha256_hex(self.canonical_bytes())

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "hash": self.hash}


@dataclass(frozen=True)
class CredentialRecord:
    """The queryable projection of a minted credential (rebuilt from events if ever needed)."""
    credential_id: str
    principal: str
    run: dict[str, Any]
    authorizer: dict[str, Any]
    target: str
    target_type: str
    scope: str
    issued_at: int                   # epoch seconds
    expires_at: int                  # epoch seconds
    parent_id: str | None = None
    issuer: str | None = None        # name of the attestation issuer
    revoked_at: int | None = None
    ended_at: int | None = None      # when the backend resource was removed (expire/revoke done)
    details: dict[str, Any] = field(default_factory=dict)   # non-secret backend facts (role, lease id)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    count: int
    first_bad_seq: int | None = None
    reason: str = ""
