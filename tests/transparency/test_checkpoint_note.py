"""Checkpoints as C2SP tlog-checkpoint signed notes, verified with an implementation written
here from c2sp.org/signed-note, /tlog-checkpoint and /tlog-cosignature (nothing from broker/),
and cosigned by a minimal c2sp.org/tlog-witness that this test runs."""
from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import struct
import subprocess
import sys
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from tests.support.oauth import AUDITOR, basic
from tests.support.server import REPO
from tests.support.standards import BROKER_ISSUER, app, client, ledger, make_app, policy_dir  # noqa: F401 (fixtures)

# -- an independent signed-note verifier, from the specifications ----------------------------

SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = ("This is an example message.\n\n\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1"
             "YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n")


def spec_vkey(text: str) -> tuple[str, bytes, int, bytes]:
    name, hex_id, material = text.split("+", 2)     # base64 may contain "+"
    blob = base64.b64decode(material)
    assert hashlib.sha256(name.encode() + b"\n" + blob).digest()[:4] == bytes.fromhex(hex_id)
    return name, bytes.fromhex(hex_id), blob[0], blob[1:]


def spec_open(note: str, vkey: str) -> tuple[str, int | None]:
    """The note text if a signature by ``vkey`` verifies (and a cosignature's timestamp)."""
    name, key_id, sig_type, public = spec_vkey(vkey)
    assert note.endswith("\n") and all(c == "\n" or ord(c) >= 0x20 for c in note)
    text, _, sigs = note.rpartition("\n\n")
    text += "\n"
    for line in sigs.rstrip("\n").split("\n"):
        assert line.startswith("\u2014 ")
        line_name, encoded = line[2:].split(" ")
        blob = base64.b64decode(encoded)
        if line_name != name or blob[:4] != key_id:
            continue                                       # unknown keys are ignored
        key = ed25519.Ed25519PublicKey.from_public_bytes(public)
        if sig_type == 0x01:
            key.verify(blob[4:], text.encode())
            return text, None
        assert sig_type == 0x04
        (timestamp,) = struct.unpack(">Q", blob[4:12])
        key.verify(blob[12:], f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode())
        return text, timestamp
    raise AssertionError(f"no signature by {name}")


def test_the_independent_verifier_accepts_the_specification_example():
    assert spec_open(SPEC_NOTE, SPEC_VKEY)[0] == "This is an example message.\n"
    from broker.transparency.note import parse_note, parse_vkey, verify_note

    assert verify_note(parse_note(SPEC_NOTE), [parse_vkey(SPEC_VKEY)])


# -- an independent RFC 6962 consistency check (RFC 9162 §2.1.4.2) ----------------------------

def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def consistent(size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]) -> bool:
    if size1 == size2:
        return root1 == root2 and not proof
    if size1 == 0:
        return not proof
    if size1 & (size1 - 1) == 0:
        proof = [root1, *proof]
    if not proof:
        return False
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = _node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == root1 and sr == root2


# -- a minimal c2sp.org/tlog-witness ----------------------------------------------------------

class Witness:
    name = "witness.test/w1"

    def __init__(self, log_vkey: str) -> None:
        self.log_vkey = log_vkey
        self.key = ed25519.Ed25519PrivateKey.generate()
        public = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = hashlib.sha256(self.name.encode() + b"\n\x04" + public).digest()[:4]
        self.vkey = (f"{self.name}+{self.key_id.hex()}+"
                     + base64.b64encode(b"\x04" + public).decode())
        self.size, self.root = 0, hashlib.sha256(b"").digest()
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        request = Request(environ)
        assert request.path.endswith("/add-checkpoint") and request.method == "POST"
        body = request.get_data(as_text=True)
        self.requests.append(body)
        head, _, note = body.partition("\n\n")
        lines = head.split("\n")
        old = int(lines[0].removeprefix("old "))
        proof = [base64.b64decode(p) for p in lines[1:] if p]
        try:
            text, _ = spec_open(note, self.log_vkey)
        except Exception:  # noqa: BLE001
            return Response("bad signature", 403)(environ, start_response)
        origin, size, root = text.rstrip("\n").split("\n")
        root_hash = base64.b64decode(root)
        with self.lock:
            if old != self.size:
                return Response(f"{self.size}\n", 409,
                                content_type="text/x.tlog.size")(environ, start_response)
            if not consistent(old, int(size), self.root, root_hash, proof):
                return Response("inconsistent", 422)(environ, start_response)
            self.size, self.root = int(size), root_hash
        timestamp = int(time.time())
        signature = self.key.sign(f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode())
        line = ("\u2014 " + self.name + " " + base64.b64encode(
            self.key_id + struct.pack(">Q", timestamp) + signature).decode() + "\n")
        return Response(line, 200, content_type="text/plain")(environ, start_response)


@pytest.fixture
def witness_server():
    servers = []

    def start(log_vkey: str) -> tuple[Witness, str]:
        witness = Witness(log_vkey)
        server = make_server("127.0.0.1", 0, witness)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return witness, f"tlog-witness+http://127.0.0.1:{server.server_port}/w"
    yield start
    for server in servers:
        server.shutdown()


def broker_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, **env}, timeout=120)


def _fill(ledger, n, start=0):
    from broker.ledger import EventDraft

    for i in range(start, start + n):
        ledger.append(EventDraft(type="usage", credential_id=f"c{i}", principal="ci:acme",
                                 details={"statement": f"SELECT {i}"}))


# -- the tests -------------------------------------------------------------------------------

def test_the_checkpoint_note_verifies_independently(client, ledger):
    _fill(ledger, 5)
    jws = client.get("/v1/ledger/checkpoint", headers=basic(*AUDITOR)).get_json()
    vkey = client.get("/v1/ledger/checkpoint/note-key").get_data(as_text=True).strip()
    response = client.get("/v1/ledger/checkpoint/note", headers=basic(*AUDITOR))
    assert response.status_code == 200 and response.mimetype == "text/plain"
    text, _ = spec_open(response.get_data(as_text=True), vkey)
    origin, size, root = text.rstrip("\n").split("\n")
    assert origin == BROKER_ISSUER.split("://")[1] + "/ledger" == vkey.split("+")[0]
    assert int(size) == jws["tree_size"] == 5
    assert base64.b64decode(root) == bytes.fromhex(jws["root_hash"])
    assert client.get("/v1/ledger/checkpoint/note").status_code == 401   # like the JWS form


def test_witnesses_cosign_and_ledger_verify_checks_them(app, tmp_path, witness_server):
    ledger = app.extensions["broker"].ledger
    client = app.test_client()
    _fill(ledger, 3)
    vkey = client.get("/v1/ledger/checkpoint/note-key").get_data(as_text=True).strip()
    witness, witness_url = witness_server(vkey)
    env = {"BROKER_STATE_DIR": str(tmp_path / "state"), "BROKER_ISSUER": BROKER_ISSUER,
           "BROKER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}"}
    first = broker_cli("ledger", "checkpoint", "--witness", witness_url,
                       "--note", str(tmp_path / "note1"), env=env)
    assert first.returncode == 0, first.stderr
    assert witness.size == 3 and witness.requests[0].startswith("old 0\n\n")
    cosigned = (tmp_path / "note1").read_text()
    assert spec_open(cosigned, vkey)[0] == spec_open(cosigned, witness.vkey)[0]

    _fill(ledger, 4, start=3)
    # A fresh broker process does not know the witness's size: the 409 answer tells it, and
    # the second request carries a consistency proof from 3 to 7.
    second = broker_cli("ledger", "checkpoint", "--witness", witness_url, env=env)
    assert second.returncode == 0, second.stderr
    assert witness.size == 7 and witness.requests[-1].startswith("old 3\n")
    served = client.get("/v1/ledger/checkpoint/note", headers=basic(*AUDITOR)).get_data(as_text=True)
    assert spec_open(served, witness.vkey)[0].split("\n")[1] == "7"

    verified = broker_cli("ledger", "verify", "--witness-key", witness.vkey, env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "2 witness cosignature(s) verified" in verified.stdout

    other = Witness(vkey)                  # a trusted witness that never cosigned
    missing = broker_cli("ledger", "verify", "--witness-key", witness.vkey,
                         "--witness-key", other.vkey, env=env)
    assert missing.returncode == 1 and "no valid cosignature by" in missing.stderr

    with sqlite3.connect(tmp_path / "ledger.db") as conn:     # a forged cosignature
        row = conn.execute("SELECT signature FROM checkpoint_cosignatures WHERE tree_size = 7"
                           ).fetchone()
        forged = bytearray(base64.b64decode(row[0]))
        forged[-1] ^= 1
        conn.execute("UPDATE checkpoint_cosignatures SET signature = ? WHERE tree_size = 7",
                     (base64.b64encode(bytes(forged)).decode(),))
    tampered = broker_cli("ledger", "verify", "--witness-key", witness.vkey, env=env)
    assert tampered.returncode == 1 and "does not verify" in tampered.stderr


def test_a_cosignature_of_another_root_is_a_split_view(app, tmp_path):
    """A witness that cosigned a different root for a size the ledger has: reported."""
    from broker.transparency.note import CheckpointText, cosign
    from broker.transparency.signed_notes import store_cosignatures

    ledger = app.extensions["broker"].ledger
    _fill(ledger, 2)
    key = ed25519.Ed25519PrivateKey.generate()
    text = CheckpointText("broker.test/ledger", 2, b"\x07" * 32)
    line = cosign(text.render(), "witness.test/w9", key, timestamp=1_700_000_000)
    store_cosignatures(ledger, text, [line])
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    key_id = hashlib.sha256(b"witness.test/w9\n\x04" + public).digest()[:4]
    vkey = f"witness.test/w9+{key_id.hex()}+" + base64.b64encode(b"\x04" + public).decode()
    env = {"BROKER_STATE_DIR": str(tmp_path / "state"),
           "BROKER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}"}
    result = broker_cli("ledger", "verify", "--witness-key", vkey, env=env)
    assert result.returncode == 1 and "the ledger's root there is" in result.stderr


def test_broker_ledger_cosign_imports_a_cosigned_note(app, tmp_path):
    from broker.transparency.note import cosign, parse_note

    ledger = app.extensions["broker"].ledger
    client = app.test_client()
    _fill(ledger, 4)
    served = client.get("/v1/ledger/checkpoint/note", headers=basic(*AUDITOR)).get_data(as_text=True)
    key = ed25519.Ed25519PrivateKey.generate()
    note = parse_note(served)
    line = cosign(note.text, "witness.test/offline", key, timestamp=int(time.time()))
    (tmp_path / "cosigned").write_text(served + line.render() + "\n")
    env = {"BROKER_STATE_DIR": str(tmp_path / "state"), "BROKER_ISSUER": BROKER_ISSUER,
           "BROKER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}"}
    result = broker_cli("ledger", "cosign", str(tmp_path / "cosigned"), env=env)
    assert result.returncode == 0, result.stderr
    again = client.get("/v1/ledger/checkpoint/note", headers=basic(*AUDITOR)).get_data(as_text=True)
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    key_id = hashlib.sha256(b"witness.test/offline\n\x04" + public).digest()[:4]
    vkey = f"witness.test/offline+{key_id.hex()}+" + base64.b64encode(b"\x04" + public).decode()
    assert spec_open(again, vkey)[1] is not None


@pytest.mark.postgres
def test_cosignatures_on_postgresql(make_app, pg_database):
    """The cosignature table is made on first use on PostgreSQL too, and a ledger that never
    stored one verifies (the missing table is not an error)."""
    from broker.transparency.integrity import verify_ledger
    from broker.transparency.note import CheckpointText, cosign, parse_vkey, verifier_for
    from broker.transparency.signed_notes import store_cosignatures
    from broker.transparency.tree import LedgerTree

    app = make_app(DATABASE_URL=pg_database)
    ledger = app.extensions["broker"].ledger
    _fill(ledger, 3)
    assert verify_ledger(ledger, keys=None).ok
    root = LedgerTree(ledger).root(LedgerTree(ledger).sync())
    key = ed25519.Ed25519PrivateKey.generate()
    text = CheckpointText("broker.test/ledger", 3, root)
    store_cosignatures(ledger, text, [cosign(text.render(), "witness.test/pg", key,
                                             timestamp=1_700_000_000)])
    vkey = verifier_for("witness.test/pg", key.public_key(), signature_type=0x04).vkey
    report = verify_ledger(ledger, keys=None, witnesses=[parse_vkey(vkey)])
    assert report.ok and report.cosignatures_verified == 1, report.checkpoint_problems
