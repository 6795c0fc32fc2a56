"""Signed checkpoints of the ledger's Merkle tree, their storage, witnesses and verification.

Each checkpoint has two forms: the JWS document below, and a C2SP tlog-checkpoint signed note
with an Ed25519 signature that standard witnesses cosign (:mod:`broker.transparency.signed_notes`).

A checkpoint says "the first ``tree_size`` events of this broker's ledger have the RFC 6962
root ``root_hash``", signed with the broker's ES256 key. Format (see docs/ledger.md)::

    {"tree_size": 1234, "root_hash": "<64 lowercase hex>", "timestamp": "<RFC 3339 UTC>",
     "issuer": "<the broker's iss>", "key_id": "<kid>", "signature": "<compact JWS>"}

``signature`` is a compact JWS, header ``{"alg": "ES256", "kid": key_id, "typ":
"nhi-checkpoint+jwt"}``, whose payload is exactly the canonical JSON (sorted keys, no
whitespace) of ``{"issuer", "root_hash", "timestamp", "tree_size"}``. Any JOSE library can
check it with the broker's JWKS (``/.well-known/jwks.json``); the payload has no ``sub``,
``exp`` or ``jti``, so it can never pass for a credential the broker minted.

Key rotation: a retired key leaves the published JWKS after its retention, but checkpoints
it signed must stay verifiable. The broker therefore archives the public key of every key
that signs a checkpoint in ``$BROKER_STATE_DIR/keys/checkpoint-keys.json`` (next to the
keyring, in the keys' own trust domain, outside the database; public halves only);
``broker ledger verify`` uses that archive plus the keyring, or a JWKS given with ``--jwks``.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import jwt

from broker.common.canonical import canonical_json
from broker.ledger.events import utc_timestamp
from broker.ledger.rows import Reader
from broker.ledger.store import Ledger
from broker.transparency.tree import LedgerTree

log = logging.getLogger("broker.transparency.checkpoints")

CHECKPOINT_TYP = "nhi-checkpoint+jwt"
ALGORITHM = "ES256"
#: Signature algorithms a checkpoint may use: the file signer's ES256 and, with Vault/OpenBao
#: Transit, ES256 or EdDSA. Anything else (``none``, HMAC) is refused.
ALGORITHMS = ("ES256", "EdDSA")
FIELDS = ("tree_size", "root_hash", "timestamp", "issuer", "key_id", "signature")
KEY_ARCHIVE = "checkpoint-keys.json"
_HEX64 = re.compile(r"[0-9a-f]{64}")

SQL_CHECKPOINT_COLUMNS = "tree_size, root_hash, ts, issuer, key_id, signature"
SQL_LATEST_CHECKPOINT = (f"SELECT {SQL_CHECKPOINT_COLUMNS} FROM checkpoints"
                         " ORDER BY tree_size DESC, id DESC LIMIT 1")
SQL_CHECKPOINTS_AFTER = (f"SELECT id, {SQL_CHECKPOINT_COLUMNS} FROM checkpoints WHERE id > %s"
                         " ORDER BY id LIMIT %s")
SQL_INSERT_CHECKPOINT = (f"INSERT INTO checkpoints ({SQL_CHECKPOINT_COLUMNS})"
                         " VALUES (%s, %s, %s, %s, %s, %s)")


class CheckpointError(Exception):
    """A checkpoint that is malformed or whose signature does not verify."""


class CheckpointRefused(Exception):
    """The broker will not sign a checkpoint: the tree does not extend the last one it signed
    (stored events were altered, removed or reordered). Logged loudly; never signed."""


class WitnessError(Exception):
    """A checkpoint could not be published to a witness."""


@dataclass(frozen=True)
class Checkpoint:
    tree_size: int
    root_hash: str           # lowercase hex
    timestamp: str           # RFC 3339 UTC
    issuer: str
    key_id: str
    signature: str           # compact JWS over statement_bytes()

    def statement(self) -> bytes:
        return statement_bytes(tree_size=self.tree_size, root_hash=self.root_hash,
                               timestamp=self.timestamp, issuer=self.issuer)

    def to_dict(self) -> dict[str, Any]:
        return {"tree_size": self.tree_size, "root_hash": self.root_hash,
                "timestamp": self.timestamp, "issuer": self.issuer, "key_id": self.key_id,
                "signature": self.signature}

    @property
    def root(self) -> bytes:
        return bytes.fromhex(self.root_hash)


def statement_bytes(*, tree_size: int, root_hash: str, timestamp: str, issuer: str) -> bytes:
    """The signed payload: canonical JSON of the four signed fields."""
    return canonical_json({"issuer": issuer, "root_hash": root_hash, "timestamp": timestamp,
                           "tree_size": tree_size})


# -- parsing and verification (pure but for the crypto) ---------------------------------------
def parse_checkpoint(unverified: Any) -> Checkpoint:
    """Check the shape of a checkpoint document (strict: exactly :data:`FIELDS`). Does not
    check the signature."""
    if not isinstance(unverified, dict):
        raise CheckpointError("a checkpoint is a JSON object")
    keys = set(unverified)
    if keys != set(FIELDS):
        missing, extra = sorted(set(FIELDS) - keys), sorted(keys - set(FIELDS))
        raise CheckpointError(f"checkpoint fields wrong (missing {missing}, unknown {extra})")
    size = unverified["tree_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise CheckpointError("tree_size must be a non-negative integer")
    if not isinstance(unverified["root_hash"], str) or not _HEX64.fullmatch(unverified["root_hash"]):
        raise CheckpointError("root_hash must be 64 lowercase hex digits")
    for name in ("timestamp", "issuer", "key_id", "signature"):
        if not isinstance(unverified[name], str) or not unverified[name]:
            raise CheckpointError(f"{name} must be a non-empty string")
    return Checkpoint(**{name: unverified[name] for name in FIELDS})


def _jwk_thumbprint(public_jwk: dict[str, Any]) -> str | None:
    from broker.keys import jwk_thumbprint

    try:
        return jwk_thumbprint(public_jwk)
    except (KeyError, TypeError):
        return None


def verify_signature(unverified: Checkpoint, jwks: dict[str, Any]) -> bytes:
    """The payload the JWS signs, if it verifies with the key ``key_id`` of ``jwks``;
    raises :class:`CheckpointError`. Does not judge the payload (see :func:`verify_checkpoint`)."""
    try:
        header = jwt.get_unverified_header(unverified.signature)
    except jwt.PyJWTError as exc:
        raise CheckpointError("signature is not a compact JWS") from exc
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise CheckpointError(f"signature algorithm must be one of {', '.join(ALGORITHMS)}")
    if header.get("kid") != unverified.key_id:
        raise CheckpointError("the signature's kid is not the checkpoint's key_id")
    if header.get("typ") != CHECKPOINT_TYP:
        raise CheckpointError(f"the signature's typ is not {CHECKPOINT_TYP}")
    candidates = [k for k in (jwks or {}).get("keys", []) if isinstance(k, dict)
                  and k.get("kid") == unverified.key_id]
    if not candidates:
        raise CheckpointError(f"key {unverified.key_id} is not among the broker's keys")
    for candidate in candidates:
        if candidate.get("alg", alg) != alg:
            continue                              # the key is meant for another algorithm
        try:
            key = jwt.PyJWK(candidate, algorithm=alg).key
            decoded = jwt.api_jws.decode_complete(unverified.signature, key, algorithms=[alg])
        except jwt.PyJWTError:
            continue
        payload: bytes = decoded["payload"]
        return payload
    raise CheckpointError("checkpoint signature does not verify")


def verify_checkpoint(unverified_checkpoint: Any, jwks: dict[str, Any], *,
                      issuer: str | None = None) -> Checkpoint:
    """A checkpoint whose shape, signature and signed statement all check out; raises
    :class:`CheckpointError`. ``issuer``, when given, must be the checkpoint's."""
    unverified = parse_checkpoint(unverified_checkpoint)
    payload = verify_signature(unverified, jwks)
    if payload != unverified.statement():
        raise CheckpointError("the signed statement differs from the checkpoint's fields")
    checkpoint = unverified
    if issuer is not None and checkpoint.issuer != issuer.rstrip("/"):
        raise CheckpointError(f"checkpoint issued by {checkpoint.issuer}, not {issuer}")
    return checkpoint


# -- signing and storage ------------------------------------------------------------------------
def sign_checkpoint(signer: Any, *, issuer: str, tree_size: int, root_hash: bytes,
                    timestamp: str | None = None) -> Checkpoint:
    """Sign the statement for ``(tree_size, root_hash)`` with the signer's active key."""
    tree_size, root_hex = int(tree_size), bytes(root_hash).hex()
    timestamp, issuer = timestamp or utc_timestamp(), issuer.rstrip("/")
    signature = signer.sign_bytes(statement_bytes(tree_size=tree_size, root_hash=root_hex,
                                                  timestamp=timestamp, issuer=issuer),
                                  typ=CHECKPOINT_TYP)
    key_id = jwt.get_unverified_header(signature)["kid"]     # our own, fresh signature
    return Checkpoint(tree_size=tree_size, root_hash=root_hex, timestamp=timestamp, issuer=issuer,
                      key_id=key_id, signature=signature)


def _row_checkpoint(row: Sequence[Any]) -> Checkpoint:
    tree_size, root_hash, ts, issuer, key_id, signature = row
    return Checkpoint(tree_size=int(tree_size), root_hash=root_hash, timestamp=ts,
                      issuer=issuer, key_id=key_id, signature=signature)


def latest_checkpoint(ledger: Ledger) -> Checkpoint | None:
    """The stored checkpoint of the largest tree (the newest among equals)."""
    with ledger.unavailable_on_error("latest checkpoint"):
        rows = ledger.read(SQL_LATEST_CHECKPOINT, ())
    return _row_checkpoint(rows[0]) if rows else None


def stored_checkpoints(read: Reader, *, batch: int = 1000) -> Iterable[Checkpoint]:
    """Every stored checkpoint, in insertion order (``read`` from a snapshot)."""
    after = 0
    while True:
        rows = read(SQL_CHECKPOINTS_AFTER, (after, batch))
        for row in rows:
            after = int(row[0])
            yield _row_checkpoint(row[1:])
        if len(rows) < batch:
            return


def checkpoint_now(ledger: Ledger, signer: Any, *, issuer: str, state_dir: str | None = None,
                   force: bool = False) -> tuple[Checkpoint, bool]:
    """Bring the tree up to the ledger head and return a signed checkpoint of it, and
    whether it is new. The stored checkpoint is returned when the tree has not grown since
    (unless ``force``). Raises :class:`CheckpointRefused` rather than sign a tree that does not
    extend the last stored checkpoint."""
    tree = LedgerTree(ledger)
    size = tree.sync()
    root = tree.root(size)
    issuer = issuer.rstrip("/")
    latest = latest_checkpoint(ledger)
    if latest is not None:
        _check_extends(tree, latest, size)
        if latest.tree_size == size and latest.issuer == issuer and not force:
            return latest, False
    checkpoint = sign_checkpoint(signer, issuer=issuer, tree_size=size, root_hash=root)
    if state_dir is not None:
        archive_signer_key(state_dir, signer, checkpoint.key_id)
    with ledger.unavailable_on_error("store checkpoint"):
        with ledger.transaction() as tx:
            # Serialize checkpoint writers (several processes) on the merkle_head row.
            tx.execute("SELECT size FROM merkle_head WHERE id = 1" + tx.lock_suffix)
            rows = tx.execute(SQL_LATEST_CHECKPOINT)
            if rows and not force:
                newest = _row_checkpoint(rows[0])
                if newest.tree_size >= size and newest.issuer == issuer:
                    return newest, False       # another process signed this size meanwhile
            c = checkpoint
            tx.execute(SQL_INSERT_CHECKPOINT, (c.tree_size, c.root_hash, c.timestamp, c.issuer,
                                               c.key_id, c.signature))
    log.info("ledger checkpoint: tree_size=%d root_hash=%s key_id=%s", checkpoint.tree_size,
             checkpoint.root_hash, checkpoint.key_id)
    return checkpoint, True


def _check_extends(tree: LedgerTree, latest: Checkpoint, size: int) -> None:
    if latest.tree_size > size:
        raise CheckpointRefused(f"the last checkpoint covers {latest.tree_size} events but the"
                                f" ledger now has {size}: events were removed")
    if tree.root(latest.tree_size).hex() != latest.root_hash:
        raise CheckpointRefused(f"the first {latest.tree_size} events no longer hash to the"
                                " root of the last checkpoint: an event was altered, removed or"
                                " reordered")


# -- key archive ---------------------------------------------------------------------------------
def _archive_path(state_dir: str) -> str:
    return os.path.join(os.path.abspath(state_dir), "keys", KEY_ARCHIVE)


def _read_archive(path: str) -> dict[str, Any]:
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        return {"keys": []}
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise CheckpointError(f"{path} is not a JWKS")
    return doc


def archive_signer_key(state_dir: str, signer: Any, kid: str) -> None:
    """Keep the public key ``kid`` (from the signer's JWKS) in the checkpoint key archive."""
    path = _archive_path(state_dir)
    if any(k.get("kid") == kid for k in _read_archive(path)["keys"]):
        return
    public = next((k for k in signer.jwks()["keys"] if k.get("kid") == kid), None)
    if public is None:
        log.error("cannot archive checkpoint key %s: not in the signer's JWKS", kid)
        return
    public = {name: public[name] for name in ("kty", "crv", "x", "y", "kid", "alg", "use")
              if name in public}
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        with open(path + ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            doc = _read_archive(path)
            if not any(k.get("kid") == kid for k in doc["keys"]):
                doc["keys"].append(public)
                tmp = f"{path}.tmp{os.getpid()}"
                with open(tmp, "w") as fh:
                    json.dump(doc, fh, indent=2, sort_keys=True)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
    except OSError:
        log.exception("cannot archive checkpoint key %s in %s", kid, path)


def local_checkpoint_keys(state_dir: str) -> dict[str, Any]:
    """The keys that verify this broker's checkpoints, from the state directory: the archive
    of checkpoint keys plus the public halves of the file signer's keyring (kept only under
    their RFC 7638 thumbprint, which is how the file signer names them)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    keys_dir = os.path.join(os.path.abspath(state_dir), "keys")
    found: dict[str, dict[str, Any]] = {}
    for jwk in _read_archive(os.path.join(keys_dir, KEY_ARCHIVE))["keys"]:
        if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str) and "d" not in jwk:
            found[jwk["kid"]] = jwk
    try:
        with open(os.path.join(keys_dir, "keyring.json")) as fh:
            ring = json.load(fh)
    except (FileNotFoundError, ValueError):
        ring = {"keys": []}
    for entry in ring.get("keys", []):
        try:
            with open(os.path.join(keys_dir, entry["file"]), "rb") as fh:
                private = serialization.load_pem_private_key(fh.read(), password=None)
        except (OSError, KeyError, ValueError, TypeError):
            continue
        # the file signer's keyring holds only EC (ES256) keys
        public = cast("ec.EllipticCurvePublicKey", private.public_key())
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        kid = _jwk_thumbprint(jwk)
        if kid is not None and kid == entry.get("kid"):
            found.setdefault(kid, {**jwk, "kid": kid, "alg": ALGORITHM, "use": "sig"})
    return {"keys": list(found.values())}


def load_jwks(source: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """A JWKS from a file or an http(s) URL."""
    doc = load_json(source, timeout=timeout)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise CheckpointError(f"{source} is not a JWKS")
    return doc


def load_json(source: str, *, timeout: float = 10.0) -> Any:
    """JSON from a file or an http(s) URL."""
    if source.startswith(("http://", "https://")):
        request = urllib.request.Request(source, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:   # noqa: S310
            return json.loads(response.read())
    with open(source, "rb") as fh:
        return json.loads(fh.read())


# -- witnesses -----------------------------------------------------------------------------------
def publish(checkpoint: Checkpoint, witness: str, *, timeout: float = 5.0) -> None:
    """Publish outside the broker's database: an http(s) URL gets ``POST`` JSON; anything else
    is a file that gets the checkpoint appended as one JSON line. Raises :class:`WitnessError`."""
    body = json.dumps(checkpoint.to_dict(), sort_keys=True, separators=(",", ":"))
    if witness.startswith(("http://", "https://")):
        request = urllib.request.Request(witness, data=body.encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError) as exc:
            raise WitnessError(f"witness {witness} unreachable: {exc}") from exc
        if not 200 <= status < 300:
            raise WitnessError(f"witness {witness} answered HTTP {status}")
        return
    try:
        fd = os.open(witness, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (body + "\n").encode())     # one write: lines never interleave
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise WitnessError(f"cannot append to witness file {witness}: {exc}") from exc


def publish_all(checkpoint: Checkpoint, witnesses: Iterable[str]) -> list[str]:
    """Publish to every JSON witness (URL or file); returns the failures (already logged).
    ``tlog-witness+…`` witnesses cosign the signed note instead
    (:func:`broker.transparency.signed_notes.cosign_with`)."""
    from broker.transparency.signed_notes import is_tlog_witness

    failures = []
    for witness in witnesses:
        if is_tlog_witness(witness):
            continue
        try:
            publish(checkpoint, witness)
        except WitnessError as exc:
            log.warning("%s", exc)
            failures.append(str(exc))
    return failures


def witness_list(value: Any) -> list[str]:
    """``BROKER_CHECKPOINT_WITNESS``: comma-separated URLs or file paths."""
    if not value:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v]
    return [part.strip() for part in str(value).split(",") if part.strip()]


# -- the periodic checkpointer -------------------------------------------------------------------
class Checkpointer:
    """Every ``interval`` seconds: sync the tree, sign a checkpoint if it grew, publish it to
    the witnesses. One daemon thread per broker process (several processes may race; the
    store keeps one checkpoint per size). ``close()`` stops it."""

    def __init__(self, ledger: Ledger, signer: Any, *, issuer: str, interval: float,
                 state_dir: str | None = None, witnesses: Sequence[str] = (),
                 witness_keys: Sequence[Any] = ()) -> None:
        self.ledger, self.signer, self.issuer = ledger, signer, issuer
        self.interval = float(interval)
        self.state_dir = state_dir
        self.witnesses = list(witnesses)
        self.witness_keys = list(witness_keys)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nhi-checkpointer", daemon=True)

    def start(self) -> Checkpointer:
        self._thread.start()
        return self

    def run_once(self) -> Checkpoint | None:
        try:
            checkpoint, new = checkpoint_now(self.ledger, self.signer, issuer=self.issuer,
                                             state_dir=self.state_dir)
        except CheckpointRefused as exc:
            log.error("LEDGER INTEGRITY: refusing to sign a checkpoint: %s", exc)
            return None
        if new:
            publish_all(checkpoint, self.witnesses)
            if self.state_dir is not None:
                cosign_all(self.ledger, checkpoint, self.witnesses, state_dir=self.state_dir,
                           witness_keys=self.witness_keys)
        return checkpoint

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - the thread must survive a bad minute
                if self._stop.is_set():
                    return
                log.exception("periodic checkpoint failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


DEFAULT_INTERVAL = 300.0


def cosign_all(ledger: Ledger, checkpoint: Checkpoint, witnesses: Iterable[str], *,
               state_dir: str, witness_keys: Sequence[Any] = ()) -> list[str]:
    """Have every ``tlog-witness+…`` witness cosign the checkpoint's signed note; the
    cosignatures are stored. Returns the failures (already logged)."""
    from broker.transparency.signed_notes import cosign_with, is_tlog_witness, proof_source

    witnesses = [w for w in witnesses if is_tlog_witness(w)]
    if not witnesses:
        return []
    return cosign_with(witnesses, ledger, checkpoint, state_dir=state_dir,
                       proof_for=proof_source(ledger, checkpoint.tree_size),
                       witness_keys=witness_keys)


def start_checkpointer(ctx: Any, config: Any) -> Checkpointer | None:
    """Start the periodic checkpointer of one broker process when configured; None otherwise.

    ``CHECKPOINT_INTERVAL`` seconds (0 = off); unset means 300 s, except in an app built with
    ``TESTING`` where it means off.
    """
    from broker import config as cfg

    raw = config.get("CHECKPOINT_INTERVAL")
    if raw is None or raw == "":
        interval = 0.0 if config.get("TESTING") else DEFAULT_INTERVAL
    else:
        interval = float(raw)
    if interval <= 0:
        return None
    from broker.transparency.signed_notes import witness_keys

    return Checkpointer(ctx.ledger, ctx.signer, issuer=ctx.issuer, interval=interval,
                        state_dir=cfg.state_dir(config),
                        witnesses=witness_list(config.get("CHECKPOINT_WITNESS")),
                        witness_keys=witness_keys(config.get("CHECKPOINT_WITNESS_KEYS"))).start()


__all__ = [
    "CHECKPOINT_TYP", "Checkpoint", "CheckpointError", "CheckpointRefused", "Checkpointer",
    "start_checkpointer",
    "WitnessError", "checkpoint_now", "latest_checkpoint", "local_checkpoint_keys", "load_jwks",
    "parse_checkpoint", "publish", "publish_all", "sign_checkpoint",
    "statement_bytes", "stored_checkpoints", "verify_checkpoint", "verify_signature",
    "witness_list",
]
