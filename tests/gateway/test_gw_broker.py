"""`broker gateway` with the broker (issue 11): the real `broker serve` mints, the real
`broker gateway` process verifies the credential as the password, logs in upstream as the
credential's own role (or one service login), records every statement in the ledger, refuses
everything else with a FATAL, and ends a revoked credential's open session within a second."""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import requests
from psycopg import sql

from broker.devtools.dev_issuer import DevIssuer
from tests.support.oauth import AUDIENCE, AUDITOR, GRANT, JWT_TYPE, basic, sha
from tests.support.pg_cluster import Cluster, free_port
from tests.support.server import REPO, running_broker

ADMIN_ENV = "NHB_TEST_GW_ADMIN_DSN"
SERVICE_ENV = "NHB_TEST_GW_SERVICE_DSN"


@dataclass
class Stack:
    url: str                 # the broker
    gateway_port: int
    service_port: int
    upstream: Cluster
    dbname: str
    ledger_dsn: str
    env: dict[str, str]
    dev_issuer: DevIssuer
    crash_port: int
    root: Path


def _policies(issuer: str, cluster: Cluster, dbname: str, gw_port: int, svc_port: int,
              crash_port: int) -> str:
    upstream = f"{{host: 127.0.0.1, port: {cluster.port}, dbname: {dbname}, sslmode: disable}}"
    return f"""
kind: issuer
name: gha
preset: github-actions
issuer: {issuer}
audience: {AUDIENCE}
max_token_age: 10m
---
kind: target
name: payments-db
type: postgres
admin_dsn_env: {ADMIN_ENV}
grants: [gw_rw]
max_ttl: 15m
gateway:
  listen: 127.0.0.1:{gw_port}
  upstream: {upstream}
  parameters: hashed
---
kind: target
name: shared-db
type: postgres
admin_dsn_env: {ADMIN_ENV}
grants: []
max_ttl: 15m
gateway:
  listen: 127.0.0.1:{svc_port}
  upstream: {upstream}
  login: service-role
  service_dsn_env: {SERVICE_ENV}
---
kind: target
name: crash-db
type: postgres
admin_dsn_env: {ADMIN_ENV}
grants: [gw_rw]
max_ttl: 15m
gateway:
  listen: 127.0.0.1:{crash_port}
  upstream: {upstream}
---
kind: target
name: reports-api
type: jwt
max_ttl: 15m
---
kind: policy
name: payments
issuer: gha
targets: [payments-db, shared-db, crash-db, reports-api]
match: {{repository: acme/payments}}
max_ttl: 15m
derive: [payments-db]
---
kind: client
name: {AUDITOR[0]}
secret_sha256: "{sha(AUDITOR[1])}"
may: [audit, introspect, revoke]
"""


def _start_gateway(env: dict[str, str], health_port: int, out, *targets: str) -> subprocess.Popen[bytes]:
    args = [arg for t in targets for arg in ("--target", t)]
    proc = subprocess.Popen([sys.executable, "-m", "broker.cli", "gateway", "--workers", "2",
                             "--health", f"127.0.0.1:{health_port}", *args],
                            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 90          # a loaded 2-core machine starts slowly
    while True:
        if proc.poll() is not None:
            out.seek(0)
            raise RuntimeError(f"broker gateway exited: {out.read().decode(errors='replace')}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"http://127.0.0.1:{health_port}/healthz", timeout=1).ok:
                return proc
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            out.seek(0)
            raise RuntimeError("broker gateway did not become healthy: "
                               + out.read().decode(errors="replace")[-3000:])
        time.sleep(0.1)


def _stop_gateway(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def _gateway(env: dict[str, str], health_port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "w+b") as out:
        proc = _start_gateway(env, health_port, out, "payments-db", "shared-db")
        try:
            yield proc
        finally:
            _stop_gateway(proc)


@pytest.fixture(scope="module")
def stack(cluster: Cluster, dev_issuer, pg_admin_dsn: str, tmp_path_factory) -> Iterator[Stack]:
    dbname = f"pay_{secrets.token_hex(4)}"
    with psycopg.connect(cluster.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        with contextlib.suppress(psycopg.errors.DuplicateObject):
            conn.execute("CREATE ROLE gw_rw NOLOGIN")
        conn.execute("DROP ROLE IF EXISTS gw_service")
        conn.execute("CREATE ROLE gw_service LOGIN PASSWORD 'service-secret-1'")
    with psycopg.connect(cluster.dsn(dbname), autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int)")
        conn.execute("INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 10) g")
        conn.execute("GRANT SELECT, UPDATE ON accounts TO gw_rw, gw_service")
    ledger_db = f"nhb_gwledger_{secrets.token_hex(4)}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(ledger_db)))
    ledger_dsn = pg_admin_dsn.rpartition("/")[0] + "/" + ledger_db
    root = tmp_path_factory.mktemp("gw-broker")
    gw_port, svc_port, crash_port = free_port(), free_port(), free_port()
    (root / "policies").mkdir()
    env = {ADMIN_ENV: cluster.dsn(dbname), SERVICE_ENV: cluster.dsn(dbname, "gw_service", "service-secret-1"),
           "BROKER_POLICY_DIR": str(root / "policies"), "BROKER_STATE_DIR": str(root / "state"),
           "BROKER_DATABASE_URL": ledger_dsn, "BROKER_REAPER_INTERVAL": "0"}
    (root / "policies" / "broker.yaml").write_text(
        _policies(dev_issuer.issuer, cluster, dbname, gw_port, svc_port, crash_port))
    try:
        with running_broker(env) as url:
            full_env = {**os.environ, **env, "BROKER_ISSUER": url}
            with _gateway(full_env, free_port(), root / "gateway.log"):
                yield Stack(url=url, gateway_port=gw_port, service_port=svc_port, upstream=cluster,
                            dbname=dbname, ledger_dsn=ledger_dsn, env=full_env, dev_issuer=dev_issuer,
                            crash_port=crash_port, root=root)
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(ledger_db)))


def _mint(stack: Stack, target: str = "payments-db", **form: str) -> dict:
    body = {"grant_type": GRANT, "subject_token": stack.dev_issuer.mint_github(audience=AUDIENCE),
            "subject_token_type": JWT_TYPE, "audience": target, **form}
    response = requests.post(f"{stack.url}/token", data=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _connect(credential: dict, **kw) -> psycopg.Connection:
    return psycopg.connect(host=credential["host"], port=credential["port"],
                           dbname=credential["dbname"], user=credential["username"],
                           password=credential["password"], connect_timeout=10, **kw)


def _events(stack: Stack, **params) -> list[dict]:
    response = requests.get(f"{stack.url}/v1/events", params=params, headers=basic(*AUDITOR), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["events"]


def _wait(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_the_credential_is_the_login_and_every_statement_is_recorded(stack: Stack) -> None:
    minted = _mint(stack)
    cred, cid = minted["credential"], minted["credential_id"]
    assert (cred["host"], cred["port"]) == ("127.0.0.1", stack.gateway_port)
    assert cred["username"] == f"nhb_{cid}" and cred["password"] == minted["access_token"]
    assert minted["access_token"] in cred["dsn"]
    marker = secrets.token_hex(4)
    with _connect(cred, autocommit=True) as conn:
        conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
        conn.execute(f"SELECT 1 AS marker_{marker}; SELECT 2")          # one query, two statements
        # the database's own view names the credential's role: no shared login
        assert conn.execute("SELECT current_user").fetchone()[0] == f"nhb_{cid}"
    def gateway_usage() -> list[dict]:
        found = [e for e in _events(stack, credential_id=cid, type="usage")
                 if e["details"].get("source") == "gateway"]
        return found if len(found) >= 4 else []

    usage = _wait(gateway_usage)
    assert usage, "the gateway's records never reached the ledger"
    by_text = {e["details"]["statement"]: e for e in usage}
    update = by_text["UPDATE accounts SET balance = balance + 1 WHERE id = 1"]
    assert update["details"]["command_tag"] == "UPDATE 1" and update["details"]["rows"] == 1
    assert update["principal"].startswith("github:acme/payments")
    assert update["authorizer"]["name"] == "payments"
    assert f"SELECT 1 AS marker_{marker}" in by_text and "SELECT 2" in by_text
    seqs = sorted(e["details"]["seq"] for e in usage)
    assert seqs == list(range(1, len(seqs) + 1))
    # auditors find it where usage appears: who ran this
    hits = requests.get(f"{stack.url}/v1/usage", params={"statement": "update accounts"},
                        headers=basic(*AUDITOR), timeout=30).json()["usage"]
    hit = next(h for h in hits if h["credential_id"] == cid)
    assert hit["run"] == update["run"] and hit["command_tag"] == "UPDATE 1"
    connects = _wait(lambda: _events(stack, credential_id=cid, type="disconnect"))
    assert connects and connects[0]["details"]["statements"] >= 3
    accepted = _events(stack, credential_id=cid, type="connect")
    assert accepted[0]["details"]["result"] == "accepted"
    assert accepted[0]["details"]["upstream_user"] == f"nhb_{cid}"


@pytest.mark.parametrize("case", ["garbage password", "wrong user name", "another target",
                                  "revoked", "revoked parent", "expired"])
def test_refused_logins_are_fatal_and_recorded(stack: Stack, case: str) -> None:
    minted = _mint(stack)
    cred = dict(minted["credential"])
    cid = minted["credential_id"]
    if case == "garbage password":
        cred["password"] = "not-a-token-" + secrets.token_hex(8)
    elif case == "wrong user name":
        cred["username"] = "nhb_01aaaaaaaaaaaaaaaaaaaaaaaa"
    elif case == "another target":
        other = _mint(stack, target="reports-api")
        cred["password"] = other["access_token"]
        cid = other["credential_id"]
        cred["username"] = f"nhb_{cid}"
    elif case == "revoked":
        assert requests.post(f"{stack.url}/revoke", data={"credential_id": cid},
                             headers=basic(*AUDITOR), timeout=30).status_code == 200
    elif case == "revoked parent":
        root = _mint(stack, target="reports-api")
        child = requests.post(f"{stack.url}/token", timeout=30, data={
            "grant_type": GRANT, "subject_token": root["access_token"],
            "subject_token_type": JWT_TYPE, "audience": "payments-db"}).json()
        cred, cid = child["credential"], child["credential_id"]
        assert requests.post(f"{stack.url}/revoke", data={"credential_id": root["credential_id"]},
                             headers=basic(*AUDITOR), timeout=30).status_code == 200
    elif case == "expired":
        minted = _mint(stack, ttl="2s")
        cred, cid = minted["credential"], minted["credential_id"]
        time.sleep(2.5)
    with pytest.raises(psycopg.OperationalError) as caught:
        _connect(cred).close()
    message = str(caught.value)
    assert "FATAL" in message or "failed" in message
    assert minted["access_token"] not in message and "Traceback" not in message
    if case != "garbage password":
        refused = _wait(lambda: [e for e in _events(stack, type="connect", credential_id=cid)
                                 if e["details"].get("result") == "refused"])
        assert refused, case
        assert refused[-1]["details"]["sqlstate"] in ("28000", "28P01")
    else:
        refused = _wait(lambda: [e for e in _events(stack, type="connect")
                                 if e["details"].get("result") == "refused"
                                 and e["details"].get("sqlstate") == "28P01"])
        assert refused


def test_the_token_does_not_work_against_the_database_itself(stack: Stack) -> None:
    minted = _mint(stack)
    cred = minted["credential"]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=stack.upstream.port, dbname=stack.dbname,
                        user=cred["username"], password=cred["password"], connect_timeout=10).close()


@pytest.mark.parametrize("target", ["payments-db", "shared-db"], ids=["minted-role", "service-role"])
def test_revocation_ends_an_open_session_within_a_second(stack: Stack, target: str) -> None:
    """minted-role: the broker's revocation drops the role, which ends its upstream session
    (PostgreSQL's own FATAL) and the gateway's watcher ends it too; service-role: no superuser
    path at all — only the gateway ends the session, with its own message."""
    minted = _mint(stack, target=target)
    cid = minted["credential_id"]
    with _connect(minted["credential"], autocommit=True) as conn:
        conn.execute("SELECT 1")
        started = time.monotonic()
        assert requests.post(f"{stack.url}/revoke", data={"credential_id": cid},
                             headers=basic(*AUDITOR), timeout=30).status_code == 200
        ended_after = None
        while time.monotonic() - started < 5:
            try:
                conn.execute("SELECT 1")
            except psycopg.OperationalError as exc:
                ended_after = time.monotonic() - started
                if target == "shared-db":
                    assert "the credential has been ended (revoked)" in str(exc)
                break
            time.sleep(0.05)
    assert ended_after is not None and ended_after < 2.0      # within a second of the revoke event
    gone = _wait(lambda: _events(stack, credential_id=cid, type="disconnect"))
    reason = str(gone[-1]["details"]) if gone else ""
    assert "revoked" in reason if target == "shared-db" else ("revoked" in reason or "57P01" in reason)


def test_service_role_logs_in_with_the_shared_login_named_by_the_credential(stack: Stack) -> None:
    minted = _mint(stack, target="shared-db")
    cred, cid = minted["credential"], minted["credential_id"]
    assert cred["port"] == stack.service_port and cred["username"] == f"nhb_{cid}"
    with _connect(cred, autocommit=True) as conn:
        row = conn.execute("SELECT current_user, current_setting('application_name')").fetchone()
    assert row is not None
    user, app_name = row
    assert user == "gw_service" and app_name == cid
    usage = _wait(lambda: _events(stack, credential_id=cid, type="usage"))
    assert usage and usage[0]["details"]["source"] == "gateway"


def test_policy_check_refuses_a_gateway_without_tls_off_loopback(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("""
kind: target
name: db
type: postgres
admin_dsn_env: X
grants: []
max_ttl: 15m
gateway:
  listen: 0.0.0.0:6432
  upstream: {host: db.internal}
""")
    result = subprocess.run([sys.executable, "-m", "broker.cli", "policy", "check", str(tmp_path / "t.yaml")],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode != 0
    assert "t.yaml:9" in result.stdout + result.stderr
    assert "tls (cert_file, key_file) is required unless listen is a loopback address" in result.stdout + result.stderr


def test_kill9_of_broker_gateway_under_load_loses_no_record(stack: Stack) -> None:
    """`kill -9` of the whole `broker gateway` (supervisor, drainer, workers) under 4 writers;
    after a restart, every INSERT the database executed has exactly one usage event in the
    ledger, and an event for a statement not executed is marked outcome unknown."""
    with psycopg.connect(stack.upstream.dsn(stack.dbname), autocommit=True) as admin:
        admin.execute("CREATE TABLE IF NOT EXISTS crash_hits (v text PRIMARY KEY)")
        admin.execute("GRANT INSERT ON crash_hits TO gw_rw")
    minted = _mint(stack, target="crash-db")
    cred, cid = minted["credential"], minted["credential_id"]
    prefix = "INSERT INTO crash_hits VALUES ('"
    stop = threading.Event()

    def load(name: str) -> None:
        try:
            with _connect(cred, autocommit=True) as conn:
                i = 0
                while not stop.is_set():
                    conn.execute(f"{prefix}{name}-{i}')")
                    i += 1
        except (psycopg.OperationalError, psycopg.InterfaceError):
            pass

    with open(stack.root / "crash-gateway.log", "w+b") as out:
        proc = _start_gateway(stack.env, free_port(), out, "crash-db")
        threads = [threading.Thread(target=load, args=(f"w{n}",)) for n in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        os.killpg(proc.pid, signal.SIGKILL)          # the whole process group, at once
        proc.wait()
        stop.set()
        for t in threads:
            t.join(10)
        spool = stack.root / "state" / "gateway-spool" / "crash-db"
        assert list(spool.glob("*.spool")), "the crash left no spool behind"
        proc = _start_gateway(stack.env, free_port(), out, "crash-db")   # recovery drains it
        try:
            with psycopg.connect(stack.upstream.dsn(stack.dbname)) as admin:
                executed = {v for (v,) in admin.execute("SELECT v FROM crash_hits")}
            assert len(executed) > 100

            def complete() -> dict[str, list[dict]] | None:
                found = _all_usage(stack, cid, prefix)
                return found if executed <= set(found) else None

            found = _wait(complete, timeout=30) or _all_usage(stack, cid, prefix)
            missing = executed - set(found)
            assert not missing, f"{len(missing)} executed statements have no record"
            assert all(len(v) == 1 for v in found.values()), "a statement was recorded twice"
            for value, (event,) in found.items():
                if value not in executed:
                    assert event["details"]["outcome"] == "unknown"
        finally:
            _stop_gateway(proc)


def _all_usage(stack: Stack, cid: str, prefix: str) -> dict[str, list[dict]]:
    """Every gateway usage event of ``cid`` whose statement starts with ``prefix``, by value
    (pages through /v1/events with its cursor)."""
    found: dict[str, list[dict]] = {}
    params: dict[str, str | int] = {"credential_id": cid, "type": "usage", "limit": 1000}
    while True:
        response = requests.get(f"{stack.url}/v1/events", params=params, headers=basic(*AUDITOR),
                                timeout=60)
        body = response.json()
        for event in body["events"]:
            text = event["details"].get("statement", "")
            if text.startswith(prefix):
                found.setdefault(text[len(prefix):-2], []).append(event)
        if not body.get("next_cursor"):
            return found
        params["cursor"] = body["next_cursor"]
