"""Claim patterns: exact, glob, regex, any-of lists, integers and booleans — always anchored."""
from __future__ import annotations

import pytest

from broker.policy import ClaimMatcher, claim_value, load_policy_text
from broker.policy.patterns import glob_to_regex
from tests.policy.policy_support import dedent


def matcher(spec: str, claim: str = "claim") -> ClaimMatcher:
    """Compile ``match: {<claim>: <spec>}`` through the real loader."""
    policy_set = load_policy_text(dedent(f"""
        kind: issuer
        name: idp
        issuer: https://idp.example.com
        audience: broker
        ---
        kind: target
        name: api
        type: jwt
        max_ttl: 60
        ---
        kind: policy
        name: p
        issuer: idp
        targets: [api]
        match:
          '{claim}': {spec}
    """))
    (m,) = policy_set.policies[0].match
    return m


# (case name, pattern as written in YAML, claim value, matches?)
CASES = [
    ("exact equal", "acme/payments", "acme/payments", True),
    ("exact is not a prefix", "acme/payments", "acme/payments-evil", False),
    ("exact is not a suffix", "acme/payments", "evil/acme/payments", False),
    ("exact is case-sensitive", "acme/payments", "ACME/payments", False),
    ("exact has no regex meaning", "'acme/pay.ents'", "acme/payments", False),
    ("exact ignores a trailing newline trick", "acme/payments", "acme/payments\n", False),
    ("glob star within a segment", "{glob: 'refs/heads/*'}", "refs/heads/main", True),
    ("glob star matches empty", "{glob: 'refs/heads/*'}", "refs/heads/", True),
    ("glob star does not cross slash", "{glob: 'refs/heads/*'}", "refs/heads/a/b", False),
    ("glob is anchored at the start", "{glob: 'refs/heads/*'}", "xrefs/heads/main", False),
    ("glob is anchored at the end", "{glob: 'refs/heads/main'}", "refs/heads/main2", False),
    ("glob double star crosses slash", "{glob: 'refs/heads/**'}", "refs/heads/release/1.2", True),
    ("glob single star after double star", "{glob: 'acme/**/deploy.yml@*'}",
     "acme/x/.github/deploy.yml@refs/heads/main", False),
    ("glob double star in the middle matches", "{glob: 'acme/**/deploy.yml@**'}",
     "acme/x/.github/deploy.yml@refs/heads/main", True),
    ("glob question mark is one character", "{glob: 'v?'}", "v1", True),
    ("glob question mark is not two", "{glob: 'v?'}", "v12", False),
    ("glob question mark is not a slash", "{glob: 'a?b'}", "a/b", False),
    ("glob dot is literal", "{glob: 'v1.*'}", "v1x2", False),
    ("glob class", "{glob: 'release-[0-9]'}", "release-7", True),
    ("glob class misses", "{glob: 'release-[0-9]'}", "release-x", False),
    ("glob negated class", "{glob: 'env-[!p]*'}", "env-staging", True),
    ("glob negated class misses", "{glob: 'env-[!p]*'}", "env-prod", False),
    ("glob negated class never matches slash", "{glob: 'a[!x]b'}", "a/b", False),
    ("glob regex characters are literal", "{glob: 'a+b(c)'}", "a+b(c)", True),
    ("regex anchored at the start", "{regex: 'acme/.*'}", "evil/acme/x", False),
    ("regex anchored at the end", "{regex: 'acme/[a-z]+'}", "acme/x/evil", False),
    ("regex matches whole value", "{regex: 'acme/.*'}", "acme/payments", True),
    ("regex alternation stays anchored", "{regex: 'main|release'}", "evil-main", False),
    ("regex alternation matches", "{regex: 'main|release'}", "release", True),
    ("regex with explicit anchors", "{regex: '^refs/tags/v[0-9]+$'}", "refs/tags/v12", True),
    ("regex dollar does not allow a trailing newline", "{regex: 'main$'}", "main\n", False),
    ("regex inline flag", "{regex: '(?i)acme/payments'}", "ACME/Payments", True),
    ("list any of, first", "[acme/payments, {glob: 'acme/billing-*'}]", "acme/payments", True),
    ("list any of, second", "[acme/payments, {glob: 'acme/billing-*'}]", "acme/billing-eu", True),
    ("list any of, none", "[acme/payments, {regex: 'acme/billing-.*'}]", "acme/other", False),
    ("integer against integer claim", "42", 42, True),
    ("integer against string claim", "42", "42", True),
    ("integer is decimal", "0x2a", 42, True),
    ("integer mismatch", "42", 420, False),
    ("boolean true", "true", True, True),
    ("boolean against text", "true", "true", True),
    ("boolean false is not true", "false", True, False),
    ("boolean never matches integer 1", "true", 1, False),
    ("quoted number is text", "'007'", "007", True),
    ("structured claim never matches", "{regex: '.*'}", ["a"], False),
    ("null claim never matches", "{regex: '.*'}", None, False),
]


@pytest.mark.parametrize("spec, value, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_pattern(spec, value, expected):
    assert matcher(spec).matches(value) is expected


def test_a_missing_claim_never_matches_even_a_match_all_regex():
    m = matcher("{regex: '.*'}", claim="environment")
    assert m.matches(claim_value({"sub": "x"}, "environment")) is False
    assert m.matches(claim_value({"environment": ""}, "environment")) is True


def test_dotted_claim_paths_reach_nested_claims():
    m = matcher("billing", claim="kubernetes.io.namespace")
    claims = {"kubernetes.io": {"namespace": "billing", "serviceaccount": {"name": "deployer"}}}
    assert m.matches(claim_value(claims, m.claim))
    assert not m.matches(claim_value({"kubernetes.io": {"namespace": "other"}}, m.claim))


def test_every_compiled_pattern_is_used_with_fullmatch_semantics():
    # The glob translation itself carries no anchors; ClaimMatcher.matches uses fullmatch.
    assert glob_to_regex("refs/heads/*") == "refs/heads/[^/]*"
    assert glob_to_regex("a/**") == "a/.*"
    assert glob_to_regex("[!x]") == "[^/x]"
