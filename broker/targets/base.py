"""The one small protocol every credential kind implements.

The exchange always mints the broker-signed JWT (the credential's identity, ``jti`` = credential
id). A target kind adds whatever the resource itself needs: nothing for ``jwt``; a database role
and its password for ``postgres``; a Vault lease for ``vault-database``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker.ledger.events import CredentialRecord
from broker.policy.model import Target


@dataclass(frozen=True)
class IssueRequest:
    credential_id: str
    target: Target
    principal: str
    run: dict[str, Any]
    authorizer: dict[str, Any]
    scopes: tuple[str, ...]
    issued_at: int
    expires_at: int
    parent_id: str | None = None


@dataclass
class IssuedCredential:
    """What a kind minted.

    ``secret`` goes to the client only (never the ledger, a log or an error). ``details`` are
    non-secret facts recorded in the ledger (role name, lease id). ``undo`` removes what was made
    if the mint cannot be recorded: no credential exists without its ledger event.
    """
    secret: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    undo: Callable[[], None] | None = None


class CredentialIssuer(Protocol):
    kind: str

    def issue(self, request: IssueRequest) -> IssuedCredential: ...

    def revoke(self, record: CredentialRecord) -> None:
        """End the credential's access at the resource (idempotent)."""
