"""A postgres target that goes away and comes back (a TCP relay in front of the real cluster):
one bounded wait, fast refusals while down, the outage recorded once rather than a deny per
request, the same attestation accepted on retry, the first request after recovery served; and
the pending-mint sweep that removes what a crashed process created but never recorded."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import psycopg
import pytest

from broker.common.ids import new_credential_id
from broker.lifecycle.pending import sweep_pending
from broker.targets import IssueRequest
from tests.support.postgres import down_target, policy_yaml, token_form
from tests.support.relay import Relay

RELAY_ENV = "NHB_TEST_RELAY_DSN"


def _minted_roles(admin_dsn: str) -> set[str]:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'nhb%'")}


@pytest.fixture
def relayed(tmp_path, dev_issuer, target_db, monkeypatch, make_app):
    """An app whose ``down-db`` target reaches the target database through a relay."""
    relay = Relay(target_db.port).start()
    monkeypatch.setenv(RELAY_ENV, target_db.admin_dsn.replace(f":{target_db.port}/", f":{relay.port}/"))
    directory = tmp_path / "relayed-policies"
    directory.mkdir()
    (directory / "broker.yaml").write_text(
        policy_yaml(dev_issuer.issuer, target_db, extra_target=down_target(RELAY_ENV)))
    app = make_app(POLICY_DIR=str(directory), POSTGRES_TIMEOUT=1.0)
    try:
        yield app, relay
    finally:
        relay.stop()


def _exchange(client, token):
    started = time.monotonic()
    response = client.post("/token", data=token_form(token, audience="down-db", scope=None))
    return response, time.monotonic() - started


def test_a_target_outage_is_fast_recorded_once_and_retry_safe(relayed, dev_issuer, target_db):
    app, relay = relayed
    client = app.test_client()
    ctx = app.extensions["broker"]
    ok, _ = _exchange(client, dev_issuer.mint_github(audience="nhi-broker-test"))
    assert ok.status_code == 200, ok.get_json()
    roles_before = _minted_roles(target_db.admin_dsn)
    head_before = ctx.ledger.head()[0]

    relay.stop()                                   # the target database "crashes"
    retried = dev_issuer.mint_github(audience="nhi-broker-test")
    first, first_took = _exchange(client, retried)
    assert first.status_code == 503
    assert first.get_json()["error"] == "temporarily_unavailable"
    assert first.headers["Retry-After"] == "1"
    assert first_took < 1.5                        # one bounded wait (POSTGRES_TIMEOUT 1 s)
    timings = [_exchange(client, dev_issuer.mint_github(audience="nhi-broker-test"))
               for _ in range(5)]
    assert all(r.status_code == 503 for r, _ in timings)
    assert max(took for _, took in timings) < 0.5  # marked down: no more waiting
    assert ctx.outages.flush()                     # outage events are written in the background
    events = list(ctx.ledger.iter_events(head_before + 1))
    assert [e.type for e in events] == ["outage"]  # one start, not six denies
    assert events[0].details["phase"] == "start"
    assert events[0].details["cause"] == "target:down-db"

    relay.start()                                  # it is back
    time.sleep(0.3)                                # past one probe interval
    again, _ = _exchange(client, retried)          # the same attestation that got a 503
    assert again.status_code == 200, again.get_json()
    assert ctx.outages.flush()
    events = list(ctx.ledger.iter_events(head_before + 1))
    assert [e.type for e in events] == ["outage", "mint", "outage"]   # the success ends it
    end = events[2].details
    assert end["phase"] == "end" and end["cause"] == "target:down-db" and end["count"] == 6
    assert end["start_event_id"] == events[0].seq
    # nothing created during the outage survives it; the retried mint's role is the only new one
    assert _minted_roles(target_db.admin_dsn) - roles_before == {
        f"nhb_{again.get_json()['credential_id']}"}
    assert os.listdir(ctx.pending.path) == []     # every pending-mint marker cleared
    replay, _ = _exchange(client, retried)         # and it stays single use
    assert replay.status_code == 400 and replay.get_json()["reason"] == "replayed"


def test_the_pending_sweep_removes_a_role_a_dead_process_never_recorded(app, target_db):
    ctx = app.extensions["broker"]
    kind = ctx.issuers["postgres"]
    target = ctx.policy_set.targets["payments-db"]
    credential_id = new_credential_id()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    ctx.pending.mark(credential_id, target=target.name, target_type=target.type)
    marker = f"{ctx.pending.path}/{credential_id}"
    body = open(marker).read().replace(str(os.getpid()), dead.stdout.strip())
    open(marker, "w").write(body)                  # as written by a process that has died
    now = int(time.time())
    kind.issue(IssueRequest(credential_id=credential_id, target=target, principal="crashed",
                            run={"id": "1"}, authorizer={"type": "policy", "name": "p"},
                            scopes=(), issued_at=now, expires_at=now + 600))
    role = f"nhb_{credential_id}"
    assert role in _minted_roles(target_db.admin_dsn)   # created, never recorded

    removed = sweep_pending(ctx)
    assert removed == [{"credential_id": credential_id, "target": "payments-db", "role": role}]
    assert role not in _minted_roles(target_db.admin_dsn)
    assert not os.path.exists(marker)
    expire = list(ctx.ledger.iter_events())[-1]
    assert expire.type == "expire" and expire.credential_id == credential_id
    assert expire.details["cause"] == "orphan" and expire.details["by"] == "startup-sweep"
    assert sweep_pending(ctx) == []                # nothing left to do


def test_a_live_writers_marker_is_left_alone(app, target_db):
    ctx = app.extensions["broker"]
    ctx.pending.mark("live-mint-in-flight", target="payments-db", target_type="postgres")
    try:
        assert sweep_pending(ctx) == []
        assert "live-mint-in-flight" in os.listdir(ctx.pending.path)
    finally:
        ctx.pending.clear("live-mint-in-flight")


def test_an_abandoned_marker_is_swept_although_its_writer_lives(app, target_db):
    """A mint whose record and undo both failed (the target went away between) hands its
    marker to the sweep: the role goes on the reaper's next pass, not after the orphan grace."""
    ctx = app.extensions["broker"]
    target = ctx.policy_set.targets["payments-db"]
    credential_id = new_credential_id()
    ctx.pending.mark(credential_id, target=target.name, target_type=target.type)
    now = int(time.time())
    ctx.issuers["postgres"].issue(IssueRequest(
        credential_id=credential_id, target=target, principal="p", run={"id": "1"},
        authorizer={"type": "policy", "name": "p"}, scopes=(), issued_at=now, expires_at=now + 600))
    assert sweep_pending(ctx) == []                # its writer (this process) is alive
    ctx.pending.abandon(credential_id)
    assert [r["credential_id"] for r in sweep_pending(ctx)] == [credential_id]
    assert f"nhb_{credential_id}" not in _minted_roles(target_db.admin_dsn)
