"""Authorize step for a delegation: an agent (``actor_token``, its own attestation) acts for a
person (``subject_token``: a delegation token from the person's grant, or the person's own ID
token when a policy allows it). The credential names the person (``sub``) and the agent
(``act.sub``); a mint under a grant is guarded by the grant being live at commit.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from broker import errors
from broker.attestation.delegation_token import DelegationRefused, verify_delegation_token
from broker.attestation.parent import is_broker_token
from broker.attestation.person import HumanTokenRefused, Person, verify_id_token
from broker.exchange.attempt import Attempt
from broker.exchange.attestation import attestation_claim, refuse_unless_allowed, verify_workload
from broker.exchange.grant import Grant
from broker.exchange.request import ACTOR_TOKEN_TYPES, ExchangeRequest
from broker.ledger.rows import Statement
from broker.people.store import DelegationRecord
from broker.policy import evaluate_delegation

if TYPE_CHECKING:
    from broker.app import BrokerContext
    from broker.policy.model import HumanIdP


def authorize_delegation(ctx: BrokerContext, request: ExchangeRequest, attempt: Attempt, *,
                         now: float) -> Grant:
    attempt.details["delegation"] = True
    idp = ctx.policy_set.human_idp
    if idp is None:
        raise errors.RequestMalformed("actor_token is not accepted: no human-idp is configured",
                                      detail="actor_token without a human-idp")
    if request.approval_id is not None:
        raise errors.RequestMalformed("approval_id is not accepted with an actor_token")
    # 1a. the subject: a person, through a delegation grant or their own ID token
    person, via, grant, subject_expires = _verify_subject(ctx, request, attempt, idp, now=now)
    attempt.principal = person.email
    attempt.details.update({"subject_via": via, "subject_token_sha256": attempt.token_sha256})

    # 1b. the actor: the agent's own attestation (replay-guarded like any attestation)
    if request.actor_token_type not in ACTOR_TOKEN_TYPES or request.actor_token is None:
        raise errors.RequestMalformed("actor_token_type must be urn:ietf:params:oauth:token-type:jwt "
                                      "or urn:ietf:params:oauth:token-type:id_token")
    actor = verify_workload(ctx, request.actor_token, attempt, now=now, role="actor")
    attempt.run = actor.run
    attempt.details.update({"actor": actor.principal, "actor_issuer": actor.issuer.name,
                            "actor_attestation_sha256": actor.token_sha256})

    # 2a. the grant's bounds
    requested_scopes = _within_grant(grant, actor.principal, request)
    # 2b. the policies: the person on one side, the agent on the other (may_act)
    decision = evaluate_delegation(ctx.policy_set, person=person.claims(), via=via,
                                   actor_issuer=actor.issuer, actor_claims=actor.claims,
                                   target_name=request.target, requested_scopes=requested_scopes,
                                   requested_ttl=request.ttl)
    refuse_unless_allowed(decision)
    assert decision.policy is not None and decision.target is not None
    remaining = subject_expires - int(now)
    if remaining <= 0:
        raise errors.GrantRefused("the delegation has expired", detail="subject expired")
    authorizer = {"type": "delegation",
                  "grant_id": grant.delegation_id if grant is not None else None,
                  "granted_by": person.email, "via": via,
                  "policy": {"name": decision.policy.name, "digest": decision.policy.digest}}
    attempt.authorizer = authorizer
    attempt.details["policy"] = decision.policy.name

    # 3. the mint is guarded by the grant being live, and linked to it
    guard_for, extra_for = _grant_guards(ctx, grant, now=now)
    return Grant(
        principal=person.email, run=actor.run, attestation=attestation_claim(actor),
        issuer_name=actor.issuer.name, target=decision.target, scopes=decision.scopes,
        ttl=min(decision.ttl, remaining), authorizer=authorizer, policy_name=decision.policy.name,
        act={"sub": actor.principal, "iss": actor.issuer.issuer},
        details={"delegation_id": authorizer["grant_id"], "actor": actor.principal,
                 "subject_via": via, "subject_token_sha256": attempt.token_sha256},
        guard_for=guard_for, extra_for=extra_for, guard_refusal="the delegation was revoked")


def _verify_subject(ctx: BrokerContext, request: ExchangeRequest, attempt: Attempt, idp: HumanIdP, *,
                    now: float) -> tuple[Person, str, DelegationRecord | None, int]:
    """The person: ``(person, via, grant, subject_expires)``, ``grant`` None for an ID token."""
    if is_broker_token(request.subject_token, ctx.issuer):
        try:
            grant = verify_delegation_token(ctx, request.subject_token, now=now)
        except DelegationRefused as refusal:
            if refusal.delegation_id:
                attempt.details["delegation_id"] = refusal.delegation_id
            raise
        person = Person.from_record(dict(grant.details.get("person") or {}))
        attempt.details["delegation_id"] = grant.delegation_id
        return person, "delegation", grant, grant.expires_at
    try:
        person, id_claims = verify_id_token(request.subject_token, idp=idp, jwks=ctx.jwks,
                                            now=now)
    except HumanTokenRefused as refusal:
        raise errors.GrantRefused("subject_token is not acceptable",
                                  detail=f"person's ID token: {refusal.detail}") from None
    return person, "id_token", None, int(id_claims["exp"])


def _within_grant(grant: DelegationRecord | None, actor_principal: str,
                  request: ExchangeRequest) -> tuple[str, ...] | None:
    """The scopes to ask the policies for, refused unless the grant (if any) covers the agent,
    the target and the scopes; without requested scopes, the grant's."""
    requested_scopes = request.scopes
    if grant is None:
        return requested_scopes
    if actor_principal != grant.agent:
        raise errors.GrantRefused("the delegation was not granted to this agent",
                                  detail=f"delegation {grant.delegation_id} is for another agent")
    if request.target not in grant.targets:
        raise errors.TargetRefused("the delegation does not cover this target",
                                   detail=f"delegation {grant.delegation_id} does not list "
                                          f"target {request.target[:120]!r}")
    if requested_scopes is None:
        return tuple(grant.scopes)
    if not set(requested_scopes) <= set(grant.scopes):
        wider = " ".join(sorted(set(requested_scopes) - set(grant.scopes)))
        raise errors.ScopeRefused("requested scope is not allowed",
                                  detail=f"scopes {wider[:120]!r} are wider than delegation "
                                         f"{grant.delegation_id}")
    return requested_scopes


def _grant_guards(ctx: BrokerContext, grant: DelegationRecord | None, *, now: float
                  ) -> tuple[Callable[[str], Statement] | None, Callable[[str], Sequence[Statement]] | None]:
    """Under a grant, the mint is guarded by the grant being live, and linked to it."""
    if grant is None:
        return None, None
    grant_id = grant.delegation_id

    def use(credential_id: str) -> Statement:
        return ctx.people.delegation_use_guard(grant_id, now=int(now))

    def link(credential_id: str) -> Sequence[Statement]:
        return (ctx.people.delegation_link(grant_id, credential_id),)
    return use, link
