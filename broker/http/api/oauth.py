"""``POST /introspect`` (RFC 7662) and ``POST /revoke`` (RFC 7009), for authenticated clients.

Both record one ledger event per call: who asked, about which credential, with what result.

Fan-out: a credential is active only while it and every ancestor are live; revoking a
credential revokes its descendants (:mod:`broker.lifecycle.revocation`), each with its own ``revoke``
event naming the cause. An introspection that finds the credential active also records a
``usage`` event of that credential naming the calling client (the service it was presented
to), after the ``introspect`` event. ``/revoke`` without an ``Authorization`` header is the
token holder revoking its own credential (RFC 7009 §2.1 lets the holder do so): the token
authenticates itself, ``credential_id=`` is not accepted, and a token that is not ours is
``invalid_client``.

A refused call (400, 401, 403: no credentials, a wrong secret, a missing permission, a
malformed request) is recorded too: one ``introspect`` or ``revoke`` event with
``result: refused``, the error, the reason, the client name the caller presented (not
authenticated, bounded) and its address. Refused authentications count against the address
(:class:`broker.http.ratelimit.FailureLimiter`): over the limit the caller gets ``429`` and no
event, so a flood can neither guess a secret quickly nor grow the ledger.
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, request

from broker import errors
from broker.common.canonical import sha256_hex
from broker.common.ids import is_credential_id
from broker.common.untrusted import clip
from broker.exchange.mint import token_client_id
from broker.http.api.common import (
    _invalid_client,
    authenticate_client,
    broker_context,
    client_address,
    form_params,
    presented_client_name,
    single,
)
from broker.http.errors import status_of
from broker.keys import TokenNotOurs
from broker.ledger import LedgerUnavailable
from broker.ledger.events import CredentialRecord, EventDraft
from broker.lifecycle.liveness import credential_liveness
from broker.lifecycle.revocation import revoke_descendants, revoke_one

bp = Blueprint("oauth", __name__)
log = logging.getLogger("broker.http.api")

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

View = TypeVar("View", bound=Callable[..., Any])


def records_refusals(event_type: str) -> Callable[[View], View]:
    """Record one ``event_type`` event for every call the view refuses with a 4xx (the view
    records its own event only for calls it answers)."""
    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return view(*args, **kwargs)
            except errors.BrokerError as refusal:
                status = status_of(refusal)
                if status in (400, 401, 403):
                    _record_refusal(event_type, refusal, status)
                raise
        return wrapper  # type: ignore[return-value]
    return decorate


def _record_refusal(event_type: str, refusal: errors.BrokerError, status: int) -> None:
    details: dict[str, Any] = {
        "result": "refused", "status": status, "error": refusal.error,
        "reason_code": refusal.reason, "reason": clip(refusal.detail, 256),
        "client_addr": client_address(),
    }
    name = presented_client_name()
    if name is not None:
        details["client"] = name
        details["client_authenticated"] = not isinstance(refusal, errors.ClientUnauthenticated)
    try:
        broker_context().ledger.append(EventDraft(type=event_type, details=details))
    except LedgerUnavailable:
        log.error("ledger unavailable: a refused %s could not be recorded", event_type)



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
@records_refusals("introspect")
def introspect() -> tuple[dict[str, Any], int, dict[str, str]]:
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
        verdict = credential_liveness(ctx.ledger, str(claims.get("jti")), now=now)
        record = verdict.record
        if not verdict.live:
            details["reason"] = verdict.describe()
    active = record is not None and "reason" not in details
    details["active"] = active
    ctx.ledger.append(_event_from(record, claims, type="introspect", details=details))
    if active:
        ctx.ledger.append(_event_from(record, claims, type="usage", details={
            "source": "introspect", "kind": "introspect", "client": client.name}))
    if not active:
        return {"active": False}, 200, NO_STORE
    assert claims is not None and record is not None
    body: dict[str, Any] = {
        "active": True,
        "token_type": "Bearer",
        # RFC 7662 §2.2 / RFC 9068: the workload that made the exchange (tokens minted before
        # the claim existed get the same value: act.sub, else sub)
        "client_id": str(claims.get("client_id") or token_client_id(str(claims.get("sub")),
                                                                     claims.get("act"))),
        "credential_id": record.credential_id,
        "parent_id": record.parent_id,
        **{k: claims[k] for k in ("iss", "sub", "aud", "exp", "iat", "nbf", "jti", "scope",
                                  "target", "run", "authz", "attestation", "act") if k in claims},
    }
    return body, 200, NO_STORE


def revoke_credential(record: CredentialRecord, *, cause: dict[str, Any]) -> bool:
    """End a credential at its resource and record ``revoke`` (revoked and ended, see
    :func:`broker.lifecycle.revocation.revoke_one`). False if it was already revoked."""
    return revoke_one(broker_context(), record, details=cause)


def _revoke_descendants(record: CredentialRecord, requested_by: dict[str, Any]) -> None:
    """The cascade; 503 (after recording what it could) when some descendant is still live."""
    result = revoke_descendants(broker_context(), record, requested_by=requested_by)
    if result.failed or not result.complete:
        raise errors.BackendUnavailable(
            "some derived credentials could not be revoked yet; try again",
            detail=f"cascade below {record.credential_id}: {len(result.failed)} failed, "
                   f"complete={result.complete}")


def _self_revoke() -> tuple[str, int, dict[str, str]]:
    """The holder revokes its own credential: the token is its own authentication."""
    params = form_params()
    token = single(params, "token", required=False)
    if token is None or single(params, "credential_id", required=False) is not None:
        raise _invalid_client("client authentication required (or send only token=, to revoke "
                              "your own credential)")
    ctx = broker_context()
    try:
        claims = ctx.signer.verify(token, verify_exp=False)
    except TokenNotOurs:
        raise _invalid_client("client authentication required") from None
    details: dict[str, Any] = {"holder": True, "token_sha256": sha256_hex(token)}
    record = ctx.ledger.get_credential(str(claims.get("jti")))
    if record is not None and record.revoked_at is None and \
            revoke_credential(record, cause={**details, "cause": "holder request"}):
        _revoke_descendants(record, {"holder": True})
        return "", 200, NO_STORE
    details["result"] = "unknown_credential" if record is None else "already_revoked"
    ctx.ledger.append(_event_from(record, claims, type="revoke", details=details))
    if record is not None:
        _revoke_descendants(record, {"holder": True})
    return "", 200, NO_STORE


@bp.post("/revoke")
@records_refusals("revoke")
def revoke() -> tuple[str, int, dict[str, str]]:
    if "Authorization" not in request.headers:
        return _self_revoke()
    client = authenticate_client(permission="revoke")
    params = form_params()
    token = single(params, "token", required=False)
    credential_id = single(params, "credential_id", required=False)
    if (token is None) == (credential_id is None):
        raise errors.RequestMalformed("send exactly one of token or credential_id")
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
        raise errors.RequestMalformed("credential_id is malformed")
    record = ctx.ledger.get_credential(credential_id) if credential_id else None
    if record is not None and record.revoked_at is None:
        if revoke_credential(record, cause={"client": client.name, "cause": "client request"}):
            _revoke_descendants(record, {"client": client.name})
            return "", 200, NO_STORE
        details["result"] = "already_revoked"
    elif record is not None:
        details["result"] = "already_revoked"
    else:
        details["result"] = "unknown_credential"
        if credential_id and "reason" not in details:
            details["credential_id_requested"] = credential_id
    # RFC 7009 §2.2: the answer is 200 whether or not there was anything to revoke.
    ctx.ledger.append(_event_from(record, claims, type="revoke", details=details))
    if record is not None:          # finish a cascade that an earlier failure interrupted
        _revoke_descendants(record, {"client": client.name})
    return "", 200, NO_STORE
