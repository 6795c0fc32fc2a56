"""Helpers for the fan-out tests (derive rules, child credentials, the revocation cascade): a
policy set with derive rules, child credentials through an app's test client; and the fixtures
of an app and of a real server with these policies, for the conftests that need them (they
import them by name)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker.devtools.dev_issuer import DevIssuer
from broker.ledger import Ledger, open_ledger
from tests.support.oauth import AUDIENCE, AUDITOR, GRANT, INTROSPECTOR, JWT_TYPE, basic, sha
from tests.support.server import running_broker

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



def mint_root(client, dev_issuer, *, target="deploy-api", scope="deploy", ttl=None):
    form = {"grant_type": GRANT, "subject_token": dev_issuer.mint_github(audience=AUDIENCE),
            "subject_token_type": JWT_TYPE, "audience": target, "scope": scope}
    if ttl:
        form["ttl"] = ttl
    response = client.post("/token", data=form)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def derive(client, parent, target, **form):
    response = client.post("/token", data=derive_form(parent["access_token"], target, **form))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def introspect(client, token, who=AUDITOR):
    return client.post("/introspect", data={"token": token}, headers=basic(*who)).get_json()


# -- fixtures: an app (test client) and a real server with these policies --------------------------
# (`from tests.support.fanout import policy_dir, app` or `… import http_broker` in a conftest)

@pytest.fixture
def policy_dir(tmp_path: Path, dev_issuer: DevIssuer) -> Path:
    return write_fanout_policies(tmp_path / "policies", dev_issuer.issuer)


@pytest.fixture
def app(make_app, database_url: str):
    """An app on these policies (the root's ``make_app`` on this ``policy_dir``), no reaper."""
    return make_app(DATABASE_URL=database_url, REAPER_INTERVAL=0)


@dataclass
class HttpBroker:
    """`broker serve` (gunicorn) in its own process, and a ledger handle on its database."""
    url: str
    state_dir: Path
    ledger: Ledger
    dev_issuer: DevIssuer


@contextlib.contextmanager
def running_fanout_broker(root: Path, dev_issuer: DevIssuer, *, env: dict[str, str] | None = None,
                          workers: int = 2) -> Iterator[HttpBroker]:
    """`broker serve` on these policies with an SQLite ledger under ``root``, plus ``env``
    (``BROKER_*`` settings such as ``BROKER_REDIS_URL`` or ``BROKER_RATE_LIMIT``)."""
    policies = write_fanout_policies(root / "policies", dev_issuer.issuer)
    database = f"sqlite:///{root / 'ledger.db'}"
    base = {"BROKER_POLICY_DIR": str(policies), "BROKER_STATE_DIR": str(root / "state"),
            "BROKER_DATABASE_URL": database, "BROKER_REAPER_INTERVAL": "0"}
    with running_broker({**base, **(env or {})}, workers=workers) as url:
        ledger = open_ledger(database)
        try:
            yield HttpBroker(url=url, state_dir=root / "state", ledger=ledger, dev_issuer=dev_issuer)
        finally:
            ledger.close()


@pytest.fixture(scope="module")
def http_broker(tmp_path_factory, dev_issuer: DevIssuer) -> Iterator[HttpBroker]:
    with running_fanout_broker(tmp_path_factory.mktemp("fanout-broker"), dev_issuer) as broker:
        yield broker
