"""Trust policies: strict YAML parse -> compile (anchored patterns, strict keys) -> evaluate().

See :mod:`broker.policy.load` for the file format and the choices it makes,
:mod:`broker.policy.documents` for each document kind's schema (as data, read by the one walker
of :mod:`broker.policy.walk`), :mod:`broker.policy.patterns` for pattern semantics and
:mod:`broker.policy.evaluate` for the decision order. Target kinds (and their keys) come from
:mod:`broker.targets.registry`.
"""
from __future__ import annotations

from broker.policy.evaluate import evaluate, evaluate_delegation, person_matches
from broker.policy.load import (
    ALLOWED_EXTRA_POLICY_KEYS,
    FUTURE_POLICY_KEYS,
    check_policy_dir,
    load_policy_dir,
    load_policy_files,
    load_policy_text,
)
from broker.policy.model import (
    ApprovalRule,
    ClaimMatcher,
    Client,
    Decision,
    DeriveRule,
    HumanIdP,
    IssuerConfig,
    MayAct,
    Policy,
    PolicySet,
    SourceRef,
    Target,
    claim_text,
    claim_value,
)
from broker.policy.problems import PolicyError, Problem
from broker.policy.targets import TARGET_TYPES, TargetContext, TargetSchema, register_target_type

__all__ = [
    "ALLOWED_EXTRA_POLICY_KEYS", "FUTURE_POLICY_KEYS", "TARGET_TYPES", "ApprovalRule", "HumanIdP",
    "MayAct", "evaluate_delegation", "person_matches",
    "ClaimMatcher", "Client", "Decision", "DeriveRule", "IssuerConfig", "Policy", "PolicyError", "PolicySet",
    "Problem", "SourceRef", "Target", "TargetContext", "TargetSchema",
    "check_policy_dir", "claim_text", "claim_value", "evaluate", "load_policy_dir",
    "load_policy_files", "load_policy_text", "register_target_type",
]
