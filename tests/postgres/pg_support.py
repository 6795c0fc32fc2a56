"""Helpers for the postgres tests: a policy set with a ``postgres`` target around the real dev
issuer, a target database in the throwaway cluster, and a real broker whose output is kept."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from api_support import (  # noqa: E402
    AUDIENCE, AUDITOR, GRANT, INTROSPECTOR, JWT_TYPE, REPO, basic, free_port, running_broker, sha,
)

__all__ = ["AUDIENCE", "AUDITOR", "GRANT", "INTROSPECTOR", "JWT_TYPE", "REPO", "basic",
           "free_port", "sha", "TargetDB", "policy_yaml", "token_form", "running_broker_logged",
           "broker_cli"]

ADMIN_ENV = "NHB_TEST_PG_ADMIN_DSN"


@dataclass
class TargetDB:
    """A database in the throwaway cluster with a table and the roles a target grants."""
    admin_dsn: str          # superuser DSN to the target database (what the broker is given)
    dbname: str
    writer: str             # a role with UPDATE on accounts
    reader: str             # a role with SELECT on accounts
    port: int


def policy_yaml(issuer_url: str, db: TargetDB, *, admin_env: str = ADMIN_ENV, extra_target: str = "",
                max_ttl: str = "10m") -> str:
    return f"""
kind: issuer
name: gha
preset: github-actions
issuer: {issuer_url}
audience: {AUDIENCE}
max_token_age: 10m
---
kind: target
name: payments-db
type: postgres
admin_dsn_env: {admin_env}
connect: {{host: 127.0.0.1, port: {db.port}, dbname: {db.dbname}}}
grants: [{db.reader}]
scope_grants: {{"payments:write": [{db.writer}]}}
connection_limit: 3
max_ttl: {max_ttl}
---
kind: target
name: broken-db
type: postgres
admin_dsn_env: {admin_env}
grants: [no_such_role_{secrets.token_hex(3)}]
max_ttl: 10m
---
kind: target
name: unset-db
type: postgres
admin_dsn_env: NHB_TEST_UNSET_{secrets.token_hex(3).upper()}
grants: []
max_ttl: 10m
{extra_target}
---
kind: policy
name: payments-deploy
issuer: gha
targets: [payments-db, broken-db, unset-db, down-db]
match:
  repository: acme/payments
  ref: {{glob: "refs/heads/*"}}
scopes: [payments:read, payments:write]
max_ttl: {max_ttl}
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


def down_target(env: str) -> str:
    return f"""---
kind: target
name: down-db
type: postgres
admin_dsn_env: {env}
grants: []
max_ttl: 10m
"""


def token_form(subject_token: str, *, audience: str = "payments-db", scope: str | None = "payments:write",
               ttl: str | None = None) -> dict[str, str]:
    form = {"grant_type": GRANT, "subject_token": subject_token, "subject_token_type": JWT_TYPE,
            "audience": audience}
    if scope:
        form["scope"] = scope
    if ttl:
        form["ttl"] = ttl
    return form


def broker_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120
               ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=timeout)


def running_broker_logged(env: dict[str, str], log_path: Path, *, workers: int = 2,
                          timeout: float = 30.0):
    """`broker serve` (gunicorn) as a real process, everything it prints kept in ``log_path``."""
    return running_broker(env, workers=workers, timeout=timeout, log_path=log_path)
