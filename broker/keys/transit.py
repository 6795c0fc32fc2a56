"""Signing keys in Vault/OpenBao Transit: ``BROKER_SIGNER=vault-transit:<key name>``.

The private key never leaves Vault. For each token the broker builds the JWS signing input
(``base64url(header).base64url(claims)``), asks ``transit/sign/<key>`` to sign it with an
explicit ``key_version``, and appends the signature:

* ``ecdsa-p256`` keys → ``ES256``: ``hash_algorithm=sha2-256`` and
  ``marshaling_algorithm=jws``, so Transit returns the raw ``r‖s`` (base64url) that JWS wants
  instead of its default ASN.1 DER;
* ``ed25519`` keys → ``EdDSA``: Transit returns standard base64, re-encoded as base64url.

Each signature is checked against the version's public key before the token leaves (a
misconfigured key fails closed, never hands out a token nobody can verify).

``kid`` is ``<key>-v<version>``. A version is published as soon as the broker reads it and
signs only ``activation_delay`` seconds after Transit created it
(:data:`broker.keys.KEY_ACTIVATION_DELAY`; the lowest live version signs at once): until then
the previous version goes on signing, so relying parties with a cached JWKS already have the
new key. The JWKS holds every live version (``>= min_decryption_version``) that is the latest
or was superseded (its successor activated) less than ``retention`` seconds ago (the longest
credential lifetime plus leeway, as for the file signer), built from Transit's public keys.
The key's metadata is re-read at most every :data:`KEY_REFRESH`
seconds, so a rotation by ``broker keys rotate`` (``transit/keys/<key>/rotate``) anywhere
reaches every broker within that time; when Vault cannot be reached, the last keys read keep
being served and verification goes on locally (only signing needs Vault).

Vault access comes from ``BROKER_VAULT_ADDR`` and its auth settings (see :mod:`broker.vault.client`);
``BROKER_VAULT_TRANSIT_MOUNT`` names the mount (default ``transit``). The key must exist
(``bao write -f transit/keys/<name> type=ecdsa-p256``); the broker's token needs ``update`` on
``transit/sign/<name>``, ``read`` on ``transit/keys/<name>``, and for ``broker keys rotate``
``update`` on ``transit/keys/<name>/rotate``.
"""
from __future__ import annotations

import base64
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from broker import errors
from broker.keys import ACCESS_TOKEN_TYP, KEY_ACTIVATION_DELAY, TokenNotOurs
from broker.vault.client import VaultClient

log = logging.getLogger("broker.keys.transit")

#: Seconds between re-reads of the key's versions.
KEY_REFRESH = 5.0
KEY_TYPES = {"ecdsa-p256": "ES256", "ed25519": "EdDSA"}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _epoch(rfc3339: str | None, *, round_up: bool = False) -> int:
    if not rfc3339:
        return 0
    text = rfc3339.rstrip("Z")
    if "." in text:                           # Vault writes nanoseconds; Python parses micro
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    moment = datetime.fromisoformat(text + "+00:00").timestamp()
    return math.ceil(moment) if round_up else int(moment)


@dataclass(frozen=True)
class _Version:
    version: int
    kid: str
    alg: str
    created_at: int
    activates_at: int                 # when it starts signing
    retired_at: int | None            # activation of the next version
    public: Any
    public_jwk: dict[str, Any]


class TransitSigner:
    """A :class:`broker.keys.file.Signer` whose private keys stay in Vault Transit."""

    def __init__(self, client: VaultClient, key_name: str, *, issuer: str, retention: int,
                 mount: str = "transit", leeway: int = 30,
                 activation_delay: int = KEY_ACTIVATION_DELAY) -> None:
        self.client = client
        self.activation_delay = max(0, int(activation_delay))
        self.key_name = key_name
        self.mount = mount
        self.issuer = issuer.rstrip("/")
        self.retention = retention
        self.leeway = leeway
        self._lock = threading.Lock()
        self._versions: list[_Version] = []
        self._min_version = 1
        self._fetched_at = 0.0
        self._warned_at = 0.0
        self._refresh(force=True)

    # -- the key's versions ------------------------------------------------------------
    def _refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._fetched_at < KEY_REFRESH:
                return
            self._fetched_at = now
        try:
            response = self.client.call(
                f"read transit key {self.key_name}",
                lambda c: c.secrets.transit.read_key(name=self.key_name, mount_point=self.mount))
        except errors.BrokerError as exc:
            if force or not self._versions:
                raise
            if now - self._warned_at > 60:
                self._warned_at = now
                log.warning("transit key metadata not refreshed; serving the last keys read: %s",
                            exc.detail)
            return
        data = response["data"]
        alg = KEY_TYPES.get(data.get("type"))
        if alg is None or not data.get("supports_signing"):
            raise ValueError(f"transit key {self.key_name!r} has type {data.get('type')!r}; "
                             f"the broker signs with {' or '.join(KEY_TYPES)}")
        min_version = max(1, int(data.get("min_decryption_version") or 1))
        entries = sorted((int(v), info) for v, info in (data.get("keys") or {}).items())
        created = {v: _epoch(info.get("creation_time")) for v, info in entries}
        created_up = {v: _epoch(info.get("creation_time"), round_up=True) for v, info in entries}
        live = [v for v, _ in entries if v >= min_version]
        activates = {v: created[v] if v == min(live, default=v)
                     else created_up[v] + self.activation_delay for v in live}
        versions = []
        for v, info in entries:
            if v < min_version:
                continue
            public, jwk = _public_key(alg, info["public_key"])
            later = [activates[w] for w in live if w > v]
            versions.append(_Version(version=v, kid=f"{self.key_name}-v{v}", alg=alg,
                                     created_at=created[v], activates_at=activates[v],
                                     retired_at=min(later) if later else None,
                                     public=public, public_jwk=jwk))
        if not versions:
            raise ValueError(f"transit key {self.key_name!r} has no live version")
        with self._lock:
            self._versions = versions
            self._min_version = min_version

    def _published(self) -> list[_Version]:
        now = time.time()
        return [v for v in self._versions
                if v.retired_at is None or v.retired_at + self.retention > now]

    def _active(self) -> _Version:
        """The latest version that has activated (the lowest live one always has)."""
        self._refresh()
        now = time.time()
        with self._lock:
            ready = [v for v in self._versions if v.activates_at <= now]
            if not ready:
                return min(self._versions, key=lambda v: v.version)
            return max(ready, key=lambda v: v.version)

    # -- Signer ------------------------------------------------------------------------
    @property
    def active_kid(self) -> str:
        return self._active().kid

    def _sign_input(self, signing_input: bytes, version: _Version) -> str:
        params: dict[str, Any] = {"name": self.key_name, "mount_point": self.mount,
                                  "hash_input": base64.b64encode(signing_input).decode("ascii"),
                                  "key_version": version.version}
        if version.alg == "ES256":
            params.update(hash_algorithm="sha2-256", marshaling_algorithm="jws")
        try:
            response = self.client.call(f"sign with transit key {self.key_name}",
                                        lambda c: c.secrets.transit.sign_data(**params))
        except errors.BrokerError as exc:
            # Whatever Vault said (sealed, permission denied, key missing), the client's request
            # was fine: the broker could not sign, so nothing was issued — 503, never invalid_target.
            raise errors.SigningUnavailable(detail=f"transit key {self.key_name}: {exc.detail}") from exc
        signature_text = response["data"]["signature"].rsplit(":", 1)[-1]
        if version.alg == "ES256":
            raw = _b64url_decode(signature_text)
        else:
            raw = base64.b64decode(signature_text)
        try:
            _verify_raw(version, signing_input, raw)
        except (InvalidSignature, ValueError):
            raise errors.SigningUnavailable(
                                   detail=f"transit key {self.key_name} v{version.version} returned "
                                          f"a signature that does not verify") from None
        return _b64url(raw)

    def _compact(self, payload: bytes, *, typ: str) -> str:
        version = self._active()
        header = {"alg": version.alg, "kid": version.kid, "typ": typ}
        signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                         + _b64url(payload)).encode("ascii")
        return signing_input.decode("ascii") + "." + self._sign_input(signing_input, version)

    def sign(self, claims: dict[str, Any], *, typ: str = ACCESS_TOKEN_TYP) -> str:
        payload = json.dumps(claims, separators=(",", ":")).encode("utf-8")
        return self._compact(payload, typ=typ)

    def sign_bytes(self, payload: bytes, *, typ: str) -> str:
        """A compact JWS over exactly ``payload`` (ledger checkpoints and other statements)."""
        return self._compact(payload, typ=typ)

    def jwks(self) -> dict[str, Any]:
        self._refresh()
        with self._lock:
            published = self._published()
        return {"keys": [{**v.public_jwk, "kid": v.kid, "alg": v.alg, "use": "sig"}
                         for v in published]}

    def verify(self, token: str, *, verify_exp: bool = True,
               typ: str = ACCESS_TOKEN_TYP) -> dict[str, Any]:
        """Claims of a ``typ`` token (default: a credential, ``at+jwt``) this broker signed
        with a published version; raises TokenNotOurs."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenNotOurs("malformed token") from exc
        unverified_kid = header.get("kid")
        if not isinstance(unverified_kid, str):
            raise TokenNotOurs("not signed by this broker")
        if header.get("typ") != typ:
            # another kind of token this broker signs (an AWS web-identity JWT, a checkpoint,
            # a delegation token) is never accepted as a credential, nor the reverse
            raise TokenNotOurs("not a token of this kind")
        self._refresh()
        with self._lock:
            version = next((v for v in self._published() if v.kid == unverified_kid), None)
        if version is None:
            raise TokenNotOurs("unknown signing key")
        if header.get("alg") != version.alg:
            raise TokenNotOurs("not signed by this broker")
        try:
            return jwt.decode(
                token, version.public, algorithms=[version.alg], issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["iss", "sub", "exp", "iat", "jti"], "verify_signature": True,
                         "verify_exp": verify_exp, "verify_iat": True, "verify_nbf": True,
                         "verify_iss": True, "verify_aud": False},
            )
        except jwt.PyJWTError as exc:
            raise TokenNotOurs(type(exc).__name__) from exc

    def rotate(self) -> str:
        """Rotate the Transit key: the new version is published now and signs
        ``activation_delay`` seconds after Transit created it; returns the new kid."""
        self.client.call(f"rotate transit key {self.key_name}",
                         lambda c: c.secrets.transit.rotate_key(name=self.key_name,
                                                                mount_point=self.mount))
        self._refresh(force=True)
        with self._lock:
            return max(self._versions, key=lambda v: v.version).kid

    def describe(self) -> list[dict[str, Any]]:
        self._refresh(force=True)
        with self._lock:
            published = {v.kid for v in self._published()}
            return [{"kid": v.kid, "created_at": v.created_at, "activates_at": v.activates_at,
                     "retired_at": v.retired_at, "published": v.kid in published}
                    for v in self._versions]


def _public_key(alg: str, text: str) -> tuple[Any, dict[str, Any]]:
    if alg == "ES256":
        public = serialization.load_pem_public_key(text.encode("ascii"))
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise ValueError("transit returned a public key that is not P-256")
        return public, ECAlgorithm.to_jwk(public, as_dict=True)
    public = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(text))
    return public, OKPAlgorithm.to_jwk(public, as_dict=True)


def _verify_raw(version: _Version, signing_input: bytes, raw: bytes) -> None:
    if version.alg == "ES256":
        if len(raw) != 64:
            raise ValueError("an ES256 signature is 64 bytes")
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        version.public.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
    else:
        version.public.verify(raw, signing_input)


def open_transit_signer(key_spec: str, *, config: Any, issuer: str, retention: int,
                        activation_delay: int = KEY_ACTIVATION_DELAY) -> TransitSigner:
    """The signer for ``BROKER_SIGNER=vault-transit:<key>`` (Vault from ``BROKER_VAULT_*``)."""
    from broker.vault.client import settings_from_config, vault_client

    if not key_spec or "/" in key_spec:
        raise ValueError("BROKER_SIGNER=vault-transit:<key name> needs a Transit key name "
                         "(the mount comes from BROKER_VAULT_TRANSIT_MOUNT)")
    settings = settings_from_config(config)
    if settings is None:
        raise ValueError("BROKER_SIGNER=vault-transit:… needs BROKER_VAULT_ADDR (and "
                         "BROKER_VAULT_TOKEN, BROKER_VAULT_TOKEN_FILE or AppRole settings)")
    mount = str(config.get("VAULT_TRANSIT_MOUNT") or "transit").strip("/")
    try:
        return TransitSigner(vault_client(settings), key_spec, issuer=issuer, retention=retention,
                             mount=mount, activation_delay=activation_delay)
    except errors.BrokerError as exc:
        raise ValueError(f"cannot use transit key {key_spec!r}: {exc.detail}") from None
