"""The ledger's errors: :class:`~broker.errors.LedgerUnavailable` (a domain error: the broker
fails closed, HTTP answers 503), re-exported for code that imports it from here; and
:class:`SingleUseTaken`, a mint refused because its attestation was already used."""
from __future__ import annotations

from broker.errors import LedgerUnavailable

__all__ = ["LedgerUnavailable", "SingleUseTaken"]


class SingleUseTaken(Exception):
    """:meth:`~broker.ledger.Ledger.record_mint` wrote nothing: the attestation it names in
    ``single_use`` already minted a credential that the ledger remembers (a replay that the
    fast-path replay store did not catch, e.g. after a Redis restart)."""

    def __init__(self, credential_id: str) -> None:
        super().__init__("attestation already used")
        self.credential_id = credential_id
