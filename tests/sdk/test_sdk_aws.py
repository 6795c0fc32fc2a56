"""The SDK's AWS side: a boto3 session on a broker-minted AWS session that renews itself, and
``broker exchange`` exporting the AWS variables (masked first in GitHub Actions) — against the
broker served over HTTP and moto's real STS (tests/support/aws.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from broker.sdk import Broker
from broker.sdk.aws import AWSSession
from tests.support.oauth import AUDIENCE
from tests.support.server import REPO
from tests.targets.aws.conftest import aws_env, broker, gate, make_broker, moto  # noqa: F401 (fixtures)


def test_importing_the_aws_module_needs_no_boto3():
    code = ("import sys\nsys.modules['boto3'] = None\nsys.modules['botocore'] = None\n"
            "import broker.sdk.aws\nprint('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_the_session_works_renews_itself_and_revokes_all_it_held(broker, dev_issuer, moto):
    client = Broker(broker.url, subject_token=lambda: dev_issuer.mint_github(audience=AUDIENCE))
    # A margin longer than the session: every call renews first (the way a long job meets expiry).
    with AWSSession(client, "deploy-aws", scope="deploy:read", renew_margin=2000) as aws:
        first = aws.credential_id
        sts = aws.client("sts", endpoint_url=moto.url)
        assert sts.get_caller_identity()["Arn"].endswith(f"/deploy/{aws.credential_id}")
        renewed = aws.credential_id
        assert renewed != first                           # renewed before the call
        assert aws.session.region_name == "eu-west-1"
        held = [first, renewed]
    for cid in held:
        assert broker.ledger.is_revoked(cid)
    document = moto.role_policy("deploy", "nhi-broker-revoked")
    denied = {i for s in document["Statement"] for i in s["Condition"]["StringEquals"]["aws:SourceIdentity"]}
    assert set(held) <= denied


def test_without_renewal_the_same_session_serves_every_call(broker, dev_issuer, moto):
    client = Broker(broker.url, subject_token=lambda: dev_issuer.mint_github(audience=AUDIENCE))
    aws = AWSSession(client, "deploy-aws")
    sts = aws.client("sts", endpoint_url=moto.url)
    first = aws.credential_id
    for _ in range(3):
        sts.get_caller_identity()
    assert aws.credential_id == first
    aws.close()


def test_a_fixed_attestation_is_refused_up_front(broker, dev_issuer):
    with pytest.raises(ValueError, match="callable subject_token"):
        AWSSession(Broker(broker.url, subject_token="a.b.c"), "deploy-aws")


def _exchange(broker, dev_issuer, tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    token_file = tmp_path / "attestation"
    token_file.write_text(dev_issuer.mint_github(audience=AUDIENCE))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "ACTIONS_", "BROKER_", "AWS_"))}
    return subprocess.run([sys.executable, "-m", "broker.sdk.exchange", "--target", "deploy-aws",
                           "--broker", broker.url, "--subject-token-file", str(token_file), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env={**base, **env})


def test_exchange_env_exports_the_aws_variables(broker, dev_issuer, tmp_path, moto):
    result = _exchange(broker, dev_issuer, tmp_path, "--format", "env")
    assert result.returncode == 0, result.stderr
    shell = subprocess.run(["sh", "-c", 'eval "$BROKER_ENV"; env | grep ^AWS_ | sort'],
                           env={"BROKER_ENV": result.stdout, "PATH": os.environ["PATH"]},
                           capture_output=True, text=True)
    exported = dict(line.split("=", 1) for line in shell.stdout.splitlines())
    assert set(exported) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                             "AWS_DEFAULT_REGION"}
    assert exported["AWS_REGION"] == "eu-west-1"
    import boto3

    sts = boto3.client("sts", endpoint_url=moto.url, region_name=exported["AWS_REGION"],
                       aws_access_key_id=exported["AWS_ACCESS_KEY_ID"],
                       aws_secret_access_key=exported["AWS_SECRET_ACCESS_KEY"],
                       aws_session_token=exported["AWS_SESSION_TOKEN"])
    assert ":assumed-role/deploy/" in sts.get_caller_identity()["Arn"]


def test_in_github_actions_the_aws_secrets_are_masked_first(broker, dev_issuer, tmp_path):
    github_env, github_output = tmp_path / "github_env", tmp_path / "github_output"
    github_env.write_text("")
    github_output.write_text("")
    result = _exchange(broker, dev_issuer, tmp_path, GITHUB_ACTIONS="true", GITHUB_ENV=str(github_env),
                       GITHUB_OUTPUT=str(github_output))
    assert result.returncode == 0, result.stderr
    written = github_env.read_text()
    values = {}
    lines = written.split("\n")
    for i, line in enumerate(lines):
        if "<<" in line:
            name, delimiter = line.split("<<", 1)
            values[name] = lines[i + 1]
    masks = [line[len("::add-mask::"):] for line in result.stdout.splitlines() if line.startswith("::add-mask::")]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert values[name] in masks, name
    assert values["AWS_REGION"] == "eu-west-1" and values["AWS_REGION"] not in masks
    assert values["AWS_SECRET_ACCESS_KEY"] not in result.stdout.replace(f"::add-mask::{values['AWS_SECRET_ACCESS_KEY']}", "")
    assert "aws-region<<" in github_output.read_text()
