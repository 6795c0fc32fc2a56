"""Authorize step for a parent credential (fan-out): the subject token is a credential this
broker issued; the child it buys is planned by the ``derive`` rules (:mod:`broker.exchange.derive`).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from broker import errors
from broker.attestation.parent import Parent, ParentRefused, verify_parent
from broker.exchange import derive
from broker.exchange.attempt import Attempt
from broker.exchange.grant import Grant
from broker.exchange.request import ExchangeRequest, ExchangeResult
from broker.lifecycle import liveness
from broker.lifecycle.revocation import revoke_descendants, revoke_one

if TYPE_CHECKING:
    from broker.app import BrokerContext

log = logging.getLogger("broker.exchange")


def authorize_parent(ctx: BrokerContext, request: ExchangeRequest, attempt: Attempt, *,
                     now: float) -> tuple[Grant, Parent]:
    """The grant a live parent credential's derive rules allow, and the verified parent."""
    attempt.details["derive"] = True
    # 1. verify the parent: our signature, then the ledger (exists, live by the one rule).
    # First, so that every derive attempt, also one refused for its other parameters, names
    # the parent it presented.
    try:
        parent = verify_parent(request.subject_token, signer=ctx.signer, ledger=ctx.ledger,
                               now=now)
    except ParentRefused as refusal:
        attempt.parent_id = refusal.parent_id
        attempt.details["parent_verified"] = refusal.parent_verified
        if refusal.record is not None:
            attempt.principal, attempt.run = refusal.record.principal, refusal.record.run
        raise
    record = parent.record
    attempt.parent_id = record.credential_id
    attempt.principal, attempt.run = record.principal, record.run
    attempt.details.update({"parent_verified": True, "parent_target": record.target,
                            "depth": parent.depth + 1})
    if request.approval_id is not None:
        raise errors.RequestMalformed("approval_id is not accepted when deriving",
                                      detail="approval_id sent with a parent credential")

    # 2. the derive rules of the policy that authorized the chain
    plan = derive.plan_child(ctx.policy_set, parent, target_name=request.target,
                             requested_scopes=request.scopes, requested_ttl=request.ttl, now=now)
    attempt.authorizer = plan.authorizer
    attempt.details["policy"] = plan.policy.name
    attestation = parent.claims.get("attestation")
    grant = Grant(principal=record.principal, run=record.run,
                  attestation=attestation if isinstance(attestation, dict) else {},
                  issuer_name=record.issuer or "", target=plan.target, scopes=plan.scopes,
                  ttl=plan.ttl, authorizer=plan.authorizer, policy_name=plan.policy.name,
                  parent_id=record.credential_id, act=plan.act,
                  details={"depth": plan.depth, "root_id": parent.root.credential_id,
                           "derive_rule": plan.rule.target})
    return grant, parent


def recheck_parent(ctx: BrokerContext, parent: Parent, result: ExchangeResult, *,
                   now: float) -> None:
    """After the mint: an ancestor ended while the child was being minted, so a cascade may have
    missed it. Revoke the child (its own ``revoke`` event) and refuse; the ``mint`` stays the
    attempt's one event."""
    record = parent.record
    try:
        verdict = liveness.credential_liveness(ctx.ledger, record.credential_id, now=now,
                                               max_lineage=len(parent.lineage))
    except errors.LedgerUnavailable:
        verdict = liveness.judge(parent.lineage, now=now)
    if verdict.live or verdict.state in (liveness.EXPIRED, liveness.TOO_DEEP):
        return      # expiry during the mint: the child's own expiry never passes the parent's
    try:
        child = ctx.ledger.get_credential(result.credential_id)
        if child is not None:
            revoke_one(ctx, child, details={"cause": "parent revoked",
                                            "root": verdict.culprit,
                                            "parent": record.credential_id})
            revoke_descendants(ctx, child, requested_by={"root": verdict.culprit})
    except errors.BrokerError:
        log.warning("could not revoke child %s of ended ancestor %s", result.credential_id,
                    verdict.culprit)
    raise errors.GrantRefused("the parent credential is revoked",
                              detail="an ancestor was revoked while the child was minted")
