"""End to end through the real server (gunicorn), the real CLI and a PostgreSQL ledger: mint,
use, ingest the database's log, ask who ran it, revoke, expire — and search every output for
the passwords."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psycopg
import requests

from tests.support.oauth import AUDITOR, basic
from tests.support.postgres import ADMIN_ENV, token_form
from tests.support.server import REPO, broker_cli, running_broker


def _wait(predicate, timeout: float = 30.0, step: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


def _mint(base: str, dev_issuer, **kwargs) -> dict:
    response = requests.post(f"{base}/token", timeout=10,
                             data=token_form(dev_issuer.mint_github(audience="nhi-broker-test"), **kwargs))
    assert response.status_code == 200, response.text
    return response.json()


def test_the_whole_story_through_the_server(tmp_path, policy_dir, dev_issuer, target_db, cluster,
                                            pg_database):
    env = {"BROKER_POLICY_DIR": str(policy_dir), "BROKER_STATE_DIR": str(tmp_path / "state"),
           "BROKER_DATABASE_URL": pg_database, "BROKER_REAPER_INTERVAL": "1",
           ADMIN_ENV: target_db.admin_dsn, "BROKER_LOG_LEVEL": "DEBUG"}
    log_path = tmp_path / "broker.log"
    outputs: list[str] = []
    passwords: list[str] = []
    follower = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "ingest", "postgres-log", str(cluster.log_dir),
         "--format", "jsonlog", "--follow", "--database-url", pg_database],
        cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with running_broker(env, log_path=log_path) as base:
            auditor = basic(*AUDITOR)
            # 1. the CI run's credential runs UPDATEs, with exactly what the broker returned
            body = _mint(base, dev_issuer)
            cid, cred = body["credential_id"], body["credential"]
            passwords.append(cred["password"])
            marker = f"s{cid[-8:]}"
            with psycopg.connect(cred["dsn"], autocommit=True) as conn:
                conn.execute(f"UPDATE accounts SET owner = '{marker}' WHERE id = 1")
                conn.execute(f"UPDATE accounts SET balance = balance * 2 WHERE owner = '{marker}'")
            cluster.rotate_logs()                          # the follower must go on past rotation
            with psycopg.connect(cred["dsn"], autocommit=True) as conn:
                conn.execute(f"UPDATE accounts SET balance = 0 WHERE owner = '{marker}'")

            # 2. the auditor: who ran this? (the follower ingests as the database logs)
            def hits():
                found = requests.get(f"{base}/v1/usage", params={"statement": marker}, headers=auditor,
                                     timeout=10).json()["usage"]
                return found if len(found) == 3 else None

            found = _wait(hits)
            assert {h["credential_id"] for h in found} == {cid}
            assert {h["authorizer"]["name"] for h in found} == {"payments-deploy"}
            assert {h["run"]["id"] for h in found} == {body_run(base, cid, auditor)["id"]}

            # 3. revocation ends an open session within seconds, and later logins
            victim = _mint(base, dev_issuer)
            passwords.append(victim["credential"]["password"])
            session = psycopg.connect(victim["credential"]["dsn"], autocommit=True)
            started = time.monotonic()
            assert requests.post(f"{base}/revoke", data={"credential_id": victim["credential_id"]},
                                 headers=auditor, timeout=10).status_code == 200
            assert time.monotonic() - started < 5
            try:
                session.execute("SELECT 1")
                raise AssertionError("the revoked session still runs")
            except psycopg.OperationalError:
                pass
            session.close()

            # 4. expiry: the broker's own reaper ends an open session
            short = _mint(base, dev_issuer, ttl="2s")
            passwords.append(short["credential"]["password"])
            session = psycopg.connect(short["credential"]["dsn"], autocommit=True)

            def expired():
                view = requests.get(f"{base}/v1/credentials/{short['credential_id']}", headers=auditor,
                                    timeout=10).json()
                return [e for e in view["events"] if e["type"] == "expire"]

            assert _wait(expired)[0]["details"]["sessions_terminated"] == 1
            try:
                session.execute("SELECT 1")
                raise AssertionError("the expired session still runs")
            except psycopg.OperationalError:
                pass
            session.close()

            # 5. a failing mint leaves a deny, never a half-made credential
            refusal = requests.post(f"{base}/token", timeout=10, data=token_form(
                dev_issuer.mint_github(audience="nhi-broker-test"), audience="broken-db", scope=None))
            assert refusal.status_code == 400 and refusal.json()["error"] == "invalid_target"
    finally:
        follower.send_signal(signal.SIGTERM)
        out, _ = follower.communicate(timeout=30)
        outputs.append(out)
    assert follower.returncode == 0, out

    # Re-reading everything records nothing twice.
    again = broker_cli("ingest", "postgres-log", str(cluster.log_dir), "--format", "jsonlog",
                       "--json", "--database-url", pg_database)
    assert again.returncode == 0, again.stderr
    outputs += [again.stdout, again.stderr]
    verify = broker_cli("ledger", "verify", "--database-url", pg_database)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # The passwords are nowhere: not in the broker's log, the ingest output, or the ledger.
    with psycopg.connect(pg_database) as conn:
        ledger_dump = json.dumps([list(map(str, row)) for table in ("events", "credentials", "usage_lines")
                                  for row in conn.execute(f"SELECT * FROM {table}").fetchall()])
    broker_log = log_path.read_text()
    assert "mint credential_id=" in broker_log
    for password in passwords:
        for name, text in (("broker log", broker_log), ("ingest output", "\n".join(outputs)),
                           ("ledger", ledger_dump)):
            assert password not in text, f"a password leaked into the {name}"


def body_run(base: str, cid: str, auditor: dict) -> dict:
    return requests.get(f"{base}/v1/credentials/{cid}", headers=auditor, timeout=10).json()["run"]
