"""Credential issuers, one module per target kind, registered by kind."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from broker.targets.base import CredentialIssuer, IssuedCredential, IssueRequest
from broker.targets.jwt import JWTIssuer
from broker.targets.postgres import build_postgres_issuer   # also registers `type: postgres`
from broker.targets.vault_database import build_vault_database_issuer   # `type: vault-database`

# kind -> factory(config) building the issuer once in create_app.
ISSUER_FACTORIES: dict[str, Callable[[Mapping[str, Any]], CredentialIssuer]] = {
    "jwt": lambda config: JWTIssuer(),
    "postgres": build_postgres_issuer,
    "vault-database": build_vault_database_issuer,
}


def build_issuers(config: Mapping[str, Any], *, policy_set: Any = None) -> dict[str, CredentialIssuer]:
    """One issuer per kind. An issuer with ``attach_policy_set(policy_set)`` is told the
    loaded targets (a kind that reaches a resource needs them to revoke and reap)."""
    issuers = {kind: factory(config) for kind, factory in ISSUER_FACTORIES.items()}
    if policy_set is not None:
        for issuer in issuers.values():
            attach = getattr(issuer, "attach_policy_set", None)
            if attach is not None:
                attach(policy_set)
    return issuers


__all__ = ["CredentialIssuer", "IssuedCredential", "IssueRequest", "ISSUER_FACTORIES", "build_issuers"]
