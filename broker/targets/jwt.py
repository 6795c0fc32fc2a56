"""Target kind ``jwt``: the broker-signed token is the whole credential.

The relying service verifies it against the broker's JWKS and checks ``aud``; revocation is
visible through introspection (RFC 7662). Nothing exists at a resource, so nothing to undo,
reap or reconcile, and no keys beyond the common ones.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from broker.targets.base import IssuedCredential, IssueRequest, TargetKind
from broker.targets.keys import TargetSchema

if TYPE_CHECKING:
    from broker.ledger.events import CredentialRecord


class JWTKind(TargetKind):
    name = "jwt"
    policy_keys = TargetSchema("jwt")

    def issue(self, request: IssueRequest) -> IssuedCredential:
        return IssuedCredential()

    def revoke(self, record: CredentialRecord) -> None:
        return None


JWTIssuer = JWTKind          # the old name
