"""``POST /introspect`` (RFC 7662) and ``POST /revoke`` (RFC 7009), for authenticated clients.

Both record one ledger event per call: who asked, about which credential, with what result.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint

from broker import errors
from broker.api.common import authenticate_client, broker_context, form_params, single
from broker.canonical import sha256_hex
from broker.ids import is_credential_id
from broker.ledger import LedgerUnavailable
from broker.ledger.events import CredentialRecord, EventDraft
from broker.signing import TokenNotOurs

bp = Blueprint("oauth", __name__)
log = logging.getLogger("broker.api")

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _ledger_call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except LedgerUnavailable as exc:
        raise errors.TemporarilyUnavailable("the ledger is unavailable",
                                            detail="ledger unavailable") from exc


def _event_from(record: CredentialRecord | None, claims: dict[str, Any] | None, *, type: str,
                details: dict[str, Any]) -> EventDraft:
    if record is not None:
        return EventDraft(type=type, credential_id=record.credential_id, parent_id=record.parent_id,
                          principal=record.principal, run=record.run, authorizer=record.authorizer,
                          target=record.target, details=details)
    if claims is not None:
        return EventDraft(type=type, credential_id=str(claims.get("jti")), principal=str(claims.get("sub")),
                          details=details)
    return EventDraft(type=type, details=details)


@bp.post("/introspect")
def introspect() -> tuple[dict, int, dict]:
    client = authenticate_client(permission="introspect")
    params = form_params()
    token = single(params, "token")
    assert token is not None
    ctx = broker_context()
    now = int(time.time())
    details: dict[str, Any] = {"client": client.name, "token_sha256": sha256_hex(token)}
    try:
        claims: dict[str, Any] | None = ctx.signer.verify(token)
    except TokenNotOurs as exc:
        claims, details["reason"] = None, f"not a valid broker token ({exc})"
    record = None
    if claims is not None:
        record = _ledger_call(ctx.ledger.get_credential, str(claims.get("jti")))
        if record is None:
            details["reason"] = "credential not in the ledger"
        elif record.revoked_at is not None:
            details["reason"] = "revoked"
        elif record.ended_at is not None:
            details["reason"] = "ended"
        elif record.expires_at <= now:
            details["reason"] = "expired"
    active = record is not None and "reason" not in details
    details["active"] = active
    _ledger_call(ctx.ledger.append, _event_from(record, claims, type="introspect", details=details))
    if not active:
        return {"active": False}, 200, NO_STORE
    assert claims is not None and record is not None
    body = {
        "active": True,
        "token_type": "Bearer",
        "credential_id": record.credential_id,
        "parent_id": record.parent_id,
        **{k: claims[k] for k in ("iss", "sub", "aud", "exp", "iat", "nbf", "jti", "scope",
                                  "target", "run", "authz", "attestation", "act") if k in claims},
    }
    return body, 200, NO_STORE


def revoke_credential(record: CredentialRecord, *, cause: dict[str, Any]) -> bool:
    """End a credential at its resource and record ``revoke``. False if it was already revoked."""
    ctx = broker_context()
    kind = ctx.issuers.get(record.target_type)
    if kind is not None:
        try:
            kind.revoke(record)
        except errors.BrokerError:
            raise
        except Exception as exc:
            log.exception("revocation at the resource failed (credential_id=%s)", record.credential_id)
            raise errors.TemporarilyUnavailable(
                "the credential's backend is unavailable; try again",
                detail=f"revoke failed at backend: {type(exc).__name__}") from exc
    event = _event_from(record, None, type="revoke", details={"result": "revoked", **cause})
    return _ledger_call(ctx.ledger.record_revoke, record.credential_id, event,
                        revoked_at=int(time.time())) is not None


@bp.post("/revoke")
def revoke() -> tuple[str, int, dict]:
    client = authenticate_client(permission="revoke")
    params = form_params()
    token = single(params, "token", required=False)
    credential_id = single(params, "credential_id", required=False)
    if (token is None) == (credential_id is None):
        raise errors.InvalidRequest("send exactly one of token or credential_id")
    ctx = broker_context()
    details: dict[str, Any] = {"client": client.name}
    claims: dict[str, Any] | None = None
    if token is not None:
        details["token_sha256"] = sha256_hex(token)
        try:
            claims = ctx.signer.verify(token, verify_exp=False)
            credential_id = str(claims.get("jti"))
        except TokenNotOurs as exc:
            credential_id = None
            details["reason"] = f"not a valid broker token ({exc})"
    elif credential_id is not None and not is_credential_id(credential_id):
        raise errors.InvalidRequest("credential_id is malformed")
    record = _ledger_call(ctx.ledger.get_credential, credential_id) if credential_id else None
    if record is not None and record.revoked_at is None:
        if revoke_credential(record, cause={"client": client.name, "cause": "client request"}):
            return "", 200, NO_STORE
        details["result"] = "already_revoked"
    elif record is not None:
        details["result"] = "already_revoked"
    else:
        details["result"] = "unknown_credential"
        if credential_id and "reason" not in details:
            details["credential_id_requested"] = credential_id
    # RFC 7009 §2.2: the answer is 200 whether or not there was anything to revoke.
    _ledger_call(ctx.ledger.append, _event_from(record, claims, type="revoke", details=details))
    return "", 200, NO_STORE
