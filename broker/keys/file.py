"""The broker's own signing keys: sign minted credentials, publish the JWKS, verify our tokens.

The default :class:`FileSigner` keeps ES256 (P-256) keys in ``$BROKER_STATE_DIR/keys``:

    keys/keyring.json      {"keys": [{"kid", "alg", "created_at", "activates_at",
                                       "retired_at", "file"}]}
    keys/<kid>.pem         PKCS#8 private key, mode 0600

The key that activated last signs. ``broker keys rotate`` creates a new key that is published
at once and activates ``activation_delay`` seconds later (:data:`broker.keys.KEY_ACTIVATION_DELAY`,
so relying parties with a cached JWKS already have it); the current key goes on signing until
then and is retired at that moment. A retired key's public half stays in the JWKS for
``retention`` seconds after it (the longest credential lifetime the policies allow, plus
leeway) so tokens it signed verify until they expire. The first key of a keyring signs at
once (an entry without ``activates_at`` activated when it was created). Replicas sharing the
state directory (or mounted key files) share the keyring; each process re-reads
``keyring.json`` when it changes.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from broker.keys import ACCESS_TOKEN_TYP, KEY_ACTIVATION_DELAY, Signer, TokenNotOurs, jwk_thumbprint  # noqa: F401 (re-exported)

ALGORITHM = "ES256"


@dataclass
class _Key:
    kid: str
    created_at: int
    activates_at: int
    retired_at: int | None
    file: str
    private: ec.EllipticCurvePrivateKey | None
    public: ec.EllipticCurvePublicKey
    public_jwk: dict[str, Any]


class FileSigner:
    """ES256 keys on disk; see the module docstring."""

    def __init__(self, state_dir: str, *, issuer: str, retention: int = 3600 + 60,
                 leeway: int = 30, activation_delay: int = KEY_ACTIVATION_DELAY) -> None:
        self.issuer = issuer.rstrip("/")
        self.retention = retention
        self.leeway = leeway
        self.activation_delay = max(0, int(activation_delay))
        self.dir = os.path.join(os.path.abspath(state_dir), "keys")
        self._ring_path = os.path.join(self.dir, "keyring.json")
        self._lock = threading.Lock()
        self._keys: list[_Key] = []
        self._loaded_mtime: float | None = None
        self._checked_at = 0.0
        self._jwks_cache: tuple[float, dict[str, Any]] | None = None
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        with self._file_lock():
            ring = self._read_ring()
            if not any(k.get("retired_at") is None for k in ring["keys"]):
                self._add_key(ring, activates_at=int(time.time()))   # nothing to wait for
                self._write_ring(ring)
        self._reload(force=True)

    # -- keyring file ------------------------------------------------------------------
    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        with open(os.path.join(self.dir, ".lock"), "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read_ring(self) -> dict[str, Any]:
        try:
            with open(self._ring_path) as fh:
                ring: dict[str, Any] = json.load(fh)
                return ring
        except FileNotFoundError:
            return {"keys": []}

    def _write_ring(self, ring: dict[str, Any]) -> None:
        tmp = self._ring_path + f".tmp{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump(ring, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._ring_path)

    def _add_key(self, ring: dict[str, Any], *, activates_at: int) -> str:
        private = ec.generate_private_key(ec.SECP256R1())
        public_jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
        kid = jwk_thumbprint(public_jwk)
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        path = os.path.join(self.dir, f"{kid}.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        ring["keys"].append({"kid": kid, "alg": ALGORITHM, "created_at": int(time.time()),
                             "activates_at": activates_at, "retired_at": None,
                             "file": f"{kid}.pem"})
        return kid

    def _reload(self, *, force: bool = False) -> None:
        """Re-read the keyring when the file changed (checked at most once a second)."""
        now = time.monotonic()
        if not force and now - self._checked_at < 1.0:
            return
        self._checked_at = now
        try:
            mtime = os.stat(self._ring_path).st_mtime_ns
        except FileNotFoundError:
            return
        if not force and mtime == self._loaded_mtime:
            return
        ring = self._read_ring()
        keys: list[_Key] = []
        for entry in ring["keys"]:
            path = os.path.join(self.dir, entry["file"])
            try:
                with open(path, "rb") as fh:
                    private = serialization.load_pem_private_key(fh.read(), password=None)
            except FileNotFoundError:
                continue
            assert isinstance(private, ec.EllipticCurvePrivateKey)
            public = private.public_key()
            keys.append(_Key(kid=entry["kid"], created_at=entry["created_at"],
                             activates_at=int(entry.get("activates_at", entry["created_at"])),
                             retired_at=entry.get("retired_at"), file=entry["file"],
                             private=private, public=public,
                             public_jwk=ECAlgorithm.to_jwk(public, as_dict=True)))
        self._keys = keys
        self._loaded_mtime = mtime
        self._jwks_cache = None

    def _published(self, now: float) -> list[_Key]:
        return [k for k in self._keys
                if k.retired_at is None or k.retired_at + self.retention > now]

    # -- Signer ------------------------------------------------------------------------
    @property
    def active_kid(self) -> str:
        return self._active().kid

    def _active(self) -> _Key:
        """The key that activated last (a newer one is only published until it activates)."""
        now = time.time()
        with self._lock:
            self._reload()
            ready = [k for k in self._keys if k.private is not None and k.activates_at <= now]
        if not ready:
            raise RuntimeError("no active signing key in the keyring")
        return max(ready, key=lambda k: (k.activates_at, k.created_at))

    def sign(self, claims: dict[str, Any], *, typ: str = ACCESS_TOKEN_TYP) -> str:
        key = self._active()
        assert key.private is not None          # _active() picks only keys with a private half
        return jwt.encode(claims, key.private, algorithm=ALGORITHM,
                          headers={"kid": key.kid, "typ": typ})

    def sign_bytes(self, payload: bytes, *, typ: str) -> str:
        """A compact JWS (ES256, ``kid`` and ``typ`` in the header) over exactly ``payload``:
        for statements that are not tokens, such as ledger checkpoints."""
        key = self._active()
        assert key.private is not None          # _active() picks only keys with a private half
        return jwt.api_jws.encode(payload, key.private, algorithm=ALGORITHM,
                                  headers={"kid": key.kid, "typ": typ})

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            self._reload()
            now = time.time()
            if self._jwks_cache and self._jwks_cache[0] > now:
                return self._jwks_cache[1]
            keys = [{**k.public_jwk, "kid": k.kid, "alg": ALGORITHM, "use": "sig"}
                    for k in self._published(now)]
            doc = {"keys": keys}
            self._jwks_cache = (now + 1.0, doc)
            return doc

    def verify(self, token: str, *, verify_exp: bool = True,
               typ: str = ACCESS_TOKEN_TYP) -> dict[str, Any]:
        """Claims of a ``typ`` token (default: a credential, ``at+jwt``) this broker signed
        with a published key; raises TokenNotOurs."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenNotOurs("malformed token") from exc
        unverified_kid = header.get("kid")
        if header.get("alg") != ALGORITHM or not isinstance(unverified_kid, str):
            raise TokenNotOurs("not signed by this broker")
        if header.get("typ") != typ:
            # another kind of token this broker signs (an AWS web-identity JWT, a checkpoint,
            # a delegation token) is never accepted as a credential, nor the reverse
            raise TokenNotOurs("not a token of this kind")
        with self._lock:
            self._reload()
            key = next((k for k in self._published(time.time()) if k.kid == unverified_kid), None)
        if key is None:
            raise TokenNotOurs("unknown signing key")
        try:
            return jwt.decode(
                token, key.public, algorithms=[ALGORITHM], issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["iss", "sub", "exp", "iat", "jti"], "verify_signature": True,
                         "verify_exp": verify_exp, "verify_iat": True, "verify_nbf": True,
                         "verify_iss": True, "verify_aud": False},
            )
        except jwt.PyJWTError as exc:
            raise TokenNotOurs(type(exc).__name__) from exc

    def rotate(self) -> str:
        """Make a new key, published now and signing ``activation_delay`` seconds from now;
        the keys that sign until then retire at that moment. Drops keys past retention.
        Returns the new kid."""
        with self._file_lock():
            ring = self._read_ring()
            moment = time.time()
            now = int(moment)
            activates_at = (math.ceil(moment + self.activation_delay)   # never sooner
                            if self.activation_delay else now)
            for entry in ring["keys"]:
                if entry.get("retired_at") is None or entry["retired_at"] > now:
                    entry["retired_at"] = activates_at
            kept = []
            for entry in ring["keys"]:
                if entry["retired_at"] + self.retention <= now:
                    try:
                        os.remove(os.path.join(self.dir, entry["file"]))
                    except FileNotFoundError:
                        pass
                else:
                    kept.append(entry)
            ring["keys"] = kept
            kid = self._add_key(ring, activates_at=activates_at)
            self._write_ring(ring)
        self._reload(force=True)
        return kid

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            self._reload(force=True)
            now = time.time()
            published = {k.kid for k in self._published(now)}
            return [{"kid": k.kid, "created_at": k.created_at, "activates_at": k.activates_at,
                     "retired_at": k.retired_at, "published": k.kid in published}
                    for k in self._keys]
