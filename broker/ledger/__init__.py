"""The ledger: append-only, hash-chained events and the credential projection.

``open_ledger(url)`` returns a :class:`Ledger` backed by SQLite (``sqlite:///path``) or
PostgreSQL (``postgresql://…``); any database failure surfaces as :class:`LedgerUnavailable`.
"""
from __future__ import annotations

from broker.ledger.backends import open_ledger
from broker.ledger.errors import LedgerUnavailable, SingleUseTaken
from broker.ledger.events import (
    GENESIS_HASH,
    CredentialRecord,
    Event,
    EventDraft,
    VerifyReport,
    utc_timestamp,
)
from broker.ledger.store import Ledger

__all__ = [
    "GENESIS_HASH", "CredentialRecord", "Event", "EventDraft", "Ledger", "LedgerUnavailable",
    "SingleUseTaken", "VerifyReport", "open_ledger", "utc_timestamp",
]
