"""The exchange pipeline — the one place that strings the steps together.

    1 verify the attestation    (broker.attestation: signature, claims, replay)
    2 evaluate policies         (broker.policy: default deny)
    3 issue the credential      (broker.targets[target.type], then the broker-signed JWT)
    4 record exactly one ledger event — ``mint`` or ``deny`` — then answer

The event is drafted before the work starts and written in ``finally``-style handling, so every
attempt that reaches attestation checking leaves one record, success or failure. The client
sees a short reason; the ledger and the log get the detail. Secrets never enter either.

A subject token that claims the broker's own ``iss`` is a *parent* credential (fan-out): steps
1 and 2 become "verify the parent against our keys and the ledger" and "apply the derive rules"
(:mod:`broker.exchange.derive`); steps 3 and 4 are the same, and the ``mint`` or ``deny`` names the
parent in its ``parent_id``.

Human authorizers (docs/approvals.md):

* A policy with ``approval`` does not mint at step 3: the first attempt records an approval
  request — its one event is ``approval_requested`` — and answers ``authorization_pending``
  (:mod:`broker.people.approvals`). Polls (``approval_id`` and a fresh attestation of the same run)
  are ordinary attempts, each one ``deny`` event until a person's approval lets one mint; that
  mint consumes the approval in the same transaction (``authz.type: human``).
* An ``actor_token`` makes the exchange a delegation (:mod:`broker.people.delegations`): the subject is
  a person (a broker-issued delegation token, or the person's ID token when a policy allows),
  the actor token is the agent's attestation; step 2 is :func:`evaluate_delegation` plus the
  grant's bounds, and the mint is guarded by the grant being live (``authz.type:
  delegation``, ``act.sub`` = the agent).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker import errors
from broker.people import approvals
from broker.people import delegations as delegation
from broker.exchange import derive
from broker.attestation import Attestation, verify_subject_token
from broker.attestation.errors import REPLAYED
from broker.common.canonical import sha256_hex
from broker.app import BrokerContext
from broker.attestation.person import HumanTokenRefused, Person, verify_id_token
from broker.common.ids import new_credential_id
from broker.targets import IssuedCredential, IssueRequest
from broker.ledger import LedgerUnavailable
from broker.ledger.events import CredentialRecord, EventDraft
from broker.ledger.rows import Statement
from broker.policy import Decision, Target, evaluate, evaluate_delegation
from broker.lifecycle.revocation import revoke_descendants, revoke_one

log = logging.getLogger("broker.exchange.pipeline")

GRANT_TYPE_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
SUBJECT_TOKEN_TYPES = frozenset({TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN})
ACTOR_TOKEN_TYPES = frozenset({TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN})
REQUESTED_TOKEN_TYPES = frozenset({TOKEN_TYPE_JWT, TOKEN_TYPE_ACCESS_TOKEN})


@dataclass(frozen=True)
class ExchangeRequest:
    """A validated RFC 8693 request (parameters already checked by the API layer)."""
    subject_token: str
    subject_token_type: str
    target: str                               # the `audience` parameter: a target name
    scopes: tuple[str, ...] | None = None     # None: not requested
    ttl: int | None = None                    # optional requested lifetime (seconds)
    approval_id: str | None = None            # a poll of an approval request
    actor_token: str | None = None            # RFC 8693 actor_token: the agent's attestation
    actor_token_type: str | None = None


@dataclass
class ExchangeResult:
    access_token: str
    credential_id: str
    expires_in: int
    expires_at: int
    scope: str
    issued_token_type: str = TOKEN_TYPE_JWT
    credential: dict[str, Any] | None = None  # secret-bearing kinds only; never logged
    parent_id: str | None = None              # children (fan-out) only

    def to_response(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "issued_token_type": self.issued_token_type,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
            "credential_id": self.credential_id,
        }
        if self.parent_id is not None:
            body["parent_id"] = self.parent_id
        if self.credential is not None:
            body["credential"] = self.credential
        return body


@dataclass
class _Attempt:
    """The ledger event under construction for one attempt."""
    token_sha256: str
    target: str
    requested_scope: str | None
    principal: str | None = None
    run: dict[str, Any] | None = None
    authorizer: dict[str, Any] | None = None
    parent_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def deny(self, error: errors.BrokerError) -> EventDraft:
        details = {**self.details, "error": error.error, "reason": error.detail,
                   "attestation_sha256": self.token_sha256, "requested_target": self.target}
        if self.requested_scope is not None:
            details["requested_scope"] = self.requested_scope
        return EventDraft(type="deny", principal=self.principal, run=self.run,
                          authorizer=self.authorizer, target=self.target,
                          parent_id=self.parent_id, details=details)


def authorizer_for(decision: Decision) -> dict[str, Any]:
    assert decision.policy is not None
    return {"type": "policy", "name": decision.policy.name, "digest": decision.policy.digest}


@dataclass(frozen=True)
class _Grant:
    """Everything the mint needs, whichever path (attestation or parent) allowed it."""
    principal: str
    run: dict[str, Any]
    attestation: dict[str, Any]       # the JWT's `attestation` claim: {"iss", "issuer", "sha256"}
    issuer_name: str                  # the attestation issuer's config name
    target: Target
    scopes: tuple[str, ...]
    ttl: int
    authorizer: dict[str, Any]
    policy_name: str
    parent_id: str | None = None
    act: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)   # extra mint-event details
    # Ledger statements that must hold / run with the mint (an approval consumed, a delegation
    # still live and linked), given the new credential id; and the refusal when the guard fails.
    guard_for: Callable[[str], Statement] | None = None
    extra_for: Callable[[str], Sequence[Statement]] | None = None
    guard_refusal: str = "the authorization is no longer valid"


class _AlreadyRecorded(errors.InvalidGrant):
    """A refusal whose attempt already has its event (a mint undone by a revocation)."""


def _already_recorded(refusal: errors.BrokerError) -> errors.BrokerError:
    """Mark a refusal whose attempt already has its one event (``approval_requested``)."""
    refusal.recorded = True  # type: ignore[attr-defined]
    return refusal


def exchange(ctx: BrokerContext, request: ExchangeRequest, *, now: float | None = None) -> ExchangeResult:
    """Run the pipeline for one request. Raises a :class:`broker.errors.BrokerError` on refusal."""
    attempt = _Attempt(token_sha256=sha256_hex(request.subject_token), target=request.target,
                       requested_scope=None if request.scopes is None else " ".join(request.scopes))
    try:
        result = _exchange(ctx, request, attempt, now=time.time() if now is None else now)
    except _AlreadyRecorded:
        raise
    except errors.BrokerError as refusal:
        if not getattr(refusal, "recorded", False):
            _record_deny(ctx, attempt, refusal)
        raise
    except Exception as exc:  # a bug: record it as a deny, answer a generic server_error
        log.exception("exchange failed unexpectedly")
        refusal = errors.ServerError("internal error", detail=f"internal error: {type(exc).__name__}")
        _record_deny(ctx, attempt, refusal)
        raise refusal from exc
    return result


def _record_deny(ctx: BrokerContext, attempt: _Attempt, refusal: errors.BrokerError) -> None:
    log.info("deny target=%s principal=%s error=%s detail=%s", attempt.target, attempt.principal,
             refusal.error, refusal.detail)
    try:
        ctx.ledger.append(attempt.deny(refusal))
    except LedgerUnavailable:
        log.error("ledger unavailable: a deny could not be recorded (target=%s)", attempt.target)


def _exchange(ctx: BrokerContext, request: ExchangeRequest, attempt: _Attempt, *, now: float) -> ExchangeResult:
    if request.approval_id is not None:
        attempt.details["approval_id"] = request.approval_id[:64]
    if request.actor_token is not None:
        return _delegate(ctx, request, attempt, now=now)
    if derive.is_broker_token(request.subject_token, ctx.issuer):
        if delegation.is_delegation_token(request.subject_token):
            raise errors.InvalidGrant("a delegation token is only accepted with an actor_token",
                                      detail="delegation token without actor_token")
        if request.approval_id is not None:
            raise errors.InvalidRequest("approval_id is not accepted when deriving",
                                        detail="approval_id sent with a parent credential")
        return _derive(ctx, request, attempt, now=now)
    # 1. verify the attestation
    try:
        attestation = verify_subject_token(request.subject_token, policy_set=ctx.policy_set,
                                           jwks=ctx.jwks, replay=ctx.replay, now=now)
    except errors.BrokerError as refusal:
        unverified_issuer = getattr(refusal, "unverified_issuer", None)
        if unverified_issuer:
            attempt.details["unverified_issuer"] = unverified_issuer
        if request.approval_id is not None and refusal.detail == "token replayed":
            refusal.description = (f"{REPLAYED}: each poll needs a fresh attestation "
                                   "of the same run")
        raise
    attempt.principal = attestation.principal
    attempt.run = attestation.run
    attempt.details.update({"issuer": attestation.issuer.name, "iss": attestation.issuer.issuer})

    # 2. evaluate policies
    decision = evaluate(ctx.policy_set, issuer=attestation.issuer, claims=attestation.claims,
                        target_name=request.target, requested_scopes=request.scopes,
                        requested_ttl=request.ttl)
    if not decision.allowed:
        error_class = decision.error or errors.UnauthorizedClient
        raise error_class(_client_reason(error_class), detail=decision.reason)
    assert decision.policy is not None and decision.target is not None
    authorizer = authorizer_for(decision)
    attempt.authorizer = authorizer
    attempt.details["policy"] = decision.policy.name

    # 2b. a person must approve (the policy's `approval`)
    guard_for: Callable[[str], Statement] | None = None
    rule = decision.policy.approval
    if rule is not None:
        if request.approval_id is None:
            record = approvals.request_approval(
                ctx, policy=decision.policy, rule=rule, principal=attestation.principal,
                run=attestation.run, issuer=attestation.issuer, target=decision.target.name,
                target_type=decision.target.type, requested_scopes=request.scopes,
                requested_ttl=request.ttl, scopes=decision.scopes, ttl=decision.ttl,
                attestation_sha256=attestation.token_sha256, now=now)
            raise _already_recorded(approvals.pending_error(ctx, record, first=True))
        approval = approvals.check_poll(
            ctx, approval_id=request.approval_id, policy=decision.policy,
            principal=attestation.principal, run=attestation.run,
            issuer_name=attestation.issuer.name, target=decision.target.name,
            requested_scopes=request.scopes, requested_ttl=request.ttl, now=now)
        authorizer = approvals.human_authorizer(approval)
        attempt.authorizer = authorizer
        approval_id = approval.approval_id

        def _consume(credential_id: str) -> Statement:
            return ctx.people.approval_consume_guard(approval_id, credential_id=credential_id,
                                                     now=int(now),
                                                     pickup_window=approvals.PICKUP_WINDOW)
        guard_for = _consume

    # 3. issue
    grant = _Grant(principal=attestation.principal, run=attestation.run,
                   attestation=_attestation_claim(attestation), issuer_name=attestation.issuer.name,
                   target=decision.target, scopes=decision.scopes, ttl=decision.ttl,
                   authorizer=authorizer, policy_name=decision.policy.name,
                   details={"approval_id": request.approval_id} if rule is not None else {},
                   guard_for=guard_for, guard_refusal="the approval was already used")
    return _mint(ctx, grant, now=now)


def _attestation_claim(attestation: Attestation) -> dict[str, Any]:
    return {"iss": attestation.issuer.issuer, "issuer": attestation.issuer.name,
            "sha256": attestation.token_sha256}


def _derive(ctx: BrokerContext, request: ExchangeRequest, attempt: _Attempt, *,
            now: float) -> ExchangeResult:
    """Fan-out: the subject token is a credential this broker issued (see broker.exchange.derive)."""
    attempt.details["derive"] = True
    # 1. verify the parent: our signature, then the ledger (exists, live, ancestors live)
    try:
        parent = derive.verify_parent(request.subject_token, signer=ctx.signer, ledger=ctx.ledger,
                                      now=now)
    except derive.ParentRefused as refusal:
        attempt.parent_id = refusal.parent_id
        attempt.details["parent_verified"] = refusal.parent_verified
        if refusal.record is not None:
            attempt.principal, attempt.run = refusal.record.principal, refusal.record.run
        raise
    except LedgerUnavailable as exc:
        raise errors.TemporarilyUnavailable("the ledger is unavailable; nothing was issued",
                                            detail="ledger unavailable while checking the parent") from exc
    record = parent.record
    attempt.parent_id = record.credential_id
    attempt.principal, attempt.run = record.principal, record.run
    attempt.details.update({"parent_verified": True, "parent_target": record.target,
                            "depth": parent.depth + 1})

    # 2. the derive rules of the policy that authorized the chain
    plan = derive.plan_child(ctx.policy_set, parent, target_name=request.target,
                             requested_scopes=request.scopes, requested_ttl=request.ttl, now=now)
    attempt.authorizer = plan.authorizer
    attempt.details["policy"] = plan.policy.name

    # 3. issue, linked to the parent
    attestation = parent.claims.get("attestation")
    grant = _Grant(principal=record.principal, run=record.run,
                   attestation=attestation if isinstance(attestation, dict) else {},
                   issuer_name=record.issuer or "", target=plan.target, scopes=plan.scopes,
                   ttl=plan.ttl, authorizer=plan.authorizer, policy_name=plan.policy.name,
                   parent_id=record.credential_id, act=plan.act,
                   details={"depth": plan.depth, "root_id": parent.root.credential_id,
                            "derive_rule": plan.rule.target})
    result = _mint(ctx, grant, now=now)

    # 4. an ancestor revoked while this child was being minted: the cascade may have missed
    # it, so revoke it here (its own revoke event) and refuse. The mint is this attempt's event.
    try:
        lineage = ctx.ledger.ancestors_of(record.credential_id, max_depth=len(parent.lineage))
    except LedgerUnavailable:
        lineage = list(parent.lineage)
    revoked = next((a for a in lineage if a.revoked_at is not None), None)
    if revoked is not None:
        try:
            child = ctx.ledger.get_credential(result.credential_id)
            if child is not None:
                revoke_one(ctx, child, details={"cause": "parent revoked",
                                                "root": revoked.credential_id,
                                                "parent": record.credential_id})
                revoke_descendants(ctx, child, requested_by={"root": revoked.credential_id})
        except (errors.BrokerError, LedgerUnavailable):
            log.exception("could not revoke child %s of revoked ancestor %s",
                          result.credential_id, revoked.credential_id)
        raise _AlreadyRecorded("the parent credential is revoked",
                               detail="an ancestor was revoked while the child was minted")
    return result


def _delegate(ctx: BrokerContext, request: ExchangeRequest, attempt: _Attempt, *,
              now: float) -> ExchangeResult:
    """Delegation: an agent (``actor_token``) acts for a person (``subject_token``)."""
    attempt.details["delegation"] = True
    idp = ctx.policy_set.human_idp
    if idp is None:
        raise errors.InvalidRequest("actor_token is not accepted: no human-idp is configured",
                                    detail="actor_token without a human-idp")
    if request.approval_id is not None:
        raise errors.InvalidRequest("approval_id is not accepted with an actor_token")
    # 1a. the subject: a person, through a delegation grant or their own ID token
    grant = None
    if derive.is_broker_token(request.subject_token, ctx.issuer):
        try:
            grant = delegation.verify_delegation_token(ctx, request.subject_token, now=now)
        except delegation.DelegationRefused as refusal:
            if refusal.delegation_id:
                attempt.details["delegation_id"] = refusal.delegation_id
            raise
        person_claims = dict(grant.details.get("person") or {})
        person = Person.from_record(person_claims)
        via = "delegation"
        attempt.details["delegation_id"] = grant.delegation_id
        subject_expires = grant.expires_at
    else:
        try:
            person, id_claims = verify_id_token(request.subject_token, idp=idp, jwks=ctx.jwks,
                                                now=now)
        except HumanTokenRefused as refusal:
            raise errors.InvalidGrant("subject_token is not acceptable",
                                      detail=f"person's ID token: {refusal.detail}") from None
        via = "id_token"
        subject_expires = int(id_claims["exp"])
    attempt.principal = person.email
    attempt.details.update({"subject_via": via, "subject_token_sha256": attempt.token_sha256})

    # 1b. the actor: the agent's own attestation (replay-guarded like any attestation)
    if request.actor_token_type not in ACTOR_TOKEN_TYPES:
        raise errors.InvalidRequest("actor_token_type must be urn:ietf:params:oauth:token-type:jwt "
                                    "or urn:ietf:params:oauth:token-type:id_token")
    try:
        actor = verify_subject_token(request.actor_token, policy_set=ctx.policy_set,
                                     jwks=ctx.jwks, replay=ctx.replay, now=now)
    except errors.BrokerError as refusal:
        attempt.details["actor_refused"] = True
        unverified_issuer = getattr(refusal, "unverified_issuer", None)
        if unverified_issuer:
            attempt.details["actor_unverified_issuer"] = unverified_issuer
        if isinstance(refusal, errors.InvalidGrant):
            refusal.description = "actor_token is not acceptable"
        raise
    attempt.run = actor.run
    attempt.details.update({"actor": actor.principal, "actor_issuer": actor.issuer.name,
                            "actor_attestation_sha256": actor.token_sha256})

    # 2a. the grant's bounds
    requested_scopes = request.scopes
    if grant is not None:
        if actor.principal != grant.agent:
            raise errors.InvalidGrant("the delegation was not granted to this agent",
                                      detail=f"delegation {grant.delegation_id} is for another agent")
        if request.target not in grant.targets:
            raise errors.InvalidTarget("the delegation does not cover this target",
                                       detail=f"delegation {grant.delegation_id} does not list "
                                              f"target {request.target[:120]!r}")
        if requested_scopes is None:
            requested_scopes = tuple(grant.scopes)
        elif not set(requested_scopes) <= set(grant.scopes):
            wider = " ".join(sorted(set(requested_scopes) - set(grant.scopes)))
            raise errors.InvalidScope("requested scope is not allowed",
                                      detail=f"scopes {wider[:120]!r} are wider than delegation "
                                             f"{grant.delegation_id}")
    # 2b. the policies: the person on one side, the agent on the other (may_act)
    decision = evaluate_delegation(ctx.policy_set, person=person.claims(), via=via,
                                   actor_issuer=actor.issuer, actor_claims=actor.claims,
                                   target_name=request.target, requested_scopes=requested_scopes,
                                   requested_ttl=request.ttl)
    if not decision.allowed:
        error_class = decision.error or errors.UnauthorizedClient
        raise error_class(_client_reason(error_class), detail=decision.reason)
    assert decision.policy is not None and decision.target is not None
    remaining = subject_expires - int(now)
    if remaining <= 0:
        raise errors.InvalidGrant("the delegation has expired", detail="subject expired")
    ttl = min(decision.ttl, remaining)
    authorizer = {"type": "delegation",
                  "grant_id": grant.delegation_id if grant is not None else None,
                  "granted_by": person.email, "via": via,
                  "policy": {"name": decision.policy.name, "digest": decision.policy.digest}}
    attempt.authorizer = authorizer
    attempt.details["policy"] = decision.policy.name

    # 3. issue: sub = the person, act = the agent; guarded by the grant being live
    guard_for: Callable[[str], Statement] | None = None
    extra_for: Callable[[str], Sequence[Statement]] | None = None
    if grant is not None:
        grant_id = grant.delegation_id

        def _use(credential_id: str) -> Statement:
            return ctx.people.delegation_use_guard(grant_id, now=int(now))

        def _link(credential_id: str) -> Sequence[Statement]:
            return (ctx.people.delegation_link(grant_id, credential_id),)
        guard_for, extra_for = _use, _link
    mint_grant = _Grant(
        principal=person.email, run=actor.run, attestation=_attestation_claim(actor),
        issuer_name=actor.issuer.name, target=decision.target, scopes=decision.scopes, ttl=ttl,
        authorizer=authorizer, policy_name=decision.policy.name,
        act={"sub": actor.principal, "iss": actor.issuer.issuer},
        details={"delegation_id": authorizer["grant_id"], "actor": actor.principal,
                 "subject_via": via, "subject_token_sha256": attempt.token_sha256},
        guard_for=guard_for, extra_for=extra_for, guard_refusal="the delegation was revoked")
    return _mint(ctx, mint_grant, now=now)


def _client_reason(error_class: type) -> str:
    return {
        errors.InvalidTarget: "unknown target",
        errors.InvalidScope: "requested scope is not allowed",
        errors.UnauthorizedClient: "no policy allows this exchange",
    }.get(error_class, "request refused")


def _mint(ctx: BrokerContext, grant: _Grant, *, now: float) -> ExchangeResult:
    target = grant.target
    issued_at = int(now)
    expires_at = issued_at + grant.ttl
    credential_id = new_credential_id(now=now)
    scope = " ".join(grant.scopes)
    kind = ctx.issuers.get(target.type)
    if kind is None:
        raise errors.InvalidTarget("target is not usable",
                                   detail=f"no issuer for target type {target.type!r}")
    issue_request = IssueRequest(credential_id=credential_id, target=target,
                                 principal=grant.principal, run=grant.run,
                                 authorizer=grant.authorizer, scopes=grant.scopes,
                                 issued_at=issued_at, expires_at=expires_at,
                                 parent_id=grant.parent_id)
    issued: IssuedCredential = kind.issue(issue_request)
    try:
        claims: dict[str, Any] = {
            "iss": ctx.issuer,
            "sub": grant.principal,
            "aud": target.audience,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": expires_at,
            "jti": credential_id,
            "scope": scope,
            "target": target.name,
            "run": grant.run,
            "authz": grant.authorizer,
            "attestation": grant.attestation,
        }
        if grant.parent_id is not None:
            claims["parent_id"] = grant.parent_id
        if grant.act is not None:
            claims["act"] = grant.act
        access_token = ctx.signer.sign(claims)
        record = CredentialRecord(
            credential_id=credential_id, principal=grant.principal, run=grant.run,
            authorizer=grant.authorizer, target=target.name, target_type=target.type, scope=scope,
            issued_at=issued_at, expires_at=expires_at, issuer=grant.issuer_name,
            parent_id=grant.parent_id, details=dict(issued.details))
        event = EventDraft(
            type="mint", credential_id=credential_id, parent_id=grant.parent_id,
            principal=grant.principal, run=grant.run, authorizer=grant.authorizer,
            target=target.name,
            details={"issuer": grant.issuer_name, "iss": grant.attestation.get("iss"),
                     "attestation_sha256": grant.attestation.get("sha256"), "scope": scope,
                     "issued_at": issued_at, "expires_at": expires_at, "ttl": grant.ttl,
                     "target_type": target.type, "policy": grant.policy_name,
                     "token_sha256": sha256_hex(access_token), **grant.details, **issued.details})
        if grant.guard_for is None and grant.extra_for is None:
            ctx.ledger.record_mint(event, record)
        else:
            guard = grant.guard_for(credential_id) if grant.guard_for is not None else None
            extra = tuple(grant.extra_for(credential_id)) if grant.extra_for is not None else ()
            if ctx.ledger.record_mint(event, record, guard=guard, extra=extra) is None:
                raise errors.InvalidGrant(grant.guard_refusal,
                                          detail=f"mint guard failed: {grant.guard_refusal}")
    except BaseException as exc:
        if issued.undo is not None:
            try:
                issued.undo()
            except Exception:  # noqa: BLE001 - the original failure is what matters
                log.exception("could not undo a credential whose mint was not recorded "
                              "(credential_id=%s)", credential_id)
        if isinstance(exc, LedgerUnavailable):
            raise errors.TemporarilyUnavailable(
                "the ledger is unavailable; nothing was issued",
                detail="ledger unavailable while recording mint") from exc
        raise
    log.info("mint credential_id=%s principal=%s target=%s policy=%s ttl=%s parent_id=%s",
             credential_id, grant.principal, target.name, grant.policy_name, grant.ttl,
             grant.parent_id)
    return ExchangeResult(access_token=access_token, credential_id=credential_id,
                          expires_in=expires_at - issued_at, expires_at=expires_at, scope=scope,
                          credential=issued.secret, parent_id=grant.parent_id)
