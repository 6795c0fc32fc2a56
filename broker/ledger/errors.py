"""The ledger's one error, :class:`~broker.errors.LedgerUnavailable` (a domain error: the
broker fails closed, HTTP answers 503), re-exported for code that imports it from here."""
from __future__ import annotations

from broker.errors import LedgerUnavailable

__all__ = ["LedgerUnavailable"]
