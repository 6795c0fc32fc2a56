"""Delegation: a person lets an agent act for them, bounded (RFC 8693 ``actor_token``).

**The grant.** A person signed in through the human IdP (web page, or the API/CLI with their ID
token) names an agent principal, targets, scopes and a lifetime (at most the human-idp's
``delegation_max_ttl``). The broker checks that some delegation policy would let *this person*
delegate each target and those scopes (:func:`grant_delegation`), records a ``delegate`` event
and a ``delegations`` row, and returns a **delegation token**: a JWS signed with the broker's
keys whose header says ``typ: nhi-delegation+jwt`` and whose claims say ``token_use:
delegation``, ``aud: <broker>/token``, ``jti`` = the grant id, ``sub`` = the person (email),
``delegation: {agent, targets, scopes}``. It is not a credential: it is in no ``credentials``
row (so introspection says inactive and derivation refuses it), its ``aud`` is no target's,
and the token endpoint accepts it only as the ``subject_token`` of an exchange that also
carries an ``actor_token``.

**The exchange** (:mod:`broker.exchange.pipeline`): ``subject_token`` = the delegation token (or, when a
policy's ``may_act.subject_tokens`` lists ``id_token``, the person's ID token itself),
``actor_token`` = the agent's own attestation (replay-guarded like any attestation). The agent
must be the grant's agent; the target, scopes and lifetime must fit the grant; and a
delegation policy (``issuer:`` the human IdP, ``match`` on the person, ``may_act`` on the
agent) must allow it. The credential says ``sub`` = the person, ``act = {"sub": <agent
principal>, "iss": <agent attestation iss>}``, ``authz = {"type": "delegation", "grant_id",
"granted_by", "via", "policy": {"name", "digest"}}``, ``run`` = the agent's run.

**Revocation** (:func:`revoke_delegation`): the grant is marked revoked with a ``revoke``
event, then every credential minted under it (``delegation_credentials``) is revoked with the
usual cascade (:mod:`broker.lifecycle.revocation`), each with its own ``revoke`` event naming the cause.
A mint under a grant is guarded by the grant being live at commit, so none slips past.
"""
from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any

from broker import errors
from broker.attestation.person import Person
from broker.common.canonical import canonical_json, sha256_hex
from broker.common.ids import is_credential_id, new_credential_id
from broker.ledger.events import EventDraft, utc_timestamp
from broker.lifecycle.revocation import revoke_descendants, revoke_one
from broker.people.store import DelegationRecord
from broker.policy.evaluate import person_matches

if TYPE_CHECKING:
    from broker.app import BrokerContext

log = logging.getLogger("broker.people.delegations")

DELEGATION_TYP = "nhi-delegation+jwt"
TOKEN_USE = "delegation"
MAX_TARGETS = 20
MAX_SCOPES = 64
_PREFIX = "dlg_"
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def new_delegation_id(*, now: float | None = None) -> str:
    return _PREFIX + new_credential_id(now=now)


def is_delegation_id(value: str) -> bool:
    return isinstance(value, str) and value.startswith(_PREFIX) and is_credential_id(value[len(_PREFIX):])


def delegation_audience(ctx: BrokerContext) -> str:
    return f"{ctx.issuer}/token"


def grant_delegation(ctx: BrokerContext, person: Person, *, agent: str, targets: list[str],
                     scopes: list[str], ttl: int, via: str,
                     now: float | None = None) -> tuple[DelegationRecord, str]:
    """Record a grant from ``person`` to ``agent`` and return it with its delegation token.

    Refuses (``invalid_request``, ``invalid_target``, ``invalid_scope``, ``access_denied``)
    what no delegation policy would let this person delegate.
    """
    now = time.time() if now is None else now
    idp = ctx.policy_set.human_idp
    if idp is None:
        raise errors.RequestMalformed("delegation needs a human-idp")
    agent = (agent or "").strip()
    if not agent or len(agent) > 512 or _CONTROL.search(agent):
        raise errors.RequestMalformed("agent must be the agent's principal")
    targets = list(dict.fromkeys(t for t in targets if t))
    scopes = list(dict.fromkeys(s for s in scopes if s))
    if not targets or len(targets) > MAX_TARGETS:
        raise errors.RequestMalformed(f"name 1 to {MAX_TARGETS} targets")
    if len(scopes) > MAX_SCOPES or any(not _SCOPE.fullmatch(s) for s in scopes):
        raise errors.ScopeRefused("scopes are malformed")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        raise errors.RequestMalformed("the delegation needs a positive lifetime")
    if ttl > idp.delegation_max_ttl:
        raise errors.RequestMalformed(f"a delegation lasts at most {idp.delegation_max_ttl} seconds")
    offered: set[str] = set()
    for target in targets:
        if target not in ctx.policy_set.targets:
            raise errors.TargetRefused(f"unknown target {target[:100]!r}")
        policies = [p for p in ctx.policy_set.policies
                    if p.issuer == idp.name and p.may_act is not None and target in p.targets
                    and all(person_matches(m, person.claims().get(m.claim)) for m in p.match)]
        if not policies:
            raise errors.PermissionDenied(f"no delegation policy lets you delegate {target!r}",
                                      detail=f"{person.email}: no delegation policy for {target}")
        for p in policies:
            offered |= set(p.scopes or ())
    wider = sorted(set(scopes) - offered)
    if wider:
        raise errors.ScopeRefused("the delegation's scopes are wider than the policies allow",
                                  detail=f"scopes {' '.join(wider)[:120]!r} not offered")
    delegation_id = new_delegation_id(now=now)
    issued = int(now)
    claims = {
        "iss": ctx.issuer, "sub": person.email, "aud": delegation_audience(ctx), "iat": issued,
        "nbf": issued, "exp": issued + ttl, "jti": delegation_id, "token_use": TOKEN_USE,
        "delegation": {"agent": agent, "targets": targets, "scopes": scopes},
        "granted_by": {"email": person.email, "sub": person.sub, "iss": person.iss},
    }
    token = ctx.signer.sign_bytes(canonical_json(claims), typ=DELEGATION_TYP)
    record = DelegationRecord(delegation_id=delegation_id, granted_by=person.email, agent=agent,
                              targets=targets, scopes=scopes, created_at=issued,
                              expires_at=issued + ttl,
                              details={"person": person.record(), "token_sha256": sha256_hex(token),
                                       "via": via})
    draft = EventDraft(type="delegate", principal=person.email, details={
        "delegation_id": delegation_id, "agent": agent, "targets": targets, "scopes": scopes,
        "expires_at": utc_timestamp(record.expires_at), "ttl": ttl, "granted_by": person.email,
        "granted_by_sub": person.sub, "via": via, "token_sha256": sha256_hex(token)})
    ctx.people.record_delegation(draft, record)
    log.info("delegate delegation_id=%s by=%s agent=%s targets=%s", delegation_id, person.email,
             agent, ",".join(targets))
    return record, token


# -- using ----------------------------------------------------------------------------------------

# -- revoking -------------------------------------------------------------------------------------

def revoke_delegation(ctx: BrokerContext, delegation: DelegationRecord, *, by: dict[str, Any],
                      now: float | None = None) -> list[str]:
    """Revoke the grant (idempotent) and every credential minted under it, with their
    descendants. Returns the credential ids revoked by this call. ``by`` names who asked
    (``{"person": email}`` or ``{"client": name}``)."""
    at = int(time.time() if now is None else now)
    draft = EventDraft(type="revoke", principal=delegation.granted_by, details={
        "delegation_id": delegation.delegation_id, "result": "revoked",
        "cause": "delegation revoked", "agent": delegation.agent, **by})
    who = str(by.get("person") or by.get("client") or "unknown")
    event = ctx.people.record_delegation_revoke(delegation.delegation_id, draft,
                    revoked_at=at, revoked_by=who)
    if event is not None:
        log.info("delegation revoked delegation_id=%s by=%s", delegation.delegation_id, who)
    cause = {"cause": "delegation revoked", "delegation_id": delegation.delegation_id, **by}
    revoked: list[str] = []
    failed = False
    # Every credential minted under it (also those an earlier, interrupted call revoked: their
    # descendants may still be live), then each one's descendants.
    for record in ctx.people.credentials_under_delegation(delegation.delegation_id,
                          unrevoked_only=False):
        if record.revoked_at is None and revoke_one(ctx, record, details=cause, now=at):
            revoked.append(record.credential_id)
        result = revoke_descendants(ctx, record, requested_by={
            "delegation_id": delegation.delegation_id, **by})
        revoked.extend(result.revoked)
        failed = failed or bool(result.failed) or not result.complete
    if failed:
        raise errors.BackendUnavailable(
            "some credentials of the delegation could not be revoked yet; try again",
            detail=f"delegation {delegation.delegation_id}: cascade incomplete")
    return revoked


def delegation_json(record: DelegationRecord, *, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    return {"delegation_id": record.delegation_id, "status": record.status(now),
            "granted_by": record.granted_by, "agent": record.agent, "targets": record.targets,
            "scopes": record.scopes, "created_at": utc_timestamp(record.created_at),
            "expires_at": utc_timestamp(record.expires_at),
            "revoked_at": None if record.revoked_at is None else utc_timestamp(record.revoked_at),
            "revoked_by": record.revoked_by, "uses": record.uses}
