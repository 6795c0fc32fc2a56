"""``vault-database`` targets without ``connect`` (issue 13), against a real OpenBao and a real
PostgreSQL with SCRAM authentication: where clients connect comes from Vault's connection
configuration when the broker may read it, else the credential is a username and a password
and says so; ``broker policy check`` warns about revocation statements that leave sessions."""
from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest

from tests.support.oauth import AUDIENCE
from tests.support.server import REPO
from tests.support.vault import token_form

TOKEN_VAULT = "{addr_env: NHB_TEST_VAULT_ADDR, token_env: NHB_TEST_VAULT_TOKEN}"


@pytest.fixture
def policy_extra(vault_env) -> str:
    approle = ("{addr_env: NHB_TEST_VAULT_ADDR, auth: {method: approle, role_id_env: "
               f"NHB_TEST_VAULT_ROLE_ID, secret_id_file: {vault_env.secret_id_file}}}}}")
    return f"""
---
kind: target
name: db-from-vault-config
type: vault-database
vault: {TOKEN_VAULT}
role: app-readonly
max_ttl: 15m
---
kind: target
name: db-without-connect
type: vault-database
vault: {approle}
role: app-readonly
max_ttl: 15m
---
kind: policy
name: without-connect
issuer: gha
targets: [db-from-vault-config, db-without-connect]
match:
  repository: acme/payments
"""


def mint(client, dev_issuer, audience: str):
    return client.post("/token", data=token_form(dev_issuer.mint_github(audience=AUDIENCE), audience))


def test_without_connect_the_credential_says_where_vault_connects(client, dev_issuer, vault_env, ledger):
    # The root token may read database/roles/app-readonly and database/config/scram.
    response = mint(client, dev_issuer, "db-from-vault-config")
    assert response.status_code == 200, response.get_json()
    cred = response.get_json()["credential"]
    assert (cred["host"], cred["port"], cred["dbname"]) == ("127.0.0.1", vault_env.cluster.port, vault_env.dbname)
    assert "note" not in cred
    with psycopg.connect(cred["dsn"]) as conn:                     # SCRAM: the password is checked
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (5,)
    record = ledger.get_credential(response.get_json()["credential_id"])
    assert record.details["connect"] == "vault" and record.details["port"] == vault_env.cluster.port
    assert cred["password"] not in str(record.details)


def test_without_connect_or_permission_the_credential_is_a_username_and_password(
        client, dev_issuer, vault_env, ledger):
    # The AppRole's policy (BROKER_VAULT_POLICY) may read database/creds/* only.
    response = mint(client, dev_issuer, "db-without-connect")
    assert response.status_code == 200, response.get_json()
    cred = response.get_json()["credential"]
    assert set(cred) == {"type", "username", "password", "expires_at", "note"}
    assert "only a username and a password" in cred["note"]
    with psycopg.connect(host="127.0.0.1", port=vault_env.cluster.port, dbname=vault_env.dbname,
                         user=cred["username"], password=cred["password"]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert ledger.get_credential(response.get_json()["credential_id"]).details["connect"] == "unknown"


def _check(path, vault_env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "broker.cli", "policy", "check", str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, **vault_env.env})


def test_policy_check_warns_when_revocation_does_not_end_sessions(bao, vault_env, tmp_path):
    from tests.support.vault import CREATION

    bao.client().secrets.database.create_role(
        name="weak-revocation", db_name="scram", creation_statements=CREATION,
        revocation_statements=['DROP ROLE IF EXISTS "{{name}}";'], default_ttl="1h", max_ttl="1h")
    path = tmp_path / "targets.yaml"
    path.write_text(f"""
kind: target
name: weak
type: vault-database
vault: {TOKEN_VAULT}
role: weak-revocation
max_ttl: 5m
---
kind: target
name: strong
type: vault-database
vault: {TOKEN_VAULT}
role: app-readonly
max_ttl: 5m
""")
    result = _check(path, vault_env)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert "'weak'" in warnings[0] and "pg_terminate_backend" in warnings[0]
    assert "ok:" in result.stdout


def test_policy_check_says_nothing_when_it_may_not_read_the_role(vault_env, tmp_path):
    path = tmp_path / "targets.yaml"
    path.write_text(f"""
kind: target
name: unreadable
type: vault-database
vault: {{addr_env: NHB_TEST_VAULT_ADDR, auth: {{method: approle, role_id_env: NHB_TEST_VAULT_ROLE_ID,
        secret_id_file: {vault_env.secret_id_file}}}}}
role: app-readonly
max_ttl: 5m
""")
    result = _check(path, vault_env)
    assert result.returncode == 0, result.stderr
    assert "warning:" not in result.stderr
