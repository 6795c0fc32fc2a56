"""Discovery (RFC 8414 / OpenID Connect Discovery 1.0) and the broker's JWKS, plus a health check.

One metadata document answers at both well-known paths; it validates with Authlib's
``AuthorizationServerMetadata`` and ``OpenIDProviderMetadata``. What it says:

* the only grant is RFC 8693 token exchange at the token endpoint; there is no authorization
  endpoint, so ``response_types_supported`` is ``["none"]`` (OAuth 2.0 Multiple Response Type
  Encoding Practices: no credential is ever returned from an authorization endpoint);
* ``id_token_signing_alg_values_supported`` lists the algorithms the broker's keys really sign
  with (``ES256`` file keys, ``EdDSA`` for an Ed25519 Transit key), then ``RS256`` because OpenID
  Discovery §3 requires it. The broker issues no ID tokens; its access tokens are signed only with
  the ``alg`` of a key in its JWKS.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint

from broker.exchange.request import GRANT_TYPE_TOKEN_EXCHANGE
from broker.http.api.common import broker_context
from broker.keys import JWKS_MAX_AGE
from broker.keys.file import ALGORITHM
from broker.ledger import LedgerUnavailable

bp = Blueprint("wellknown", __name__)


def _metadata() -> dict[str, Any]:
    ctx = broker_context()
    base = ctx.issuer
    # What the signer really uses (ES256 for file keys; EdDSA for an Ed25519 Transit key).
    algorithms = sorted({k.get("alg", ALGORITHM) for k in ctx.signer.jwks().get("keys", [])}) or [ALGORITHM]
    id_token_algorithms = [*algorithms, *(["RS256"] if "RS256" not in algorithms else [])]
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
        "id_token_signing_alg_values_supported": id_token_algorithms,
        "response_types_supported": ["none"],
        "subject_types_supported": ["public"],
        "scopes_supported": sorted({s for p in ctx.policy_set.policies for s in (p.scopes or ())}),
    }


@bp.get("/.well-known/openid-configuration")
def openid_configuration() -> tuple[dict[str, Any], int, dict[str, str]]:
    return _metadata(), 200, {"Cache-Control": "public, max-age=300"}


@bp.get("/.well-known/oauth-authorization-server")
def oauth_metadata() -> tuple[dict[str, Any], int, dict[str, str]]:
    return _metadata(), 200, {"Cache-Control": "public, max-age=300"}


@bp.get("/.well-known/jwks.json")
def jwks() -> tuple[dict[str, Any], int, dict[str, str]]:
    return broker_context().signer.jwks(), 200, {"Cache-Control": f"public, max-age={JWKS_MAX_AGE}"}


@bp.get("/healthz")
def healthz() -> tuple[dict[str, Any], int]:
    try:
        seq, _ = broker_context().ledger.head()
    except LedgerUnavailable:
        return {"status": "unavailable", "ledger": "unreachable"}, 503
    return {"status": "ok", "ledger_events": seq}, 200
