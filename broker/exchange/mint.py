"""Step 3: mint the credential the grant allows — the target kind's resource, then the broker's
JWT, then the ``mint`` event — and nothing without its record."""
from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from broker import errors
from broker.attestation.errors import REPLAYED, AttestationError
from broker.common.canonical import sha256_hex
from broker.common.ids import new_credential_id
from broker.exchange.attempt import Attempt
from broker.exchange.grant import Grant
from broker.exchange.request import ExchangeResult
from broker.ledger.errors import SingleUseTaken
from broker.ledger.events import CredentialRecord, EventDraft
from broker.targets import IssuedCredential, IssueRequest, TargetKind

if TYPE_CHECKING:
    from broker.app import BrokerContext
    from broker.lifecycle.pending import PendingMints

log = logging.getLogger("broker.exchange")


def token_client_id(principal: str, act: dict[str, Any] | None) -> str:
    """RFC 9068 ``client_id`` of a minted access token: the workload that made the exchange.
    That is the attested workload itself (so it equals ``sub``), or, when an agent acts for a
    person (``act``), the agent's principal (``act.sub``)."""
    if isinstance(act, dict) and isinstance(act.get("sub"), str) and act["sub"]:
        return str(act["sub"])
    return principal


def mint(ctx: BrokerContext, grant: Grant, attempt: Attempt, *, now: float) -> ExchangeResult:
    """Issue at the target kind, sign the broker JWT, record the ``mint`` (the attempt's one
    event) — in that order, undoing the kind's resource if the record cannot be made."""
    target = grant.target
    issued_at = int(now)
    expires_at = issued_at + grant.ttl
    credential_id = new_credential_id(now=now)
    scope = " ".join(grant.scopes)
    kind = ctx.issuers.get(target.type)
    if kind is None:
        raise errors.BackendMisconfigured("target is not usable",
                                          detail=f"no issuer for target type {target.type!r}")
    issue_request = IssueRequest(credential_id=credential_id, target=target,
                                 principal=grant.principal, run=grant.run,
                                 authorizer=grant.authorizer, scopes=grant.scopes,
                                 issued_at=issued_at, expires_at=expires_at,
                                 parent_id=grant.parent_id)
    attempt.stage = "issue"
    # A kind that creates a resource leaves a marker first, so that a crash before the record
    # is swept at once (broker/lifecycle/pending.py), not after the reaper's orphan grace.
    removes_orphans = getattr(getattr(kind, "capabilities", None), "remove_orphans", False)
    pending = ctx.pending if removes_orphans else None
    issued = issue_marked(kind, issue_request, pending)
    attempt.stage = "record"
    try:
        claims: dict[str, Any] = {
            "iss": ctx.issuer,
            "sub": grant.principal,
            "aud": target.audience,
            "client_id": token_client_id(grant.principal, grant.act),
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
        # RFC 9068 §2.1: typ "at+jwt" (SigningUnavailable when the custodian fails)
        access_token = ctx.signer.sign(claims)
        secret = (issued.secret_for_token(access_token) if issued.secret_for_token is not None
                  else issued.secret)
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
        guard = grant.guard_for(credential_id) if grant.guard_for is not None else None
        extra = tuple(grant.extra_for(credential_id)) if grant.extra_for is not None else ()
        try:
            recorded = ctx.ledger.record_mint(event, record, guard=guard, extra=extra,
                                              single_use=attempt.single_use, now=issued_at)
        except SingleUseTaken:
            # the replay store forgot it (a Redis restart); the ledger did not
            raise AttestationError(REPLAYED, detail="token replayed (anchored in the ledger)") from None
        if recorded is None:
            raise errors.GrantRefused(grant.guard_refusal,
                                      detail=f"mint guard failed: {grant.guard_refusal}")
        attempt.recorded_as(recorded)
    except BaseException as exc:
        undo_unrecorded(issued, credential_id, pending)
        if isinstance(exc, errors.LedgerUnavailable):
            raise errors.LedgerUnavailable(
                "ledger unavailable while recording mint",
                description="the ledger is unavailable; nothing was issued") from exc
        raise
    if pending is not None:
        pending.clear(credential_id)
    log.info("mint credential_id=%s principal=%s target=%s policy=%s ttl=%s parent_id=%s",
             credential_id, grant.principal, target.name, grant.policy_name, grant.ttl,
             grant.parent_id)
    return ExchangeResult(access_token=access_token, credential_id=credential_id,
                          expires_in=expires_at - issued_at, expires_at=expires_at, scope=scope,
                          credential=secret, parent_id=grant.parent_id)


def issue_marked(kind: TargetKind, request: IssueRequest,
                 pending: PendingMints | None) -> IssuedCredential:
    """``kind.issue(request)``, with a pending-mint marker around it when ``pending``."""
    if pending is None:
        return kind.issue(request)
    try:
        pending.mark(request.credential_id, target=request.target.name,
                     target_type=request.target.type)
    except OSError as exc:
        # No marker, no resource: a crash could otherwise leave one nobody sweeps promptly.
        raise errors.BackendUnavailable(
            detail=f"pending-mint marker not written: {type(exc).__name__}") from None
    try:
        return kind.issue(request)
    except BaseException:
        pending.clear(request.credential_id)
        raise


def undo_unrecorded(issued: IssuedCredential, credential_id: str,
                    pending: PendingMints | None) -> None:
    """Undo a resource whose mint was not recorded; its marker goes once it is undone."""
    if issued.undo is not None:
        try:
            issued.undo()
        except Exception as undo_failure:  # noqa: BLE001 - the original failure matters
            # Expected when the target is what failed. One line, no traceback: the marker
            # is handed to the reaper, which removes the role on its next pass.
            log.error("could not undo a credential whose mint was not recorded "
                      "(credential_id=%s): %s; the reaper will remove it", credential_id,
                      type(undo_failure).__name__)
            if pending is not None:
                with contextlib.suppress(OSError, ValueError):
                    pending.abandon(credential_id)     # the reaper's next pass, not its grace
            return
    if pending is not None:
        pending.clear(credential_id)
