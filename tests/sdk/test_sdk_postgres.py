"""The SDK with a real `postgres` target in a throwaway cluster (scram-sha-256: the minted password
really is checked): `cred.connect()` logs in as the minted role, and revoking the root credential
ends the child's database session. Also `broker exchange` for a database credential in GitHub
Actions: PG* variables in $GITHUB_ENV, and the password and DSN masked."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys

import psycopg
import pytest
from psycopg import sql

from tests.support.fanout import write_fanout_policies
from tests.support.oauth import AUDIENCE
from tests.support.server import REPO, running_broker

ADMIN_ENV = "NHB_FANOUT_PG_ADMIN_DSN"


@pytest.fixture(scope="module")
def pg_target(cluster):
    """A database of its own in the session's throwaway cluster, with a reader role."""
    tag = secrets.token_hex(4)
    dbname, reader = f"payments_{tag}", f"app_reader_{tag}"
    with psycopg.connect(cluster.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(reader)))
    with psycopg.connect(cluster.dsn(dbname), autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance bigint)")
        conn.execute("INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 5) g")
        conn.execute(sql.SQL("GRANT SELECT ON accounts TO {}").format(sql.Identifier(reader)))
    return cluster, dbname, reader


@pytest.fixture(scope="module")
def pg_broker(tmp_path_factory, dev_issuer, pg_target):
    cluster, dbname, reader = pg_target
    root = tmp_path_factory.mktemp("fanout-pg")
    target = f"""
---
kind: target
name: payments-db
type: postgres
admin_dsn_env: {ADMIN_ENV}
connect: {{host: 127.0.0.1, port: {cluster.port}, dbname: {dbname}}}
grants: [{reader}]
max_ttl: 10m
"""
    policies = write_fanout_policies(root / "policies", dev_issuer.issuer, extra=target,
                                     extra_derive="  - target: payments-db\n    scopes: [read]")
    env = {"BROKER_POLICY_DIR": str(policies), "BROKER_STATE_DIR": str(root / "state"),
           "BROKER_DATABASE_URL": f"sqlite:///{root / 'ledger.db'}", "BROKER_REAPER_INTERVAL": "0",
           ADMIN_ENV: cluster.dsn(dbname)}
    with running_broker(env) as url:
        yield url, cluster, dbname


def role_exists(cluster, role: str) -> bool:
    with psycopg.connect(cluster.admin_dsn, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def test_connect_as_the_derived_role_and_revoking_the_root_ends_its_session(pg_broker, dev_issuer):
    from broker.sdk import Broker

    url, cluster, dbname = pg_broker
    broker = Broker(url, subject_token=lambda: dev_issuer.mint_github(audience=AUDIENCE))
    with broker.credential("deploy-api", scope="deploy") as root:
        db = root.derive("payments-db", scope="read")
        role = f"nhb_{db.credential_id}"
        params = db.connection_params()
        assert (params["user"], params["host"], params["port"], params["dbname"]) == \
            (role, "127.0.0.1", cluster.port, dbname)
        assert db.secret["password"] == params["password"] and params["password"] not in repr(db)
        with db.connect() as conn:                        # the context-manager form
            assert conn.execute("SELECT current_user").fetchone()[0] == role
        session = db.connect(autocommit=True)
        assert session.execute("SELECT sum(balance) FROM accounts").fetchone()[0] == 500
        with pytest.raises(psycopg.OperationalError):    # the password is really checked
            psycopg.connect(**{**params, "password": "wrong"})
    # leaving the root's block revoked the root; the broker cascaded to the database child
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()
    assert not role_exists(cluster, role)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**params)


def test_broker_exchange_exports_pg_variables_and_masks_the_password(pg_broker, dev_issuer, tmp_path):
    url, cluster, dbname = pg_broker
    token_file = tmp_path / "token"
    token_file.write_text(dev_issuer.mint_github(audience=AUDIENCE))
    # a root credential cannot be for payments-db (no policy targets it): derive one in CI from
    # a deploy-api credential handed over as the subject token
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "ACTIONS_", "BROKER_"))}
    first = subprocess.run([sys.executable, "-m", "broker.cli", "exchange", "--target", "deploy-api",
                            "--format", "json", "--broker", url, "--subject-token-file", str(token_file)],
                           env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    import json
    parent = json.loads(first.stdout)
    (tmp_path / "parent").write_text(parent["access_token"])
    github_env, github_output = tmp_path / "github_env", tmp_path / "github_output"
    result = subprocess.run(
        [sys.executable, "-m", "broker.cli", "exchange", "--target", "payments-db", "--scope", "read",
         "--subject-token-file", str(tmp_path / "parent")],
        env={**env, "GITHUB_ACTIONS": "true", "GITHUB_ENV": str(github_env),
             "GITHUB_OUTPUT": str(github_output), "BROKER_URL": url},
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = github_env.read_text()
    values = {}
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if "<<" in line:
            name, delimiter = line.split("<<", 1)
            values[name] = "\n".join(lines[i + 1:lines.index(delimiter, i + 1)])
    assert values["PGUSER"] == f"nhb_{values['BROKER_CREDENTIAL_ID']}"
    assert (values["PGHOST"], values["PGPORT"], values["PGDATABASE"]) == ("127.0.0.1", str(cluster.port), dbname)
    assert values["BROKER_PARENT_ID"] == parent["credential_id"]
    masks = [line for line in result.stdout.splitlines() if line.startswith("::add-mask::")]
    assert masks == [f"::add-mask::{values[name]}" for name in ("BROKER_ACCESS_TOKEN", "PGPASSWORD", "BROKER_DSN")]
    assert result.stdout == "".join(m + "\n" for m in masks)       # nothing else on stdout
    assert values["PGPASSWORD"] not in result.stderr
    assert "PGPASSWORD" not in github_output.read_text()
    with psycopg.connect(host=values["PGHOST"], port=int(values["PGPORT"]), dbname=values["PGDATABASE"],
                         user=values["PGUSER"], password=values["PGPASSWORD"]) as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == 5
    with psycopg.connect(values["BROKER_DSN"]) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == values["PGUSER"]
