"""Human approval before a mint (a policy's ``approval``): requests, polls, decisions.

The flow (docs/approvals.md):

1. An exchange matches a policy with ``approval``. The broker records an approval request —
   the row in ``approvals`` and the attempt's one event, ``approval_requested`` — and answers
   ``400 authorization_pending`` with ``approval_id``, ``approval_url`` and ``interval``
   (RFC 8628's device-flow errors; the approval id plays the device code's part).
2. The CI step polls: the same exchange again, with ``approval_id`` and a *fresh* attestation
   of the same run (the replay guard applies to every attestation). :func:`check_poll` binds
   the poll to the request — same issuer, principal, run, target, requested scope and ttl, and
   the same policy version — then applies ``slow_down`` and the request's state. Each poll is
   one ``deny`` event (``authorization_pending``, ``slow_down``, ``access_denied``,
   ``expired_token`` or ``invalid_grant``) with ``details.approval_id``, except the one that
   mints.
3. People decide on ``/approvals/<id>`` (signed in through the human IdP) or through the API
   with their ID token (:func:`decide`): eligible (an approver by email or group), not the
   run's actor when ``not_self``, once each. ``required`` approvals complete it; one denial
   ends it. Each decision is one ``approved`` / ``denied`` event.
4. The next poll mints: ``authz = {"type": "human", "approvers", "approval_id", "policy":
   {"name", "digest"}}``; the mint's guard consumes the approval (approved → consumed), so it
   is used once, atomically with the mint event.

Denied and expired requests are final. A request not decided within the policy's
``expires_in`` expires; an approved one must be collected within :data:`PICKUP_WINDOW`.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from broker import errors
from broker.attestation.person import Person, is_run_actor, may_approve
from broker.common.durations import format_duration
from broker.common.ids import new_credential_id
from broker.ledger import LedgerUnavailable
from broker.ledger.events import Event, EventDraft, utc_timestamp
from broker.people.store import ApprovalRecord
from broker.policy.model import ApprovalRule, IssuerConfig, Policy

if TYPE_CHECKING:
    from broker.app import BrokerContext

log = logging.getLogger("broker.people.approvals")

#: Seconds an approved request stays collectable (the CI side polls every few seconds).
PICKUP_WINDOW = 600
#: Seconds between polls the broker asks for (``BROKER_APPROVAL_POLL_INTERVAL``).
DEFAULT_INTERVAL = 5
#: A poll sooner than this fraction of ``interval`` after the previous one gets ``slow_down``
#: (sleeping exactly ``interval`` seconds between polls always passes).
SLOW_DOWN_FRACTION = 0.8
MAX_REASON = 500
_PREFIX = "apr_"
_STATUS_WORDS = {"consumed": "used (its credential was minted)", "approved": "already approved",
                 "denied": "denied", "expired": "expired"}


def new_approval_id(*, now: float | None = None) -> str:
    """``apr_`` + a ULID: unique, time-sortable, 80 random bits (not a secret: it is in URLs)."""
    return _PREFIX + new_credential_id(now=now)


def is_approval_id(value: str) -> bool:
    from broker.common.ids import is_credential_id

    return isinstance(value, str) and value.startswith(_PREFIX) and is_credential_id(value[len(_PREFIX):])


def approval_url(ctx: BrokerContext, approval_id: str) -> str:
    return f"{ctx.issuer}/approvals/{approval_id}"


def poll_interval(ctx: BrokerContext) -> int:
    return int(ctx.extras.get("approval_interval", DEFAULT_INTERVAL))


def human_authorizer(approval: ApprovalRecord) -> dict[str, Any]:
    """The ``authz`` of a credential minted under ``approval``."""
    return {"type": "human", "approvers": approval.approvers, "approval_id": approval.approval_id,
            "policy": {"name": approval.policy_name, "digest": approval.policy_digest}}


def normalized_scope(scopes: tuple[str, ...] | None) -> str | None:
    return None if scopes is None else " ".join(sorted(set(scopes)))


def ci_run_url(issuer: IssuerConfig | None, run: dict[str, Any]) -> str | None:
    """A link to the CI run, when the issuer's preset says how to build one (https only)."""
    if issuer is None or not isinstance(run, dict):
        return None
    run_id, repository = str(run.get("id") or ""), str(run.get("repository") or "")
    if not run_id.isdigit() or not repository or ".." in repository:
        return None
    repo = quote(repository, safe="/")
    if issuer.preset == "github-actions":
        base = "https://github.com"
        if issuer.issuer.endswith("/_services/token") and issuer.issuer.startswith("https://"):
            base = issuer.issuer[: -len("/_services/token")]      # GitHub Enterprise Server
        url = f"{base}/{repo}/actions/runs/{run_id}"
        attempt = str(run.get("attempt") or "")
        return url + (f"/attempts/{attempt}" if attempt.isdigit() else "")
    if issuer.preset == "gitlab-ci" and issuer.issuer.startswith("https://"):
        return f"{issuer.issuer.rstrip('/')}/{repo}/-/pipelines/{run_id}"
    return None


# -- 1. the request -----------------------------------------------------------------------------

def request_approval(ctx: BrokerContext, *, policy: Policy, rule: ApprovalRule, principal: str,
                     run: dict[str, Any], issuer: IssuerConfig, target: str, target_type: str,
                     requested_scopes: tuple[str, ...] | None, requested_ttl: int | None,
                     scopes: tuple[str, ...], ttl: int, attestation_sha256: str,
                     now: float) -> tuple[ApprovalRecord, Event]:
    """Record a new approval request and its ``approval_requested`` event (the attempt's one
    event), which is returned with the request. Refuses (``unauthorized_client``) when
    ``not_self`` cannot be checked because the run names no actor."""
    if rule.not_self and not run.get("actor"):
        raise errors.PolicyDenied(
            "this exchange needs an approval, which this run cannot get",
            detail=f"policy {policy.name!r} requires not_self but the run names no actor")
    approval_id = new_approval_id(now=now)
    created = int(now)
    details = {
        "approvers": list(rule.approvers), "not_self": rule.not_self, "target_type": target_type,
        "attestation_sha256": attestation_sha256, "iss": issuer.issuer,
        "run_url": ci_run_url(issuer, run),
    }
    record = ApprovalRecord(
        approval_id=approval_id, status="pending", version=1, created_at=created,
        expires_at=created + rule.expires_in, principal=principal, run=run, issuer=issuer.name,
        target=target, requested_scope=normalized_scope(requested_scopes),
        requested_ttl=requested_ttl, scope=" ".join(scopes), ttl=ttl, policy_name=policy.name,
        policy_digest=policy.digest, required=rule.required, votes=[],
        last_poll_ms=int(now * 1000), details=details)
    draft = EventDraft(type="approval_requested", principal=principal, run=run, target=target,
                       details={"approval_id": approval_id, "policy": policy.name,
                                "policy_digest": policy.digest, "approvers": list(rule.approvers),
                                "required": rule.required, "not_self": rule.not_self,
                                "expires_at": utc_timestamp(record.expires_at),
                                "scope": record.scope, "ttl": ttl, "issuer": issuer.name,
                                "attestation_sha256": attestation_sha256})
    event = ctx.people.record_approval_request(draft, record)
    log.info("approval_requested approval_id=%s principal=%s target=%s policy=%s", approval_id,
             principal, target, policy.name)
    return record, event


def pending_error(ctx: BrokerContext, approval: ApprovalRecord, *, first: bool) -> errors.ApprovalPending:
    description = ("a person must approve this request; poll with approval_id" if first
                   else "waiting for a person to approve this request")
    err = errors.ApprovalPending(
        description, detail=f"approval {approval.approval_id} pending",
        extra={"approval_id": approval.approval_id,
               "approval_url": approval_url(ctx, approval.approval_id),
               "interval": poll_interval(ctx)})
    return err


# -- 2. a poll ----------------------------------------------------------------------------------

def check_poll(ctx: BrokerContext, *, approval_id: str, policy: Policy, principal: str,
               run: dict[str, Any], issuer_name: str, target: str,
               requested_scopes: tuple[str, ...] | None, requested_ttl: int | None,
               now: float) -> ApprovalRecord:
    """The approved request this poll may mint under; raise the poll's refusal otherwise."""
    if not is_approval_id(approval_id):
        raise errors.RequestMalformed("approval_id is malformed")
    approval = ctx.people.get_approval(approval_id)
    if approval is None:
        raise errors.GrantRefused("unknown approval", detail="no such approval_id")
    mismatched = [name for name, ours, theirs in (
        ("issuer", approval.issuer, issuer_name), ("principal", approval.principal, principal),
        ("run", approval.run, run), ("target", approval.target, target),
        ("scope", approval.requested_scope, normalized_scope(requested_scopes)),
        ("ttl", approval.requested_ttl, requested_ttl)) if ours != theirs]
    if mismatched:
        raise errors.GrantRefused("the approval belongs to another request",
                                  detail=f"approval {approval_id} differs in "
                                         f"{', '.join(mismatched)}")
    if (approval.policy_name, approval.policy_digest) != (policy.name, policy.digest):
        raise errors.GrantRefused("the policy changed since the approval was requested; "
                                  "request again",
                                  detail=f"approval {approval_id} was requested under policy "
                                         f"{approval.policy_name} {approval.policy_digest}, "
                                         f"now {policy.name} {policy.digest}")
    interval = poll_interval(ctx)
    if not ctx.people.touch_approval_poll(approval_id, now_ms=int(now * 1000),
                   min_gap_ms=int(interval * 1000 * SLOW_DOWN_FRACTION)):
        raise errors.ApprovalSlowDown(f"polling too fast: wait at least {interval} seconds between polls",
                              detail=f"approval {approval_id} polled sooner than {interval}s",
                              extra={"approval_id": approval_id, "interval": interval + 5})
    status = approval.effective_status(now, pickup_window=PICKUP_WINDOW)
    if status == "pending":
        raise pending_error(ctx, approval, first=False)
    if status == "denied":
        raise errors.ApprovalDenied("the request was denied",
                                    detail=f"approval {approval_id} denied by {approval.decided_by}")
    if status == "expired":
        raise errors.ApprovalExpired("the approval request expired; request again",
                                  detail=f"approval {approval_id} expired")
    if status == "consumed":
        raise errors.GrantRefused("the approval was already used",
                                  detail=f"approval {approval_id} already used for "
                                         f"{approval.credential_id}")
    assert status == "approved"
    return approval


# -- 3. decisions -------------------------------------------------------------------------------

def decide(ctx: BrokerContext, approval_id: str, person: Person, *, approve: bool,
           reason: str | None, via: str, now: float | None = None) -> ApprovalRecord:
    """One person approves or denies. Refusals are ``access_denied`` (403) and recorded as a
    ``deny`` event naming the person; an unknown id is ``not_found``; a decided or expired
    request is ``invalid_request`` (nothing to decide). Returns the new state."""
    now = time.time() if now is None else now
    if not is_approval_id(approval_id):
        raise errors.NotFound("no such approval")
    reason = " ".join((reason or "").split())[:MAX_REASON] or None
    if not approve and not reason:
        raise errors.RequestMalformed("a denial needs a reason")
    for _ in range(5):          # compare-and-set: re-read when another decision won the race
        approval = ctx.people.get_approval(approval_id)
        if approval is None:
            raise errors.NotFound("no such approval")
        status = approval.effective_status(now, pickup_window=PICKUP_WINDOW)
        if status != "pending":
            raise errors.RequestMalformed(f"the request is {_STATUS_WORDS.get(status, status)}: "
                                        "there is nothing to decide")
        refusal, blocks_deny = _decision_refusal(ctx, approval, person)
        if refusal is not None and (approve or blocks_deny):
            _record_refused_decision(ctx, approval, person, approve=approve, reason=refusal, via=via)
            raise errors.PermissionDenied(refusal,
                                          detail=f"approval {approval_id}: {person.email}: {refusal}")
        draft, event = _record_decision(ctx, approval, person, approve=approve, reason=reason,
                                        via=via, at=int(now))
        if event is not None:
            log.info("%s approval_id=%s by=%s", draft.type, approval_id, person.email)
            updated = ctx.people.get_approval(approval_id)
            assert updated is not None
            return updated
    raise errors.BackendUnavailable("the request is being decided by someone else; try again",
                                        detail=f"approval {approval_id}: decision lost 5 races")


def _decision_refusal(ctx: BrokerContext, approval: ApprovalRecord, person: Person
                      ) -> tuple[str | None, bool]:
    """Why ``person`` may not decide ``approval`` (None: they may), and whether that refusal
    also blocks a denial. Denying is the safe direction: any approver may deny (even the run's
    actor, or one who approved before); approving needs every check."""
    idp = ctx.policy_set.human_idp
    policy = next((p for p in ctx.policy_set.policies if p.name == approval.policy_name), None)
    rule = policy.approval if policy is not None else None
    if policy is None or rule is None or policy.digest != approval.policy_digest:
        return "the policy changed since the request; it can no longer be approved", True
    if not may_approve(rule, person):
        return "you are not an approver of this request", True
    if any(v.get("email") == person.email for v in approval.votes):
        return "you already approved this request", False
    if rule.not_self and idp is not None:
        mine = is_run_actor(idp, person, approval.run.get("actor"))
        if mine is True:
            return "you cannot approve a run you started (not_self)", False
        if mine is None:
            return ("cannot establish that you are not the run's actor "
                    "(not_self): the IdP gave no username and the run's "
                    "login is not mapped"), False
    return None, True


def _record_decision(ctx: BrokerContext, approval: ApprovalRecord, person: Person, *,
                     approve: bool, reason: str | None, via: str, at: int
                     ) -> tuple[EventDraft, Event | None]:
    """Record one vote (``approved``; the request is approved once it has enough) or the
    denial (``denied``) if the request is still as read; the event is None when another
    decision won the race."""
    approval_id = approval.approval_id
    if approve:
        votes = [*approval.votes, {"email": person.email, "username": person.username,
                                   "at": utc_timestamp(at), "reason": reason}]
        complete = len(votes) >= approval.required
        status_new = "approved" if complete else "pending"
        draft = EventDraft(type="approved", principal=approval.principal, run=approval.run,
                           target=approval.target, details={
                               "approval_id": approval_id, "approver": person.email,
                               "approver_username": person.username, "reason": reason,
                               "votes": len(votes), "required": approval.required,
                               "complete": complete, "policy": approval.policy_name,
                               "via": via})
        event = ctx.people.record_approval_decision(approval, draft,
                        status=status_new, votes=votes,
                        decided_at=at if complete else None,
                        decided_by=person.email if complete else None, reason=None, now=at)
    else:
        draft = EventDraft(type="denied", principal=approval.principal, run=approval.run,
                           target=approval.target, details={
                               "approval_id": approval_id, "approver": person.email,
                               "approver_username": person.username, "reason": reason,
                               "policy": approval.policy_name, "via": via})
        event = ctx.people.record_approval_decision(approval, draft,
                        status="denied", votes=approval.votes, decided_at=at,
                        decided_by=person.email, reason=reason, now=at)
    return draft, event


def _record_refused_decision(ctx: BrokerContext, approval: ApprovalRecord, person: Person, *,
                             approve: bool, reason: str, via: str) -> None:
    """A signed-in person was refused a decision (e.g. self-approval): one ``deny`` event."""
    draft = EventDraft(type="deny", principal=approval.principal, run=approval.run,
                       target=approval.target, details={
                           "approval_id": approval.approval_id,
                           "action": "approve" if approve else "deny", "person": person.email,
                           "person_username": person.username, "error": "access_denied",
                           "reason": reason, "via": via})
    try:
        ctx.ledger.append(draft)
    except LedgerUnavailable:
        log.error("ledger unavailable: a refused approval decision was not recorded")


def approval_json(ctx: BrokerContext, approval: ApprovalRecord, *, now: float | None = None,
                  person: Person | None = None) -> dict[str, Any]:
    """What the API and the page show about a request (nothing secret)."""
    now = time.time() if now is None else now
    body: dict[str, Any] = {
        "approval_id": approval.approval_id,
        "status": approval.effective_status(now, pickup_window=PICKUP_WINDOW),
        "approval_url": approval_url(ctx, approval.approval_id),
        "principal": approval.principal, "run": approval.run,
        "run_url": approval.details.get("run_url"), "commit": approval.run.get("sha"),
        "issuer": approval.issuer, "target": approval.target,
        "target_type": approval.details.get("target_type"),
        "scope": approval.scope, "ttl": approval.ttl, "ttl_text": format_duration(approval.ttl),
        "policy": {"name": approval.policy_name, "digest": approval.policy_digest},
        "approvers": approval.details.get("approvers", []), "required": approval.required,
        "not_self": approval.details.get("not_self"),
        "votes": approval.votes, "created_at": utc_timestamp(approval.created_at),
        "expires_at": utc_timestamp(approval.expires_at),
        "decided_at": None if approval.decided_at is None else utc_timestamp(approval.decided_at),
        "decided_by": approval.decided_by, "reason": approval.reason,
        "credential_id": approval.credential_id,
    }
    if person is not None:
        body["you"] = can_decide(ctx, approval, person, now=now)
    return body


def can_decide(ctx: BrokerContext, approval: ApprovalRecord, person: Person, *,
               now: float) -> dict[str, Any]:
    """Whether ``person`` may approve / deny, and why not (for the page)."""
    policy = next((p for p in ctx.policy_set.policies if p.name == approval.policy_name), None)
    rule = policy.approval if policy is not None else None
    status = approval.effective_status(now, pickup_window=PICKUP_WINDOW)
    why = None
    if status != "pending":
        why = f"the request is {_STATUS_WORDS.get(status, status)}"
    elif rule is None or policy is None or policy.digest != approval.policy_digest:
        why = "the policy changed since the request"
    elif not may_approve(rule, person):
        why = "you are not an approver of this request"
    elif any(v.get("email") == person.email for v in approval.votes):
        why = "you already approved this request"
    self_ = None
    if rule is not None and rule.not_self and ctx.policy_set.human_idp is not None:
        self_ = is_run_actor(ctx.policy_set.human_idp, person, approval.run.get("actor"))
    may_approve_now = why is None and self_ is not True and not (
        rule is not None and rule.not_self and self_ is None)
    approve_why = why or ("you started this run (not_self)" if self_ is True else
                          "cannot establish that you did not start this run (not_self)"
                          if not may_approve_now else None)
    return {"email": person.email, "may_approve": may_approve_now,
            "may_deny": why is None, "why_not": approve_why}


