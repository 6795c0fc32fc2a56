"""Decide whether a verified attestation may have a credential for a target. Default deny.

:func:`evaluate` judges claims that the attestation step has already verified; it does not
look at signatures. Order of judgement:

1. the target must exist (else ``invalid_target``);
2. candidate policies: same issuer, the target among their ``targets``, every ``match``
   entry matching (a missing claim never matches) — none: ``unauthorized_client``;
3. the first candidate, in load order, whose scopes admit the request — none:
   ``invalid_scope``. No requested scopes (``None``) is granted all of the policy's scopes
   (none if it lists none); requested scopes must be a subset of the policy's (a policy
   without ``scopes`` admits only an empty request);
4. the lifetime is the least of the target's ``max_ttl``, the policy's ``max_ttl`` and the
   requested lifetime.

Granted scopes are always returned sorted and without duplicates, whatever the request's order.
Reasons are short and meant for the ledger and the log: names of policies, targets, issuers,
claims and scopes, never claim values.
"""
from __future__ import annotations

from typing import Any

from broker import errors
from broker.common.durations import format_duration
from broker.policy.model import ClaimMatcher, Decision, IssuerConfig, Policy, PolicySet, Target, claim_value

_MAX_LISTED = 3


def evaluate(policy_set: PolicySet, *, issuer: IssuerConfig, claims: dict[str, Any],
             target_name: str, requested_scopes: tuple[str, ...] | None,
             requested_ttl: int | None = None) -> Decision:
    target = policy_set.targets.get(target_name)
    if target is None:
        return Decision(allowed=False, error=errors.TargetRefused,
                        reason=f"unknown target {_short(target_name)}")
    if requested_ttl is not None and (isinstance(requested_ttl, bool) or requested_ttl <= 0):
        return Decision(allowed=False, target=target, error=errors.RequestMalformed,
                        reason="requested lifetime must be a positive number of seconds")

    considered = [p for p in policy_set.policies
                  if p.issuer == issuer.name and target.name in p.targets]
    candidates: list[Policy] = []
    mismatches: list[str] = []
    for policy in considered:
        failed = [m.claim for m in policy.match if not m.matches(claim_value(claims, m.claim))]
        if failed:
            mismatches.append(f"{policy.name} [{', '.join(failed)}]")
        else:
            candidates.append(policy)
    if not considered:
        refusal = f"no policy allows issuer {issuer.name!r} target {target.name!r}"
    else:
        refusal = (f"no policy allows issuer {issuer.name!r} target {target.name!r}: "
                   f"claims did not match in {_listing(mismatches)}")
    return _grant(candidates, target=target, requested_scopes=requested_scopes,
                  requested_ttl=requested_ttl, what="policy", refusal=refusal)


def _grant(candidates: list[Policy], *, target: Target, requested_scopes: tuple[str, ...] | None,
           requested_ttl: int | None, what: str, refusal: str) -> Decision:
    """The common end of every evaluation: no candidate → ``unauthorized_client`` (with
    ``refusal`` as the reason); the first candidate whose scopes admit the request wins, else
    ``invalid_scope``; the lifetime is the least of target, policy and request. ``what`` names
    the kind of policy in reasons ("policy", "delegation policy")."""
    if not candidates:
        return Decision(allowed=False, target=target, error=errors.PolicyDenied, reason=refusal)
    for policy in candidates:
        granted = _granted_scopes(policy, requested_scopes)
        if granted is not None:
            break
    else:
        assert requested_scopes is not None
        return Decision(
            allowed=False, target=target, error=errors.ScopeRefused,
            reason=(f"scopes {_short(' '.join(sorted(set(requested_scopes))))} are not granted "
                    f"by matching {what[:-1]}ies {_listing([p.name for p in candidates])}"),
        )
    ttl = target.max_ttl
    if policy.max_ttl is not None:
        ttl = min(ttl, policy.max_ttl)
    if requested_ttl is not None:
        ttl = min(ttl, requested_ttl)
    scope_text = " ".join(granted) if granted else "none"
    return Decision(
        allowed=True, policy=policy, target=target, scopes=granted, ttl=ttl,
        reason=(f"{what} {policy.name!r} allows target {target.name!r} "
                f"(scopes: {_clip(scope_text)}; ttl {format_duration(ttl)})"),
    )


def _granted_scopes(policy: Policy, requested: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The scopes granted under ``policy``, or None when it does not admit the request."""
    offered = set(policy.scopes or ())
    if requested is None:
        return tuple(sorted(offered))
    wanted = set(requested)
    if not wanted <= offered:
        return None
    return tuple(sorted(wanted))


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        shown += f" and {len(names) - _MAX_LISTED} more"
    return shown


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(text: str, limit: int = 120) -> str:
    """A request value (target name, scopes) quoted and clipped for the ledger."""
    return _clip(repr(text), limit)


def person_matches(matcher: ClaimMatcher, value: Any) -> bool:
    """A delegation policy's ``match`` against a person claim: a list (``groups``) matches when
    any of its entries does (docs/approvals.md)."""
    if isinstance(value, (list, tuple)):
        return any(matcher.matches(v) for v in value if not isinstance(v, (dict, list)))
    return matcher.matches(value)


def evaluate_delegation(policy_set: PolicySet, *, person: dict[str, Any], via: str,
                        actor_issuer: IssuerConfig, actor_claims: dict[str, Any],
                        target_name: str, requested_scopes: tuple[str, ...] | None,
                        requested_ttl: int | None = None) -> Decision:
    """Decide an exchange where an agent (the verified ``actor_token``) acts for a person.

    Candidates are the policies whose ``issuer`` is the human IdP, that list the target, whose
    ``match`` holds for the ``person`` (``email``, ``groups``, ``username``, ``sub``) and whose
    ``may_act`` names the actor's issuer, matches its claims and accepts ``via`` (``delegation``
    or ``id_token``). Then scopes and lifetime as in :func:`evaluate`. Default deny."""
    target = policy_set.targets.get(target_name)
    if target is None:
        return Decision(allowed=False, error=errors.TargetRefused,
                        reason=f"unknown target {_short(target_name)}")
    if requested_ttl is not None and (isinstance(requested_ttl, bool) or requested_ttl <= 0):
        return Decision(allowed=False, target=target, error=errors.RequestMalformed,
                        reason="requested lifetime must be a positive number of seconds")
    idp = policy_set.human_idp
    considered = [p for p in policy_set.policies
                  if idp is not None and p.issuer == idp.name and p.may_act is not None
                  and target.name in p.targets]
    candidates: list[Policy] = []
    mismatches: list[str] = []
    for policy in considered:
        assert policy.may_act is not None
        failed = [f"person.{m.claim}" for m in policy.match
                  if not person_matches(m, person.get(m.claim))]
        if policy.may_act.issuer != actor_issuer.name:
            failed.append("actor issuer")
        else:
            failed += [f"actor.{m.claim}" for m in policy.may_act.match
                       if not m.matches(claim_value(actor_claims, m.claim))]
        if via not in policy.may_act.subject_tokens:
            failed.append(f"subject token {via}")
        if failed:
            mismatches.append(f"{policy.name} [{', '.join(failed)}]")
        else:
            candidates.append(policy)
    if not considered:
        refusal = f"no delegation policy allows target {target.name!r}"
    else:
        refusal = (f"no delegation policy allows target {target.name!r}: "
                   f"did not match in {_listing(mismatches)}")
    return _grant(candidates, target=target, requested_scopes=requested_scopes,
                  requested_ttl=requested_ttl, what="delegation policy", refusal=refusal)
