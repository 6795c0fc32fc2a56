"""Dependencies down: the broker refuses (503) and issues nothing."""
from __future__ import annotations

from tests.support.oauth import exchange_form


def test_unreachable_redis_fails_closed_and_records_the_deny(make_app, tmp_path, dev_issuer):
    app = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
                   REDIS_URL="redis://127.0.0.1:1/0")
    ledger = app.extensions["broker"].ledger
    response = app.test_client().post("/token", data=exchange_form(dev_issuer.mint_github(audience="nhi-broker-test")))
    assert response.status_code == 503
    assert response.get_json()["error"] == "temporarily_unavailable"
    assert "access_token" not in response.get_json()
    events = list(ledger.iter_events())
    assert [e.type for e in events] == ["deny"]
    assert events[0].details["error"] == "temporarily_unavailable"
    assert "redis://" not in events[0].details["reason"]


def test_redis_replay_store_refuses_replays(make_app, tmp_path, dev_issuer, redis_url):
    app = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}", REDIS_URL=redis_url)
    client = app.test_client()
    token = dev_issuer.mint_github(audience="nhi-broker-test")
    assert client.post("/token", data=exchange_form(token)).status_code == 200
    response = client.post("/token", data=exchange_form(token))
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"


def test_unreachable_ledger_issues_nothing(make_app, tmp_path, dev_issuer, pg_database):
    import psycopg
    from psycopg import sql

    app = make_app(DATABASE_URL=pg_database)
    client = app.test_client()
    assert client.post("/token", data=exchange_form(dev_issuer.mint_github(audience="nhi-broker-test"))).status_code == 200
    dbname = pg_database.rsplit("/", 1)[1]
    admin = pg_database.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:   # cut the broker off its ledger
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(dbname)))
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
    try:
        response = client.post("/token", data=exchange_form(dev_issuer.mint_github(audience="nhi-broker-test")))
        assert response.status_code == 503
        body = response.get_json()
        assert body["error"] == "temporarily_unavailable" and "access_token" not in body
        assert "postgres" not in body.get("error_description", "")
        assert client.get("/healthz").status_code == 503
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(dbname)))
