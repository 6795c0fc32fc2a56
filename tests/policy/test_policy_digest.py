"""Policy digests: deterministic, sensitive to content, blind to key order and YAML spelling."""
from __future__ import annotations

import pytest

from broker.common.canonical import canonical_json, sha256_hex
from broker.policy import load_policy_text
from tests.policy.policy_support import dedent

HEAD = """
kind: issuer
name: gha
preset: github-actions
audience: b
---
kind: target
name: api
type: jwt
max_ttl: 1h
---
"""

POLICY = """
kind: policy
name: p
issuer: gha
targets: [api]
match:
  repository: acme/payments
  ref: {glob: "refs/heads/*"}
scopes: [read]
max_ttl: 10m
"""


def load(policy: str = POLICY, head: str = HEAD):
    return load_policy_text(dedent(head) + dedent(policy))


def test_the_digest_is_sha256_of_the_canonical_document():
    (policy,) = load().policies
    document = {"kind": "policy", "name": "p", "issuer": "gha", "targets": ["api"],
                "match": {"repository": "acme/payments", "ref": {"glob": "refs/heads/*"}},
                "scopes": ["read"], "max_ttl": "10m"}
    assert policy.digest == "sha256:" + sha256_hex(canonical_json(document))


def test_same_document_same_digest():
    assert load().policies[0].digest == load().policies[0].digest
    assert load().digest == load().digest


def test_key_order_comments_and_yaml_style_do_not_matter():
    reordered = """
        # same policy, other spelling
        max_ttl: "10m"
        scopes:
          - read
        match: {ref: {glob: 'refs/heads/*'}, repository: "acme/payments"}
        targets:
          - api
        issuer: gha
        name: p
        kind: policy
    """
    assert load(reordered).policies[0].digest == load().policies[0].digest
    assert load(reordered).digest == load().digest


@pytest.mark.parametrize("old, new", [
    ("acme/payments", "acme/payment"),
    ("refs/heads/*", "refs/heads/**"),
    ("{glob: \"refs/heads/*\"}", "{regex: \"refs/heads/*\"}"),
    ("[read]", "[read, write]"),
    ("max_ttl: 10m", "max_ttl: 600"),            # same lifetime, other document: other digest
    ("name: p", "name: q"),
], ids=["exact value", "glob", "glob to regex", "scopes", "max_ttl spelling", "name"])
def test_any_change_changes_the_digest(old, new):
    assert old in POLICY
    changed = load(POLICY.replace(old, new))
    assert changed.policies[0].digest != load().policies[0].digest
    assert changed.digest != load().digest


def test_the_set_digest_covers_policy_order_and_the_other_documents():
    second = POLICY.replace("name: p", "name: q").replace("[read]", "[write]")
    both = load(POLICY + "---\n" + second)
    swapped = load(second + "---\n" + POLICY)
    assert [p.digest for p in both.policies] == list(reversed([p.digest for p in swapped.policies]))
    assert both.digest != swapped.digest                      # order decides which policy wins
    longer_target = load(head=HEAD.replace("max_ttl: 1h", "max_ttl: 2h"))
    assert longer_target.policies[0].digest == load().policies[0].digest
    assert longer_target.digest != load().digest
    other_audience = load(head=HEAD.replace("audience: b", "audience: c"))
    assert other_audience.digest != load().digest
