"""Check a proof from the broker against signed checkpoints, without the broker.

An auditor keeps checkpoints (``GET /v1/ledger/checkpoint`` or ``broker ledger checkpoint
--out``) and the broker's JWKS, and later checks proofs the broker hands out::

    broker ledger verify-proof --proof proof.json --checkpoint cp.json --jwks jwks.json
    python -m broker.transparency.verify_offline --proof … --checkpoint … --jwks …   (same)

``proof.json`` is the JSON of ``/v1/ledger/proof/inclusion`` (``leaf_index``, ``tree_size``,
``leaf``, ``leaf_hash``, ``hashes``, ``root_hash``) or of ``/v1/ledger/proof/consistency``
(``first_size``, ``second_size``, ``hashes``, ``first_root``, ``second_root``). Each
checkpoint's signature is verified first; a proof must then be *anchored*: one of its tree
sizes must be that of a verified checkpoint, with the same root. A proof whose size matches a
checkpoint but whose root does not is evidence of a forked log (:class:`merkle.ForkedLog`),
not merely a bad proof. Two checkpoints and the consistency proof between their sizes prove
that the later one extends the earlier one.

Only this module, :mod:`broker.transparency.merkle`, :mod:`broker.transparency.checkpoints` and PyJWT are
used: no database, no server.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from collections.abc import Sequence
from typing import Any

from broker.transparency import merkle
from broker.transparency.checkpoints import Checkpoint, CheckpointError, load_json, verify_checkpoint

INCLUSION_FIELDS = {"leaf_index", "tree_size", "leaf", "leaf_hash", "hashes", "root_hash"}
CONSISTENCY_FIELDS = {"first_size", "second_size", "hashes", "first_root", "second_root"}


def _hash(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * merkle.HASH_SIZE or value != value.lower():
        raise merkle.InvalidProof(f"{what} must be {2 * merkle.HASH_SIZE} lowercase hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise merkle.InvalidProof(f"{what} must be lowercase hex") from None


def _size(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise merkle.InvalidProof(f"{what} must be a non-negative integer")
    return value


def _hashes(value: Any) -> list[bytes]:
    if not isinstance(value, list):
        raise merkle.InvalidProof("hashes must be a list")
    return [_hash(h, f"hashes[{i}]") for i, h in enumerate(value)]


def _anchor(size: int, root: bytes, checkpoints: Sequence[Checkpoint]) -> Checkpoint | None:
    """The checkpoint of this size, if any; ForkedLog when it signed a different root."""
    for checkpoint in checkpoints:
        if checkpoint.tree_size == size:
            if checkpoint.root != root:
                raise merkle.ForkedLog(
                    f"the broker signed root {checkpoint.root_hash} for size {size}, but the"
                    f" proof says {root.hex()}", size1=size, size2=size,
                    root1=checkpoint.root, root2=root)
            return checkpoint
    return None


def verify_inclusion_document(unverified_proof: Any, checkpoints: Sequence[Checkpoint]) -> str:
    """Verify an inclusion proof document against verified checkpoints; returns a summary."""
    if not isinstance(unverified_proof, dict) or set(unverified_proof) != INCLUSION_FIELDS:
        raise merkle.InvalidProof(f"an inclusion proof has exactly {sorted(INCLUSION_FIELDS)}")
    index = _size(unverified_proof["leaf_index"], "leaf_index")
    size = _size(unverified_proof["tree_size"], "tree_size")
    try:
        leaf = base64.b64decode(unverified_proof["leaf"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise merkle.InvalidProof("leaf must be standard base64") from None
    leaf_hash = _hash(unverified_proof["leaf_hash"], "leaf_hash")
    root = _hash(unverified_proof["root_hash"], "root_hash")
    if merkle.leaf_hash(leaf) != leaf_hash:
        raise merkle.InvalidProof("leaf_hash is not SHA-256(0x00 || leaf)")
    merkle.verify_inclusion(leaf_hash, index, size, _hashes(unverified_proof["hashes"]), root)
    try:
        event = json.loads(leaf)
    except ValueError:
        raise merkle.InvalidProof("the leaf is not an event's canonical JSON") from None
    if not isinstance(event, dict) or event.get("seq") != index + 1:
        raise merkle.InvalidProof("the leaf's seq is not leaf_index + 1")
    anchor = _anchor(size, root, checkpoints)
    if anchor is None:
        raise merkle.InvalidProof(f"no verified checkpoint of size {size}: ask for the proof"
                                  " with size=<the tree_size of a checkpoint you hold>")
    return (f"event seq {index + 1} ({event.get('type')}) is in the ledger of {size} events"
            f" signed at {anchor.timestamp} by key {anchor.key_id}")


def verify_consistency_document(unverified_proof: Any, checkpoints: Sequence[Checkpoint]) -> str:
    """Verify a consistency proof document against verified checkpoints; returns a summary."""
    if not isinstance(unverified_proof, dict) or set(unverified_proof) != CONSISTENCY_FIELDS:
        raise merkle.InvalidProof(f"a consistency proof has exactly {sorted(CONSISTENCY_FIELDS)}")
    size1 = _size(unverified_proof["first_size"], "first_size")
    size2 = _size(unverified_proof["second_size"], "second_size")
    root1 = _hash(unverified_proof["first_root"], "first_root")
    root2 = _hash(unverified_proof["second_root"], "second_root")
    merkle.verify_consistency(size1, size2, _hashes(unverified_proof["hashes"]), root1, root2)
    anchors = [_anchor(size1, root1, checkpoints), _anchor(size2, root2, checkpoints)]
    if anchors == [None, None]:
        raise merkle.InvalidProof(f"neither size {size1} nor size {size2} is that of a verified"
                                  " checkpoint")
    which = " and ".join(f"the checkpoint of size {a.tree_size}" for a in anchors if a)
    return (f"the ledger of {size2} events extends the ledger of {size1} events"
            f" (anchored at {which})")


def verify_document(unverified_proof: Any, unverified_checkpoints: Sequence[Any],
                    jwks: dict[str, Any], *, issuer: str | None = None) -> str:
    """Verify the checkpoints' signatures, then the proof (either kind) against them."""
    if not unverified_checkpoints:
        raise CheckpointError("at least one checkpoint is needed")
    checkpoints = [verify_checkpoint(c, jwks, issuer=issuer) for c in unverified_checkpoints]
    if isinstance(unverified_proof, dict) and "leaf_index" in unverified_proof:
        return verify_inclusion_document(unverified_proof, checkpoints)
    return verify_consistency_document(unverified_proof, checkpoints)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verify-proof", description=__doc__.split("\n")[0])
    parser.add_argument("--proof", required=True, help="proof JSON (file or URL)")
    parser.add_argument("--checkpoint", required=True, action="append",
                        help="checkpoint JSON (file or URL); repeatable")
    parser.add_argument("--jwks", required=True, help="the broker's JWKS (file or URL)")
    parser.add_argument("--issuer", default=None, help="require this checkpoint issuer")
    args = parser.parse_args(argv)
    return run(args.proof, args.checkpoint, args.jwks, issuer=args.issuer)


def run(proof: str, checkpoints: Sequence[str], jwks: str, *, issuer: str | None = None) -> int:
    """Exit status: 0 verified, 1 bad proof or checkpoint, 2 forked log, 3 unreadable input."""
    try:
        documents = [load_json(c) for c in checkpoints]
        keys = load_json(jwks)
        proof_doc = load_json(proof)
    except (OSError, ValueError) as exc:
        print(f"cannot read input: {exc}", file=sys.stderr)
        return 3
    try:
        summary = verify_document(proof_doc, documents, keys, issuer=issuer)
    except merkle.ForkedLog as exc:
        print(f"FORKED LOG: {exc}", file=sys.stderr)
        return 2
    except (merkle.InvalidProof, CheckpointError) as exc:
        print(f"INVALID: {exc}", file=sys.stderr)
        return 1
    print(f"ok: {summary}")
    return 0


if __name__ == "__main__":   # pragma: no cover
    sys.exit(main())
