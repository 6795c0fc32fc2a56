"""Child credentials (fan-out): a credential the broker issued, presented as the ``subject_token``
of a new exchange, buys a narrower credential linked to it.

Verifying the parent (our signature, the ledger record, the one liveness rule) is
:mod:`broker.attestation.parent`; this module is the authorize step: the ``derive`` rules.

What a child may be (the broker's rules, whatever the request asks):

* **target** — allowed by a ``derive`` rule of the policy that authorized the chain's root
  (``derive: [reports-api]`` or ``{target, scopes, max_ttl, from}``; ``from`` restricts the
  rule to parents for the listed targets). A policy without ``derive`` allows no children
  (``unauthorized_client``); a target its rules do not name is ``invalid_target``.
* **scopes** — a subset of the *offered* scopes: the rule's ``scopes`` when it lists them,
  else the parent's scopes; in both cases intersected with the scopes of the nearest ancestor
  for the same target, if any, so a chain never regains a scope it gave up. No scope requested
  means all offered scopes. Anything else is ``invalid_scope``.
* **lifetime** — the least of the target's ``max_ttl``, the rule's ``max_ttl``, the requested
  ``ttl`` and the parent's remaining lifetime: a child never outlives its parent. Asking for
  more than the parent has left is refused (``invalid_request``), not silently cut.
* **depth** — root credentials have depth 0; a child one more than its parent; at most the
  policy's ``max_depth`` (default :data:`~broker.policy.model.DEFAULT_DERIVE_DEPTH`), else
  ``unauthorized_client``.

What a child carries: the parent's principal (``sub``), ``run`` and ``attestation``;
``parent_id``; ``authz`` = ``{"type": "derive", "name", "digest", "rule", "parent_authz"}``
(the policy and rule that allowed this step, wrapping the parent's own authorizer, so the chain
ends at the root's policy or approval); and an RFC 8693 §4.1 ``act`` claim: ``act.sub`` is
the parent credential's id (the actor is the holder of the parent credential, in the broker's
namespace, so ``act.iss`` is omitted), ``act.target`` its target, and the parent's own ``act``
nested inside — the outermost ``act`` is the current actor, the most deeply nested the root.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker import errors
from broker.attestation.parent import Parent
from broker.policy.model import DEFAULT_DERIVE_DEPTH, DeriveRule, Policy, PolicySet, Target


@dataclass(frozen=True)
class ChildPlan:
    """What the child will be; built only when every rule allows it."""
    policy: Policy
    rule: DeriveRule
    target: Target
    scopes: tuple[str, ...]
    ttl: int
    depth: int
    authorizer: dict[str, Any]
    act: dict[str, Any]


def policy_name_of(authorizer: dict[str, Any] | None) -> str | None:
    """The policy whose ``derive`` rules govern a chain, from a credential's authorizer."""
    if not isinstance(authorizer, dict):
        return None
    if authorizer.get("type") in ("policy", "derive"):
        name = authorizer.get("name")
    else:                           # a human approval or a delegation names the policy it was under
        name = authorizer.get("policy")
        if isinstance(name, dict):  # {"name", "digest"} (docs/approvals.md)
            name = name.get("name")
    return name if isinstance(name, str) else None


def plan_child(policy_set: PolicySet, parent: Parent, *, target_name: str,
               requested_scopes: tuple[str, ...] | None, requested_ttl: int | None,
               now: float) -> ChildPlan:
    """Apply the rules in the module docstring; raise a :class:`broker.errors.BrokerError`."""
    record = parent.record
    target = policy_set.targets.get(target_name)
    if target is None:
        raise errors.TargetRefused("unknown target", detail=f"unknown target {target_name[:120]!r}")
    name = policy_name_of(record.authorizer)
    policy = next((p for p in policy_set.policies if p.name == name), None)
    if policy is None:
        raise errors.PolicyDenied("no policy allows this exchange",
                                        detail=f"the parent's policy {name!r} is not loaded")
    if not policy.derive:
        raise errors.PolicyDenied("no policy allows this exchange",
                                        detail=f"policy {policy.name!r} has no derive rules")
    rule = next((r for r in policy.derive if r.target == target.name
                 and (r.from_targets is None or record.target in r.from_targets)), None)
    if rule is None:
        raise errors.TargetRefused("the parent credential may not derive this target",
                                   detail=f"policy {policy.name!r} does not let {record.target!r} "
                                          f"derive {target.name!r}")
    depth = parent.depth + 1
    max_depth = policy.max_depth or DEFAULT_DERIVE_DEPTH
    if depth > max_depth:
        raise errors.PolicyDenied("maximum derivation depth reached",
                                        detail=f"depth {depth} exceeds max_depth {max_depth} "
                                               f"of policy {policy.name!r}")
    if requested_ttl is not None and (isinstance(requested_ttl, bool) or requested_ttl <= 0):
        raise errors.RequestMalformed("requested lifetime must be positive",
                                    detail="requested lifetime must be a positive number of seconds")

    scopes = _child_scopes(parent, policy, rule, target, requested_scopes)
    ttl = _child_ttl(parent, rule, target, requested_ttl, now=now)

    authorizer = {"type": "derive", "name": policy.name, "digest": policy.digest,
                  "rule": rule.target, "parent_authz": record.authorizer}
    act: dict[str, Any] = {"sub": record.credential_id, "target": record.target}
    if isinstance(parent.claims.get("act"), dict):
        act["act"] = parent.claims["act"]
    return ChildPlan(policy=policy, rule=rule, target=target, scopes=scopes, ttl=ttl, depth=depth,
                     authorizer=authorizer, act=act)


def _child_scopes(parent: Parent, policy: Policy, rule: DeriveRule, target: Target,
                  requested_scopes: tuple[str, ...] | None) -> tuple[str, ...]:
    """The offered scopes (the rule's or the parent's, narrowed by the nearest ancestor for the
    same target); the requested ones when they are a subset, all offered when none is asked."""
    record = parent.record
    offered = set(rule.scopes) if rule.scopes is not None else set(record.scope.split())
    same_target = next((a for a in parent.lineage if a.target == target.name), None)
    if same_target is not None:
        offered &= set(same_target.scope.split())
    if requested_scopes is None:
        return tuple(sorted(offered))
    if set(requested_scopes) <= offered:
        return tuple(sorted(set(requested_scopes)))
    wider = " ".join(sorted(set(requested_scopes) - offered))
    raise errors.ScopeRefused("requested scope is not allowed",
                              detail=f"scopes {wider[:120]!r} are wider than the derive rule "
                                     f"{target.name!r} of policy {policy.name!r} allows")


def _child_ttl(parent: Parent, rule: DeriveRule, target: Target, requested_ttl: int | None, *,
               now: float) -> int:
    """The least of the target's and the rule's ``max_ttl``, the requested ttl and the parent's
    remaining lifetime; asking for more than the parent has left is refused."""
    remaining = parent.record.expires_at - int(now)
    if requested_ttl is not None and requested_ttl > remaining:
        raise errors.RequestMalformed("requested lifetime outlives the parent credential",
                                      detail=f"requested ttl {requested_ttl}s, parent has {remaining}s left")
    ttl = min(target.max_ttl, remaining)
    if rule.max_ttl is not None:
        ttl = min(ttl, rule.max_ttl)
    if requested_ttl is not None:
        ttl = min(ttl, requested_ttl)
    return ttl
