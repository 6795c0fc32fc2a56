"""Credential issuers, one module per target kind, registered by kind."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from broker.issuers.base import CredentialIssuer, IssuedCredential, IssueRequest
from broker.issuers.jwt import JWTIssuer

# kind -> factory(config) building the issuer once in create_app.
ISSUER_FACTORIES: dict[str, Callable[[Mapping[str, Any]], CredentialIssuer]] = {
    "jwt": lambda config: JWTIssuer(),
}


def build_issuers(config: Mapping[str, Any]) -> dict[str, CredentialIssuer]:
    return {kind: factory(config) for kind, factory in ISSUER_FACTORIES.items()}


__all__ = ["CredentialIssuer", "IssuedCredential", "IssueRequest", "ISSUER_FACTORIES", "build_issuers"]
