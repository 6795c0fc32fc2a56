"""evaluate(): default deny, and the four outcomes in order — target, match, scopes, lifetime."""
from __future__ import annotations

import pytest

from broker import errors
from broker.policy import PolicySet, evaluate, load_policy_text
from tests.policy.policy_support import dedent

POLICIES = """
kind: issuer
name: gha
preset: github-actions
audience: https://broker.example.com
---
kind: issuer
name: gitlab
preset: gitlab-ci
audience: https://broker.example.com
---
kind: target
name: reports-api
type: jwt
max_ttl: 15m
---
kind: target
name: billing-api
type: jwt
max_ttl: 1h
---
kind: policy
name: payments-main-read
issuer: gha
targets: [reports-api, billing-api]
match:
  repository: acme/payments
  ref: {glob: "refs/heads/*"}
scopes: [reports:read, billing:read]
max_ttl: 10m
---
kind: policy
name: payments-release-write
issuer: gha
targets: [reports-api]
match:
  repository: acme/payments
  ref: {glob: "refs/tags/v*"}
scopes: [reports:write, reports:read]
---
kind: policy
name: payments-any-admin
issuer: gha
targets: [reports-api]
match:
  repository: acme/payments
scopes: [reports:admin]
max_ttl: 1m
---
kind: policy
name: billing-no-scopes
issuer: gha
targets: [billing-api]
match:
  repository: acme/billing
---
kind: policy
name: gitlab-reports
issuer: gitlab
targets: [reports-api]
match:
  project_path: acme/payments
scopes: [reports:read]
"""

MAIN = {"repository": "acme/payments", "ref": "refs/heads/main", "sub": "repo:acme/payments"}
TAG = dict(MAIN, ref="refs/tags/v1.2.0")
BILLING = {"repository": "acme/billing", "ref": "refs/heads/main"}


@pytest.fixture(scope="module")
def policy_set() -> PolicySet:
    return load_policy_text(dedent(POLICIES), "policies.yaml")


def decide(policy_set, claims, target, scopes=None, ttl=None, issuer="gha"):
    return evaluate(policy_set, issuer=policy_set.issuers[issuer], claims=claims, target_name=target,
                    requested_scopes=scopes, requested_ttl=ttl)


# (case name, claims, target, requested scopes, issuer, expected policy or error, granted scopes)
OUTCOMES = [
    ("unknown target", MAIN, "payroll-db", None, "gha", errors.TargetRefused, ()),
    ("no claims match", {"repository": "evil/payments", "ref": "refs/heads/main"}, "reports-api", None, "gha",
     errors.PolicyDenied, ()),
    ("missing claim never matches", {"ref": "refs/heads/main"}, "reports-api", None, "gha",
     errors.PolicyDenied, ()),
    ("other issuer's policy does not apply", {"project_path": "acme/billing"}, "reports-api", None, "gitlab",
     errors.PolicyDenied, ()),
    ("target not in the matching policy", BILLING, "reports-api", None, "gha", errors.PolicyDenied, ()),
    ("same claims, other issuer", MAIN, "reports-api", None, "gitlab", errors.PolicyDenied, ()),
    ("no scopes requested: all of the first policy's", MAIN, "reports-api", None, "gha",
     "payments-main-read", ("billing:read", "reports:read")),
    ("subset of the first policy", MAIN, "reports-api", ("reports:read",), "gha", "payments-main-read",
     ("reports:read",)),
    ("empty request is a subset", MAIN, "reports-api", (), "gha", "payments-main-read", ()),
    ("first policy lacks the scope, a later one has it", MAIN, "reports-api", ("reports:admin",), "gha",
     "payments-any-admin", ("reports:admin",)),
    ("no single policy has all scopes", MAIN, "reports-api", ("reports:read", "reports:admin"), "gha",
     errors.ScopeRefused, ()),
    ("scope no candidate grants", MAIN, "reports-api", ("reports:write",), "gha", errors.ScopeRefused, ()),
    ("tag ref matches the release policy", TAG, "reports-api", ("reports:write",), "gha",
     "payments-release-write", ("reports:write",)),
    ("granted scopes sorted and deduplicated", TAG, "reports-api",
     ("reports:write", "reports:read", "reports:write"), "gha", "payments-release-write",
     ("reports:read", "reports:write")),
    ("policy without scopes, no request", BILLING, "billing-api", None, "gha", "billing-no-scopes", ()),
    ("policy without scopes, empty request", BILLING, "billing-api", (), "gha", "billing-no-scopes", ()),
    ("policy without scopes refuses any scope", BILLING, "billing-api", ("billing:read",), "gha",
     errors.ScopeRefused, ()),
    ("gitlab issuer and its own claims", {"project_path": "acme/payments"}, "reports-api", None, "gitlab",
     "gitlab-reports", ("reports:read",)),
]


@pytest.mark.parametrize("claims, target, scopes, issuer, expected, granted",
                         [c[1:] for c in OUTCOMES], ids=[c[0] for c in OUTCOMES])
def test_outcome(policy_set, claims, target, scopes, issuer, expected, granted):
    decision = decide(policy_set, claims, target, scopes, issuer=issuer)
    assert decision.reason
    if isinstance(expected, str):
        assert (decision.allowed, decision.error) == (True, None)
        assert decision.policy.name == expected
        assert decision.target.name == target
        assert decision.scopes == granted
        assert decision.ttl > 0
    else:
        assert (decision.allowed, decision.error, decision.policy, decision.scopes) == (False, expected, None, ())
        assert decision.ttl == 0


# (case name, claims, target, scopes, requested ttl, granted ttl)
TTLS = [
    ("policy max_ttl below target's", MAIN, "reports-api", None, None, 600),
    ("request below both", MAIN, "reports-api", None, 120, 120),
    ("request above policy's", MAIN, "reports-api", None, 3600, 600),
    ("policy without max_ttl: target's", TAG, "reports-api", ("reports:write",), None, 900),
    ("policy without max_ttl, request above target's", TAG, "reports-api", ("reports:write",), 7200, 900),
    ("policy max_ttl above... never above target's", MAIN, "billing-api", None, None, 600),
    ("tiny policy max_ttl", MAIN, "reports-api", ("reports:admin",), 300, 60),
]


@pytest.mark.parametrize("claims, target, scopes, requested, granted",
                         [c[1:] for c in TTLS], ids=[c[0] for c in TTLS])
def test_ttl_is_the_least_of_target_policy_and_request(policy_set, claims, target, scopes, requested, granted):
    decision = decide(policy_set, claims, target, scopes, ttl=requested)
    assert decision.allowed and decision.ttl == granted


def test_policy_max_ttl_cannot_exceed_the_target():
    policy_set = load_policy_text(dedent("""
        kind: issuer
        name: idp
        issuer: https://idp.example.com
        audience: b
        ---
        kind: target
        name: api
        type: jwt
        max_ttl: 5m
        ---
        kind: policy
        name: generous
        issuer: idp
        targets: [api]
        match: {sub: x}
        max_ttl: 1d
    """))
    decision = evaluate(policy_set, issuer=policy_set.issuers["idp"], claims={"sub": "x"},
                        target_name="api", requested_scopes=None)
    assert decision.ttl == 300


@pytest.mark.parametrize("ttl", [0, -5])
def test_a_non_positive_requested_ttl_is_refused(policy_set, ttl):
    decision = decide(policy_set, MAIN, "reports-api", ttl=ttl)
    assert (decision.allowed, decision.error) == (False, errors.RequestMalformed)


def test_reasons_are_short_and_carry_no_claim_values(policy_set):
    secretish = {"repository": "evil/payments-s3cr3t", "ref": "refs/heads/zz-s3cr3t"}
    denied = decide(policy_set, secretish, "reports-api")
    assert "s3cr3t" not in denied.reason
    assert denied.reason == ("no policy allows issuer 'gha' target 'reports-api': claims did not match in "
                             "payments-main-read [repository], payments-release-write [repository, ref], "
                             "payments-any-admin [repository]")
    assert decide(policy_set, MAIN, "payroll-db").reason == "unknown target 'payroll-db'"
    assert decide(policy_set, MAIN, "x" * 5000).reason.endswith("...")
    assert len(decide(policy_set, MAIN, "x" * 5000).reason) < 200
    allowed = decide(policy_set, MAIN, "reports-api", ("reports:read",))
    assert allowed.reason == "policy 'payments-main-read' allows target 'reports-api' (scopes: reports:read; ttl 10m)"
    scope = decide(policy_set, MAIN, "reports-api", ("reports:write",))
    assert scope.reason == ("scopes 'reports:write' are not granted by matching policies "
                            "payments-main-read, payments-any-admin")


def test_an_empty_policy_set_denies_everything():
    policy_set = load_policy_text(dedent("""
        kind: issuer
        name: idp
        issuer: https://idp.example.com
        audience: b
        ---
        kind: target
        name: api
        type: jwt
        max_ttl: 5m
    """))
    decision = evaluate(policy_set, issuer=policy_set.issuers["idp"], claims={"sub": "x"},
                        target_name="api", requested_scopes=None)
    assert (decision.allowed, decision.error) == (False, errors.PolicyDenied)
    assert decision.reason == "no policy allows issuer 'idp' target 'api'"
