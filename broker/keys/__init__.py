"""The broker's signing keys: file keys (ES256 in the state dir, :mod:`broker.keys.file`) and
Vault/OpenBao Transit (:mod:`broker.keys.transit`) behind one :class:`Signer` protocol.

Keys are published before they sign: a key made by ``broker keys rotate`` is in the JWKS at
once but signs only :data:`KEY_ACTIVATION_DELAY` seconds later (the previous key signs until
then, and its retention counts from that moment)."""
from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, Protocol

#: RFC 9068 §2.1: the ``typ`` header of JWT access tokens.
ACCESS_TOKEN_TYP = "at+jwt"

#: Seconds a relying party may cache the broker's JWKS (its ``Cache-Control: max-age``).
JWKS_MAX_AGE = 60

#: Seconds between a new key's publication (``broker keys rotate``) and the first signature
#: with it: the JWKS cache lifetime, plus 30 s for every broker to notice the new key (the file
#: keyring is re-read within 1 s, Transit key versions within 5 s) and for clock skew. Until
#: then the previous key goes on signing, so a relying party holding a cached key set never
#: meets an unknown ``kid``. ``BROKER_KEY_ACTIVATION_DELAY`` overrides it (0: at once).
KEY_ACTIVATION_DELAY = JWKS_MAX_AGE + 30


def activation_delay(config: Any) -> int:
    """``KEY_ACTIVATION_DELAY`` from a config mapping (``BROKER_KEY_ACTIVATION_DELAY``)."""
    raw = config.get("KEY_ACTIVATION_DELAY") if config is not None else None
    if raw is None or raw == "":
        return KEY_ACTIVATION_DELAY
    delay = int(raw)
    if delay < 0:
        raise ValueError("BROKER_KEY_ACTIVATION_DELAY must be 0 or more seconds")
    return delay


class Signer(Protocol):
    """What the exchange and the API need from a key custodian."""

    issuer: str

    def sign(self, claims: dict[str, Any], *, typ: str = ...) -> str:
        """A compact JWS of ``claims``; ``typ`` defaults to :data:`ACCESS_TOKEN_TYP`."""
        ...
    def sign_bytes(self, payload: bytes, *, typ: str) -> str: ...
    def jwks(self) -> dict[str, Any]: ...
    def verify(self, token: str, *, verify_exp: bool = True, typ: str = ...) -> dict[str, Any]:
        """Claims of a token this broker signed whose header ``typ`` is ``typ`` (default
        :data:`ACCESS_TOKEN_TYP`: a credential); raises :class:`TokenNotOurs`."""
        ...
    def rotate(self) -> str: ...
    def describe(self) -> list[dict[str, Any]]: ...
    @property
    def active_kid(self) -> str: ...


class TokenNotOurs(Exception):
    """A token that this broker did not sign (or that no longer verifies). Never carries the token."""


def jwk_thumbprint(public_jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint (base64url SHA-256 of the required members), used as ``kid``."""
    required = {k: public_jwk[k] for k in ("crv", "kty", "x", "y")}
    digest = hashlib.sha256(json.dumps(required, sort_keys=True, separators=(",", ":")).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def open_signer(spec: str, *, state_dir: str, issuer: str, retention: int,
                config: Any = None) -> Signer:
    """``file`` (default) or ``vault-transit:<key>`` (keys in Vault/OpenBao Transit, reached
    through ``BROKER_VAULT_*`` in ``config``, default the process environment; see
    :mod:`broker.keys.transit`)."""
    if spec == "file":
        from broker.keys.file import FileSigner

        return FileSigner(state_dir, issuer=issuer, retention=retention,
                          activation_delay=activation_delay(config))
    if spec.startswith("vault-transit:"):
        from broker.config import env_config
        from broker.keys.transit import open_transit_signer

        config = env_config() if config is None else config
        return open_transit_signer(spec[len("vault-transit:"):], issuer=issuer, retention=retention,
                                   config=config, activation_delay=activation_delay(config))
    raise ValueError(f"unknown BROKER_SIGNER {spec!r} (supported: file, vault-transit:<key>)")
