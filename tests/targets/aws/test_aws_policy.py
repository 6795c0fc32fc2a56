"""``type: aws`` targets at load time: what AWS would refuse fails ``broker policy check`` with
``file:line`` — for the target, and for a policy or derive rule that would grant less than STS
does — and ``broker policy check`` asks IAM about the role."""
from __future__ import annotations

import json

import pytest

from broker.policy import PolicyError, load_policy_text
from broker.targets.aws import AWSKind

ROLE = "arn:aws:iam::123456789012:role/deploy"


def target(extra: str = "", *, max_ttl: str = "15m") -> str:
    return (f"kind: target\nname: t\ntype: aws\nrole_arn: {ROLE}\nregion: eu-west-1\n"
            f"max_ttl: {max_ttl}\n{extra}")


POLICY = """---
kind: issuer
name: gha
preset: github-actions
audience: a
---
kind: policy
name: p
issuer: gha
targets: [t]
match: {{repository: acme/payments}}
{extra}
"""

many_tags = "tags: {" + ", ".join(f"k{i}: v" for i in range(47)) + "}\n"
REFUSED = [
    ("target max_ttl below 900 s", target(max_ttl="10m"), 6, "max_ttl 10m is shorter than the shortest session AWS STS grants"),
    ("target max_ttl above 12 h", target(max_ttl="13h"), 6, "is longer than the longest session AWS STS grants"),
    ("policy max_ttl below 900 s", target() + POLICY.format(extra="max_ttl: 10m"), 18,
     "policy 'p': max_ttl 10m grants target 't' (aws) 10m, which is shorter than the shortest session"),
    ("derive max_ttl below 900 s", target() + POLICY.format(extra="derive: [{target: t, max_ttl: 5m}]"), 18,
     "derive: max_ttl 5m grants target 't' (aws) 5m"),
    ("more than 50 tags", target(many_tags), 7, "47 tags and the broker's 4"),
    ("a tag key over 128", target("tags: {" + "k" * 129 + ": v}\n"), 7, "1 to 128 characters"),
    ("a tag value over 256", target("tags: {k: " + "v" * 257 + "}\n"), 7, "longer than a session tag value may be"),
    ("an aws: tag key", target("tags: {'aws:team': x}\n"), 7, "uses the prefix 'aws:'"),
    ("a tag the broker sets", target("tags: {credential_id: x}\n"), 7, "is a tag the broker sets itself"),
    ("a tag value with a stray brace", target("tags: {k: 'a{b'}\n"), 7, "brace that is not a placeholder"),
    ("tag keys differing in case", target("tags: {Team: a, team: b}\n"), 7, "differ only in case"),
    ("a tag character AWS refuses", target("tags: {k: 'a,b'}\n"), 7, "characters a session tag value cannot have"),
    ("a session name prefix too long", target(f"session_name_prefix: {'p' * 39}\n"), 7, "longer than 64 characters"),
    ("a session name prefix with a bad character", target("session_name_prefix: 'ci/'\n"), 7,
     "characters a role session name cannot have"),
    ("not a role ARN", target().replace(ROLE, "arn:aws:iam::1234:user/x"), 4, "must be an IAM role ARN"),
    ("a session policy with token mode", target("mode: token\nsession_policy_file: p.json\n"), 8,
     "has no effect with mode: token"),
]


@pytest.mark.parametrize("case,text,line,message", REFUSED, ids=[c[0] for c in REFUSED])
def test_what_aws_would_refuse_fails_at_load(case, text, line, message, tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"Statement": []}))
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "aws.yaml", base_dir=tmp_path)
    found = [p for p in info.value.problems if message in p.message]
    assert found, [str(p) for p in info.value.problems]
    assert (found[0].file, found[0].line) == ("aws.yaml", line), [str(p) for p in info.value.problems]


def test_session_policy_files_are_read_and_checked_at_load(tmp_path):
    (tmp_path / "ok.json").write_text(json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                                                                                          "Action": "s3:*", "Resource": "*"}]}))
    (tmp_path / "big.json").write_text(json.dumps({"Statement": [{"Sid": "x" * 2100}]}))
    (tmp_path / "bad.json").write_text("{not json")
    loaded = load_policy_text(target("session_policy_file: ok.json\n"), "a.yaml", base_dir=tmp_path).targets["t"]
    assert loaded.options["session_policy"]["Statement"][0]["Action"] == "s3:*"
    for name, message in (("big.json", "STS takes session policies of at most 2048"), ("bad.json", "is not JSON"),
                          ("none.json", "cannot be read")):
        with pytest.raises(PolicyError) as info:
            load_policy_text(target(f"session_policy_file: {name}\n"), "a.yaml", base_dir=tmp_path)
        assert message in str(info.value)


def test_a_policy_granting_longer_than_the_target_is_fine():
    loaded = load_policy_text(target(max_ttl="1h") + POLICY.format(extra="max_ttl: 2h"))
    assert loaded.targets["t"].max_ttl == 3600


def test_policy_check_asks_iam_about_the_role(moto, aws_env):
    moto.reset()
    iam = moto.client("iam")
    iam.create_role(RoleName="deploy", MaxSessionDuration=3600, AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Federated": "x"},
                                                "Action": "sts:AssumeRoleWithWebIdentity"}]}))
    loaded = load_policy_text(target(max_ttl="2h")).targets["t"]
    kind = AWSKind(issuer="https://broker.example.com")
    warnings = kind.backend_warnings(loaded)
    assert any("MaxSessionDuration 3600s" in w for w in warnings)
    assert any("does not allow sts:TagSession" in w for w in warnings)
    assert any("does not allow sts:SetSourceIdentity" in w for w in warnings)
    assert any("names no OIDC provider for the broker's issuer" in w for w in warnings)
    missing = load_policy_text(target().replace("role/deploy", "role/none")).targets["t"]
    assert kind.backend_warnings(missing) == []          # a role IAM will not show says nothing


def _yaml_blocks(doc: str) -> list[str]:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / doc).read_text(encoding="utf-8")
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)


def test_the_targets_of_the_cloud_doc_and_the_readme_load(tmp_path):
    (tmp_path / "aws").mkdir()
    for name in ("deploy-readonly.json", "deploy-write.json"):
        (tmp_path / "aws" / name).write_text(json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}))
    blocks = [b for b in _yaml_blocks("docs/cloud.md") + _yaml_blocks("README.md") if b.count("kind:") == 1 and "kind: target" in b
              and ("type: aws" in b or "type: jwt" in b)]
    assert len(blocks) >= 4
    for block in blocks:
        loaded = load_policy_text(block, "doc.yaml", base_dir=tmp_path)
        assert len(loaded.targets) == 1
    aws = load_policy_text(blocks[0], "doc.yaml", base_dir=tmp_path).targets["deploy-aws"]
    assert aws.options["session_policy"]["Statement"] and "deploy:write" in aws.options["scope_session_policies"]
