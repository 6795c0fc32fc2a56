"""Usage linking: the database's own log → usage events → "who ran this" (real PostgreSQL)."""
from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import psycopg
import pytest

from broker.usage import ingest_postgres_log
from tests.support.oauth import AUDITOR, INTROSPECTOR, basic
from tests.support.pg_cluster import LOG_PREFIX
from tests.support.postgres import token_form
from tests.support.server import broker_cli


def _mint(client, dev_issuer, **kwargs) -> dict:
    response = client.post("/token", data=token_form(dev_issuer.mint_github(audience="nhi-broker-test"), **kwargs))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _wait_logged(cluster, needle: str, suffix: str = ".json", timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(needle in f.read_text(errors="replace") for f in cluster.log_files(suffix)):
            return
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} never reached the server log")


def _run_updates(cred: dict, marker: str) -> list[str]:
    statements = [f"UPDATE accounts SET owner = '{marker}-a' WHERE id = 4",
                  f"UPDATE accounts SET owner = '{marker}-b' WHERE id = 5"]
    with psycopg.connect(cred["dsn"], autocommit=True) as conn:
        for text in statements:
            conn.execute(text)                                 # simple protocol, no parameters
        conn.execute("UPDATE accounts SET balance = %s WHERE owner = %s", (7, f"{marker}-a"))  # extended
    return statements


def test_each_statement_is_attributed_to_the_run_and_the_policy(client, dev_issuer, cluster, ledger):
    body = _mint(client, dev_issuer)
    cid, cred = body["credential_id"], body["credential"]
    marker = f"m{cid[-8:]}"
    statements = _run_updates(cred, marker)
    _wait_logged(cluster, f"user={cred['username']} database={cred['dbname']} host=")   # disconnection
    stats = ingest_postgres_log(ledger, cluster.log_dir, fmt="jsonlog")
    assert stats.recorded >= 5 and stats.files

    hits = client.get(f"/v1/usage?statement={marker}", headers=basic(*AUDITOR)).get_json()["usage"]
    assert [h["statement"] for h in hits] == statements
    record = ledger.get_credential(cid)
    for hit in hits:
        assert hit["credential_id"] == cid
        assert hit["principal"] == record.principal
        assert hit["run"] == record.run and hit["run"]["id"]
        assert hit["authorizer"]["name"] == "payments-deploy"
        assert hit["authorizer"]["digest"].startswith("sha256:")
        assert hit["database"] == cred["dbname"] and hit["kind"] == "statement"
        assert hit["session_id"] and hit["client"].startswith("127.0.0.1:") and hit["at"].endswith("Z")
    extended = client.get("/v1/usage?statement=balance = $1", headers=basic(*AUDITOR)).get_json()["usage"]
    assert [h["credential_id"] for h in extended] == [cid]
    assert extended[0]["command_tag"] == "UPDATE"
    # the same usage from the credential's side, paginated
    view = client.get(f"/v1/credentials/{cid}?usage_limit=2", headers=basic(*AUDITOR)).get_json()
    kinds = [u["kind"] for u in view["usage"]]
    assert kinds == ["connect", "statement"] and view["usage_next"]
    while view["usage_next"]:
        view = client.get(view["usage_next"], headers=basic(*AUDITOR)).get_json()
        kinds += [u["kind"] for u in view["usage"]]
    assert kinds == ["connect", "statement", "statement", "statement", "disconnect"]
    assert all(e["type"] != "usage" for e in view["events"])
    assert ledger.verify().ok


def test_time_window_of_usage(client, dev_issuer, cluster, ledger):
    body = _mint(client, dev_issuer)
    marker = f"w{body['credential_id'][-8:]}"
    _run_updates(body["credential"], marker)
    _wait_logged(cluster, f"'{marker}-b'")
    ingest_postgres_log(ledger, cluster.log_dir, fmt="jsonlog")
    now = time.time()
    inside = client.get(f"/v1/usage?statement={marker}&since={int(now - 120)}&until={int(now + 60)}",
                        headers=basic(*AUDITOR)).get_json()["usage"]
    before = client.get(f"/v1/usage?statement={marker}&until={int(now - 120)}",
                        headers=basic(*AUDITOR)).get_json()["usage"]
    assert len(inside) == 2 and before == []


@pytest.mark.parametrize("fmt", ["jsonlog", "csvlog", "stderr"])
def test_every_log_format_records_the_same_usage_once(client, dev_issuer, cluster, ledger, fmt, tmp_path):
    body = _mint(client, dev_issuer)
    marker = f"f{body['credential_id'][-8:]}"
    _run_updates(body["credential"], marker)
    for suffix in (".json", ".csv", ""):
        _wait_logged(cluster, f"'{marker}-b'", suffix=suffix)
    first = ingest_postgres_log(ledger, cluster.log_dir, fmt=fmt, prefix=LOG_PREFIX)
    hits = client.get(f"/v1/usage?statement={marker}", headers=basic(*AUDITOR)).get_json()["usage"]
    assert [h["credential_id"] for h in hits] == [body["credential_id"]] * 2
    assert first.recorded >= 2
    # the same lines again, in every format and as a "rotated" copy: nothing new
    rotated = tmp_path / "rotated"
    shutil.copytree(cluster.log_dir, rotated)
    for other, path in (("jsonlog", cluster.log_dir), ("csvlog", cluster.log_dir), ("jsonlog", rotated)):
        again = ingest_postgres_log(ledger, path, fmt=other)
        hits = client.get(f"/v1/usage?statement={marker}", headers=basic(*AUDITOR)).get_json()["usage"]
        assert len(hits) == 2, other
    assert again.recorded == 0


def test_secrets_in_statements_are_redacted_and_passwords_never_recorded(client, dev_issuer, cluster,
                                                                        ledger, tmp_path):
    body = _mint(client, dev_issuer)
    cred = body["credential"]
    with psycopg.connect(cred["dsn"], autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {cred['username']} PASSWORD 'changed-Secret-0042'")
        conn.execute("SELECT 'postgresql://app:uri-Secret-0042@db.internal/x' AS conninfo")
    _wait_logged(cluster, "uri-Secret-0042")
    result = broker_cli("ingest", "postgres-log", str(cluster.log_dir), "--format", "jsonlog",
                        "--database-url", ledger_url(tmp_path))
    assert result.returncode == 0, result.stderr
    hits = client.get(f"/v1/usage?statement=ALTER ROLE {cred['username']}", headers=basic(*AUDITOR)).get_json()["usage"]
    assert hits[0]["statement"] == f"ALTER ROLE {cred['username']} PASSWORD '***'"
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        dump = "\n".join(conn.iterdump())
    for secret in ("changed-Secret-0042", "uri-Secret-0042", cred["password"]):
        assert secret not in dump
        assert secret not in result.stdout + result.stderr


def ledger_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def test_usage_of_a_role_the_ledger_does_not_know_is_still_recorded(client, cluster, ledger, target_db):
    from psycopg import sql

    from broker.common.ids import new_credential_id
    from broker.targets.postgres import scram_sha256_verifier

    role = "nhb_" + new_credential_id()
    with psycopg.connect(target_db.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(scram_sha256_verifier("pw-unknown-1", iterations=64))))
    with psycopg.connect(host="127.0.0.1", port=target_db.port, dbname=target_db.dbname, user=role,
                         password="pw-unknown-1") as conn:
        conn.execute("SELECT 'from-an-unknown-role'")
    _wait_logged(cluster, "from-an-unknown-role")
    ingest_postgres_log(ledger, cluster.log_dir, fmt="jsonlog")
    hits = client.get("/v1/usage?statement=from-an-unknown-role", headers=basic(*AUDITOR)).get_json()["usage"]
    assert hits[0]["credential_id"] == role[4:] and hits[0]["credential_known"] is False
    assert hits[0]["principal"] is None
    with psycopg.connect(target_db.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize("query, status, error", [
    ("", 401, "invalid_client"),
    ("?statement=x", 403, "access_denied"),
    ("?since=yesterday", 400, "invalid_request"),
    ("?until=2026-13-01", 400, "invalid_request"),
    ("?since=2026-03-02&until=2026-03-01", 400, "invalid_request"),
    ("?statement=x&statement=y", 400, "invalid_request"),
    ("?who=x", 400, "invalid_request"),
    ("?limit=0", 400, "invalid_request"),
    ("?after=-1", 400, "invalid_request"),
    ("?statement=" + "x" * 1001, 400, "invalid_request"),
], ids=["no client", "client may not audit", "bad since", "bad until", "empty window",
        "repeated", "unknown parameter", "limit 0", "negative cursor", "statement too long"])
def test_usage_refusals(client, query, status, error):
    headers = {} if status == 401 else basic(*INTROSPECTOR) if status == 403 else basic(*AUDITOR)
    response = client.get(f"/v1/usage{query}", headers=headers)
    assert response.status_code == status
    assert response.get_json()["error"] == error
    assert set(response.get_json()) <= {"error", "error_description", "reason", "event_id"}  # docs: README refusals
