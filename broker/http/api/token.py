"""``POST /token`` — RFC 8693 token exchange. Thin: parse, call the pipeline, render.

Beyond RFC 8693's parameters: ``ttl`` (a shorter lifetime) and ``approval_id`` (a poll of a
human approval, docs/approvals.md). ``actor_token`` (with ``actor_token_type``) makes the
exchange a delegation: an agent acting for a person.
"""
from __future__ import annotations

from flask import Blueprint

from broker import errors
from broker.http.api.common import broker_context, form_params, single
from broker.common.durations import parse_duration
from broker.exchange.pipeline import exchange
from broker.exchange.request import (
    ACTOR_TOKEN_TYPES, GRANT_TYPE_TOKEN_EXCHANGE, REQUESTED_TOKEN_TYPES, SUBJECT_TOKEN_TYPES,
    ExchangeRequest,
)

bp = Blueprint("token", __name__)

MAX_SCOPES = 64


def parse_exchange_request() -> ExchangeRequest:
    params = form_params()
    grant_type = single(params, "grant_type")
    if grant_type != GRANT_TYPE_TOKEN_EXCHANGE:
        raise errors.GrantTypeUnsupported("only token exchange (RFC 8693) is supported")
    subject_token = single(params, "subject_token")
    subject_token_type = single(params, "subject_token_type")
    if subject_token_type not in SUBJECT_TOKEN_TYPES:
        raise errors.RequestMalformed("subject_token_type must be urn:ietf:params:oauth:token-type:jwt "
                                    "or urn:ietf:params:oauth:token-type:id_token")
    requested = single(params, "requested_token_type", required=False)
    if requested is not None and requested not in REQUESTED_TOKEN_TYPES:
        raise errors.RequestMalformed("unsupported requested_token_type")
    actor_token = single(params, "actor_token", required=False)
    actor_token_type = single(params, "actor_token_type", required=False)
    if actor_token is not None and actor_token_type not in ACTOR_TOKEN_TYPES:
        # RFC 8693 §2.1: actor_token_type is REQUIRED when actor_token is present
        raise errors.RequestMalformed("actor_token_type must be urn:ietf:params:oauth:token-type:jwt "
                                    "or urn:ietf:params:oauth:token-type:id_token")
    if actor_token is None and actor_token_type is not None:
        raise errors.RequestMalformed("actor_token_type without actor_token")
    approval_id = single(params, "approval_id", required=False)
    if approval_id is not None and (len(approval_id) > 64 or not approval_id.isascii()
                                    or not approval_id.replace("_", "").isalnum()):
        raise errors.RequestMalformed("approval_id is malformed")
    audience = single(params, "audience", required=False)
    resource = single(params, "resource", required=False)
    if audience is None:
        raise errors.RequestMalformed("parameter audience (the target name) is required")
    if resource is not None and resource != audience:
        raise errors.TargetRefused("resource and audience name different targets")
    raw_scope = single(params, "scope", required=False)
    scopes: tuple[str, ...] | None = None
    if raw_scope is not None:
        scopes = tuple(dict.fromkeys(raw_scope.split()))
        if len(scopes) > MAX_SCOPES:
            raise errors.ScopeRefused("too many scopes requested")
    raw_ttl = single(params, "ttl", required=False)
    ttl = None
    if raw_ttl is not None:
        try:
            ttl = parse_duration(raw_ttl)
        except ValueError:
            raise errors.RequestMalformed("ttl must be a duration such as 300, 90s, 5m or 1h") from None
    assert subject_token is not None and subject_token_type is not None
    return ExchangeRequest(subject_token=subject_token, subject_token_type=subject_token_type,
                           target=audience, scopes=scopes, ttl=ttl, approval_id=approval_id,
                           actor_token=actor_token, actor_token_type=actor_token_type)


@bp.post("/token")
def token() -> tuple[dict, int, dict]:
    result = exchange(broker_context(), parse_exchange_request())
    return result.to_response(), 200, {"Cache-Control": "no-store", "Pragma": "no-cache"}
