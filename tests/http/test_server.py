"""The real server (gunicorn) as users run it: several processes, shared PostgreSQL and Redis."""
from __future__ import annotations

import subprocess
import sys
import threading

import requests

from tests.support.oauth import exchange_form
from tests.support.server import REPO, running_broker


def test_replay_across_two_broker_processes_sharing_redis(tmp_path, policy_dir, dev_issuer,
                                                          pg_database, redis_url):
    # Two replicas of one deployment: one public issuer URL, one state dir (shared keys).
    env = {"BROKER_POLICY_DIR": str(policy_dir), "BROKER_DATABASE_URL": pg_database,
           "BROKER_REDIS_URL": redis_url, "BROKER_STATE_DIR": str(tmp_path / "state"),
           "BROKER_ISSUER": "http://broker.test"}
    with running_broker(env) as a, running_broker(env) as b:
        token = dev_issuer.mint_github(audience="nhi-broker-test")
        first = requests.post(f"{a}/token", data=exchange_form(token), timeout=10)
        assert first.status_code == 200
        second = requests.post(f"{b}/token", data=exchange_form(token), timeout=10)
        assert second.status_code == 400 and second.json()["error"] == "invalid_grant"
        # Replicas share the signing keys: b can introspect what a minted.
        from tests.support.oauth import AUDITOR, basic
        info = requests.post(f"{b}/introspect", data={"token": first.json()["access_token"]},
                             headers=basic(*AUDITOR), timeout=10).json()
        assert info["active"] is True


def test_concurrent_exchanges_on_two_brokers_keep_one_chain(tmp_path, policy_dir, dev_issuer,
                                                           pg_database, redis_url):
    env = {"BROKER_POLICY_DIR": str(policy_dir), "BROKER_DATABASE_URL": pg_database,
           "BROKER_REDIS_URL": redis_url, "BROKER_STATE_DIR": str(tmp_path / "state")}
    tokens = [dev_issuer.mint_github(audience="nhi-broker-test") for _ in range(120)]
    statuses: list[int] = []
    with running_broker(env) as a, running_broker(env) as b:
        def worker(base: str, chunk: list[str]) -> None:
            with requests.Session() as s:
                for t in chunk:
                    statuses.append(s.post(f"{base}/token", data=exchange_form(t), timeout=10).status_code)
        threads = [threading.Thread(target=worker, args=([a, b][i % 2], tokens[i::4])) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert statuses.count(200) == 120
    result = subprocess.run([sys.executable, "-m", "broker.cli", "ledger", "verify", "--json",
                             "--database-url", pg_database], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"count": 120' in result.stdout


def test_serve_refuses_a_bad_policy_set(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "p.yaml").write_text("kind: policy\nname: x\nissuer: nope\ntargets: [t]\nmatch: {a: b}\nbogus: 1\n")
    result = subprocess.run([sys.executable, "-m", "broker.cli", "serve", "--port", "0"],
                            env={"PATH": "/usr/bin:/bin", "BROKER_POLICY_DIR": str(bad),
                                 "BROKER_STATE_DIR": str(tmp_path / "s")},
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode != 0
    assert "p.yaml:6" in result.stderr and "bogus" in result.stderr
