"""GET /v1/ledger/checkpoint, /v1/ledger/proof/inclusion and /v1/ledger/proof/consistency on
SQLite and PostgreSQL: RFC 6962 answers any verifier accepts, checkpoints verifiable with the
published JWKS (PyJWT), RFC 6749 refusals, the periodic checkpointer and witnesses."""
from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from broker.common.canonical import canonical_json
from broker.keys.file import FileSigner
from broker.transparency import merkle
from broker.transparency.checkpoints import CheckpointError, local_checkpoint_keys, verify_checkpoint
from tests.support.merkle import fill, independent_verify_consistency, independent_verify_inclusion, raw_sql
from tests.support.oauth import AUDITOR, INTROSPECTOR, basic

AUDIT = basic(*AUDITOR)
HEX64 = r"[0-9a-f]{64}"


def ledger_of(app):
    return app.extensions["broker"].ledger


def get(client, path: str, headers=AUDIT):
    return client.get(path, headers=headers)


def test_inclusion_proof_is_rfc6962(app) -> None:
    fill(ledger_of(app), 11)
    client = app.test_client()
    for seq, size in [(1, 1), (1, 11), (6, 11), (11, 11), (3, 7), (7, 7)]:
        response = get(client, f"/v1/ledger/proof/inclusion?seq={seq}&size={size}")
        assert response.status_code == 200, response.json
        assert response.headers["Cache-Control"] == "no-store"
        body = response.json
        assert list(body) == ["leaf_index", "tree_size", "leaf", "leaf_hash", "hashes", "root_hash"]
        leaf = base64.b64decode(body["leaf"], validate=True)
        assert json.loads(leaf)["seq"] == seq and leaf == canonical_json(json.loads(leaf))
        assert body["leaf_index"] == seq - 1 and body["tree_size"] == size
        for value in (body["leaf_hash"], body["root_hash"], *body["hashes"]):
            assert isinstance(value, str) and len(value) == 64 and value == value.lower()
        leaf_hash = bytes.fromhex(body["leaf_hash"])
        assert leaf_hash == merkle.leaf_hash(leaf)
        hashes = [bytes.fromhex(h) for h in body["hashes"]]
        root = bytes.fromhex(body["root_hash"])
        merkle.verify_inclusion(leaf_hash, seq - 1, size, hashes, root)
        independent_verify_inclusion(leaf_hash, seq - 1, size, hashes, root)


def test_size_defaults_to_the_whole_ledger(app) -> None:
    fill(ledger_of(app), 4)
    body = get(app.test_client(), "/v1/ledger/proof/inclusion?seq=2").json
    assert body["tree_size"] == 4
    body = get(app.test_client(), "/v1/ledger/proof/consistency?from=2").json
    assert body["second_size"] == 4


def test_consistency_proof_is_rfc6962(app) -> None:
    ledger = ledger_of(app)
    fill(ledger, 9)
    client = app.test_client()
    for first, second in [(1, 9), (4, 9), (5, 9), (9, 9), (3, 7), (1, 1)]:
        response = get(client, f"/v1/ledger/proof/consistency?from={first}&to={second}")
        assert response.status_code == 200, response.json
        body = response.json
        assert list(body) == ["first_size", "second_size", "hashes", "first_root", "second_root"]
        assert (body["first_size"], body["second_size"]) == (first, second)
        hashes = [bytes.fromhex(h) for h in body["hashes"]]
        r1, r2 = bytes.fromhex(body["first_root"]), bytes.fromhex(body["second_root"])
        merkle.verify_consistency(first, second, hashes, r1, r2)
        independent_verify_consistency(first, second, hashes, r1, r2)
        incl = get(client, f"/v1/ledger/proof/inclusion?seq=1&size={second}").json
        assert incl["root_hash"] == body["second_root"]


BAD_PARAMETERS = [
    "/v1/ledger/proof/inclusion",
    "/v1/ledger/proof/inclusion?seq=",
    "/v1/ledger/proof/inclusion?seq=0",
    "/v1/ledger/proof/inclusion?seq=x",
    "/v1/ledger/proof/inclusion?seq=-1",
    "/v1/ledger/proof/inclusion?seq=1.0",
    "/v1/ledger/proof/inclusion?seq=%201",
    "/v1/ledger/proof/inclusion?seq=1&seq=2",
    "/v1/ledger/proof/inclusion?seq=4&size=3",
    "/v1/ledger/proof/inclusion?seq=1&size=6",
    "/v1/ledger/proof/inclusion?seq=99999999999999999999",
    "/v1/ledger/proof/consistency",
    "/v1/ledger/proof/consistency?to=3",
    "/v1/ledger/proof/consistency?from=0&to=3",
    "/v1/ledger/proof/consistency?from=4&to=3",
    "/v1/ledger/proof/consistency?from=1&to=6",
    "/v1/ledger/proof/consistency?from=1&to=2&to=3",
]


def test_bad_parameters_are_invalid_request(app) -> None:
    fill(ledger_of(app), 5)
    client = app.test_client()
    for path in BAD_PARAMETERS:
        response = get(client, path)
        assert response.status_code == 400, path
        assert response.json["error"] == "invalid_request" and response.json["error_description"]


@pytest.mark.parametrize("path", ["/v1/ledger/checkpoint", "/v1/ledger/proof/inclusion?seq=1",
                                  "/v1/ledger/proof/consistency?from=1&to=1"])
def test_only_audit_clients(app, path: str) -> None:
    fill(ledger_of(app), 1)
    client = app.test_client()
    assert get(client, path, headers={}).status_code == 401
    assert get(client, path, headers={}).json["error"] == "invalid_client"
    assert get(client, path, headers=basic(AUDITOR[0], "wrong")).status_code == 401
    denied = get(client, path, headers=basic(*INTROSPECTOR))
    assert denied.status_code == 403 and denied.json["error"] == "access_denied"


def test_checkpoint_verifies_with_the_published_jwks_using_pyjwt(app, database_url: str) -> None:
    ledger = ledger_of(app)
    fill(ledger, 7)
    client = app.test_client()
    response = get(client, "/v1/ledger/checkpoint")
    assert response.status_code == 200
    checkpoint = response.json
    assert set(checkpoint) == {"tree_size", "root_hash", "timestamp", "issuer", "key_id", "signature"}
    assert checkpoint["tree_size"] == 7 and checkpoint["issuer"] == "http://broker.test"
    assert checkpoint["root_hash"] == merkle.root_hash(
        [merkle.leaf_hash(e.canonical_bytes()) for e in ledger.iter_events()]).hex()

    jwks = client.get("/.well-known/jwks.json").json
    header = jwt.get_unverified_header(checkpoint["signature"])
    assert header == {"alg": "ES256", "kid": checkpoint["key_id"], "typ": "nhi-checkpoint+jwt"}
    public = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == header["kid"]))
    claims = jwt.decode(checkpoint["signature"], public.key, algorithms=["ES256"],
                        options={"require": ["tree_size", "root_hash", "timestamp", "issuer"],
                                 "verify_signature": True, "verify_aud": False,
                                 "verify_exp": False, "verify_iat": False, "verify_nbf": False})
    assert claims == {k: checkpoint[k] for k in ("tree_size", "root_hash", "timestamp", "issuer")}
    payload = jwt.api_jws.decode(checkpoint["signature"], public.key, algorithms=["ES256"])
    assert payload == canonical_json(claims)
    assert verify_checkpoint(checkpoint, jwks, issuer="http://broker.test").tree_size == 7

    # The broker's own credential check never takes a checkpoint for a token it minted.
    from broker.keys import TokenNotOurs
    with pytest.raises(TokenNotOurs):
        app.extensions["broker"].signer.verify(checkpoint["signature"])

    # Not grown: the same checkpoint. Grown: a new one, consistent with the old.
    assert get(client, "/v1/ledger/checkpoint").json == checkpoint
    fill(ledger, 2, start=7)
    later = get(client, "/v1/ledger/checkpoint").json
    assert later["tree_size"] == 9
    proof = get(client, "/v1/ledger/proof/consistency?from=7&to=9").json
    merkle.verify_consistency(7, 9, [bytes.fromhex(h) for h in proof["hashes"]],
                              bytes.fromhex(checkpoint["root_hash"]), bytes.fromhex(later["root_hash"]))
    stored = raw_sql(database_url, [("SELECT tree_size, root_hash, key_id FROM checkpoints ORDER BY id", ())])
    assert [tuple(r) for r in stored] == [(7, checkpoint["root_hash"], checkpoint["key_id"]),
                                          (9, later["root_hash"], later["key_id"])]


@pytest.mark.parametrize("field, value", [
    ("tree_size", 8), ("root_hash", "0" * 64), ("timestamp", "2020-01-01T00:00:00.000000Z"),
    ("issuer", "http://evil.test"), ("key_id", "someone-else"), ("signature", "e30.e30.e30"),
])
def test_a_changed_checkpoint_does_not_verify(app, field: str, value) -> None:
    fill(ledger_of(app), 3)
    client = app.test_client()
    checkpoint = get(client, "/v1/ledger/checkpoint").json
    jwks = client.get("/.well-known/jwks.json").json
    with pytest.raises(CheckpointError):
        verify_checkpoint({**checkpoint, field: value}, jwks)


def test_checkpoints_stay_verifiable_after_key_rotation_and_retention(app, tmp_path) -> None:
    fill(ledger_of(app), 3)
    client = app.test_client()
    old = get(client, "/v1/ledger/checkpoint").json
    state = tmp_path / "state"
    rotated = FileSigner(str(state), issuer="http://broker.test", retention=0, activation_delay=0)
    rotated.rotate()          # retention 0: the old key leaves the keyring and the JWKS at once
    rotated.rotate()
    jwks = rotated.jwks()
    assert old["key_id"] not in {k["kid"] for k in jwks["keys"]}
    with pytest.raises(CheckpointError):
        verify_checkpoint(old, jwks)
    keys = local_checkpoint_keys(str(state))               # the archive kept the public key
    assert verify_checkpoint(old, keys).key_id == old["key_id"]
    assert all("d" not in k for k in keys["keys"])          # public halves only


def test_a_rewritten_history_is_refused_not_signed(app, database_url: str) -> None:
    from tests.support.merkle import edit_event, rewrite_history

    ledger = ledger_of(app)
    fill(ledger, 6)
    client = app.test_client()
    get(client, "/v1/ledger/checkpoint")
    columns = "tree_size, root_hash, ts, issuer, key_id, signature"
    signed = raw_sql(database_url, [(f"SELECT {columns} FROM checkpoints", ())])
    # rewrite events and tree, but keep the stored checkpoint this time
    rewrite_history(database_url, edit_event(2))
    raw_sql(database_url, [], many=(
        f"INSERT INTO checkpoints ({columns}) VALUES (%s, %s, %s, %s, %s, %s)", [tuple(signed[0])]))
    fill(ledger, 1, start=6)
    response = get(client, "/v1/ledger/checkpoint")
    assert response.status_code == 500 and response.json["error"] == "server_error"
    assert raw_sql(database_url, [("SELECT count(*) FROM checkpoints", ())])[0][0] == 1


def test_integrity_failures_are_server_errors_never_wrong_proofs(app, database_url: str) -> None:
    fill(ledger_of(app), 6)
    client = app.test_client()
    assert get(client, "/v1/ledger/proof/inclusion?seq=2").status_code == 200
    raw_sql(database_url, [("DELETE FROM merkle_nodes WHERE level = 1 AND idx = 0", ())])
    response = get(client, "/v1/ledger/proof/inclusion?seq=4")
    assert response.status_code == 500 and response.json == {
        "error": "server_error", "error_description": "ledger integrity check failed"}
    fill(ledger_of(app), 1, start=6)
    raw_sql(database_url, [("UPDATE events SET details = %s WHERE seq = 7", ('{"x":1}',))])
    assert get(client, "/v1/ledger/proof/consistency?from=2&to=7").status_code == 500


def test_periodic_checkpoints_and_witness_file(make_app, database_url: str, tmp_path) -> None:
    witness = tmp_path / "witness.jsonl"
    app = make_app(DATABASE_URL=database_url, CHECKPOINT_INTERVAL=0.1,
                   CHECKPOINT_WITNESS=str(witness))
    assert "checkpointer" in app.extensions["broker"].extras
    fill(ledger_of(app), 4)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (witness.exists() and witness.read_text()):
        time.sleep(0.05)
    lines = [json.loads(line) for line in witness.read_text().splitlines()]
    assert lines[0]["tree_size"] == 4
    jwks = app.test_client().get("/.well-known/jwks.json").json
    verify_checkpoint(lines[0], jwks)
    time.sleep(0.4)           # nothing new appended: nothing new signed or published
    assert len(witness.read_text().splitlines()) == 1
    assert raw_sql(database_url, [("SELECT count(*) FROM checkpoints", ())])[0][0] == 1


def test_checkpointer_is_off_in_tests_unless_asked(app) -> None:
    assert "checkpointer" not in app.extensions["broker"].extras
