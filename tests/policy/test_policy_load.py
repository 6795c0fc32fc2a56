"""Valid policy files: what they compile to, presets and overrides, multi-file loading."""
from __future__ import annotations

from pathlib import Path

import pytest

from broker.policy import PolicyError, Problem, check_policy_dir, load_policy_dir, load_policy_text
from broker.policy.presets import PRESETS
from tests.policy.policy_support import CLIENT_SECRET_SHA256, dedent

EXAMPLE = f"""
kind: issuer                 # a trusted attestation issuer
name: gha
preset: github-actions
issuer: https://token.actions.githubusercontent.com
audience: https://broker.example.com
---
kind: target
name: reports-api
type: jwt
audience: https://reports.internal
max_ttl: 15m
---
kind: policy
name: payments-main-reports
issuer: gha
targets: [reports-api]
match:
  repository: acme/payments
  ref: {{glob: "refs/heads/*"}}
scopes: [reports:read]
max_ttl: 10m
---
kind: client
name: auditor
secret_sha256: {CLIENT_SECRET_SHA256.upper()}
may: [audit, introspect, revoke]
"""


def test_the_documented_example_compiles():
    policy_set = load_policy_text(dedent(EXAMPLE), "example.yaml")

    gha = policy_set.issuers["gha"]
    assert (gha.preset, gha.issuer, gha.audience) == (
        "github-actions", "https://token.actions.githubusercontent.com", "https://broker.example.com")
    assert str(gha.source) == "example.yaml:1"

    target = policy_set.targets["reports-api"]
    assert (target.type, target.audience, target.max_ttl, target.options) == (
        "jwt", "https://reports.internal", 900, {})

    (policy,) = policy_set.policies
    assert policy.name == "payments-main-reports"
    assert policy.issuer == "gha" and policy.targets == ("reports-api",)
    assert [(m.claim, m.spec) for m in policy.match] == [
        ("repository", "acme/payments"), ("ref", {"glob": "refs/heads/*"})]
    assert policy.scopes == ("reports:read",) and policy.max_ttl == 600
    assert policy.digest.startswith("sha256:") and len(policy.digest) == 7 + 64
    assert policy.extra == {}
    assert str(policy.source) == "example.yaml:13"

    client = policy_set.clients["auditor"]
    assert client.secret_sha256 == CLIENT_SECRET_SHA256          # stored lower-case
    assert client.may == frozenset({"audit", "introspect", "revoke"})
    assert policy_set.digest.startswith("sha256:")


@pytest.mark.parametrize("preset", ["github-actions", "gitlab-ci"])
def test_a_preset_fills_every_default(preset):
    policy_set = load_policy_text(f"kind: issuer\nname: ci\npreset: {preset}\naudience: broker\n")
    issuer, defaults = policy_set.issuers["ci"], PRESETS[preset]
    assert issuer.issuer == defaults.issuer
    assert issuer.algorithms == defaults.algorithms
    assert issuer.principal == defaults.principal
    assert issuer.run == defaults.run and issuer.run is not defaults.run
    assert issuer.required_claims == defaults.required_claims
    assert (issuer.jwks_uri, issuer.jwks_file, issuer.max_token_age, issuer.leeway) == (None, None, None, 60)


def test_the_default_preset_is_oidc():
    issuer = load_policy_text(
        "kind: issuer\nname: idp\nissuer: https://idp.example.com\naudience: broker\n").issuers["idp"]
    assert issuer.preset == "oidc"
    assert issuer.principal == PRESETS["oidc"].principal
    assert issuer.algorithms == PRESETS["oidc"].algorithms


def test_every_preset_field_can_be_overridden():
    issuer = load_policy_text(dedent("""
        kind: issuer
        name: gitlab-self-hosted
        preset: gitlab-ci
        issuer: https://gitlab.acme.example
        audience: https://broker.acme.example
        jwks_uri: https://gitlab.acme.example/oauth/discovery/keys?v=2
        algorithms: [ES256, RS256, ES256]
        principal: "gitlab:{namespace_path}/{project_path}@{ref}"
        run:
          job: job_id             # unchanged
          sha: commit.sha         # replaced
          session: agent.session  # added
          actor: null             # removed
        required_claims: [namespace_path, ref, sub]
        max_token_age: 10m
        leeway: 0
    """)).issuers["gitlab-self-hosted"]
    assert issuer.issuer == "https://gitlab.acme.example"
    assert issuer.jwks_uri == "https://gitlab.acme.example/oauth/discovery/keys?v=2"
    assert issuer.algorithms == ("ES256", "RS256")
    assert issuer.principal == "gitlab:{namespace_path}/{project_path}@{ref}"
    expected_run = dict(PRESETS["gitlab-ci"].run, sha="commit.sha", session="agent.session")
    del expected_run["actor"]
    assert issuer.run == expected_run
    # required_claims adds to the preset's; it never removes one
    assert issuer.required_claims == PRESETS["gitlab-ci"].required_claims + ("namespace_path", "ref")
    assert (issuer.max_token_age, issuer.leeway) == (600, 0)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080", "http://127.1.2.3/idp", "http://localhost:9000/", "http://[::1]:8443",
    "https://idp.example.com/realms/ci",
])
def test_http_is_accepted_only_on_loopback(url):
    issuer = load_policy_text(f"kind: issuer\nname: idp\nissuer: '{url}'\naudience: b\n").issuers["idp"]
    assert issuer.issuer == url


def test_kubernetes_preset_with_its_cluster_issuer():
    issuer = load_policy_text(dedent("""
        kind: issuer
        name: prod-cluster
        preset: kubernetes
        issuer: https://oidc.prod.acme.example
        audience: nhi-broker
    """)).issuers["prod-cluster"]
    assert issuer.principal == "k8s:{kubernetes.io.namespace}:{kubernetes.io.serviceaccount.name}"
    assert issuer.algorithms == ("RS256", "ES256")


@pytest.mark.parametrize("written, seconds", [("90s", 90), ("15m", 900), ("1h", 3600), ("300", 300), ("45", 45),
                                             ("365d", 365 * 86400), ("31536000", 365 * 86400)])
def test_target_durations_and_default_audience(written, seconds):
    target = load_policy_text(f"kind: target\nname: api\ntype: jwt\nmax_ttl: {written}\n").targets["api"]
    assert (target.max_ttl, target.audience) == (seconds, "api")


def test_policy_without_scopes_or_max_ttl():
    policy_set = load_policy_text(dedent("""
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
        kind: policy
        name: plain
        issuer: gha
        targets: [api]
        match:
          on: push                      # a YAML 1.1 boolean word, kept as the claim name "on"
          run_attempt: 1
          ref_protected: true
        ---
        kind: policy
        name: empty-scopes
        issuer: gha
        targets: [api]
        match: {sub: x}
        scopes: []
    """))
    plain, empty = policy_set.policies
    assert (plain.scopes, plain.max_ttl) == (None, None)
    assert [(m.claim, m.spec) for m in plain.match] == [("on", "push"), ("run_attempt", 1), ("ref_protected", True)]
    assert empty.scopes == ()


def test_empty_documents_and_comment_only_files_are_ignored(tmp_path):
    (tmp_path / "00-empty.yaml").write_text("# nothing yet\n")
    (tmp_path / "10-target.yaml").write_text("---\nkind: target\nname: api\ntype: jwt\nmax_ttl: 60\n---\n")
    policy_set = load_policy_dir(tmp_path)
    assert list(policy_set.targets) == ["api"]


def _write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.write_text(dedent(text))
    return path


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """Documents spread over files whose names decide the order; references cross files."""
    _write(tmp_path, "30-policies.yaml", """
        kind: policy
        name: c-first-in-30
        issuer: gha
        targets: [reports-api, billing]
        match: {repository: acme/payments}
        ---
        kind: policy
        name: a-second-in-30
        issuer: k8s
        targets: [billing]
        match: {kubernetes.io.namespace: billing}
    """)
    _write(tmp_path, "10-issuers.yml", """
        kind: issuer
        name: gha
        preset: github-actions
        audience: https://broker.example.com
        ---
        kind: issuer
        name: k8s
        preset: kubernetes
        issuer: https://k8s.example.com
        audience: nhi-broker
    """)
    _write(tmp_path, "20-targets.yaml", """
        kind: target
        name: reports-api
        type: jwt
        max_ttl: 15m
        ---
        kind: target
        name: billing
        type: jwt
        max_ttl: 5m
    """)
    _write(tmp_path, "40-more.yaml", """
        kind: policy
        name: b-in-40
        issuer: gha
        targets: [billing]
        match: {repository: acme/billing}
    """)
    # never read: other suffixes, hidden files, sub-folders
    _write(tmp_path, "README.md", "kind: nonsense\n")
    _write(tmp_path, ".#30-policies.yaml", "kind: nonsense\n")
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub", "50-nested.yaml", "kind: nonsense\n")
    return tmp_path


def test_a_directory_loads_in_file_name_order_with_cross_file_references(policy_dir):
    policy_set = load_policy_dir(policy_dir)
    assert [p.name for p in policy_set.policies] == ["c-first-in-30", "a-second-in-30", "b-in-40"]
    assert sorted(policy_set.issuers) == ["gha", "k8s"]
    assert sorted(policy_set.targets) == ["billing", "reports-api"]
    assert policy_set.issuers["gha"].source.file == str(policy_dir / "10-issuers.yml")
    assert policy_set.max_target_ttl() == 900
    assert check_policy_dir(policy_dir) == []


def test_check_policy_dir_lists_the_problems(policy_dir):
    _write(policy_dir, "35-broken.yaml", """
        kind: policy
        name: c-first-in-30
        issuer: gitlab
        targets: [reports-api]
        match: {sub: x}
    """)
    problems = check_policy_dir(policy_dir)
    broken = str(policy_dir / "35-broken.yaml")
    assert problems == [
        Problem(broken, 2, f"policy 'c-first-in-30': duplicate policy name 'c-first-in-30' "
                           f"(first defined at {policy_dir / '30-policies.yaml'}:2)"),
        Problem(broken, 3, "policy 'c-first-in-30': unknown issuer 'gitlab' (defined issuers: gha, k8s)"),
    ]


def test_a_missing_directory_is_one_problem(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(PolicyError) as info:
        load_policy_dir(missing)
    assert info.value.problems == [Problem(str(missing), 0, "policy directory does not exist")]
    assert str(info.value) == f"{missing}: policy directory does not exist"


def test_an_empty_directory_is_an_empty_policy_set_that_denies_everything(tmp_path):
    policy_set = load_policy_dir(tmp_path)
    assert (policy_set.issuers, policy_set.targets, policy_set.policies, policy_set.clients) == ({}, {}, (), {})


def test_a_file_that_is_not_utf8_is_a_problem(tmp_path):
    (tmp_path / "bad.yaml").write_bytes(b"kind: target\nname: \xff\n")
    problems = check_policy_dir(tmp_path)
    assert [(p.file, p.line) for p in problems] == [(str(tmp_path / "bad.yaml"), 0)]
    assert "not UTF-8" in problems[0].message


def test_jwks_file_is_relative_to_the_policy_file(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ci.json").write_text('{"keys": []}')
    _write(tmp_path, "issuers.yaml", """
        kind: issuer
        name: local-ci
        issuer: http://127.0.0.1:9999
        audience: broker
        jwks_file: keys/ci.json
    """)
    issuer = load_policy_dir(tmp_path).issuers["local-ci"]
    assert issuer.jwks_file == str((tmp_path / "keys" / "ci.json").resolve())


def test_future_policy_keys_are_kept_in_extra(monkeypatch):
    import broker.policy.load as load

    text = dedent("""
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
        kind: policy
        name: p
        issuer: gha
        targets: [api]
        match: {sub: x}
        reviewers: {required: true, names: [alice]}
    """)
    with pytest.raises(PolicyError):
        load_policy_text(text)
    monkeypatch.setattr(load, "ALLOWED_EXTRA_POLICY_KEYS", frozenset({"reviewers"}))
    (policy,) = load_policy_text(text).policies
    assert policy.extra == {"reviewers": {"required": True, "names": ["alice"]}}
