"""The acting agent of a credential: for a credential minted under a person's delegation — or
derived from one — the agent that acted (RFC 8693 ``act``), named beside the person.

A delegated credential's ``sub`` (and its ledger ``principal``) is the person; its run is the
agent's run; the agent's principal and issuer are in its ``mint`` event (``details.actor``,
``details.iss``). A credential derived from it inherits the same agent. :class:`ActingAgents`
answers that for any credential with one lineage read and one event read per delegated root,
cached for the lifetime of one answer (an API request).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.ledger.events import CredentialRecord
    from broker.ledger.store import Ledger

#: a lineage deeper than this is not walked (policies allow at most 10 levels)
MAX_LINEAGE = 32


class ActingAgents:
    """``act`` (``{"sub", "iss", "run"}``) of credentials, or None when no agent acted for a
    person."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._by_root: dict[str, dict[str, Any] | None] = {}
        self._by_credential: dict[str, dict[str, Any] | None] = {}

    def of(self, credential_id: str | None) -> dict[str, Any] | None:
        if not credential_id:
            return None
        if credential_id not in self._by_credential:
            self._by_credential[credential_id] = self._find(credential_id)
        return self._by_credential[credential_id]

    def of_record(self, record: CredentialRecord) -> dict[str, Any] | None:
        if not _delegated_somewhere(record.authorizer):
            return None
        return self.of(record.credential_id)

    def _find(self, credential_id: str) -> dict[str, Any] | None:
        lineage = self.ledger.ancestors_of(credential_id, max_depth=MAX_LINEAGE)
        if not lineage or not _delegated_somewhere(lineage[0].authorizer):
            return None
        delegated = next((r for r in lineage if _is_delegation(r.authorizer)), None)
        if delegated is None:
            return None
        key = delegated.credential_id
        if key not in self._by_root:
            mint = next((e for e in self.ledger.events_for_credential(key, limit=5)
                         if e.type == "mint"), None)
            details = mint.details if mint is not None else {}
            agent = details.get("actor")
            self._by_root[key] = None if not isinstance(agent, str) else {
                "sub": agent, "iss": details.get("iss"), "run": delegated.run}
        return self._by_root[key]


def _is_delegation(authorizer: Any) -> bool:
    return isinstance(authorizer, dict) and authorizer.get("type") == "delegation"


def _delegated_somewhere(authorizer: Any) -> bool:
    """The authorizer is a delegation, or wraps one (a derived credential's ``parent_authz``)."""
    depth = 0
    while isinstance(authorizer, dict) and depth <= MAX_LINEAGE:
        if authorizer.get("type") == "delegation":
            return True
        authorizer = authorizer.get("parent_authz")
        depth += 1
    return False
