"""Usage linking for Vault-generated users: PostgreSQL log → username → lease → credential id."""
from __future__ import annotations

import time

import psycopg

from broker.usage import ingest_postgres_log
from tests.support.vault import mint


def wait_logged(cluster, needle: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(needle in f.read_text(errors="replace") for f in cluster.log_files(".json")):
            return
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} never reached the server log")


def test_statements_of_a_vault_user_link_to_its_credential(client, dev_issuer, vault_env, ledger):
    body = mint(client, dev_issuer).get_json()
    cid, cred = body["credential_id"], body["credential"]
    marker = f"vault-usage-{cid[-8:]}"
    with psycopg.connect(cred["dsn"], autocommit=True) as conn:
        conn.execute(f"SELECT count(*) FROM accounts WHERE owner <> '{marker}'")
    cluster = vault_env.cluster
    wait_logged(cluster, marker)
    wait_logged(cluster, f"user={cred['username']} database={cred['dbname']} host=")   # disconnection

    stats = ingest_postgres_log(ledger, cluster.log_dir, fmt="jsonlog")
    assert stats.recorded >= 3

    usage = [e for e in ledger.events_for_credential(cid, limit=1000) if e.type == "usage"]
    statements = [e for e in usage if marker in (e.details.get("statement") or "")]
    assert len(statements) == 1
    event = statements[0]
    record = ledger.get_credential(cid)
    assert event.details["role"] == cred["username"]
    assert (event.principal, event.run, event.authorizer) == (record.principal, record.run, record.authorizer)
    kinds = {e.details["kind"] for e in usage}
    assert {"connect", "statement", "disconnect"} <= kinds, kinds

    again = ingest_postgres_log(ledger, cluster.log_dir, fmt="jsonlog")      # idempotent
    assert again.recorded == 0


def test_a_username_unknown_to_the_ledger_links_nothing(ledger, vault_env):
    from broker.targets.vault_database import credential_id_for_username

    assert credential_id_for_username(ledger, "v-token-app-readonly-nothing-1234") is None
    assert credential_id_for_username(ledger, "postgres") is None
