"""Helpers for the approval and delegation tests: a policy set with a human IdP, a CI job that
mints fresh attestations of one run, people's ID tokens."""
from __future__ import annotations

import base64
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from api_support import (  # noqa: E402  (tests/api holds the shared server helpers)
    AUDIENCE, AUDITOR, GRANT, JWT_TYPE, REPO, basic, free_port, running_broker, sha,
)
from broker.devtools.dev_human_idp import DevHumanIdP, DevUser  # noqa: E402
from broker.devtools.dev_issuer import DevIssuer  # noqa: E402

__all__ = ["AUDIENCE", "AUDITOR", "GRANT", "JWT_TYPE", "REPO", "basic", "free_port",
           "running_broker", "sha", "CLIENT_ID", "CLIENT_SECRET", "Job", "approval_policy_yaml",
           "write_approval_policies", "claims_of", "bearer", "CAROL", "NOUSER", "ID_TOKEN_TYPE",
           "AGENT", "agent_job", "id_token"]

CLIENT_ID = "nhi-broker"
CLIENT_SECRET = "human-idp-client-secret-0123456789"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
AGENT_WORKFLOW = "acme/agents/.github/workflows/agent.yml@refs/heads/main"
AGENT = f"github:acme/agents:{AGENT_WORKFLOW}"
CAROL = DevUser("carol@acme.example", "carol", (), "Carol")
NOUSER = DevUser("nouser@acme.example", "", ("dba",), "No Username")   # the IdP sends no username


def approval_policy_yaml(issuer_url: str, idp_url: str) -> str:
    return f"""
kind: issuer
name: gha
preset: github-actions
issuer: {issuer_url}
audience: {AUDIENCE}
max_token_age: 10m
---
kind: human-idp
name: corp
issuer: {idp_url}
client_id: {CLIENT_ID}
client_secret_file: human-idp.secret
ci_logins:
  gh-carol: carol@acme.example
---
kind: target
name: prod-api
type: jwt
max_ttl: 15m
---
kind: target
name: reports-api
type: jwt
audience: https://reports.internal
max_ttl: 15m
---
kind: target
name: vault-api
type: jwt
max_ttl: 10m
---
kind: policy
name: prod-migrations
issuer: gha
targets: [prod-api]
match: {{repository: acme/payments, environment: production}}
scopes: [migrate, read]
max_ttl: 10m
approval:
  approvers: ["group:dba", "bob@acme.example"]
  required: 1
  not_self: true
  expires_in: 30m
derive: [reports-api]
---
kind: policy
name: two-person
issuer: gha
targets: [vault-api]
match: {{repository: acme/payments}}
scopes: [unseal]
approval:
  approvers: [alice@acme.example, bob@acme.example, carol@acme.example]
  required: 2
---
kind: policy
name: payments-reports
issuer: gha
targets: [reports-api]
match: {{repository: acme/payments}}
scopes: [reports:read]
---
kind: policy
name: agents-for-staff
issuer: corp
targets: [reports-api]
match: {{groups: staff}}
scopes: [reports:read, reports:write]
max_ttl: 10m
may_act:
  issuer: gha
  match: {{repository: acme/agents}}
  subject_tokens: [delegation, id_token]
---
kind: client
name: {AUDITOR[0]}
secret_sha256: "{sha(AUDITOR[1])}"
may: [audit, introspect, revoke]
"""


def write_approval_policies(directory: Path, issuer_url: str, idp_url: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "broker.yaml").write_text(approval_policy_yaml(issuer_url, idp_url))
    (directory / "human-idp.secret").write_text(CLIENT_SECRET + "\n")
    return directory


@dataclass
class Job:
    """One CI run: every call to :meth:`attestation` is a fresh token (new jti) of the same run."""
    issuer: DevIssuer
    claims: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, issuer: DevIssuer, **overrides: Any) -> "Job":
        return cls(issuer, DevIssuer.github_claims(**overrides))

    def attestation(self) -> str:
        return self.issuer.mint(self.claims, audience=AUDIENCE)

    @property
    def run_id(self) -> str:
        return str(self.claims["run_id"])

    def form(self, target: str = "prod-api", **overrides: Any) -> dict[str, str]:
        form = {"grant_type": GRANT, "subject_token": self.attestation(),
                "subject_token_type": JWT_TYPE, "audience": target, "scope": "migrate"}
        form.update(overrides)
        return {k: v for k, v in form.items() if v is not None}


def agent_job(issuer: DevIssuer, **overrides: Any) -> Job:
    """A run of the agent's workflow (principal :data:`AGENT` unless overridden)."""
    claims = {"repository": "acme/agents", "job_workflow_ref": AGENT_WORKFLOW,
              "workflow_ref": AGENT_WORKFLOW, "environment": None, **overrides}
    return Job.start(issuer, **claims)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def id_token(idp: DevHumanIdP, email: str, **kwargs: Any) -> str:
    return idp.mint_id_token(email, audience=CLIENT_ID, **kwargs)
