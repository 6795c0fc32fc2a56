"""The `derive` and `max_depth` policy keys: compiled at load, every mistake a file:line problem."""
from __future__ import annotations

from textwrap import dedent

import pytest

from broker.policy import DeriveRule, PolicyError, load_policy_text

HEAD = dedent("""\
    kind: issuer
    name: gha
    preset: github-actions
    audience: b
    ---
    kind: target
    name: db
    type: jwt
    max_ttl: 1h
    ---
    kind: target
    name: api
    type: jwt
    max_ttl: 1h
    ---
    kind: policy
    name: p
    issuer: gha
    targets: [db]
    match: {sub: x}
    scopes: [read]
""")
LINE = HEAD.count("\n") + 1          # the first line after HEAD


def test_derive_compiles_and_is_kept_in_extra():
    policy_set = load_policy_text(HEAD + dedent("""\
        derive:
          - api
          - target: db
            scopes: [read]
            max_ttl: 5m
            from: [db, api]
        max_depth: 4
    """), "p.yaml")
    (policy,) = policy_set.policies
    assert policy.derive == (DeriveRule(target="api"),
                             DeriveRule(target="db", scopes=("read",), max_ttl=300, from_targets=("db", "api")))
    assert policy.max_depth == 4
    assert policy.extra["derive"][0] == "api" and policy.extra["max_depth"] == 4


def test_a_policy_without_derive_derives_nothing():
    (policy,) = load_policy_text(HEAD, "p.yaml").policies
    assert policy.derive == () and policy.max_depth is None and policy.extra == {}


def test_derive_changes_the_policy_digest():
    plain = load_policy_text(HEAD, "p.yaml").policies[0].digest
    with_derive = load_policy_text(HEAD + "derive: [api]\n", "p.yaml").policies[0].digest
    assert plain != with_derive


@pytest.mark.parametrize("case, text, line, message", [
    ("not a list", "derive: api\n", 0, "derive must be a non-empty list"),
    ("empty list", "derive: []\n", 0, "got an empty list"),
    ("unknown target", "derive: [nope]\n", 0, "unknown target 'nope'"),
    ("unknown target in from", "derive:\n  - {target: api, from: [nope]}\n", 1, "unknown target 'nope'"),
    ("twice", "derive:\n  - api\n  - {target: api}\n", 2, "derive lists target 'api' twice"),
    ("unknown key", "derive:\n  - {target: api, scope: [read]}\n", 1, "derive: unknown key 'scope'"),
    ("no target", "derive:\n  - {scopes: [read]}\n", 1, "needs 'target'"),
    ("number entry", "derive:\n  - 7\n", 1, "a target name or a mapping"),
    ("bad scope", "derive:\n  - {target: api, scopes: ['a b']}\n", 1, "must not contain spaces"),
    ("bad max_ttl", "derive:\n  - {target: api, max_ttl: 1w}\n", 1, "derive: max_ttl: not a duration"),
    ("empty from", "derive:\n  - {target: api, from: []}\n", 1, "from must be a non-empty list"),
    ("max_depth zero", "derive: [api]\nmax_depth: 0\n", 1, "max_depth must be a whole number from 1 to 10"),
    ("max_depth too deep", "derive: [api]\nmax_depth: 11\n", 1, "from 1 to 10, got 11"),
    ("max_depth text", "derive: [api]\nmax_depth: three\n", 1, "got a string"),
    ("max_depth alone", "max_depth: 2\n", 0, "max_depth has no effect without derive"),
])
def test_derive_problems_name_file_and_line(case, text, line, message):
    with pytest.raises(PolicyError) as caught:
        load_policy_text(HEAD + text, "p.yaml")
    problems = [(p.file, p.line, p.message) for p in caught.value.problems]
    assert any(f == "p.yaml" and ln == LINE + line and message in m for f, ln, m in problems), problems
