"""The standard policy set around a real dev issuer: two jwt targets, one policy, an auditor
and an introspector."""
from __future__ import annotations

from pathlib import Path

from tests.support.oauth import AUDIENCE, AUDITOR, INTROSPECTOR, sha


def policy_yaml(issuer_url: str) -> str:
    return f"""
kind: issuer
name: gha
preset: github-actions
issuer: {issuer_url}
audience: {AUDIENCE}
max_token_age: 10m
---
kind: target
name: reports-api
type: jwt
audience: https://reports.internal
max_ttl: 15m
---
kind: target
name: billing-api
type: jwt
max_ttl: 1h
---
kind: policy
name: payments-reports
issuer: gha
targets: [reports-api]
match:
  repository: acme/payments
  ref: {{glob: "refs/heads/*"}}
scopes: [reports:read, reports:write]
max_ttl: 10m
---
kind: client
name: {AUDITOR[0]}
secret_sha256: "{sha(AUDITOR[1])}"
may: [audit, introspect, revoke]
---
kind: client
name: {INTROSPECTOR[0]}
secret_sha256: "{sha(INTROSPECTOR[1])}"
may: [introspect]
"""


def write_policies(directory: Path, issuer_url: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "broker.yaml").write_text(policy_yaml(issuer_url))
    return directory
