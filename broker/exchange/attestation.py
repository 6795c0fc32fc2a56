"""Authorize step for a workload attestation (the usual exchange): verify it, evaluate the
policies, and — when the policy says a person must approve — request or collect the approval.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker import errors
from broker.attestation import Attestation, verify_subject_token
from broker.attestation.errors import REPLAYED, AttestationError
from broker.exchange.attempt import Attempt
from broker.exchange.grant import Grant
from broker.exchange.request import ExchangeRequest
from broker.ledger.rows import Statement
from broker.people import approvals
from broker.policy import Decision, evaluate

if TYPE_CHECKING:
    from broker.app import BrokerContext


def authorize_attestation(ctx: BrokerContext, request: ExchangeRequest, attempt: Attempt, *,
                          now: float) -> Grant:
    """The grant an attestation earns, or a refusal. A first request under an ``approval``
    policy records ``approval_requested`` (the attempt's event) and raises ``ApprovalPending``."""
    # 1. verify the attestation
    attestation = verify_workload(ctx, request.subject_token, attempt, now=now,
                                  polling=request.approval_id is not None)
    attempt.principal = attestation.principal
    attempt.run = attestation.run
    attempt.details.update({"issuer": attestation.issuer.name, "iss": attestation.issuer.issuer})

    # 2. evaluate policies
    decision = evaluate(ctx.policy_set, issuer=attestation.issuer, claims=attestation.claims,
                        target_name=request.target, requested_scopes=request.scopes,
                        requested_ttl=request.ttl)
    refuse_unless_allowed(decision)
    assert decision.policy is not None and decision.target is not None
    authorizer = policy_authorizer(decision)
    attempt.authorizer = authorizer
    attempt.details["policy"] = decision.policy.name
    grant = Grant(principal=attestation.principal, run=attestation.run,
                  attestation=attestation_claim(attestation), issuer_name=attestation.issuer.name,
                  target=decision.target, scopes=decision.scopes, ttl=decision.ttl,
                  authorizer=authorizer, policy_name=decision.policy.name)

    # 2b. a person must approve (the policy's `approval`)
    rule = decision.policy.approval
    if rule is None:
        return grant
    if request.approval_id is None:
        record, event = approvals.request_approval(
            ctx, policy=decision.policy, rule=rule, principal=attestation.principal,
            run=attestation.run, issuer=attestation.issuer, target=decision.target.name,
            target_type=decision.target.type, requested_scopes=request.scopes,
            requested_ttl=request.ttl, scopes=decision.scopes, ttl=decision.ttl,
            attestation_sha256=attestation.token_sha256, now=now)
        attempt.recorded_as(event)
        raise approvals.pending_error(ctx, record, first=True)
    approval = approvals.check_poll(
        ctx, approval_id=request.approval_id, policy=decision.policy,
        principal=attestation.principal, run=attestation.run,
        issuer_name=attestation.issuer.name, target=decision.target.name,
        requested_scopes=request.scopes, requested_ttl=request.ttl, now=now)
    human = approvals.human_authorizer(approval)
    attempt.authorizer = human
    approval_id = approval.approval_id

    def consume(credential_id: str) -> Statement:
        return ctx.people.approval_consume_guard(approval_id, credential_id=credential_id,
                                                 now=int(now),
                                                 pickup_window=approvals.PICKUP_WINDOW)
    return Grant(**{**grant.__dict__, "authorizer": human,
                    "details": {"approval_id": request.approval_id},
                    "guard_for": consume, "guard_refusal": "the approval was already used"})


def verify_workload(ctx: BrokerContext, unverified_token: str, attempt: Attempt, *, now: float,
                    polling: bool = False, role: str = "subject") -> Attestation:
    """Verify a workload attestation (signature, claims, single use), noting in the attempt
    what a refused token claimed. ``role`` ``actor`` for an RFC 8693 ``actor_token``."""
    try:
        attestation = verify_subject_token(unverified_token, policy_set=ctx.policy_set,
                                           jwks=ctx.jwks, replay=ctx.replay, now=now)
        attempt.single_use = (attestation.single_use_key, attestation.single_use_until)
        attempt.stage = "authorize"
        return attestation
    except AttestationError as refusal:
        prefix = "" if role == "subject" else "actor_"
        if role != "subject":
            attempt.details["actor_refused"] = True
        if refusal.unverified_issuer:
            attempt.details[f"{prefix}unverified_issuer"] = refusal.unverified_issuer
        if role != "subject":
            raise errors.GrantRefused("actor_token is not acceptable", detail=refusal.detail,
                                      reason=refusal.reason) from refusal
        if polling and refusal.detail == "token replayed":
            raise errors.GrantRefused(f"{REPLAYED}: each poll needs a fresh attestation of the "
                                      "same run", detail=refusal.detail,
                                      reason=refusal.reason) from refusal
        raise
    except errors.BrokerError:
        if role != "subject":
            attempt.details["actor_refused"] = True
        raise


def refuse_unless_allowed(decision: Decision) -> None:
    """Raise the refusal a denied decision stands for."""
    if decision.allowed:
        return
    error_class = decision.error or errors.PolicyDenied
    raise error_class(detail=decision.reason)


def policy_authorizer(decision: Decision) -> dict[str, Any]:
    assert decision.policy is not None
    return {"type": "policy", "name": decision.policy.name, "digest": decision.policy.digest}


def attestation_claim(attestation: Attestation) -> dict[str, Any]:
    """The minted JWT's ``attestation`` claim: who attested, and the SHA-256 of the token."""
    return {"iss": attestation.issuer.issuer, "issuer": attestation.issuer.name,
            "sha256": attestation.token_sha256}
