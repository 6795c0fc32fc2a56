"""A ``postgres`` target whose admin DSN lives in Vault KV v2 (``admin_dsn_vault``)."""
from __future__ import annotations

import logging

import psycopg
import pytest

import broker.targets  # noqa: F401 - registers the target kinds (postgres, vault-database)
from broker.policy import PolicyError, load_policy_text
from tests.support.vault import all_ledger_text, mint

KV_TARGETS = """
---
kind: target
name: payments-db-kv
type: postgres
admin_dsn_vault: kv/data/payments#dsn
vault: {{addr_env: NHB_TEST_VAULT_ADDR, token_env: NHB_TEST_VAULT_TOKEN}}
connect: {{host: 127.0.0.1, port: {port}, dbname: vaultdb}}
grants: [vault_reader]
max_ttl: 10m
---
kind: target
name: missing-kv-db
type: postgres
admin_dsn_vault: kv/data/nothing-here#dsn
vault: {{addr_env: NHB_TEST_VAULT_ADDR, token_env: NHB_TEST_VAULT_TOKEN}}
grants: []
max_ttl: 10m
---
kind: policy
name: kv-targets
issuer: gha
targets: [payments-db-kv, missing-kv-db]
match: {{repository: acme/payments}}
"""


@pytest.fixture
def policy_extra(bao) -> str:
    cluster = bao.vault_env.cluster
    bao.client().secrets.kv.v2.create_or_update_secret(
        path="payments", secret={"dsn": cluster.dsn("vaultdb")}, mount_point="kv")
    return KV_TARGETS.format(port=cluster.port)


def test_the_admin_dsn_is_read_from_vault_kv(client, dev_issuer, vault_env, ledger, bao, caplog):
    caplog.set_level(logging.DEBUG)
    response = mint(client, dev_issuer, audience="payments-db-kv")
    assert response.status_code == 200, response.get_json()
    cred = response.get_json()["credential"]
    assert cred["username"].startswith("nhb_")
    with psycopg.connect(cred["dsn"]) as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == 5
    assert bao.root_token not in all_ledger_text(ledger) + caplog.text


def test_a_missing_kv_secret_is_an_invalid_target(client, dev_issuer, vault_env, ledger):
    response = mint(client, dev_issuer, audience="missing-kv-db")
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_target"
    deny = list(ledger.iter_events())[-1]
    assert deny.type == "deny" and "nothing-here" in deny.details["reason"]


@pytest.mark.parametrize("keys, line, message", [
    ("admin_dsn_vault: kv/data/payments\n", 6, "admin_dsn_vault must be a Vault KV reference"),
    ("admin_dsn_vault: kv/data/p#dsn\nadmin_dsn_env: X\n", 6,
     "exactly one of admin_dsn_env, admin_dsn_file or admin_dsn_vault is required"),
    ("admin_dsn_vault: kv/data/p#dsn\nvault: {addr: 'http://v:8200'}\n", 7,
     "vault: one of auth, token_env or token_file is required"),
], ids=["no field", "two sources", "vault block without auth"])
def test_admin_dsn_vault_problems_name_file_and_line(keys, line, message):
    text = "kind: target\nname: db\ntype: postgres\nmax_ttl: 60\ngrants: []\n" + keys
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "t.yaml")
    assert [(p.file, p.line) for p in info.value.problems] == [("t.yaml", line)]
    assert message in info.value.problems[0].message
