"""The exchange — the one orchestrator, readable top to bottom.

    0 decide what the subject is: a delegation (an ``actor_token`` came too), a parent
      credential (the broker's own ``iss``), or a workload attestation (everything else)
    1+2 one authorize step per kind, each returning one :class:`~broker.exchange.grant.Grant`:
        :func:`~broker.exchange.attestation.authorize_attestation` (verify, policies, approval),
        :func:`~broker.exchange.parent.authorize_parent` (verify the parent, derive rules),
        :func:`~broker.exchange.delegation.authorize_delegation` (person + agent, grant bounds)
    3 :func:`~broker.exchange.mint.mint`: the target kind's resource, the broker JWT, the record
    4 exactly one ledger event per attempt: the ``mint`` (or ``approval_requested``) a step
      recorded, else one ``deny`` written by the :class:`~broker.exchange.attempt.Attempt` —
      or, when a dependency is down, a count in its ``outage`` (:mod:`broker.exchange.outage`)
    5 retry-safe: a refusal because a dependency is down issued nothing, so the attestation's
      single-use claim is released and the client may retry the same token (``503`` +
      ``Retry-After``); any other refusal keeps it used. The mint's own transaction anchors
      single use in the ledger, whatever the replay store remembers.

The client sees a short reason; the ledger and the log get the detail. Secrets never enter
either: the attempt keeps the SHA-256 of the subject token, never the token.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from broker import errors
from broker.attestation.delegation_token import is_delegation_token
from broker.attestation.parent import is_broker_token
from broker.common.canonical import sha256_hex
from broker.exchange.attempt import Attempt
from broker.exchange.attestation import authorize_attestation
from broker.exchange.delegation import authorize_delegation
from broker.exchange.mint import mint
from broker.exchange.parent import authorize_parent, recheck_parent
from broker.exchange.request import ExchangeRequest, ExchangeResult

if TYPE_CHECKING:
    from broker.app import BrokerContext

#: What the subject of an exchange is, decided from the request alone (never trusted: each
#: kind's authorize step verifies it).
DELEGATION, PARENT, ATTESTATION = "delegation", "parent", "attestation"


def subject_kind(ctx: BrokerContext, request: ExchangeRequest) -> str:
    if request.actor_token is not None:
        return DELEGATION
    if is_broker_token(request.subject_token, ctx.issuer):
        return PARENT
    return ATTESTATION


def exchange(ctx: BrokerContext, request: ExchangeRequest, *, now: float | None = None) -> ExchangeResult:
    """Run the exchange for one request. Raises a :class:`broker.errors.BrokerError` on refusal."""
    moment = time.time() if now is None else now
    attempt = Attempt(ledger=ctx.ledger, token_sha256=sha256_hex(request.subject_token),
                      target=request.target,
                      requested_scope=None if request.scopes is None else " ".join(request.scopes),
                      outages=ctx.outages)
    try:
        result = _run(ctx, request, attempt, moment=moment)
    except errors.BackendUnavailable:
        if attempt.single_use is not None:
            ctx.replay.release(attempt.single_use[0])     # nothing was issued: retry is safe
        raise
    if ctx.outages is not None:
        ctx.outages.succeeded(f"target:{request.target}", "attestation_keys", "authorize")
    return result


def _run(ctx: BrokerContext, request: ExchangeRequest, attempt: Attempt, *,
         moment: float) -> ExchangeResult:
    with attempt:
        if request.approval_id is not None:
            attempt.details["approval_id"] = request.approval_id[:64]
        kind = subject_kind(ctx, request)
        if kind == DELEGATION:
            grant = authorize_delegation(ctx, request, attempt, now=moment)
            return mint(ctx, grant, attempt, now=moment)
        if kind == PARENT:
            if is_delegation_token(request.subject_token):
                raise errors.GrantRefused("a delegation token is only accepted with an actor_token",
                                          detail="delegation token without actor_token")
            grant, parent = authorize_parent(ctx, request, attempt, now=moment)
            result = mint(ctx, grant, attempt, now=moment)
            recheck_parent(ctx, parent, result, now=moment)
            return result
        grant = authorize_attestation(ctx, request, attempt, now=moment)
        return mint(ctx, grant, attempt, now=moment)
    raise AssertionError("unreachable")     # the with block returns or raises
