"""Fixtures of the aws target tests: moto's real server (one per module) with the STS gate in
front (tests/support/aws.py), the broker served over real HTTP (AWS fetches its JWKS), the
broker registered as an IAM OIDC provider and roles trusting it, as docs/cloud.md sets them up."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.apps import app_factory
from tests.support.aws import MotoAWS, StsGate, aws_environment, served, sts_gate, trust_policy
from tests.support.oauth import AUDIENCE, AUDITOR, sha

STS_ENV = "NHB_TEST_STS_ENDPOINT"
DOWN_ENV = "NHB_TEST_STS_DOWN"
READ_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Sid": "Read", "Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}]}
WRITE_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Sid": "Write", "Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::deploy/*"}]}


def policy_yaml(issuer_url: str, roles: dict[str, str], folder: Path) -> str:
    (folder / "aws").mkdir(parents=True, exist_ok=True)
    (folder / "aws" / "read.json").write_text(json.dumps(READ_POLICY))
    (folder / "aws" / "write.json").write_text(json.dumps(WRITE_POLICY))
    return f"""
kind: issuer
name: gha
preset: github-actions
issuer: {issuer_url}
audience: {AUDIENCE}
---
kind: target
name: deploy-aws
type: aws
role_arn: {roles['deploy']}
region: eu-west-1
max_ttl: 30m
session_policy_file: ./aws/read.json
scope_policies: {{"deploy:write": ./aws/write.json}}
tags: {{repository: "{{run.repository}}", environment: "{{run.environment}}", pr: "{{run.pull_request}}"}}
sts_endpoint_env: {STS_ENV}
---
kind: target
name: token-aws
type: aws
role_arn: {roles['deploy']}
region: eu-west-1
mode: token
max_ttl: 15m
---
kind: target
name: locked-aws
type: aws
role_arn: {roles['locked']}
region: eu-west-1
max_ttl: 15m
sts_endpoint_env: {STS_ENV}
---
kind: target
name: down-aws
type: aws
role_arn: {roles['deploy']}
region: eu-west-1
max_ttl: 15m
sts_endpoint_env: {DOWN_ENV}
---
kind: policy
name: deploy
issuer: gha
targets: [deploy-aws, token-aws, locked-aws, down-aws]
match:
  repository: acme/payments
scopes: [deploy:read, deploy:write]
max_ttl: 30m
---
kind: client
name: {AUDITOR[0]}
secret_sha256: "{sha(AUDITOR[1])}"
may: [audit, introspect, revoke]
"""


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoAWS]:
    with MotoAWS() as server:
        yield server


@pytest.fixture
def gate(moto: MotoAWS) -> Iterator[StsGate]:
    moto.reset()
    with sts_gate(moto) as started:
        yield started


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, moto: MotoAWS, gate: StsGate) -> dict[str, str]:
    """boto3's own settings for the broker's IAM calls, the target's STS endpoint variable for
    the gate, and a closed port for the target whose STS is down."""
    from tests.support.server import free_port

    env = {**aws_environment(moto.url), STS_ENV: gate.url, DOWN_ENV: f"http://127.0.0.1:{free_port()}"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@dataclass
class AwsBroker:
    url: str
    app: Any
    provider_arn: str
    roles: dict[str, str]
    policy_dir: Path

    @property
    def ledger(self) -> Any:
        return self.app.extensions["broker"].ledger


@pytest.fixture
def make_broker(tmp_path: Path, dev_issuer, moto: MotoAWS, aws_env, database_url: str):
    """``make_broker(**overrides)``: a broker served over HTTP, registered in IAM as an OIDC
    provider, with the roles ``deploy`` (trusting principals of acme/payments) and ``locked``
    (trusting another repository only)."""
    def make(**overrides: Any) -> AwsBroker:
        holder: dict[str, Any] = {}

        def build(url: str) -> Any:
            provider = moto.register_broker(url)
            roles = {"deploy": moto.create_role("deploy", trust_policy(provider, url, sub="github:acme/payments:*")),
                     "locked": moto.create_role("locked", trust_policy(provider, url, sub="github:acme/other:*"))}
            folder = tmp_path / "policies"
            folder.mkdir(exist_ok=True)
            (folder / "aws.yaml").write_text(policy_yaml(dev_issuer.issuer, roles, folder))
            factory = stack.enter_context(app_factory(POLICY_DIR=str(folder), STATE_DIR=str(tmp_path / "state"),
                                                      ISSUER=url, DATABASE_URL=database_url))
            holder.update(provider=provider, roles=roles, folder=folder)
            return factory(**overrides)

        url, app = stack.enter_context(served(build))
        broker = AwsBroker(url=url, app=app, provider_arn=holder["provider"], roles=holder["roles"],
                           policy_dir=holder["folder"])
        return broker

    import contextlib

    with contextlib.ExitStack() as stack:
        yield make


@pytest.fixture
def broker(make_broker) -> AwsBroker:
    return make_broker()
