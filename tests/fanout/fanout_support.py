"""Helpers for the fan-out, SDK and CI tests: a policy set with derive rules, real servers."""
from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from api_support import (  # noqa: E402  (tests/api holds the shared server helpers)
    AUDIENCE, AUDITOR, GRANT, INTROSPECTOR, JWT_TYPE, REPO, basic, free_port, running_broker, sha,
)

__all__ = ["AUDIENCE", "AUDITOR", "GRANT", "INTROSPECTOR", "JWT_TYPE", "REPO", "SERVICE", "basic",
           "claims_of", "derive_form", "fanout_policy_yaml", "free_port", "running_broker",
           "write_fanout_policies"]

SERVICE = ("reports-svc", "reports-svc-secret-0123456789")   # a resource server that introspects


def fanout_policy_yaml(issuer_url: str, *, extra: str = "", extra_derive: str = "") -> str:
    """deploy-api roots may derive reports-api (its own scopes), billing-api (only from a
    reports-api parent) and narrower deploy-api; reports-api roots may derive nothing.
    ``extra`` adds documents (targets); ``extra_derive`` adds entries to the derive list."""
    return f"""
kind: issuer
name: gha
preset: github-actions
issuer: {issuer_url}
audience: {AUDIENCE}
max_token_age: 10m
---
kind: target
name: deploy-api
type: jwt
max_ttl: 30m
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
kind: target
name: audit-api
type: jwt
max_ttl: 1h
---
kind: policy
name: payments-deploy
issuer: gha
targets: [deploy-api]
match:
  repository: acme/payments
  ref: {{glob: "refs/heads/*"}}
scopes: [deploy, deploy:read]
max_ttl: 20m
derive:
  - deploy-api
  - target: reports-api
    scopes: [reports:read, reports:write]
  - target: billing-api
    scopes: [billing:read]
    max_ttl: 5m
    from: [reports-api]
{extra_derive}
max_depth: 3
---
kind: policy
name: payments-reports
issuer: gha
targets: [reports-api]
match:
  repository: acme/payments
scopes: [reports:read, reports:write]
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
---
kind: client
name: {SERVICE[0]}
secret_sha256: "{sha(SERVICE[1])}"
may: [introspect]
{extra}"""


def write_fanout_policies(directory: Path, issuer_url: str, *, extra: str = "",
                          extra_derive: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "broker.yaml").write_text(fanout_policy_yaml(issuer_url, extra=extra,
                                                              extra_derive=extra_derive))
    return directory


def derive_form(parent_token: str, target: str, **overrides: Any) -> dict[str, str]:
    form = {"grant_type": GRANT, "subject_token": parent_token, "subject_token_type": JWT_TYPE,
            "audience": target}
    form.update(overrides)
    return {k: v for k, v in form.items() if v is not None}


def claims_of(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified (the tests read what the broker signed)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
