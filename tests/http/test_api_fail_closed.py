"""Dependencies down: the broker refuses (503) and issues nothing."""
from __future__ import annotations

import json
import socket
import subprocess
import time

from tests.support.oauth import AUDIENCE, exchange_form
from tests.support.pg_cluster import free_port


def test_unreachable_redis_fails_closed_and_records_the_outage(make_app, tmp_path, dev_issuer):
    app = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
                   REDIS_URL="redis://127.0.0.1:1/0")
    ctx = app.extensions["broker"]
    client = app.test_client()
    for _ in range(5):
        response = client.post("/token", data=exchange_form(dev_issuer.mint_github(audience=AUDIENCE)))
        assert response.status_code == 503
        assert response.get_json()["error"] == "temporarily_unavailable"
        assert response.headers["Retry-After"] == "1"
        assert "access_token" not in response.get_json()
    assert ctx.outages.flush()                             # written in the background
    events = list(ctx.ledger.iter_events())
    assert [e.type for e in events] == ["outage"]          # one start, not five denies
    start = events[0].details
    assert start["phase"] == "start" and start["cause"] == "replay_store"
    assert start["error"] == "temporarily_unavailable"
    assert len(start["first_attempt"]["attestation_sha256"]) == 64
    assert "redis://" not in json.dumps(start)
    ctx.outages.end_idle(now=time.time() + 60)             # nobody asked for a while: over
    assert ctx.outages.flush()
    end = list(ctx.ledger.iter_events())[-1].details
    assert end["phase"] == "end" and end["cause"] == "replay_store" and end["count"] == 5
    assert end["start_event_id"] == events[0].seq and end["duration_seconds"] >= 0
    assert ctx.ledger.verify().ok


def test_a_redis_that_never_answers_is_down_within_the_redis_timeout(make_app, tmp_path, dev_issuer):
    """BROKER_REDIS_TIMEOUT is read: a Redis that accepts connections and never answers is
    given that long, once."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        app = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
                       REDIS_URL=f"redis://127.0.0.1:{silent.getsockname()[1]}/0", REDIS_TIMEOUT=0.3)
        started = time.monotonic()
        response = app.test_client().post(
            "/token", data=exchange_form(dev_issuer.mint_github(audience=AUDIENCE)))
        took = time.monotonic() - started
        assert response.status_code == 503
        assert 0.25 <= took < 1.0
    finally:
        silent.close()


def test_single_use_survives_a_redis_restart(make_app, tmp_path, dev_issuer):
    """A Redis without persistence killed and restarted forgets every used attestation; the
    ledger does not, so the used one is still refused — and only one credential exists."""
    port = free_port()
    redis_server = _start_redis(port)
    try:
        app = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
                       REDIS_URL=f"redis://127.0.0.1:{port}/0")
        client = app.test_client()
        token = dev_issuer.mint_github(audience=AUDIENCE)
        assert client.post("/token", data=exchange_form(token)).status_code == 200
        redis_server.kill()
        redis_server.wait()
        redis_server = _start_redis(port)                   # empty: nothing remembered
        response = client.post("/token", data=exchange_form(token))
        assert response.status_code == 400
        body = response.get_json()
        assert body["error"] == "invalid_grant" and body["reason"] == "replayed"
        events = list(app.extensions["broker"].ledger.iter_events())
        assert [e.type for e in events] == ["mint", "deny"]
        assert events[1].details["reason_code"] == "replayed"
        fresh = client.post("/token", data=exchange_form(dev_issuer.mint_github(audience=AUDIENCE)))
        assert fresh.status_code == 200                     # and Redis serves again
    finally:
        redis_server.kill()
        redis_server.wait()


def _start_redis(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                                "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.02)
    process.kill()
    raise AssertionError("redis-server did not start")


def test_redis_replay_store_refuses_replays(make_app, tmp_path, dev_issuer, redis_url):
    app = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}", REDIS_URL=redis_url)
    client = app.test_client()
    token = dev_issuer.mint_github(audience=AUDIENCE)
    assert client.post("/token", data=exchange_form(token)).status_code == 200
    response = client.post("/token", data=exchange_form(token))
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"


def test_unreachable_ledger_issues_nothing(make_app, tmp_path, dev_issuer, pg_database):
    import psycopg
    from psycopg import sql

    app = make_app(DATABASE_URL=pg_database)
    client = app.test_client()
    assert client.post("/token", data=exchange_form(dev_issuer.mint_github(audience=AUDIENCE))).status_code == 200
    dbname = pg_database.rsplit("/", 1)[1]
    admin = pg_database.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:   # cut the broker off its ledger
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(dbname)))
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
    retried = dev_issuer.mint_github(audience=AUDIENCE)
    try:
        started = time.monotonic()
        response = client.post("/token", data=exchange_form(retried))
        assert time.monotonic() - started < 1.5            # one bounded wait, not two
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        body = response.get_json()
        assert body["error"] == "temporarily_unavailable" and "access_token" not in body
        assert "postgres" not in body.get("error_description", "")
        started = time.monotonic()
        assert client.post("/token", data=exchange_form(
            dev_issuer.mint_github(audience=AUDIENCE))).status_code == 503
        assert time.monotonic() - started < 0.5            # known down: no waiting
        assert client.get("/healthz").status_code == 503
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(dbname)))
    time.sleep(0.3)                                        # past one probe interval
    # the first request after recovery succeeds, with the very attestation that got the 503
    again = client.post("/token", data=exchange_form(retried))
    assert again.status_code == 200, again.get_json()
    ledger = app.extensions["broker"].ledger
    assert app.extensions["broker"].outages.flush()
    events = list(ledger.iter_events())
    assert [e.type for e in events] == ["mint", "mint", "outage"]
    outage = events[-1].details
    assert outage["phase"] == "end" and outage["cause"] == "ledger" and outage["count"] == 2
    assert outage["recorded_late"] is True                 # it could not be written while down
    assert ledger.verify().ok
