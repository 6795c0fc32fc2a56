"""People's API: approvals and delegations, authenticated by the person's ID token.

``Authorization: Bearer <ID token>`` from the ``kind: human-idp`` provider, verified on every
call (:func:`broker.attestation.person.verify_id_token`: the IdP's JWKS, ``alg`` allowlist, ``iss``,
``aud`` = the human-idp's ``audience`` or else its client id, ``exp``). A missing, expired,
forged or foreign token is ``401 invalid_token`` (RFC 6750); a signed-in person without the
right is ``403 access_denied``.

    GET  /v1/approvals?status=pending          requests you are an approver of
    GET  /v1/approvals/<id>                    one request
    POST /v1/approvals/<id>/approve            reason=… (optional)
    POST /v1/approvals/<id>/deny               reason=… (required)
    POST /v1/delegations                       agent=, target= (space-separated), scope=, ttl=
    GET  /v1/delegations                       your delegations
    POST /v1/delegations/<id>/revoke           you (Bearer), or a client that may revoke (Basic)
"""
from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, request
from werkzeug.datastructures import MultiDict

from broker import errors
from broker.attestation.person import HumanTokenRefused, Person, may_approve, verify_id_token
from broker.common.durations import parse_duration
from broker.http.api.common import authenticate_client, broker_context, form_params, single
from broker.people import approvals
from broker.people import delegations as delegation

bp = Blueprint("people_api", __name__)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_STATUSES = ("pending", "approved", "denied", "consumed", "expired", "all")


def _invalid_token(description: str, *, detail: str | None = None) -> errors.PersonTokenInvalid:
    err = errors.PersonTokenInvalid(description, detail=detail)
    return err


def authenticate_person() -> Person:
    """The person whose ID token is the bearer of this request (see the module docstring)."""
    ctx = broker_context()
    idp = ctx.policy_set.human_idp
    if idp is None:
        raise errors.NotFound("approvals and delegations need a human-idp")
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise _invalid_token("a person's ID token is required (Authorization: Bearer)")
    try:
        person, _claims = verify_id_token(value.strip(), idp=idp, jwks=ctx.jwks)
    except HumanTokenRefused as exc:
        raise _invalid_token("the ID token is not acceptable", detail=exc.detail) from None
    return person


def _optional_form() -> Any:
    """The form body, which may be empty (``approve`` without a reason)."""
    if not request.content_length and not request.args:
        return MultiDict()
    return form_params()


@bp.get("/v1/approvals")
def list_approvals() -> tuple[dict[str, Any], int, dict[str, str]]:
    person = authenticate_person()
    status = request.args.get("status", "pending")
    if status not in _STATUSES:
        raise errors.RequestMalformed(f"status must be one of {', '.join(_STATUSES)}")
    ctx = broker_context()
    now = time.time()
    records = ctx.people.list_approvals(status=None if status == "all" else status,
                                now=int(now), pickup_window=approvals.PICKUP_WINDOW, limit=200)
    rules = {p.name: p.approval for p in ctx.policy_set.policies if p.approval is not None}
    mine = [r for r in records if rules.get(r.policy_name) is not None
            and may_approve(rules[r.policy_name], person)]
    return ({"approvals": [approvals.approval_json(ctx, r, now=now, person=person) for r in mine]},
            200, NO_STORE)


@bp.get("/v1/approvals/<approval_id>")
def get_approval(approval_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    person = authenticate_person()
    ctx = broker_context()
    record = ctx.people.get_approval(approval_id) \
        if approvals.is_approval_id(approval_id) else None
    if record is None:
        raise errors.NotFound("no such approval")
    return approvals.approval_json(ctx, record, person=person), 200, NO_STORE


def _decide(approval_id: str, *, approve: bool) -> tuple[dict[str, Any], int, dict[str, str]]:
    person = authenticate_person()
    params = _optional_form()
    reason = single(params, "reason", required=not approve)
    ctx = broker_context()
    record = approvals.decide(ctx, approval_id, person, approve=approve, reason=reason, via="api")
    return approvals.approval_json(ctx, record, person=person), 200, NO_STORE


@bp.post("/v1/approvals/<approval_id>/approve")
def approve(approval_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    return _decide(approval_id, approve=True)


@bp.post("/v1/approvals/<approval_id>/deny")
def deny(approval_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    return _decide(approval_id, approve=False)


@bp.post("/v1/delegations")
def create_delegation() -> tuple[dict[str, Any], int, dict[str, str]]:
    person = authenticate_person()
    params = form_params()
    agent = single(params, "agent")
    targets = (single(params, "target") or "").split()
    scopes = (single(params, "scope", required=False) or "").split()
    try:
        ttl = parse_duration(single(params, "ttl"))
    except ValueError:
        raise errors.RequestMalformed("ttl must be a duration such as 300, 90s, 5m or 1h") from None
    record, token = delegation.grant_delegation(broker_context(), person, agent=agent or "",
                                                targets=targets, scopes=scopes, ttl=ttl, via="api")
    body = {**delegation.delegation_json(record), "delegation_token": token,
            "expires_in": record.expires_at - record.created_at}
    return body, 201, NO_STORE


@bp.get("/v1/delegations")
def list_delegations() -> tuple[dict[str, Any], int, dict[str, str]]:
    person = authenticate_person()
    ctx = broker_context()
    records = ctx.people.list_delegations(granted_by=person.email, limit=200)
    return {"delegations": [delegation.delegation_json(r) for r in records]}, 200, NO_STORE


@bp.post("/v1/delegations/<delegation_id>/revoke")
def revoke_delegation(delegation_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    ctx = broker_context()
    if request.headers.get("Authorization", "").lower().startswith("basic "):
        client = authenticate_client(permission="revoke")
        by: dict[str, Any] = {"client": client.name}
        person = None
    else:
        person = authenticate_person()
        by = {"person": person.email}
    record = ctx.people.get_delegation(delegation_id) \
        if delegation.is_delegation_id(delegation_id) else None
    if record is None:
        raise errors.NotFound("no such delegation")
    if person is not None and record.granted_by != person.email:
        raise errors.PermissionDenied("only the person who granted a delegation may revoke it",
                                  detail=f"{person.email} may not revoke {delegation_id}")
    revoked = delegation.revoke_delegation(ctx, record, by=by)
    updated = ctx.people.get_delegation(delegation_id)
    return {**delegation.delegation_json(updated or record), "credentials_revoked": revoked}, 200, NO_STORE
