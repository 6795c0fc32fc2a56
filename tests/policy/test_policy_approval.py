"""The policy keys of issue 7: `approval`, `kind: human-idp`, `may_act` — loaded strictly, every
problem with its file:line."""
from __future__ import annotations

from textwrap import dedent

import pytest

from broker.policy import PolicyError, load_policy_text

HEAD = """\
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
IDP = """\
kind: human-idp
name: corp
issuer: https://login.acme.example
client_id: broker
client_secret_env: CORP_SECRET
---
"""
POLICY = "kind: policy\nname: p\nissuer: gha\ntargets: [api]\nmatch: {sub: x}\n"


def load(text: str):
    return load_policy_text(text, "p.yaml")


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(text)
    return [str(p) for p in caught.value.problems]


def test_a_full_approval_policy_compiles():
    policy_set = load(HEAD + IDP + POLICY + dedent("""\
        approval:
          approvers: ["group:dba", "Alice@Acme.example"]
          required: 2
          not_self: false
          expires_in: 45m
        """))
    (policy,) = policy_set.policies
    assert policy.approval.emails == ("alice@acme.example",) and policy.approval.groups == ("dba",)
    assert policy.approval.required == 2 and policy.approval.not_self is False
    assert policy.approval.expires_in == 2700
    assert policy.approval.approvers == ("group:dba", "alice@acme.example")
    assert "approval" in policy.extra
    idp = policy_set.human_idp
    assert idp.name == "corp" and idp.api_audience == "broker" and idp.email_claim == "email"
    assert idp.username_claim == "preferred_username" and idp.algorithms == ("RS256", "ES256")


def test_defaults_of_approval():
    (policy,) = load(HEAD + IDP + POLICY + "approval: {approvers: [bob@acme.example]}\n").policies
    assert (policy.approval.required, policy.approval.not_self, policy.approval.expires_in) == (1, True, 1800)


def test_the_approval_is_part_of_the_digest():
    one = load(HEAD + IDP + POLICY + "approval: {approvers: [bob@acme.example]}\n").policies[0]
    two = load(HEAD + IDP + POLICY + "approval: {approvers: [bob@acme.example], required: 1}\n").policies[0]
    three = load(HEAD + IDP + POLICY + "approval: {approvers: [eve@acme.example]}\n").policies[0]
    assert one.digest != two.digest != three.digest


def test_a_delegation_policy_compiles():
    (policy,) = load(HEAD + IDP + dedent("""\
        kind: policy
        name: agents
        issuer: corp
        targets: [api]
        match: {groups: staff, email: {glob: "*@acme.example"}}
        scopes: [read]
        may_act:
          issuer: gha
          match: {repository: acme/agents}
          subject_tokens: [delegation, id_token]
        """)).policies
    assert policy.may_act.issuer == "gha" and policy.may_act.subject_tokens == ("delegation", "id_token")
    assert [m.claim for m in policy.may_act.match] == ["repository"]


CASES = [
    ("approvers missing", POLICY + "approval: {required: 1}\n", 6, "approval: missing required key 'approvers'"),
    ("approvers empty", POLICY + "approval: {approvers: []}\n", 6, "approvers must be a non-empty list"),
    ("approver not an email", POLICY + "approval: {approvers: [alice]}\n", 6,
     "an approver is 'group:<name>' or an email address, got 'alice'"),
    ("empty group", POLICY + "approval: {approvers: ['group:']}\n", 6, "group name in 'group:' must be non-empty"),
    ("duplicate approver", POLICY + "approval:\n  approvers: [a@b.c, A@b.c]\n", 7, "approvers lists 'A@b.c' twice"),
    ("required zero", POLICY + "approval: {approvers: [a@b.c], required: 0}\n", 6, "required must be a whole number"),
    ("required too many", POLICY + "approval: {approvers: [a@b.c], required: 2}\n", 6,
     "required is 2 but only 1 approver is listed"),
    ("required bool", POLICY + "approval: {approvers: [a@b.c], required: true}\n", 6, "got a boolean"),
    ("not_self string", POLICY + "approval: {approvers: [a@b.c], not_self: 'yes'}\n", 6,
     "not_self must be true or false"),
    ("expires_in bad", POLICY + "approval: {approvers: [a@b.c], expires_in: soon}\n", 6, "expires_in: not a duration"),
    ("expires_in long", POLICY + "approval: {approvers: [a@b.c], expires_in: 30d}\n", 6, "from 1m to 7d"),
    ("approval unknown key", POLICY + "approval: {approvers: [a@b.c], quorum: 2}\n", 6,
     "approval: unknown key 'quorum'"),
    ("approval not a mapping", POLICY + "approval: [a@b.c]\n", 6, "approval must be a mapping"),
]


@pytest.mark.parametrize("name,body,line,message", CASES, ids=[c[0] for c in CASES])
def test_approval_problems_name_file_and_line(name, body, line, message):
    found = problems(HEAD + IDP + body)
    offset = (HEAD + IDP).count("\n")
    assert any(p.startswith(f"p.yaml:{line + offset}:") and message in p for p in found), found


def test_required_may_exceed_the_list_with_groups():
    (policy,) = load(HEAD + IDP + POLICY + "approval: {approvers: ['group:dba', a@b.c], required: 3}\n").policies
    assert policy.approval.required == 3


def test_approval_needs_a_human_idp():
    found = problems(HEAD + POLICY + "approval: {approvers: [a@b.c]}\n")
    assert any("approval needs a 'kind: human-idp' document" in p for p in found), found


IDP_CASES = [
    ("inline secret", "kind: human-idp\nname: c\nissuer: https://x.example\nclient_id: b\nclient_secret: hunter2\n", 5,
     "client_secret must never be written in a policy file"),
    ("no secret", "kind: human-idp\nname: c\nissuer: https://x.example\nclient_id: b\n", 1,
     "give exactly one of 'client_secret_env' and 'client_secret_file'"),
    ("both secrets", "kind: human-idp\nname: c\nissuer: https://x.example\nclient_id: b\nclient_secret_env: A\n"
     "client_secret_file: f\n", 1, "give exactly one of"),
    ("bad env name", "kind: human-idp\nname: c\nissuer: https://x.example\nclient_id: b\nclient_secret_env: 'A B'\n", 5,
     "client_secret_env must be an environment variable name"),
    ("http issuer", "kind: human-idp\nname: c\nissuer: http://x.example\nclient_id: b\nclient_secret_env: A\n", 3,
     "issuer must use https"),
    ("hmac alg", "kind: human-idp\nname: c\nissuer: https://x.example\nclient_id: b\nclient_secret_env: A\n"
     "algorithms: [HS256]\n", 6, "HMAC uses a shared secret"),
    ("scopes without openid", "kind: human-idp\nname: c\nissuer: https://x.example\nclient_id: b\nclient_secret_env: A\n"
     "scopes: [email]\n", 6, "scopes must include 'openid'"),
    ("unknown key", "kind: human-idp\nname: c\nissuer: https://x.example\nclient_id: b\nclient_secret_env: A\n"
     "tenant: x\n", 6, "unknown key 'tenant'"),
    ("bad ci_logins", "kind: human-idp\nname: c\nissuer: https://x.example\nclient_id: b\nclient_secret_env: A\n"
     "ci_logins: {octocat: octocat}\n", 6, "ci_logins.octocat: want an email address"),
    ("missing client_id", "kind: human-idp\nname: c\nissuer: https://x.example\nclient_secret_env: A\n", 1,
     "missing required key 'client_id'"),
]


@pytest.mark.parametrize("name,body,line,message", IDP_CASES, ids=[c[0] for c in IDP_CASES])
def test_human_idp_problems(name, body, line, message):
    found = problems(body)
    assert any(p.startswith(f"p.yaml:{line}:") and message in p for p in found), found
    assert not any("hunter2" in p for p in found)                     # a pasted secret is never echoed


def test_only_one_human_idp():
    found = problems(IDP + IDP.replace("name: corp", "name: corp2"))
    assert any("only one human-idp document is allowed" in p for p in found), found


def test_a_human_idp_and_an_issuer_cannot_share_a_name():
    found = problems(HEAD + IDP.replace("name: corp", "name: gha"))
    assert any("already used by issuer 'gha'" in p for p in found), found


DELEGATION_CASES = [
    ("human policy without may_act", "kind: policy\nname: d\nissuer: corp\ntargets: [api]\nmatch: {email: a@b.c}\n",
     "such a policy is for delegation and needs 'may_act'"),
    ("may_act on a workload policy", POLICY + "may_act: {issuer: gha, match: {repository: x}}\n",
     "may_act needs a policy whose issuer is the human-idp"),
    ("person claim unknown", "kind: policy\nname: d\nissuer: corp\ntargets: [api]\nmatch: {repository: x}\n"
     "may_act: {issuer: gha, match: {repository: x}}\n", "'repository' is not a person claim"),
    ("may_act unknown issuer", "kind: policy\nname: d\nissuer: corp\ntargets: [api]\nmatch: {email: a@b.c}\n"
     "may_act: {issuer: gitlab, match: {repository: x}}\n", "unknown issuer 'gitlab'"),
    ("may_act without match", "kind: policy\nname: d\nissuer: corp\ntargets: [api]\nmatch: {email: a@b.c}\n"
     "may_act: {issuer: gha}\n", "may_act: missing required key 'match'"),
    ("may_act bad pattern", "kind: policy\nname: d\nissuer: corp\ntargets: [api]\nmatch: {email: a@b.c}\n"
     "may_act: {issuer: gha, match: {repository: {regex: '('}}}\n", "may_act.match.repository: invalid regex"),
    ("may_act bad subject token", "kind: policy\nname: d\nissuer: corp\ntargets: [api]\nmatch: {email: a@b.c}\n"
     "may_act: {issuer: gha, match: {sub: x}, subject_tokens: [password]}\n", "subject_tokens entries are"),
    ("approval on a delegation policy", "kind: policy\nname: d\nissuer: corp\ntargets: [api]\nmatch: {email: a@b.c}\n"
     "may_act: {issuer: gha, match: {sub: x}}\napproval: {approvers: [a@b.c]}\n",
     "approval cannot be combined with a human-idp issuer"),
]


@pytest.mark.parametrize("name,body,message", DELEGATION_CASES, ids=[c[0] for c in DELEGATION_CASES])
def test_delegation_policy_problems(name, body, message):
    found = problems(HEAD + IDP + body)
    assert any(message in p for p in found), found
