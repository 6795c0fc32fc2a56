"""Minting PostgreSQL credentials against a real server with real SCRAM authentication."""
from __future__ import annotations

import json
import logging
import sqlite3

import psycopg
import pytest

from tests.support.oauth import AUDITOR, basic
from tests.support.postgres import token_form
from tests.support.records import last_refusal


def _mint(client, dev_issuer, **kwargs):
    response = client.post("/token", data=token_form(dev_issuer.mint_github(audience="nhi-broker-test"), **kwargs))
    return response


def _role_exists(admin_dsn: str, role: str) -> bool:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def _minted_roles(admin_dsn: str) -> set[str]:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'nhb%'")}


def test_mint_returns_a_credential_that_connects_as_its_own_role(client, dev_issuer, target_db):
    response = _mint(client, dev_issuer)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    cred = body["credential"]
    assert set(cred) == {"type", "username", "password", "host", "port", "dbname", "dsn", "expires_at"}
    assert cred["type"] == "postgres"
    assert cred["username"] == f"nhb_{body['credential_id']}"
    assert (cred["host"], cred["port"], cred["dbname"]) == ("127.0.0.1", target_db.port, target_db.dbname)
    assert len(cred["password"]) >= 43
    # exactly the returned dsn
    with psycopg.connect(cred["dsn"]) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == cred["username"]
        conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
    # exactly the returned fields
    with psycopg.connect(host=cred["host"], port=cred["port"], dbname=cred["dbname"],
                         user=cred["username"], password=cred["password"]) as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == 10


def test_the_role_carries_expiry_limit_grants_and_who_it_is(client, dev_issuer, target_db):
    body = _mint(client, dev_issuer).get_json()
    role = body["credential"]["username"]
    with psycopg.connect(target_db.admin_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolcanlogin, rolconnlimit, extract(epoch FROM rolvaliduntil)::bigint, rolsuper,"
            " rolcreaterole, rolcreatedb, shobj_description(oid, 'pg_authid')"
            " FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        members = {r[0] for r in conn.execute(
            "SELECT b.rolname FROM pg_auth_members m JOIN pg_roles b ON b.oid = m.roleid"
            " JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s", (role,))}
        secret = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)).fetchone()[0]
    assert row is not None
    can_login, limit, valid_until, is_super, createrole, createdb, comment = row
    assert can_login and not is_super and not createrole and not createdb
    assert limit == 3
    claims_exp = body["expires_in"]
    assert abs(valid_until - (int(__import__("time").time()) + claims_exp)) <= 2
    assert members == {target_db.reader, target_db.writer}          # grants + scope_grants
    about = json.loads(comment)
    assert about["credential_id"] == body["credential_id"]
    assert about["principal"].startswith("github:acme/payments")
    assert about["authorizer"]["name"] == "payments-deploy"
    assert about["run"]["id"]
    assert secret.startswith("SCRAM-SHA-256$64:")                     # a broker-computed verifier
    assert body["credential"]["password"] not in secret


def test_read_only_scope_gets_only_the_base_grants(client, dev_issuer, target_db):
    cred = _mint(client, dev_issuer, scope="payments:read").get_json()["credential"]
    with psycopg.connect(cred["dsn"]) as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == 10
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE accounts SET balance = 0")


def test_wrong_password_is_refused(client, dev_issuer, target_db):
    cred = _mint(client, dev_issuer).get_json()["credential"]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host=cred["host"], port=cred["port"], dbname=cred["dbname"],
                        user=cred["username"], password=cred["password"][:-1] + "x")


def test_a_grant_role_that_does_not_exist_leaves_no_role_and_records_a_deny(client, dev_issuer,
                                                                            target_db, ledger):
    before = _minted_roles(target_db.admin_dsn)
    response = _mint(client, dev_issuer, audience="broken-db", scope=None)
    assert response.status_code == 400
    body = response.get_json()
    assert {k: body[k] for k in ("error", "error_description")} == \
        {"error": "invalid_target", "error_description": "target is not usable"}
    assert body["reason"] == "target_misconfigured" and isinstance(body["event_id"], int)
    assert _minted_roles(target_db.admin_dsn) == before
    deny = [e for e in ledger.iter_events() if e.type == "deny"][-1]
    assert deny.details["error"] == "invalid_target"
    assert "does not exist" in deny.details["reason"] and "broken-db" in deny.details["reason"]


def test_an_unset_admin_dsn_is_invalid_target_and_recorded(client, dev_issuer, ledger):
    response = _mint(client, dev_issuer, audience="unset-db", scope=None)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_target"
    deny = [e for e in ledger.iter_events() if e.type == "deny"][-1]
    assert "is not set" in deny.details["reason"]


def test_an_unreachable_database_is_503_and_its_password_is_never_shown(app, client, dev_issuer,
                                                                       ledger, caplog):
    caplog.set_level(logging.DEBUG)
    response = _mint(client, dev_issuer, audience="down-db", scope=None)
    assert response.status_code == 503
    assert response.get_json()["error"] == "temporarily_unavailable"
    outage = last_refusal(app)                     # counted into the target's outage
    assert outage.type == "outage" and outage.details["cause"] == "target:down-db"
    assert outage.details["error"] == "temporarily_unavailable"
    everything = response.get_data(as_text=True) + json.dumps([e.to_dict() for e in ledger.iter_events()])
    everything += "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert "hunter2-admin-secret" not in everything


def test_a_mint_the_ledger_cannot_record_leaves_no_role(client, dev_issuer, target_db, app, monkeypatch):
    # A fake failure (the only one here): the ledger refuses the mint after the role exists.
    from broker.ledger import LedgerUnavailable

    created = []
    issuer = app.extensions["broker"].issuers["postgres"]
    real_issue = issuer.issue

    def issue(request):
        issued = real_issue(request)
        created.append(issued.secret["username"])
        return issued

    def refuse(*args, **kwargs):
        raise LedgerUnavailable("ledger database error during record_mint")

    monkeypatch.setattr(issuer, "issue", issue)
    monkeypatch.setattr(app.extensions["broker"].ledger, "record_mint", refuse)
    response = _mint(client, dev_issuer)
    assert response.status_code == 503
    assert created and not _role_exists(target_db.admin_dsn, created[0])


def test_the_password_is_never_in_the_ledger(client, dev_issuer, tmp_path):
    passwords = [_mint(client, dev_issuer).get_json()["credential"]["password"] for _ in range(3)]
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        dump = "\n".join(conn.iterdump())
    assert "nhb_" in dump
    for password in passwords:
        assert password not in dump


def test_the_audit_record_names_the_role(client, dev_issuer):
    body = _mint(client, dev_issuer).get_json()
    record = client.get(f"/v1/credentials/{body['credential_id']}", headers=basic(*AUDITOR)).get_json()
    mint = record["events"][0]
    assert mint["type"] == "mint" and mint["details"]["role"] == body["credential"]["username"]
    assert record["usage"] == [] and record["usage_next"] is None
    assert "password" not in json.dumps(record)
