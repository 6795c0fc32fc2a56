"""`type: postgres` target documents: keys, defaults and every problem with its file:line."""
from __future__ import annotations

import pytest

import broker.targets  # noqa: F401 - registers the postgres target type
from broker.policy import PolicyError, load_policy_text

HEAD = "kind: target\nname: db\ntype: postgres\nmax_ttl: 15m\n"


def test_a_full_target_loads_with_its_options(tmp_path):
    target = load_policy_text(HEAD + (
        "admin_dsn_env: PAYMENTS_DB_ADMIN_DSN\n"
        "connect: {host: db.internal, port: 5432, dbname: payments, sslmode: verify-full}\n"
        "grants: [app_readonly]\n"
        "scope_grants: {\"payments:write\": [app_writer]}\n"
        "connection_limit: 5\n"
        "reassign_owned_to: app_owner\n")).targets["db"]
    assert target.type == "postgres"
    assert target.options == {
        "admin_dsn_env": "PAYMENTS_DB_ADMIN_DSN",
        "connect": {"host": "db.internal", "port": 5432, "dbname": "payments", "sslmode": "verify-full"},
        "grants": ["app_readonly"], "scope_grants": {"payments:write": ["app_writer"]},
        "connection_limit": 5, "reassign_owned_to": "app_owner", "scram_iterations": 64}


def test_defaults_and_a_relative_dsn_file(tmp_path):
    target = load_policy_text(HEAD + "admin_dsn_file: secrets/admin.dsn\ngrants: []\n",
                              base_dir=tmp_path).targets["db"]
    assert target.options == {"admin_dsn_file": str((tmp_path / "secrets/admin.dsn").resolve()),
                              "grants": [], "connection_limit": 5, "scram_iterations": 64}


@pytest.mark.parametrize("extra, line, message", [
    ("grants: []\n", 1, "exactly one of admin_dsn_env"),
    ("admin_dsn_env: A\nadmin_dsn_file: f\ngrants: []\n", 6, "exactly one of admin_dsn_env"),
    ("admin_dsn_env: 'not a name'\ngrants: []\n", 5, "admin_dsn_env must be an environment variable name"),
    ("admin_dsn_env: A\n", 1, "missing required key 'grants'"),
    ("admin_dsn_env: A\ngrants: app\n", 6, "grants must be a list of role names"),
    ("admin_dsn_env: A\ngrants: [nhb_x]\n", 6, "grants: 'nhb_x' uses the prefix 'nhb_'"),
    ("admin_dsn_env: A\ngrants: [" + "r" * 64 + "]\n", 6, "63-byte limit"),
    ("admin_dsn_env: A\ngrants: [a, a]\n", 6, "grants lists a role twice"),
    ("admin_dsn_env: A\ngrants: []\nconnect: {host: h, port: 0}\n", 7, "connect.port must be an integer from 1 to 65535"),
    ("admin_dsn_env: A\ngrants: []\nconnect:\n  host: h\n  user: x\n", 9, "connect: unknown key 'user'"),
    ("admin_dsn_env: A\ngrants: []\nconnect: {sslmode: maybe}\n", 7, "connect.sslmode must be one of"),
    ("admin_dsn_env: A\ngrants: []\nconnect: [h]\n", 7, "connect must be a mapping"),
    ("admin_dsn_env: A\ngrants: []\nconnection_limit: 0\n", 7, "connection_limit must be an integer from 1 to 10000"),
    ("admin_dsn_env: A\ngrants: []\nscope_grants: {'bad scope': [a]}\n", 7, "is not a scope token"),
    ("admin_dsn_env: A\ngrants: []\nreassign_owned_to: ''\n", 7, "reassign_owned_to must be a non-empty string"),
    ("admin_dsn_env: A\ngrants: []\nscram_iterations: 0\n", 7, "scram_iterations must be an integer from 1 to 1000000"),
    ("admin_dsn_env: A\ngrants: []\npassword: x\n", 7, "unknown key 'password'"),
], ids=["no admin dsn", "both admin dsn keys", "bad env name", "no grants", "grants not a list",
        "grant with the broker's prefix", "grant too long", "duplicate grant", "bad port",
        "unknown connect key", "bad sslmode", "connect not a mapping", "connection limit 0",
        "bad scope", "empty reassign role", "scram iterations 0", "unknown key"])
def test_problems_name_file_and_line(extra, line, message):
    with pytest.raises(PolicyError) as info:
        load_policy_text(HEAD + extra, "t.yaml")
    problems = [(p.file, p.line, p.message) for p in info.value.problems]
    assert any(f == "t.yaml" and n == line and message in m for f, n, m in problems), problems
