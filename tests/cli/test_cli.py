"""The `broker` command: policy check, ledger verify (tamper detection), keys."""
from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest

from tests.support.oauth import exchange_form
from tests.support.server import REPO, broker_cli


def broker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return broker_cli(*args, env=env, timeout=60)


def test_policy_check_ok_and_problems(tmp_path, policy_dir):
    ok = broker("policy", "check", str(policy_dir))
    assert ok.returncode == 0 and "ok:" in ok.stdout
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.yaml").write_text("kind: target\nname: t\ntype: jwt\n")          # no max_ttl
    (bad / "b.yaml").write_text("kind: policy\nname: p\nissuer: ghost\ntargets: [t]\nmatch: {x: y}\n")
    result = broker("policy", "check", str(bad))
    assert result.returncode == 1
    assert "a.yaml:1" in result.stderr and "max_ttl" in result.stderr
    assert "b.yaml:3" in result.stderr and "ghost" in result.stderr


def test_example_policies_in_the_repository_are_valid():
    for directory in ("policies", "policies/demo"):
        result = broker("policy", "check", str(REPO / directory))
        assert result.returncode == 0, result.stderr


def _ledger_with_events(make_app, tmp_path, dev_issuer, n=5):
    db = tmp_path / "ledger.db"
    app = make_app(DATABASE_URL=f"sqlite:///{db}")
    client = app.test_client()
    for _ in range(n):
        assert client.post("/token", data=exchange_form(dev_issuer.mint_github(audience="nhi-broker-test"))).status_code == 200
    app.extensions["broker"].close()
    return db


def test_ledger_verify_intact(make_app, tmp_path, dev_issuer):
    db = _ledger_with_events(make_app, tmp_path, dev_issuer)
    result = broker("ledger", "verify", "--database-url", f"sqlite:///{db}")
    assert result.returncode == 0 and "5 events" in result.stdout


def test_ledger_verify_names_the_first_altered_row(make_app, tmp_path, dev_issuer):
    db = _ledger_with_events(make_app, tmp_path, dev_issuer)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET principal = 'someone-else' WHERE seq = 3")
    result = broker("ledger", "verify", "--json", "--database-url", f"sqlite:///{db}")
    assert result.returncode == 1
    assert json.loads(result.stdout)["first_bad_seq"] == 3


def test_ledger_verify_detects_a_removed_row(make_app, tmp_path, dev_issuer):
    db = _ledger_with_events(make_app, tmp_path, dev_issuer)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM events WHERE seq = 2")
    result = broker("ledger", "verify", "--database-url", f"sqlite:///{db}")
    assert result.returncode == 1 and "seq=" in result.stderr


def test_keys_rotate_and_list(tmp_path, policy_dir):
    env = {"BROKER_STATE_DIR": str(tmp_path / "state"), "BROKER_POLICY_DIR": str(policy_dir)}
    first = broker("keys", "rotate", env=env)
    assert first.returncode == 0 and "new signing key" in first.stdout
    listing = broker("keys", "list", env=env)
    assert listing.returncode == 0 and listing.stdout.count("yes") == 2


@pytest.mark.parametrize("command", ["postgres-log", "cloudtrail"])
def test_ingest_with_the_ledger_unreachable_exits_3_in_one_line(command: str, tmp_path) -> None:
    """Both ingest commands: an unreachable ledger is one line naming it (password redacted), exit 3."""
    log = tmp_path / "input.json"
    log.write_text("")
    url = "postgresql://ingest:s3cret-pw@127.0.0.1:1/nowhere?connect_timeout=2"
    result = broker_cli("ingest", command, str(log), "--database-url", url)
    assert result.returncode == 3, result.stderr
    assert "ledger unreachable" in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
