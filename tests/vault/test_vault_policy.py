"""``type: vault-database`` targets: keys, defaults and problems with file:line."""
from __future__ import annotations

import pytest

import broker.targets  # noqa: F401 - registers the target kinds (postgres, vault-database)
from broker.policy import PolicyError, load_policy_text

HEAD = "kind: target\nname: db\ntype: vault-database\nmax_ttl: 5m\n"
GOOD_CONNECT = "connect: {host: db.internal, dbname: payments}\n"


def test_a_minimal_target_gets_its_defaults():
    target = load_policy_text(HEAD + "role: payments-ro\n" + GOOD_CONNECT).targets["db"]
    assert target.type == "vault-database"
    assert target.options == {"role": "payments-ro", "mount": "database",
                              "connect": {"host": "db.internal", "dbname": "payments", "port": 5432}}


def test_the_issue_example_loads(tmp_path):
    target = load_policy_text(HEAD + GOOD_CONNECT + (
        "vault: {addr_env: VAULT_ADDR, auth: {method: approle, role_id_env: NHB_ROLE_ID,"
        " secret_id_file: secret-id}}\nmount: database\nrole: payments-readonly\n"),
        str(tmp_path / "p.yaml")).targets["db"]
    auth = target.options["vault"]["auth"]
    assert auth["secret_id_file"] == str(tmp_path / "secret-id")      # resolved next to the file


@pytest.mark.parametrize("keys, line, message", [
    (GOOD_CONNECT, 1, "missing required key 'role'"),
    ("role: 'a b'\n" + GOOD_CONNECT, 5, "role must be the database secrets engine's role name"),
    ("role: r\nmount: /database/\n" + GOOD_CONNECT, 6, "mount must be a Vault mount path"),
    ("role: r\nconnect: {host: h}\n", 6, "connect.dbname must be a non-empty string"),
    ("role: r\nconnect: {host: h, dbname: d, port: 0}\n", 6, "connect.port must be an integer"),
    ("role: r\n" + GOOD_CONNECT + "vault: {addr_env: A, token: hvs.secret}\n", 7,
     "vault: unknown key 'token'"),
    ("role: r\n" + GOOD_CONNECT + "vault: {token_env: T}\n", 7,
     "vault: exactly one of addr or addr_env is required"),
    ("role: r\n" + GOOD_CONNECT + "vault: {addr_env: A, auth: {method: ldap}}\n", 7,
     "vault.auth.method must be one of token, approle, kubernetes, jwt"),
    ("role: r\n" + GOOD_CONNECT + "vault: {addr_env: A, auth: {method: approle, role_id: x}}\n", 7,
     "approle needs exactly one of secret_id_file, secret_id_env"),
    ("role: r\n" + GOOD_CONNECT + "vault: {addr_env: A, auth: {method: kubernetes}}\n", 7,
     "kubernetes needs role"),
    ("role: r\n" + GOOD_CONNECT + "vault: {addr_env: A, token_env: T, auth: {method: jwt, role: r, jwt_env: J}}\n",
     7, "give auth or token_env/token_file, not both"),
], ids=["role missing", "bad role", "bad mount", "connect without dbname",
        "bad port", "a literal token is not a key", "no address", "unknown auth method",
        "approle without secret id", "kubernetes without role", "two auth sources"])
def test_problems_name_file_and_line(keys, line, message):
    with pytest.raises(PolicyError) as info:
        load_policy_text(HEAD + keys, "t.yaml")
    problems = [(p.file, p.line, p.message) for p in info.value.problems]
    assert any(f == "t.yaml" and n == line and message in m for f, n, m in problems), problems
