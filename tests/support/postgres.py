"""A ``postgres`` target in the throwaway cluster (tests/support/pg_cluster.py): its database
and roles, a policy set around the real dev issuer, the token form; and the fixtures of an app
on it, for the conftests of the folders that need one (they import them by name)."""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.support.apps import app_factory
from tests.support.oauth import AUDIENCE, AUDITOR, GRANT, INTROSPECTOR, JWT_TYPE, sha

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


def create_target_db(cluster) -> TargetDB:
    """A fresh database with ``accounts`` and two roles: a reader and a writer."""
    tag = secrets.token_hex(4)
    dbname, reader, writer = f"payments_{tag}", f"app_reader_{tag}", f"app_writer_{tag}"
    with psycopg.connect(cluster.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(reader)))
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(writer)))
    with psycopg.connect(cluster.dsn(dbname), autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance bigint)")
        conn.execute("INSERT INTO accounts SELECT g, 'owner-' || g, 100 FROM generate_series(1, 10) g")
        conn.execute(sql.SQL("GRANT SELECT ON accounts TO {}").format(sql.Identifier(reader)))
        conn.execute(sql.SQL("GRANT SELECT, UPDATE ON accounts TO {}").format(sql.Identifier(writer)))
    return TargetDB(admin_dsn=cluster.dsn(dbname), dbname=dbname, writer=writer, reader=reader,
                    port=cluster.port)


# -- fixtures: an app whose policies have a postgres target in the session's throwaway cluster --
# (`from tests.support.postgres import target_db, policy_dir, make_app, app` in a conftest)

@pytest.fixture
def target_db(cluster) -> TargetDB:
    """A fresh database with ``accounts`` and two roles: a reader and a writer."""
    return create_target_db(cluster)


@pytest.fixture
def policy_dir(tmp_path: Path, dev_issuer, target_db, monkeypatch) -> Path:
    monkeypatch.setenv(ADMIN_ENV, target_db.admin_dsn)
    # A target whose database is down: a closed port, and an admin password that must never
    # show up anywhere.
    monkeypatch.setenv("NHB_TEST_DOWN_DSN",
                       "postgresql://nhb_admin:hunter2-admin-secret@127.0.0.1:9/postgres")
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "broker.yaml").write_text(
        policy_yaml(dev_issuer.issuer, target_db, extra_target=down_target("NHB_TEST_DOWN_DSN")))
    return directory


@pytest.fixture
def make_app(tmp_path: Path, policy_dir: Path):
    with app_factory(POLICY_DIR=str(policy_dir), STATE_DIR=str(tmp_path / "state"),
                     ISSUER="http://broker.test", DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
                     REAPER_INTERVAL=0, POSTGRES_TIMEOUT=2.0) as factory:
        yield factory


@pytest.fixture
def app(make_app):
    return make_app()
