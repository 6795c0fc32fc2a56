"""Revocation and expiry that really end access, the reaper, orphans (real PostgreSQL)."""
from __future__ import annotations

import json
import secrets
import threading
import time

import psycopg
import pytest
from psycopg import sql

from broker.common.ids import new_credential_id
from broker.targets.postgres import scram_sha256_verifier
from tests.support.oauth import AUDITOR, basic
from tests.support.postgres import ADMIN_ENV, token_form
from tests.support.server import broker_cli


def _mint(client, dev_issuer, **kwargs) -> dict:
    response = client.post("/token", data=token_form(dev_issuer.mint_github(audience="nhi-broker-test"), **kwargs))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _role_exists(admin_dsn: str, role: str) -> bool:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def _assert_session_killed(conn: psycopg.Connection) -> None:
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")


def _assert_login_refused(cred: dict) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(cred["dsn"], connect_timeout=5)


def _wait(predicate, timeout: float = 20.0, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("by", ["credential_id", "token"])
def test_revocation_kills_open_sessions_and_later_logins(client, dev_issuer, target_db, ledger, by):
    body = _mint(client, dev_issuer)
    cred = body["credential"]
    session = psycopg.connect(cred["dsn"], autocommit=True)
    session.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 2")
    started = time.monotonic()
    form = {"credential_id": body["credential_id"]} if by == "credential_id" else {"token": body["access_token"]}
    response = client.post("/revoke", data=form, headers=basic(*AUDITOR))
    assert response.status_code == 200
    assert time.monotonic() - started < 5
    _assert_session_killed(session)
    session.close()
    _assert_login_refused(cred)
    assert not _role_exists(target_db.admin_dsn, cred["username"])
    record = ledger.get_credential(body["credential_id"])
    assert record.revoked_at is not None and record.ended_at is not None
    info = client.post("/introspect", data={"token": body["access_token"]}, headers=basic(*AUDITOR)).get_json()
    assert info == {"active": False}
    revokes = [e for e in ledger.events_for_credential(body["credential_id"]) if e.type == "revoke"]
    assert len(revokes) == 1 and revokes[0].details["result"] == "revoked"


def test_expiry_kills_an_open_session_through_the_background_reaper(make_app, dev_issuer, target_db):
    app = make_app(REAPER_INTERVAL=1)
    assert "reaper" in app.extensions["broker"].extras
    client, ledger = app.test_client(), app.extensions["broker"].ledger
    body = _mint(client, dev_issuer, ttl="3s")
    cred = body["credential"]
    session = psycopg.connect(cred["dsn"], autocommit=True)
    session.execute("UPDATE accounts SET balance = balance + 5 WHERE id = 3")
    events = _wait(lambda: [e for e in ledger.events_for_credential(body["credential_id"])
                            if e.type == "expire"], timeout=20)
    assert events[0].details["cause"] == "expired"
    assert events[0].details["sessions_terminated"] == 1
    _assert_session_killed(session)
    session.close()
    _assert_login_refused(cred)
    assert not _role_exists(target_db.admin_dsn, cred["username"])
    assert ledger.get_credential(body["credential_id"]).ended_at is not None


def test_valid_until_refuses_new_logins_even_before_the_reaper(client, dev_issuer):
    cred = _mint(client, dev_issuer, ttl="2s")["credential"]
    psycopg.connect(cred["dsn"]).close()
    time.sleep(3.2)
    _assert_login_refused(cred)


def test_broker_reap_catches_up_after_downtime(make_app, dev_issuer, target_db, policy_dir, tmp_path):
    app = make_app()                              # a broker without a reaper…
    client = app.test_client()
    minted = [_mint(client, dev_issuer, ttl="2s") for _ in range(3)]
    app.extensions["broker"].close()              # … that goes away
    time.sleep(2.5)
    env = {"BROKER_POLICY_DIR": str(policy_dir), "BROKER_STATE_DIR": str(tmp_path / "state"),
           "BROKER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}", ADMIN_ENV: target_db.admin_dsn}
    result = broker_cli("reap", "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert sorted(report["ended"]) == sorted(m["credential_id"] for m in minted)
    for m in minted:
        assert not _role_exists(target_db.admin_dsn, m["credential"]["username"])
    again = json.loads(broker_cli("reap", "--json", env=env).stdout)
    assert again["ended"] == []


def test_several_reapers_at_once_do_no_harm(make_app, dev_issuer, target_db, tmp_path):
    from broker.lifecycle.reaper import reap_once

    app = make_app()
    client = app.test_client()
    minted = [_mint(client, dev_issuer, ttl="2s") for _ in range(8)]
    sessions = [psycopg.connect(m["credential"]["dsn"], autocommit=True) for m in minted[:3]]
    time.sleep(2.5)
    reapers = [make_app() for _ in range(3)]      # three broker processes' worth of pools
    barrier = threading.Barrier(len(reapers))
    reports, failures = [], []

    def run(reaper_app):
        barrier.wait()
        try:
            reports.append(reap_once(reaper_app.extensions["broker"]))
        except Exception as exc:  # noqa: BLE001
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(a,)) for a in reapers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert failures == []
    assert all(r.failed == [] for r in reports)
    ended = [cid for r in reports for cid in r.ended]
    assert sorted(ended) == sorted(m["credential_id"] for m in minted)     # each exactly once
    ledger = app.extensions["broker"].ledger
    for m in minted:
        expires = [e for e in ledger.events_for_credential(m["credential_id"]) if e.type == "expire"]
        assert len(expires) == 1
        assert not _role_exists(target_db.admin_dsn, m["credential"]["username"])
    for session in sessions:
        _assert_session_killed(session)
        session.close()
    assert ledger.verify().ok


def _create_role(admin_dsn: str, role: str, password: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(scram_sha256_verifier(password, iterations=64))))


def test_orphans_are_removed_and_recorded_and_nothing_else_is_touched(client, app, dev_issuer,
                                                                      target_db, ledger):
    from broker.lifecycle.reaper import reap_once

    password = secrets.token_urlsafe(16)
    old_orphan = "nhb_" + new_credential_id(now=time.time() - 3600)   # unknown, an hour old
    young = "nhb_" + new_credential_id()                               # unknown, may be in flight
    not_ours = f"nhb_custom_{secrets.token_hex(3)}"                    # not a credential id
    for role in (old_orphan, young, not_ours):
        _create_role(target_db.admin_dsn, role, password)
    session = psycopg.connect(host="127.0.0.1", port=target_db.port, dbname=target_db.dbname,
                              user=old_orphan, password=password, autocommit=True)
    # a credential that was revoked (its role dropped) and whose role reappeared
    revoked = _mint(client, dev_issuer)
    assert client.post("/revoke", data={"credential_id": revoked["credential_id"]},
                       headers=basic(*AUDITOR)).status_code == 200
    _create_role(target_db.admin_dsn, revoked["credential"]["username"], password)
    live = _mint(client, dev_issuer)                                   # must survive

    report = reap_once(app.extensions["broker"])
    removed = {o["role"]: o["why"] for o in report.orphans_removed}
    assert removed[old_orphan] == "unknown to the ledger"
    assert removed[revoked["credential"]["username"]] == "credential already ended"
    assert young not in removed and not_ours not in removed
    assert not _role_exists(target_db.admin_dsn, old_orphan)
    assert _role_exists(target_db.admin_dsn, young) and _role_exists(target_db.admin_dsn, not_ours)
    assert _role_exists(target_db.admin_dsn, live["credential"]["username"])
    _assert_session_killed(session)
    session.close()
    orphan_events = [e for e in ledger.events_for_credential(old_orphan[4:])]
    assert [e.type for e in orphan_events] == ["expire"]
    assert orphan_events[0].details["cause"] == "orphan"
    with psycopg.connect(target_db.admin_dsn, autocommit=True) as conn:
        for role in (young, not_ours):
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_objects_the_role_created_do_not_block_the_drop(client, dev_issuer, target_db):
    with psycopg.connect(target_db.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(target_db.writer)))
    body = _mint(client, dev_issuer)
    with psycopg.connect(body["credential"]["dsn"], autocommit=True) as conn:
        conn.execute("CREATE TABLE scratch_by_ci (x int)")
    assert client.post("/revoke", data={"credential_id": body["credential_id"]},
                       headers=basic(*AUDITOR)).status_code == 200
    assert not _role_exists(target_db.admin_dsn, body["credential"]["username"])
    with psycopg.connect(target_db.admin_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('public.scratch_by_ci')").fetchone()[0] is None


def test_reassign_owned_to_keeps_what_the_role_created(make_app, dev_issuer, target_db, tmp_path, policy_dir):
    text = (policy_dir / "broker.yaml").read_text().replace(
        "connection_limit: 3\n", f"connection_limit: 3\nreassign_owned_to: {target_db.writer}\n", 1)
    other = tmp_path / "policies-reassign"
    other.mkdir()
    (other / "broker.yaml").write_text(text)
    app = make_app(POLICY_DIR=str(other))
    client = app.test_client()
    with psycopg.connect(target_db.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(target_db.writer)))
    body = _mint(client, dev_issuer)
    with psycopg.connect(body["credential"]["dsn"], autocommit=True) as conn:
        conn.execute("CREATE TABLE kept_by_ci (x int)")
    assert client.post("/revoke", data={"credential_id": body["credential_id"]},
                       headers=basic(*AUDITOR)).status_code == 200
    assert not _role_exists(target_db.admin_dsn, body["credential"]["username"])
    with psycopg.connect(target_db.admin_dsn, autocommit=True) as conn:
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'kept_by_ci'").fetchone()
    assert owner == (target_db.writer,)
