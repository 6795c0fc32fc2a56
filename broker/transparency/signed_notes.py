"""Checkpoints as C2SP signed notes, witness cosignatures, and the tlog-witness client.

Besides its JWS form (:mod:`broker.transparency.checkpoints`), every checkpoint is published as
a c2sp.org/tlog-checkpoint note (:mod:`broker.transparency.note`): origin ``<issuer without
scheme>/ledger``, tree size, base64 root, and an Ed25519 note signature by the broker's **note
key**. Standard witnesses (c2sp.org/tlog-witness) verify and cosign it.

* The note key is an Ed25519 key in ``$BROKER_STATE_DIR/keys/checkpoint-note-ed25519.pem``
  (0600, made on first use; brokers sharing a ledger share it like the file keyring). Its
  verifier key (vkey) is ``GET /v1/ledger/checkpoint/note-key``. Ed25519 signatures are
  deterministic, so the note of a stored checkpoint is recomputed, never stored.
* Cosignatures (``cosignature/v1``, type 0x04) that witnesses return are stored in the ledger
  database (table ``checkpoint_cosignatures``: tree size, root, witness key name and ID, the
  signature) and added to the served note; ``broker ledger verify --witness-key VKEY`` checks
  each one from a known witness against the recomputed tree.
* A witness given as ``tlog-witness+https://host/prefix`` in ``BROKER_CHECKPOINT_WITNESS`` (or
  ``broker ledger checkpoint --witness``) is sent ``POST <prefix>/add-checkpoint`` with a
  consistency proof from the size it last cosigned (learnt from its ``409`` answer).
"""
from __future__ import annotations

import base64
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from broker.ledger.events import utc_timestamp
from broker.ledger.rows import Reader
from broker.ledger.store import Ledger
from broker.transparency.note import (
    CheckpointText,
    Note,
    NoteError,
    SignatureLine,
    Verifier,
    matching,
    origin_for,
    parse_note,
    sign_note,
    verifier_for,
)

log = logging.getLogger("broker.transparency.signed_notes")

NOTE_KEY_FILE = "checkpoint-note-ed25519.pem"
WITNESS_PREFIX = "tlog-witness+"
NOTE_CONTENT_TYPE = "text/plain; charset=utf-8"
MAX_WITNESS_ANSWER = 64 * 1024

# The table is ledger schema version 8 (broker/ledger/schema.py).
SQL_INSERT_COSIGNATURE = (
    "INSERT INTO checkpoint_cosignatures (origin, tree_size, root_hash, name, key_id,"
    " signature, received_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING")
SQL_COSIGNATURES_FOR = ("SELECT name, key_id, signature FROM checkpoint_cosignatures"
                        " WHERE origin = %s AND tree_size = %s AND root_hash = %s"
                        " ORDER BY name, key_id")
SQL_ALL_COSIGNATURES = ("SELECT origin, tree_size, root_hash, name, key_id, signature"
                        " FROM checkpoint_cosignatures ORDER BY tree_size, name, key_id")


class WitnessRefused(Exception):
    """A tlog-witness did not cosign (unreachable, an error status, an unusable answer)."""


# -- the note key --------------------------------------------------------------------------------
def note_key(state_dir: str) -> ed25519.Ed25519PrivateKey:
    """The broker's Ed25519 note key, made (atomically, 0600) on first use."""
    keys_dir = os.path.join(os.path.abspath(state_dir), "keys")
    os.makedirs(keys_dir, mode=0o700, exist_ok=True)
    path = os.path.join(keys_dir, NOTE_KEY_FILE)
    try:
        with open(path, "rb") as fh:
            private = serialization.load_pem_private_key(fh.read(), password=None)
    except FileNotFoundError:
        private = ed25519.Ed25519PrivateKey.generate()
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        tmp = f"{path}.tmp{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)              # first writer wins; the others read its key
        except FileExistsError:
            pass
        finally:
            os.remove(tmp)
        return note_key(state_dir)
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 key")
    return private


def note_verifier(state_dir: str, issuer: str) -> Verifier:
    return verifier_for(origin_for(issuer), note_key(state_dir).public_key())


# -- notes of checkpoints ------------------------------------------------------------------------
def checkpoint_text(checkpoint: Any) -> CheckpointText:
    """The tlog-checkpoint text of a stored (JWS) checkpoint."""
    return CheckpointText(origin_for(checkpoint.issuer), int(checkpoint.tree_size),
                          bytes.fromhex(checkpoint.root_hash))


def signed_note(checkpoint: Any, *, state_dir: str,
                cosignatures: Sequence[SignatureLine] = ()) -> Note:
    """The checkpoint as a signed note: the broker's signature, then any cosignatures."""
    text = checkpoint_text(checkpoint)
    own = sign_note(text.render(), text.origin, note_key(state_dir))
    return Note(text.render(), (own, *cosignatures))


# -- cosignatures in the ledger database ---------------------------------------------------------
def store_cosignatures(ledger: Ledger, text: CheckpointText,
                       lines: Iterable[SignatureLine]) -> int:
    """Keep witness signature lines of checkpoint ``text``; returns how many were offered."""
    rows = [(text.origin, text.tree_size, text.root_hash.hex(), line.name, line.key_id.hex(),
             base64.b64encode(line.signature).decode(), utc_timestamp()) for line in lines]
    if not rows:
        return 0
    with ledger.unavailable_on_error("store cosignatures"):
        with ledger.transaction() as tx:
            for row in rows:
                tx.execute(SQL_INSERT_COSIGNATURE, row)
    return len(rows)


def _line(name: str, key_id: str, signature: str) -> SignatureLine:
    return SignatureLine(name, bytes.fromhex(key_id), base64.b64decode(signature))


def cosignatures_for(ledger: Ledger, text: CheckpointText) -> list[SignatureLine]:
    with ledger.unavailable_on_error("read cosignatures"):
        rows = ledger.read(SQL_COSIGNATURES_FOR, (text.origin, text.tree_size,
                                                  text.root_hash.hex()))
    return [_line(*row) for row in rows]


@dataclass(frozen=True)
class StoredCosignature:
    origin: str
    tree_size: int
    root_hash: str            # hex
    line: SignatureLine


def stored_cosignatures(read: Reader) -> list[StoredCosignature]:
    """Every stored cosignature; none when the table is absent (no cosignature was ever
    stored). ``read`` must not be a snapshot's: on PostgreSQL a missing table aborts it."""
    try:
        rows = read(SQL_ALL_COSIGNATURES, ())
    except Exception as exc:  # noqa: BLE001 - the drivers' "no such table" errors differ
        text = str(exc) + str(exc.__cause__ or "")
        if "checkpoint_cosignatures" in text or "no such table" in text \
                or "does not exist" in text:
            return []
        raise
    return [StoredCosignature(r[0], int(r[1]), r[2], _line(*r[3:])) for r in rows]


def check_cosignature(stored: StoredCosignature, expected_root: bytes | None,
                      witnesses: list[Verifier]) -> str | None:
    """None when the cosignature is from an unknown key (ignored) or verifies over the note of
    the recomputed tree; else the problem."""
    verifier = matching(stored.line, witnesses)
    if verifier is None:
        return None
    if expected_root is None:
        return (f"cosignature by {verifier.name} of tree size {stored.tree_size}, larger than "
                "the ledger")
    if expected_root.hex() != stored.root_hash:
        return (f"cosignature by {verifier.name} of tree size {stored.tree_size} names root "
                f"{stored.root_hash}, but the ledger's root there is {expected_root.hex()}")
    text = CheckpointText(stored.origin, stored.tree_size, expected_root).render()
    try:
        verifier.verify(text, stored.line.signature)
    except NoteError as exc:
        return f"cosignature by {verifier.name} of tree size {stored.tree_size}: {exc}"
    return None


# -- the tlog-witness client ---------------------------------------------------------------------
def is_tlog_witness(witness: str) -> bool:
    return witness.startswith(WITNESS_PREFIX)


def witness_keys(value: Any) -> list[Verifier]:
    """``BROKER_CHECKPOINT_WITNESS_KEYS``: comma-separated vkeys of trusted witnesses."""
    from broker.transparency.note import parse_vkey

    if not value:
        return []
    parts = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [parse_vkey(str(p)) for p in parts if str(p).strip()]


def proof_source(ledger: Ledger, size: int) -> Any:
    """``proof_for(old)`` for :func:`add_checkpoint`: consistency proof hashes old → size."""
    from broker.transparency.tree import LedgerTree

    def proof_for(old: int) -> list[bytes]:
        if old == 0 or old == size:
            return []
        if old > size:
            raise WitnessRefused(f"the witness has cosigned {old} events, more than {size}")
        return list(LedgerTree(ledger).consistency_proof(old, size).hashes)
    return proof_for


def add_checkpoint(witness: str, note: Note, *, proof_for: Any, timeout: float = 10.0,
                   old_size: int = 0) -> list[SignatureLine]:
    """c2sp.org/tlog-witness ``add-checkpoint``: submit ``note`` with a consistency proof
    from the witness's last cosigned size (``proof_for(old) -> [hashes]``; one retry after a
    ``409`` names it); returns the witness's signature lines over this note's text."""
    url = witness[len(WITNESS_PREFIX):].rstrip("/") + "/add-checkpoint"
    for _ in range(2):
        proof = proof_for(old_size) if old_size else []
        body = (f"old {old_size}\n" + "".join(base64.b64encode(h).decode() + "\n" for h in proof)
                + "\n" + note.render()).encode("utf-8")
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "text/plain"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                answer = response.read(MAX_WITNESS_ANSWER + 1)
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 409 and old_size == 0:
                text = exc.read(64).decode("ascii", "replace").strip()
                if text.isdigit():
                    old_size = int(text)
                    continue
            raise WitnessRefused(f"witness {url} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise WitnessRefused(f"witness {url} unreachable: {exc}") from exc
    else:
        raise WitnessRefused(f"witness {url} refused the old size twice")
    if len(answer) > MAX_WITNESS_ANSWER:
        raise WitnessRefused(f"witness {url} answered too much")
    try:
        cosigned = parse_note(note.text.decode("utf-8") + "\n" + answer.decode("utf-8"))
    except (NoteError, UnicodeDecodeError) as exc:
        raise WitnessRefused(f"witness {url} answered no signature lines: {exc}") from None
    return list(cosigned.signatures)


def usable_cosignatures(text: bytes, lines: Iterable[SignatureLine],
                        witness_keys: Sequence[Verifier], *, own: Verifier) -> list[SignatureLine]:
    """The lines worth keeping: not the broker's own, and — for a witness whose key is
    configured — only those that verify (a bad line from a known key would make clients reject
    the whole note). Lines from keys the broker does not know are kept for their owners."""
    kept = []
    for line in lines:
        if line.name == own.name and line.key_id == own.key_id:
            continue
        verifier = matching(line, list(witness_keys))
        if verifier is not None:
            try:
                verifier.verify(text, line.signature)
            except NoteError as exc:
                log.warning("dropping a witness signature: %s", exc)
                continue
        kept.append(line)
    return kept


def cosign_with(witnesses: Iterable[str], ledger: Ledger, checkpoint: Any, *, state_dir: str,
                proof_for: Any, witness_keys: Sequence[Verifier] = ()) -> list[str]:
    """Ask each tlog-witness to cosign ``checkpoint`` and store what they return; returns the
    failures (already logged). Other witnesses are not this function's business."""
    failures = []
    note = signed_note(checkpoint, state_dir=state_dir)
    own = matching(note.signatures[0], [note_verifier(state_dir, checkpoint.issuer)])
    assert own is not None
    for witness in witnesses:
        if not is_tlog_witness(witness):
            continue
        try:
            lines = add_checkpoint(witness, note, proof_for=proof_for)
            store_cosignatures(ledger, checkpoint_text(checkpoint),
                               usable_cosignatures(note.text, lines, witness_keys, own=own))
        except WitnessRefused as exc:
            log.warning("%s", exc)
            failures.append(str(exc))
    return failures
