"""The auditor's offline check (broker/transparency/verify_offline.py): proof documents against
checkpoints signed with a real key, no database and no server."""
from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from broker.common.canonical import canonical_json
from broker.keys.file import FileSigner
from broker.transparency import merkle
from broker.transparency.checkpoints import CheckpointError, parse_checkpoint, sign_checkpoint
from broker.transparency.verify_offline import run, verify_document

ISSUER = "https://broker.example"
EVENTS = [canonical_json({"seq": i + 1, "type": "usage", "details": {"n": i}}) for i in range(12)]
HASHES = [merkle.leaf_hash(e) for e in EVENTS]


@pytest.fixture(scope="module")
def signer(tmp_path_factory) -> FileSigner:
    return FileSigner(str(tmp_path_factory.mktemp("state")), issuer=ISSUER)


def checkpoint(signer: Any, size: int, *, hashes=HASHES) -> dict:
    return sign_checkpoint(signer, issuer=ISSUER, tree_size=size,
                           root_hash=merkle.root_hash(hashes[:size])).to_dict()


def inclusion_doc(seq: int, size: int, *, hashes=HASHES, events=EVENTS) -> dict:
    return {"leaf_index": seq - 1, "tree_size": size,
            "leaf": base64.b64encode(events[seq - 1]).decode(),
            "leaf_hash": hashes[seq - 1].hex(),
            "hashes": [h.hex() for h in merkle.inclusion_proof(seq - 1, hashes[:size])],
            "root_hash": merkle.root_hash(hashes[:size]).hex()}


def consistency_doc(first: int, second: int, *, hashes=HASHES) -> dict:
    return {"first_size": first, "second_size": second,
            "hashes": [h.hex() for h in merkle.consistency_proof(first, hashes[:second])],
            "first_root": merkle.root_hash(hashes[:first]).hex(),
            "second_root": merkle.root_hash(hashes[:second]).hex()}


def test_inclusion_anchored_to_a_checkpoint(signer) -> None:
    summary = verify_document(inclusion_doc(5, 9), [checkpoint(signer, 9)], signer.jwks(),
                              issuer=ISSUER)
    assert "event seq 5 (usage)" in summary


@pytest.mark.parametrize("change", [
    pytest.param(lambda d: {**d, "leaf_index": 3}, id="leaf index"),
    pytest.param(lambda d: {**d, "leaf": base64.b64encode(b'{"seq":5}').decode()}, id="leaf bytes"),
    pytest.param(lambda d: {**d, "leaf_hash": "00" * 32}, id="leaf hash"),
    pytest.param(lambda d: {**d, "hashes": d["hashes"][:-1]}, id="missing hash"),
    pytest.param(lambda d: {**d, "hashes": d["hashes"] + [d["root_hash"]]}, id="extra hash"),
    pytest.param(lambda d: {**d, "root_hash": d["root_hash"].upper()}, id="uppercase hex"),
    pytest.param(lambda d: {**d, "tree_size": 12}, id="unanchored size"),
    pytest.param(lambda d: {**d, "extra": 1}, id="unknown field"),
    pytest.param(lambda d: {k: v for k, v in d.items() if k != "leaf"}, id="missing field"),
])
def test_bad_inclusion_documents(signer, change) -> None:
    with pytest.raises(merkle.InvalidProof):
        verify_document(change(inclusion_doc(5, 9)), [checkpoint(signer, 9)], signer.jwks())


def test_leaf_seq_must_be_leaf_index_plus_one(signer) -> None:
    events = list(EVENTS)
    events[4] = canonical_json({"seq": 7, "type": "usage"})
    hashes = [merkle.leaf_hash(e) for e in events]
    doc = inclusion_doc(5, 9, hashes=hashes, events=events)
    with pytest.raises(merkle.InvalidProof, match="seq"):
        verify_document(doc, [checkpoint(signer, 9, hashes=hashes)], signer.jwks())


def test_a_proof_contradicting_a_signed_root_is_a_fork(signer) -> None:
    rewritten = list(HASHES)
    rewritten[1] = merkle.leaf_hash(b"edited")
    signed = checkpoint(signer, 9)
    with pytest.raises(merkle.ForkedLog):
        verify_document(inclusion_doc(5, 9, hashes=rewritten), [signed], signer.jwks())
    with pytest.raises(merkle.ForkedLog):
        verify_document(consistency_doc(9, 12, hashes=rewritten), [signed], signer.jwks())


def test_consistency_between_two_checkpoints(signer) -> None:
    summary = verify_document(consistency_doc(6, 11), [checkpoint(signer, 6), checkpoint(signer, 11)],
                              signer.jwks())
    assert "checkpoint of size 6 and the checkpoint of size 11" in summary
    with pytest.raises(merkle.InvalidProof, match="neither"):
        verify_document(consistency_doc(6, 11), [checkpoint(signer, 7)], signer.jwks())


def test_checkpoints_are_verified_first(signer, tmp_path) -> None:
    other = FileSigner(str(tmp_path / "other"), issuer=ISSUER)
    with pytest.raises(CheckpointError):
        verify_document(inclusion_doc(5, 9), [checkpoint(other, 9)], signer.jwks())
    with pytest.raises(CheckpointError):
        verify_document(inclusion_doc(5, 9), [checkpoint(signer, 9)], signer.jwks(),
                        issuer="https://another.example")
    with pytest.raises(CheckpointError):
        verify_document(inclusion_doc(5, 9), [], signer.jwks())


@pytest.mark.parametrize("document", [
    None, [], {"tree_size": 1},
    {"tree_size": -1, "root_hash": "00" * 32, "timestamp": "t", "issuer": "i", "key_id": "k", "signature": "s"},
    {"tree_size": True, "root_hash": "00" * 32, "timestamp": "t", "issuer": "i", "key_id": "k", "signature": "s"},
    {"tree_size": 1, "root_hash": "AA" * 32, "timestamp": "t", "issuer": "i", "key_id": "k", "signature": "s"},
    {"tree_size": 1, "root_hash": "00" * 32, "timestamp": "", "issuer": "i", "key_id": "k", "signature": "s"},
])
def test_checkpoint_shape_is_strict(document) -> None:
    with pytest.raises(CheckpointError):
        parse_checkpoint(document)


def test_run_exit_codes(signer, tmp_path) -> None:
    def save(name, value) -> str:
        (tmp_path / name).write_text(json.dumps(value))
        return str(tmp_path / name)

    jwks, cp = save("jwks.json", signer.jwks()), save("cp.json", checkpoint(signer, 9))
    assert run(save("ok.json", inclusion_doc(2, 9)), [cp], jwks) == 0
    assert run(save("bad.json", {**inclusion_doc(2, 9), "leaf_index": 2}), [cp], jwks) == 1
    rewritten = list(HASHES)
    rewritten[0] = merkle.leaf_hash(b"edited")
    assert run(save("fork.json", inclusion_doc(2, 9, hashes=rewritten)), [cp], jwks) == 2
    assert run(str(tmp_path / "missing.json"), [cp], jwks) == 3


class _Ed25519Signer:
    """A signer shaped like the Vault Transit one (kid ``<key>-v<n>``, EdDSA); the key is local
    here because only its signature format matters to this test."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ed25519
        from jwt.algorithms import OKPAlgorithm

        self.private = ed25519.Ed25519PrivateKey.generate()
        self.public_jwk = {**OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True),
                           "kid": "checkpoints-v2", "alg": "EdDSA", "use": "sig"}

    def sign_bytes(self, payload: bytes, *, typ: str) -> str:
        import jwt

        return jwt.api_jws.encode(payload, self.private, algorithm="EdDSA",
                                  headers={"kid": "checkpoints-v2", "typ": typ})

    def jwks(self) -> dict:
        return {"keys": [self.public_jwk]}


def test_eddsa_checkpoints_verify(tmp_path) -> None:
    from broker.transparency.checkpoints import archive_signer_key, local_checkpoint_keys

    signer = _Ed25519Signer()
    signed = checkpoint(signer, 9)
    assert verify_document(inclusion_doc(3, 9), [signed], signer.jwks()).startswith("event seq 3")
    archive_signer_key(str(tmp_path), signer, "checkpoints-v2")
    assert verify_document(inclusion_doc(3, 9), [signed], local_checkpoint_keys(str(tmp_path)))


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_only_asymmetric_signatures(signer, alg) -> None:
    import jwt

    from broker.transparency.checkpoints import CHECKPOINT_TYP, statement_bytes

    good = checkpoint(signer, 9)
    payload = statement_bytes(**{k: good[k] for k in ("tree_size", "root_hash", "timestamp", "issuer")})
    # HS256 keyed with public key material: the classic algorithm-confusion forgery.
    key = signer.jwks()["keys"][0]["x"] if alg == "HS256" else None
    forged = jwt.api_jws.encode(payload, key, algorithm=alg,  # type: ignore[arg-type]  # alg none: no key
                                headers={"kid": good["key_id"], "typ": CHECKPOINT_TYP})
    with pytest.raises(CheckpointError):
        verify_document(inclusion_doc(3, 9), [{**good, "signature": forged}], signer.jwks())
