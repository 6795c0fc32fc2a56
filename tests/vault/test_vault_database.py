"""Minting database credentials through Vault/OpenBao's database secrets engine, end to end:
the broker's HTTP API, a real OpenBao, a real PostgreSQL with SCRAM authentication."""
from __future__ import annotations

import time

import psycopg
import pytest

from tests.support.oauth import AUDITOR, basic
from tests.support.records import last_refusal
from tests.support.vault import all_ledger_text, cluster_roles, lease_ttl, leases, mint

CREDENTIAL_KEYS = {"type", "username", "password", "host", "port", "dbname", "dsn", "expires_at"}


def test_mint_via_vault_returns_a_postgres_credential_that_connects(client, dev_issuer, vault_env, ledger, bao):
    response = mint(client, dev_issuer)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    cred = body["credential"]
    assert set(cred) == CREDENTIAL_KEYS
    assert cred["type"] == "postgres"
    assert cred["username"].startswith("v-")                       # Vault's generated user
    assert (cred["host"], cred["port"], cred["dbname"]) == ("127.0.0.1", vault_env.cluster.port, vault_env.dbname)
    with psycopg.connect(cred["dsn"]) as conn:                     # SCRAM: the password is checked
        assert conn.execute("SELECT current_user").fetchone()[0] == cred["username"]
        assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == 5
    with psycopg.connect(host=cred["host"], port=cred["port"], dbname=cred["dbname"],
                         user=cred["username"], password=cred["password"]) as conn:
        conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host=cred["host"], port=cred["port"], dbname=cred["dbname"],
                        user=cred["username"], password="not-the-password").close()

    # The ledger links the lease and the generated user to the credential id; no password.
    record = ledger.get_credential(body["credential_id"])
    assert record.target_type == "vault-database"
    assert record.details["username"] == cred["username"]
    assert record.details["lease_id"].startswith("database/creds/app-readonly/")
    assert 0 < record.details["lease_duration"] <= 600
    (mint_event,) = [e for e in ledger.events_for_credential(body["credential_id"]) if e.type == "mint"]
    assert mint_event.details["lease_id"] == record.details["lease_id"]
    assert mint_event.details["username"] == cred["username"]
    assert mint_event.details["target_type"] == "vault-database"
    text = all_ledger_text(ledger)
    assert cred["password"] not in text
    assert bao.root_token not in text


def test_the_lease_is_no_longer_than_the_policy_allows(client, dev_issuer, vault_env, bao, ledger):
    # The Vault role grants 1h by default; the policy allows 10m and the request asks for 2m.
    body = mint(client, dev_issuer, ttl="2m").get_json()
    assert body["expires_in"] == 120
    record = ledger.get_credential(body["credential_id"])
    assert record.details["lease_shortened"] is True
    ttl = lease_ttl(bao, record.details["lease_id"])
    assert ttl is not None and 100 <= ttl <= 120
    with psycopg.connect(vault_env.cluster.admin_dsn, autocommit=True) as conn:
        valid_until = conn.execute("SELECT extract(epoch FROM rolvaliduntil)::bigint FROM pg_roles"
                                   " WHERE rolname = %s", (body["credential"]["username"],)).fetchone()[0]
    assert valid_until <= time.time() + 125                          # VALID UNTIL moved too


def test_mint_against_the_machines_postgresql(client, dev_issuer, ledger, pg_admin_dsn):
    body = mint(client, dev_issuer, audience="local-db-vault").get_json()
    cred = body["credential"]
    assert (cred["host"], cred["port"]) == ("127.0.0.1", 5432)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s",
                            (cred["username"],)).fetchone() == (True,)
    with psycopg.connect(cred["dsn"]) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == cred["username"]
    response = client.post("/revoke", data={"credential_id": body["credential_id"]}, headers=basic(*AUDITOR))
    assert response.status_code == 200
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (cred["username"],)).fetchone() is None


def test_approle_login_with_a_periodic_token(client, dev_issuer, vault_env):
    response = mint(client, dev_issuer, audience="payments-db-approle")
    assert response.status_code == 200, response.get_json()
    with psycopg.connect(response.get_json()["credential"]["dsn"]) as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == 5


def test_revoke_revokes_the_lease_ends_sessions_and_logins(client, dev_issuer, vault_env, bao, ledger):
    body = mint(client, dev_issuer).get_json()
    cred, cid = body["credential"], body["credential_id"]
    lease_id = ledger.get_credential(cid).details["lease_id"]
    session = psycopg.connect(cred["dsn"], autocommit=True)
    session.execute("SELECT 1")

    response = client.post("/revoke", data={"credential_id": cid}, headers=basic(*AUDITOR))
    assert response.status_code == 200

    assert lease_ttl(bao, lease_id) is None                                  # Vault: gone
    with pytest.raises(psycopg.OperationalError):                           # open session ended
        session.execute("SELECT 1")
    session.close()
    with pytest.raises(psycopg.OperationalError):                           # login fails
        psycopg.connect(cred["dsn"]).close()
    assert cred["username"] not in cluster_roles(vault_env)
    record = ledger.get_credential(cid)
    assert record.revoked_at is not None
    assert [e.type for e in ledger.events_for_credential(cid)] == ["mint", "revoke"]
    introspected = client.post("/introspect", data={"token": body["access_token"]}, headers=basic(*AUDITOR))
    assert introspected.get_json() == {"active": False}


def test_expiry_ends_the_lease_and_the_reaper_records_it(client, dev_issuer, vault_env, bao, app, ledger):
    from broker.lifecycle.reaper import reap_once

    body = mint(client, dev_issuer, ttl="3s").get_json()
    cred, cid = body["credential"], body["credential_id"]
    record = ledger.get_credential(cid)
    assert record.details["lease_duration"] <= 3
    with psycopg.connect(cred["dsn"]) as conn:
        conn.execute("SELECT 1")
    deadline = time.monotonic() + 30
    while lease_ttl(bao, record.details["lease_id"]) is not None:            # Vault ends the lease
        assert time.monotonic() < deadline, "Vault did not end the lease"
        time.sleep(0.5)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cred["dsn"]).close()

    report = reap_once(app.extensions["broker"], orphans=False)
    assert cid in report.ended
    record = ledger.get_credential(cid)
    assert record.ended_at is not None and record.revoked_at is None
    expire = [e for e in ledger.events_for_credential(cid) if e.type == "expire"]
    assert len(expire) == 1 and expire[0].details["cause"] == "expired"
    assert reap_once(app.extensions["broker"], orphans=False).ended == []   # idempotent


def test_reconcile_records_a_lease_vault_ended_early(client, dev_issuer, vault_env, bao, issuer, ledger):
    body = mint(client, dev_issuer).get_json()
    cid = body["credential_id"]
    lease_id = ledger.get_credential(cid).details["lease_id"]
    bao.client().sys.revoke_lease(lease_id=lease_id)             # an operator revokes it in Vault

    report = issuer.reconcile(ledger, force=True)
    assert cid in report.ended
    (event,) = [e for e in ledger.events_for_credential(cid) if e.type == "expire"]
    assert event.details["cause"] == "lease ended in Vault"
    assert event.details["lease_id"] == lease_id
    assert ledger.get_credential(cid).ended_at is not None
    assert cid not in issuer.reconcile(ledger, force=True).ended


def test_reconcile_runs_in_the_reaper_pass(client, dev_issuer, vault_env, bao, app, ledger, issuer):
    from broker.lifecycle.reaper import reap_once

    cid = mint(client, dev_issuer).get_json()["credential_id"]
    bao.client().sys.revoke_lease(lease_id=ledger.get_credential(cid).details["lease_id"])
    issuer._reconciled_at.clear()
    report = reap_once(app.extensions["broker"], orphans=False)
    assert cid in report.ended


def test_a_mint_the_ledger_cannot_record_revokes_its_lease(make_app, pg_database, dev_issuer, vault_env, bao):
    app = make_app(DATABASE_URL=pg_database)
    client = app.test_client()
    assert mint(client, dev_issuer).status_code == 200                     # schema created, works
    before_leases, before_roles = leases(bao), cluster_roles(vault_env)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("ALTER TABLE credentials RENAME TO credentials_away")
    try:
        response = mint(client, dev_issuer)
    finally:
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute("ALTER TABLE credentials_away RENAME TO credentials")
    assert response.status_code == 503
    assert response.get_json()["error"] == "temporarily_unavailable"
    assert leases(bao) <= before_leases                                      # the lease was revoked
    assert cluster_roles(vault_env) <= before_roles                          # and its user dropped
    ctx = app.extensions["broker"]
    events = list(ctx.ledger.iter_events())
    assert [e.type for e in events] == ["mint"]            # nothing could be recorded then
    ctx.outages.end_idle(now=time.time() + 60)             # the ledger answers again:
    outage = last_refusal(app)                             # the refusal is counted, late
    assert outage.type == "outage" and outage.details["cause"] == "ledger"
    assert outage.details["count"] == 1 and outage.details["recorded_late"] is True
