"""Helpers for the approval and delegation tests: a policy set with a human IdP, a CI job that
mints fresh attestations of one run, people's ID tokens, signing in through the real flow."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from broker.devtools.dev_human_idp import DevHumanIdP, DevUser
from broker.devtools.dev_issuer import DevIssuer
from tests.support.oauth import AUDIENCE, AUDITOR, GRANT, JWT_TYPE, sha

BROKER_TEST_URL = "http://broker.test"
CLIENT_ID = "nhi-broker"
CLIENT_SECRET = "human-idp-client-secret-0123456789"
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
    def start(cls, issuer: DevIssuer, **overrides: Any) -> Job:
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


def id_token(idp: DevHumanIdP, email: str, **kwargs: Any) -> str:
    return idp.mint_id_token(email, audience=CLIENT_ID, **kwargs)


def sign_in(client, human_idp, email: str, next_path: str = "/approvals/"):
    """Follow the real authorization-code flow; returns the broker's final redirect."""
    start = client.get(f"/login?next={next_path}")
    assert start.status_code == 302
    authorize = start.headers["Location"]
    query = parse_qs(urlsplit(authorize).query)
    assert authorize.startswith(f"{human_idp.issuer}/authorize?")
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) >= 43
    assert query["client_id"] == [CLIENT_ID] and query["nonce"] and query["state"]
    assert query["redirect_uri"] == ["http://broker.test/login/callback"]
    idp = requests.get(authorize, params={"login_hint": email}, allow_redirects=False, timeout=10)
    assert idp.status_code == 302, idp.text
    back = urlsplit(idp.headers["Location"])
    assert back.netloc == "broker.test" and back.path == "/login/callback"
    done = client.get(f"{back.path}?{back.query}")
    return done


@pytest.fixture(scope="module")
def human_idp() -> Iterator[DevHumanIdP]:
    """The dev human IdP with carol and a user without a username, and the broker as a client
    (a fixture: `from tests.support.people import human_idp` in a conftest)."""
    with DevHumanIdP() as idp:
        idp.add_user(CAROL)
        idp.add_user(NOUSER)
        idp.add_client(CLIENT_ID, CLIENT_SECRET, [f"{BROKER_TEST_URL}/login/callback"])
        yield idp
