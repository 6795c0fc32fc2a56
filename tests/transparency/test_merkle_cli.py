"""`broker ledger checkpoint`, `broker ledger verify --checkpoint` and `broker ledger
verify-proof`, run as real processes against SQLite and PostgreSQL. An attacker with database
access edits, deletes or reorders old events, recomputes the whole hash chain and the stored
Merkle tree, and deletes the stored checkpoints: whoever kept one checkpoint still notices."""
from __future__ import annotations

import http.server
import json
import subprocess
import threading
from pathlib import Path

import pytest

from tests.support.merkle import delete_event, edit_event, fill, raw_sql, rewrite_history, swap_events
from tests.support.oauth import AUDITOR, basic
from tests.support.server import broker_cli

ISSUER = "http://broker.test"


@pytest.fixture
def env(tmp_path: Path, policy_dir: Path) -> dict[str, str]:
    return {"BROKER_STATE_DIR": str(tmp_path / "state"), "BROKER_ISSUER": ISSUER,
            "BROKER_POLICY_DIR": str(policy_dir)}


@pytest.fixture
def broker(env):
    def run(*args: str) -> subprocess.CompletedProcess:
        return broker_cli(*args, env=env)
    return run


@pytest.fixture
def ledger_app(app, database_url):
    """An app (so the state directory has the broker's key) with 10 events."""
    fill(app.extensions["broker"].ledger, 10)
    return app


def save_checkpoint(broker, database_url: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "checkpoint.json"
    result = broker("ledger", "checkpoint", "--database-url", database_url, "--out", str(out), *extra)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(out.read_text())
    return json.loads(out.read_text())


ATTACKS = [pytest.param(edit_event(3), id="edit"), pytest.param(delete_event(4), id="delete"),
           pytest.param(swap_events(2, 5), id="reorder"), pytest.param(edit_event(10), id="edit-last")]


@pytest.mark.parametrize("attack", ATTACKS)
def test_verify_checkpoint_detects_a_rewritten_history(ledger_app, database_url, broker, tmp_path,
                                                       attack) -> None:
    checkpoint = save_checkpoint(broker, database_url, tmp_path)
    assert checkpoint["tree_size"] == 10
    fill(ledger_app.extensions["broker"].ledger, 5, start=10)

    good = broker("ledger", "verify", "--database-url", database_url,
                  "--checkpoint", str(tmp_path / "checkpoint.json"))
    assert good.returncode == 0, good.stdout + good.stderr
    assert "15 events, chain intact" in good.stdout and "append-only extension" in good.stdout

    rewrite_history(database_url, attack)

    # The attacker was thorough: chain and stored tree agree with the (rewritten) events.
    blind = broker("ledger", "verify", "--database-url", database_url)
    assert blind.returncode == 0, blind.stdout + blind.stderr

    caught = broker("ledger", "verify", "--database-url", database_url,
                    "--checkpoint", str(tmp_path / "checkpoint.json"))
    assert caught.returncode == 1
    assert "FORKED" in caught.stderr and "first 10 events" in caught.stderr

    as_json = broker("ledger", "verify", "--json", "--database-url", database_url,
                     "--checkpoint", str(tmp_path / "checkpoint.json"))
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and report["ok"] is False and report["chain"]["ok"] is True
    assert report["checkpoint"]["forked"] is True and report["checkpoint"]["tree_size"] == 10


def test_verify_checkpoint_with_a_jwks_file_and_a_foreign_key(ledger_app, database_url, broker,
                                                                tmp_path) -> None:
    save_checkpoint(broker, database_url, tmp_path)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(ledger_app.test_client().get("/.well-known/jwks.json").json))
    ok = broker("ledger", "verify", "--database-url", database_url, "--jwks", str(jwks),
                "--checkpoint", str(tmp_path / "checkpoint.json"))
    assert ok.returncode == 0, ok.stderr

    from broker.keys.file import FileSigner

    other = FileSigner(str(tmp_path / "other"), issuer=ISSUER)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(other.jwks()))
    rejected = broker("ledger", "verify", "--database-url", database_url, "--jwks", str(foreign),
                      "--checkpoint", str(tmp_path / "checkpoint.json"))
    assert rejected.returncode == 1 and "checkpoint rejected" in rejected.stderr


def test_verify_catches_removed_events_and_stale_tree(ledger_app, database_url, broker,
                                                      tmp_path) -> None:
    save_checkpoint(broker, database_url, tmp_path)
    # Drop the last 3 events and recompute: the ledger is now shorter than the checkpoint.
    rewrite_history(database_url, lambda events: events[:7])
    result = broker("ledger", "verify", "--database-url", database_url,
                    "--checkpoint", str(tmp_path / "checkpoint.json"))
    assert result.returncode == 1 and "events were removed" in result.stderr


def test_verify_checks_the_stored_tree_and_checkpoints(ledger_app, database_url, broker,
                                                       tmp_path) -> None:
    save_checkpoint(broker, database_url, tmp_path)
    ok = broker("ledger", "verify", "--database-url", database_url)
    assert ok.returncode == 0, ok.stderr
    assert "merkle tree (10 of 10 events)" in ok.stdout
    assert "1 stored checkpoint(s) agree, signatures checked" in ok.stdout

    # Chain recomputed, stored tree left as it was: the tree check notices.
    columns = "tree_size, root_hash, ts, issuer, key_id, signature"
    stored = raw_sql(database_url, [(f"SELECT {columns} FROM checkpoints", ())])
    nodes = raw_sql(database_url, [("SELECT level, idx, hash FROM merkle_nodes", ())])
    rewrite_history(database_url, edit_event(6), rebuild_tree=False)
    raw_sql(database_url, [("UPDATE merkle_head SET size = 10 WHERE id = 1", ())],
            many=("INSERT INTO merkle_nodes (level, idx, hash) VALUES (%s, %s, %s)",
                  [tuple(n) for n in nodes]))
    result = broker("ledger", "verify", "--json", "--database-url", database_url)
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["tree"]["ok"] is False
    assert report["tree"]["first_bad_seq"] == 6

    # Tree rebuilt too, but the stored checkpoint remembers the old root.
    rewrite_history(database_url, lambda events: events)
    raw_sql(database_url, [], many=(f"INSERT INTO checkpoints ({columns}) VALUES"
                                    " (%s, %s, %s, %s, %s, %s)", [tuple(stored[0])]))
    result = broker("ledger", "verify", "--database-url", database_url)
    assert result.returncode == 1 and "history was rewritten" in result.stderr


class _Witness(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers["Content-Length"])
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_checkpoint_witnesses_file_and_url(ledger_app, database_url, broker, tmp_path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Witness)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/checkpoints"
        witness_file = tmp_path / "witness.jsonl"
        checkpoint = save_checkpoint(broker, database_url, tmp_path,
                                     "--witness", str(witness_file), "--witness", url)
        assert [json.loads(line) for line in witness_file.read_text().splitlines()] == [checkpoint]
        assert _Witness.received[-1] == checkpoint
        again = save_checkpoint(broker, database_url, tmp_path, "--witness", str(witness_file))
        assert again == checkpoint                       # not grown: the same checkpoint
        dead = broker("ledger", "checkpoint", "--database-url", database_url,
                      "--witness", "http://127.0.0.1:9/nowhere")
        assert dead.returncode == 4 and "witness failed" in dead.stderr
    finally:
        server.shutdown()


def test_verify_proof_offline(ledger_app, database_url, broker, tmp_path) -> None:
    checkpoint = save_checkpoint(broker, database_url, tmp_path)
    client = ledger_app.test_client()
    fill(ledger_app.extensions["broker"].ledger, 6, start=10)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(client.get("/.well-known/jwks.json").json))
    audit = basic(*AUDITOR)

    def save(name: str, body: dict) -> str:
        (tmp_path / name).write_text(json.dumps(body))
        return str(tmp_path / name)

    inclusion = client.get("/v1/ledger/proof/inclusion?seq=4&size=10", headers=audit).json
    cp = str(tmp_path / "checkpoint.json")
    ok = broker("ledger", "verify-proof", "--proof", save("incl.json", inclusion),
                "--checkpoint", cp, "--jwks", str(jwks), "--issuer", ISSUER)
    assert ok.returncode == 0, ok.stderr
    assert "event seq 4" in ok.stdout

    unanchored = client.get("/v1/ledger/proof/inclusion?seq=4", headers=audit).json
    result = broker("ledger", "verify-proof", "--proof", save("u.json", unanchored),
                    "--checkpoint", cp, "--jwks", str(jwks))
    assert result.returncode == 1 and "no verified checkpoint of size 16" in result.stderr

    tampered = {**inclusion, "hashes": ["0" * 64] + inclusion["hashes"][1:]}
    result = broker("ledger", "verify-proof", "--proof", save("t.json", tampered),
                    "--checkpoint", cp, "--jwks", str(jwks))
    assert result.returncode == 1 and "INVALID" in result.stderr

    # Two checkpoints and the consistency proof between them.
    later = client.get("/v1/ledger/checkpoint", headers=audit).json
    cp2 = save("later.json", later)
    consistency = client.get("/v1/ledger/proof/consistency?from=10&to=16", headers=audit).json
    result = broker("ledger", "verify-proof", "--proof", save("c.json", consistency),
                    "--checkpoint", cp, "--checkpoint", cp2, "--jwks", str(jwks))
    assert result.returncode == 0 and "extends" in result.stdout, result.stderr

    # The broker rewrites history; its new proofs contradict what it signed before.
    rewrite_history(database_url, edit_event(2))
    forked = client.get("/v1/ledger/proof/inclusion?seq=4&size=10", headers=audit).json
    result = broker("ledger", "verify-proof", "--proof", save("f.json", forked),
                    "--checkpoint", cp, "--jwks", str(jwks))
    assert result.returncode == 2 and "FORKED LOG" in result.stderr
    assert checkpoint["root_hash"] in result.stderr
