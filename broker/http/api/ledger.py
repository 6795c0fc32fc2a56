"""Tamper evidence for auditors (clients that ``may: [audit]``): signed checkpoints of the
ledger's RFC 6962 Merkle tree, inclusion proofs and consistency proofs.

Hashes are lowercase hex exactly as RFC 6962 defines them (leaf hash = SHA-256(0x00 || leaf),
leaf = the event's canonical bytes, leaf index = seq - 1), so any RFC 6962 verifier accepts
them; ``leaf`` is standard base64. See docs/ledger.md.
"""
from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from flask import Blueprint, current_app, request

from broker import config as cfg
from broker import errors
from broker.http.api.common import authenticate_client, broker_context
from broker.transparency.checkpoints import (
    CheckpointRefused,
    checkpoint_now,
    cosign_all,
    latest_checkpoint,
    publish_all,
    witness_list,
)
from broker.transparency.signed_notes import (
    NOTE_CONTENT_TYPE,
    checkpoint_text,
    cosignatures_for,
    note_verifier,
    signed_note,
    witness_keys,
)
from broker.transparency.tree import LedgerTree, TreeIntegrityError

log = logging.getLogger("broker.http.api.ledger")

bp = Blueprint("ledger", __name__, url_prefix="/v1/ledger")

_DIGITS = re.compile(r"[0-9]{1,18}")
_NO_STORE = {"Cache-Control": "no-store"}


def _size_arg(name: str, *, required: bool) -> int | None:
    values = request.args.getlist(name)
    if len(values) > 1:
        raise errors.RequestMalformed(f"parameter {name} is repeated")
    if not values or values[0] == "":
        if required:
            raise errors.RequestMalformed(f"parameter {name} is required")
        return None
    if not _DIGITS.fullmatch(values[0]):
        raise errors.RequestMalformed(f"parameter {name} must be a non-negative integer")
    return int(values[0])


def _only(*allowed: str) -> None:
    """Refuse query parameters the endpoint does not take (every /v1/ endpoint does)."""
    unknown = sorted(set(request.args) - set(allowed))
    if unknown:
        raise errors.RequestMalformed("unknown parameter (allowed: " + (", ".join(allowed) or "none") + ")")

P = ParamSpec("P")
T = TypeVar("T")


def _tree_call(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    try:
        return fn(*args, **kwargs)
    except (TreeIntegrityError, CheckpointRefused) as exc:
        log.error("LEDGER INTEGRITY: %s", exc)
        raise errors.InternalError("ledger integrity check failed", detail=str(exc)) from exc


def _ledger_size(tree: LedgerTree) -> int:
    return _tree_call(tree.sizes)[1]


@bp.get("/checkpoint")
def checkpoint() -> tuple[dict[str, Any], int, dict[str, str]]:
    """A signed checkpoint of the whole ledger (the stored one if the ledger has not grown)."""
    authenticate_client(permission="audit")
    _only()
    ctx = broker_context()
    config = current_app.config
    signed, new = _tree_call(checkpoint_now, ctx.ledger, ctx.signer, issuer=ctx.issuer,
                             state_dir=cfg.state_dir(config))
    if new:
        witnesses = witness_list(config.get("CHECKPOINT_WITNESS"))
        publish_all(signed, witnesses)
        cosign_all(ctx.ledger, signed, witnesses, state_dir=cfg.state_dir(config),
                   witness_keys=witness_keys(config.get("CHECKPOINT_WITNESS_KEYS")))
    return signed.to_dict(), 200, _NO_STORE


@bp.get("/checkpoint/note")
def checkpoint_note() -> tuple[str, int, dict[str, str]]:
    """The latest checkpoint as a C2SP tlog-checkpoint signed note: the broker's Ed25519 note
    signature and the witnesses' cosignatures (signs a checkpoint first if there is none)."""
    authenticate_client(permission="audit")
    _only()
    ctx = broker_context()
    state_dir = cfg.state_dir(current_app.config)
    latest = latest_checkpoint(ctx.ledger)
    if latest is None:
        latest, _ = _tree_call(checkpoint_now, ctx.ledger, ctx.signer, issuer=ctx.issuer,
                               state_dir=state_dir)
    note = signed_note(latest, state_dir=state_dir,
                       cosignatures=cosignatures_for(ctx.ledger, checkpoint_text(latest)))
    return note.render(), 200, {**_NO_STORE, "Content-Type": NOTE_CONTENT_TYPE}


@bp.get("/checkpoint/note-key")
def checkpoint_note_key() -> tuple[str, int, dict[str, str]]:
    """The verifier key (vkey) of the broker's checkpoint notes: public, like the JWKS (but,
    like every /v1/ answer, not to be cached by intermediaries: no-store)."""
    _only()
    vkey = note_verifier(cfg.state_dir(current_app.config), broker_context().issuer).vkey
    return vkey + "\n", 200, {**_NO_STORE, "Content-Type": NOTE_CONTENT_TYPE}


def _range_args(tree: LedgerTree, low: str, high: str) -> tuple[int, int]:
    """``(low, high)`` from the query: ``low`` required, ``high`` defaulting to the ledger's
    size; refused unless ``1 <= low <= high <= size``."""
    first = _size_arg(low, required=True)
    second = _size_arg(high, required=False)
    ledger_size = _ledger_size(tree)
    if second is None:
        second = ledger_size
    if second > ledger_size:
        raise errors.RequestMalformed(f"{high} is larger than the ledger ({ledger_size} events)")
    assert first is not None
    if not 1 <= first <= second:
        raise errors.RequestMalformed(f"{low} must be between 1 and {high}")
    return first, second


@bp.get("/proof/inclusion")
def inclusion() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Event ``seq`` is leaf ``seq - 1`` of the tree of the first ``size`` events
    (default: the whole ledger)."""
    authenticate_client(permission="audit")
    _only("seq", "size")
    tree = LedgerTree(broker_context().ledger)
    seq, size = _range_args(tree, "seq", "size")
    proof = _tree_call(tree.inclusion_proof, seq, size)
    return {
        "leaf_index": proof.leaf_index,
        "tree_size": proof.tree_size,
        "leaf": base64.b64encode(proof.leaf).decode("ascii"),
        "leaf_hash": proof.leaf_hash.hex(),
        "hashes": [h.hex() for h in proof.hashes],
        "root_hash": proof.root_hash.hex(),
    }, 200, _NO_STORE


@bp.get("/proof/consistency")
def consistency() -> tuple[dict[str, Any], int, dict[str, str]]:
    """The tree of the first ``to`` events (default: the whole ledger) extends the tree of
    the first ``from`` events."""
    authenticate_client(permission="audit")
    _only("from", "to")
    tree = LedgerTree(broker_context().ledger)
    first, second = _range_args(tree, "from", "to")
    proof = _tree_call(tree.consistency_proof, first, second)
    return {
        "first_size": proof.first_size,
        "second_size": proof.second_size,
        "hashes": [h.hex() for h in proof.hashes],
        "first_root": proof.first_root.hex(),
        "second_root": proof.second_root.hex(),
    }, 200, _NO_STORE
