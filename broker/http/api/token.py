"""``POST /token`` — RFC 8693 token exchange. Thin: parse, call the pipeline, render.

Beyond RFC 8693's parameters: ``ttl`` (a shorter lifetime) and ``approval_id`` (a poll of a
human approval, docs/approvals.md). ``actor_token`` (with ``actor_token_type``) makes the
exchange a delegation: an agent acting for a person.
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint

from broker import errors
from broker.common.durations import parse_duration
from broker.exchange.pipeline import exchange
from broker.exchange.request import (
    ACTOR_TOKEN_TYPES,
    GRANT_TYPE_TOKEN_EXCHANGE,
    REQUESTED_TOKEN_TYPES,
    SUBJECT_TOKEN_TYPES,
    ExchangeRequest,
)
from broker.http.api.common import broker_context, form_params, single

bp = Blueprint("token", __name__)

MAX_SCOPES = 64
#: Longest ``scope`` parameter accepted (64 scopes of 15 characters): a request's values are
#: bounded before anything reaches the ledger or a log.
MAX_SCOPE_TEXT = 1024
#: A target name is at most 128 characters (the policy loader's NAME_RE); a longer ``audience``
#: cannot name one.
MAX_TARGET_NAME = 128
MAX_RESOURCE = 2048
#: RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def requested_target(audiences: list[str], resources: list[str]) -> str:
    """The one target an RFC 8693 request names, by ``audience`` (a target's name) and/or
    ``resource`` (a target's URI: its ``audience``, the ``aud`` of the tokens minted for it).

    ``resource`` alone selects the target whose URI it is; ``audience`` and ``resource``
    together must name the same target; several ``audience`` values, or values naming several
    targets, an unknown ``resource`` or one that is not an absolute URI are ``invalid_target``
    (RFC 8693 §2.2.2, RFC 8707 §2). An ``audience`` that is a well-formed name of no target is
    refused later, by the policy, with a ``deny`` event.
    """
    audiences = [a for a in audiences if a != ""]
    resources = [r for r in resources if r != ""]
    if len(audiences) > 1:
        raise errors.TargetRefused("only one audience (target) per request",
                                   detail=f"{len(audiences)} audience values")
    named: set[str] = set()
    if audiences:
        audience = audiences[0]
        if len(audience) > MAX_TARGET_NAME or not _TARGET_NAME.fullmatch(audience):
            raise errors.TargetRefused(detail="audience is not a target name")
        named.add(audience)
    if resources:
        targets = broker_context().policy_set.targets
        by_uri = {t.audience: t.name for t in targets.values()}
        for resource in resources:
            if len(resource) > MAX_RESOURCE or not _absolute_uri(resource):
                raise errors.TargetRefused("resource must be an absolute URI without a fragment",
                                           detail="resource is not an absolute URI")
            name = by_uri.get(resource)
            if name is None:
                raise errors.TargetRefused(detail="resource names no target")
            named.add(name)
    if not named:
        raise errors.RequestMalformed("parameter audience (the target name) or resource "
                                      "(the target's URI) is required")
    if len(named) > 1:
        raise errors.TargetRefused("audience and resource name different targets",
                                   detail="the request names several targets")
    return named.pop()


def _absolute_uri(value: str) -> bool:
    if not value.isascii() or any(c.isspace() or ord(c) < 0x21 or c == "\x7f" for c in value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:          # e.g. "http://[::1": an unclosed IPv6 literal
        return False
    return bool(parts.scheme) and bool(parts.netloc or parts.path) and "#" not in value


def requested_scopes(raw_scope: str | None) -> tuple[str, ...] | None:
    """The ``scope`` parameter as scope tokens (RFC 6749 §3.3); bounded in size."""
    if raw_scope is None:
        return None
    if len(raw_scope) > MAX_SCOPE_TEXT:
        raise errors.ScopeRefused("scope parameter too long")
    scopes = tuple(dict.fromkeys(raw_scope.split(" ")))
    scopes = tuple(s for s in scopes if s != "")
    if not scopes or not all(_SCOPE_TOKEN.fullmatch(s) for s in scopes):
        raise errors.ScopeRefused("scope is malformed", detail="scope is not a list of "
                                  "RFC 6749 scope tokens")
    if len(scopes) > MAX_SCOPES:
        raise errors.ScopeRefused("too many scopes requested")
    return scopes


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
    target = requested_target(params.getlist("audience"), params.getlist("resource"))
    scopes = requested_scopes(single(params, "scope", required=False))
    raw_ttl = single(params, "ttl", required=False)
    ttl = None
    if raw_ttl is not None:
        try:
            ttl = parse_duration(raw_ttl)
        except ValueError:
            raise errors.RequestMalformed("ttl must be a duration such as 300, 90s, 5m or 1h") from None
    assert subject_token is not None and subject_token_type is not None
    return ExchangeRequest(subject_token=subject_token, subject_token_type=subject_token_type,
                           target=target, scopes=scopes, ttl=ttl, approval_id=approval_id,
                           actor_token=actor_token, actor_token_type=actor_token_type)


@bp.post("/token")
def token() -> tuple[dict[str, Any], int, dict[str, str]]:
    result = exchange(broker_context(), parse_exchange_request())
    return result.to_response(), 200, {"Cache-Control": "no-store", "Pragma": "no-cache"}
