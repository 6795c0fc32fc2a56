"""Discovery (RFC 8414 / OIDC) and the broker's JWKS, plus a health check."""
from __future__ import annotations

from flask import Blueprint

from broker.http.api.common import broker_context
from broker.exchange.request import GRANT_TYPE_TOKEN_EXCHANGE
from broker.ledger import LedgerUnavailable
from broker.keys.file import ALGORITHM

bp = Blueprint("wellknown", __name__)


def _metadata() -> dict:
    ctx = broker_context()
    base = ctx.issuer
    # What the signer really uses (ES256 for file keys; EdDSA for an Ed25519 Transit key).
    algorithms = sorted({k.get("alg", ALGORITHM) for k in ctx.signer.jwks().get("keys", [])}) or [ALGORITHM]
    return {
        "issuer": base,
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "token_endpoint": f"{base}/token",
        "introspection_endpoint": f"{base}/introspect",
        "revocation_endpoint": f"{base}/revoke",
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
        # "none": the holder revokes its own credential with the token alone (docs/fanout.md)
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
        "id_token_signing_alg_values_supported": algorithms,
        "response_types_supported": [],
        "subject_types_supported": ["public"],
        "scopes_supported": sorted({s for p in ctx.policy_set.policies for s in (p.scopes or ())}),
    }


@bp.get("/.well-known/openid-configuration")
def openid_configuration() -> tuple[dict, int, dict]:
    return _metadata(), 200, {"Cache-Control": "public, max-age=300"}


@bp.get("/.well-known/oauth-authorization-server")
def oauth_metadata() -> tuple[dict, int, dict]:
    return _metadata(), 200, {"Cache-Control": "public, max-age=300"}


@bp.get("/.well-known/jwks.json")
def jwks() -> tuple[dict, int, dict]:
    return broker_context().signer.jwks(), 200, {"Cache-Control": "public, max-age=60"}


@bp.get("/healthz")
def healthz() -> tuple[dict, int]:
    try:
        seq, _ = broker_context().ledger.head()
    except LedgerUnavailable:
        return {"status": "unavailable", "ledger": "unreachable"}, 503
    return {"status": "ok", "ledger_events": seq}, 200
