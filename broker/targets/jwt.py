"""Target kind ``jwt``: the broker-signed token is the whole credential.

The relying service verifies it against the broker's JWKS and checks ``aud``; revocation is
visible through introspection (RFC 7662). Nothing exists at a resource, so nothing to undo.
"""
from __future__ import annotations

from broker.targets.base import IssuedCredential, IssueRequest
from broker.ledger.events import CredentialRecord


class JWTIssuer:
    kind = "jwt"

    def issue(self, request: IssueRequest) -> IssuedCredential:
        return IssuedCredential()

    def revoke(self, record: CredentialRecord) -> None:
        return None
