"""Signing keys of trusted issuers: OIDC discovery, JWKS fetch, cache, bounded refetch.

Where keys come from, per :class:`~broker.policy.model.IssuerConfig`, first that is set:
``jwks_file`` (re-read whenever its mtime changes), ``jwks_uri``, or OIDC discovery at
``{issuer}/.well-known/openid-configuration`` (its ``jwks_uri``).

Rules the fetcher keeps:
- HTTPS only; plain HTTP only for loopback hosts (127.0.0.0/8, ::1, localhost), checked for the
  discovery URL, the ``jwks_uri`` it names and every redirect. Proxies are never used for
  loopback.
- A timeout on every request and a cap on the response size.
- Keys are cached per issuer name for ``cache_ttl`` seconds. A token whose ``kid`` is unknown
  triggers at most one refetch per ``min_refetch_interval`` per issuer, so spraying random kids
  cannot make the broker hammer an issuer; a failed fetch is likewise not retried sooner.
- A key is returned only if its type (and curve) fit the token's ``alg`` and its own ``alg``,
  ``use`` and ``key_ops``, when present, allow verifying with it.

Fetch failures raise :class:`~broker.errors.BackendUnavailable` (the detail names the
issuer, never a token); a ``kid`` that is still unknown raises
:class:`~broker.attestation.errors.AttestationError`.
"""
from __future__ import annotations

import http.client
import ipaddress
import json
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit

import jwt

from broker.attestation.errors import AttestationError, printable
from broker.errors import BackendUnavailable
from broker.policy.model import IssuerConfig
from broker.policy.presets import ASYMMETRIC_ALGORITHMS

MAX_RESPONSE_BYTES = 1024 * 1024
_REDIRECT_REFUSED = "redirect to a disallowed URL"
UNAVAILABLE = "the attestation issuer's signing keys are temporarily unavailable"

# Token alg -> (JWK kty, allowed curves or None).
_KEY_SHAPES: dict[str, tuple[str, frozenset[str] | None]] = {
    "RS256": ("RSA", None), "RS384": ("RSA", None), "RS512": ("RSA", None),
    "PS256": ("RSA", None), "PS384": ("RSA", None), "PS512": ("RSA", None),
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_allowed_fetch_url(url: str) -> bool:
    """HTTPS anywhere; plain HTTP only to a loopback host; nothing else (no file:, ftp:, ...)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    if not host:
        return False
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and is_loopback_host(host)


def key_fits_alg(jwk: dict[str, Any], alg: str) -> bool:
    """Whether this JWK may verify a signature made with ``alg``."""
    shape = _KEY_SHAPES.get(alg)
    if shape is None or alg not in ASYMMETRIC_ALGORITHMS:
        return False
    kty, curves = shape
    if jwk.get("kty") != kty:
        return False
    if curves is not None and jwk.get("crv") not in curves:
        return False
    if "alg" in jwk and jwk["alg"] != alg:
        return False
    if "use" in jwk and jwk["use"] != "sig":
        return False
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return False
    return True


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow at most a few redirects, and only to URLs the fetch rules allow."""
    max_redirections = 3

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: http.client.HTTPMessage, newurl: str) -> urllib.request.Request | None:
        if not is_allowed_fetch_url(newurl):
            raise urllib.error.HTTPError(newurl, code, _REDIRECT_REFUSED, headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(*, use_env_proxies: bool, tls: ssl.SSLContext) -> urllib.request.OpenerDirector:
    # Only the handlers we need: no file:, ftp: or data: URLs, ever.
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(None if use_env_proxies else {}),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(context=tls),
        _CheckedRedirects(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


class _FetchError(Exception):
    """Internal: why a fetch failed, in words safe for the log."""


@dataclass
class _IssuerKeys:
    lock: threading.Lock = field(default_factory=threading.Lock)
    source: tuple[Any, ...] | None = None      # config the keys came from (refetch if changed)
    jwks: list[dict[str, Any]] = field(default_factory=list)   # parseable JWKs only
    fetched_at: float | None = None            # monotonic, last successful fetch
    failed_at: float | None = None             # monotonic, last failed fetch
    failure: str | None = None
    refetched_for_kid_at: float | None = None  # monotonic, last refetch caused by an unknown kid
    discovered_jwks_uri: str | None = None
    file_stamp: tuple[int, int] | None = None  # (mtime_ns, size) of jwks_file
    parsed: dict[tuple[int, str], jwt.PyJWK] = field(default_factory=dict)


class JWKSCache:
    """Thread-safe cache of issuers' signing keys. One per process, shared by all requests."""

    def __init__(self, *, timeout: float = 5.0, cache_ttl: float = 300,
                 min_refetch_interval: float = 10.0,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.timeout = timeout
        self.cache_ttl = cache_ttl
        self.min_refetch_interval = min_refetch_interval
        self.max_response_bytes = max_response_bytes
        self._lock = threading.Lock()
        self._issuers: dict[str, _IssuerKeys] = {}
        self._openers: dict[bool, urllib.request.OpenerDirector] = {}

    # -- public ----------------------------------------------------------------------------
    def signing_key(self, issuer: IssuerConfig, kid: str | None, alg: str) -> jwt.PyJWK:
        """The key of ``issuer`` that may verify a token with header ``kid`` and ``alg``.

        ``kid`` and ``alg`` come from an unverified header: they only select a key, and the
        key's own type must fit ``alg``. Without a ``kid`` the set must hold exactly one key
        usable for ``alg``.
        """
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise AttestationError(detail=f"alg {printable(alg, 32)} not allowed")
        entry = self._entry(issuer.name)
        with entry.lock:
            self._ensure_fresh(entry, issuer)
            key = self._select(entry, issuer, kid, alg)
            if key is None and kid is not None and self._may_refetch_for_kid(entry):
                entry.refetched_for_kid_at = time.monotonic()
                self._refresh(entry, issuer, rediscover=False)
                key = self._select(entry, issuer, kid, alg)
            if key is None:
                raise AttestationError(
                    detail=f"unknown kid {printable(kid, 64)} for issuer {issuer.name}")
            return key

    def invalidate(self, issuer_name: str | None = None) -> None:
        """Forget cached keys (all issuers, or one)."""
        with self._lock:
            if issuer_name is None:
                self._issuers.clear()
            else:
                self._issuers.pop(issuer_name, None)

    def _opener_for(self, host: str | None) -> urllib.request.OpenerDirector:
        """Built on first use (loading CA certificates takes a while); proxies never for
        loopback."""
        use_env_proxies = not is_loopback_host(host)
        with self._lock:
            opener = self._openers.get(use_env_proxies)
            if opener is None:
                opener = self._openers[use_env_proxies] = _opener(
                    use_env_proxies=use_env_proxies, tls=ssl.create_default_context())
            return opener

    # -- cache bookkeeping -----------------------------------------------------------------
    def _entry(self, name: str) -> _IssuerKeys:
        with self._lock:
            entry = self._issuers.get(name)
            if entry is None:
                entry = self._issuers[name] = _IssuerKeys()
            return entry

    @staticmethod
    def _source_of(issuer: IssuerConfig) -> tuple[Any, ...]:
        return (issuer.issuer, issuer.jwks_uri, issuer.jwks_file)

    def _ensure_fresh(self, entry: _IssuerKeys, issuer: IssuerConfig) -> None:
        now = time.monotonic()
        source = self._source_of(issuer)
        if entry.source != source:
            entry.source, entry.fetched_at, entry.failed_at = source, None, None
            entry.jwks, entry.parsed, entry.discovered_jwks_uri = [], {}, None
            entry.file_stamp = entry.refetched_for_kid_at = None
        if issuer.jwks_file:
            stamp = self._file_stamp(issuer)
            if stamp != entry.file_stamp or entry.fetched_at is None:
                self._refresh(entry, issuer, rediscover=False)
            return
        if entry.fetched_at is not None and now - entry.fetched_at < self.cache_ttl:
            return
        if entry.failed_at is not None and now - entry.failed_at < self.min_refetch_interval:
            # Fail fast instead of waiting on a dead issuer once per request.
            raise self._unavailable(issuer, f"{entry.failure} (not retried yet)")
        self._refresh(entry, issuer, rediscover=True)

    def _may_refetch_for_kid(self, entry: _IssuerKeys) -> bool:
        last = entry.refetched_for_kid_at
        return last is None or time.monotonic() - last >= self.min_refetch_interval

    def _refresh(self, entry: _IssuerKeys, issuer: IssuerConfig, *, rediscover: bool) -> None:
        try:
            if issuer.jwks_file:
                stamp = self._file_stamp(issuer)
                document = self._read_file(issuer.jwks_file)
            else:
                stamp = None
                document = self._fetch_json(self._jwks_uri(entry, issuer, rediscover), "JWKS")
            jwks = self._parse_jwks(document)
        except _FetchError as exc:
            entry.failed_at, entry.failure = time.monotonic(), str(exc)
            raise self._unavailable(issuer, str(exc)) from exc
        entry.jwks, entry.parsed, entry.file_stamp = jwks, {}, stamp
        entry.fetched_at, entry.failed_at, entry.failure = time.monotonic(), None, None

    def _unavailable(self, issuer: IssuerConfig, reason: str) -> BackendUnavailable:
        return BackendUnavailable(UNAVAILABLE,
                                      detail=f"JWKS of issuer {issuer.name}: {reason}")

    # -- key selection ---------------------------------------------------------------------
    def _select(self, entry: _IssuerKeys, issuer: IssuerConfig, kid: str | None,
                alg: str) -> jwt.PyJWK | None:
        if kid is None:
            usable = [i for i, jwk in enumerate(entry.jwks) if key_fits_alg(jwk, alg)]
            if len(usable) != 1:
                raise AttestationError(
                    detail=f"token has no kid and issuer {issuer.name} has {len(usable)} "
                           f"keys for {alg}")
            return self._pyjwk(entry, usable[0], alg)
        matching = [i for i, jwk in enumerate(entry.jwks) if jwk.get("kid") == kid]
        if not matching:
            return None
        for index in matching:
            if key_fits_alg(entry.jwks[index], alg):
                return self._pyjwk(entry, index, alg)
        raise AttestationError(
            detail=f"key {printable(kid, 64)} of issuer {issuer.name} cannot verify {alg}")

    @staticmethod
    def _pyjwk(entry: _IssuerKeys, index: int, alg: str) -> jwt.PyJWK:
        key = entry.parsed.get((index, alg))
        if key is None:
            # Bind the key to the token's alg (checked to fit above): PyJWT then verifies with
            # exactly that algorithm.
            try:
                key = jwt.PyJWK(entry.jwks[index], algorithm=alg)
            except jwt.PyJWTError as exc:
                raise AttestationError(detail=f"signing key unusable for {alg}") from exc
            entry.parsed[(index, alg)] = key
        return key

    # -- sources ---------------------------------------------------------------------------
    @staticmethod
    def _file_stamp(issuer: IssuerConfig) -> tuple[int, int]:
        assert issuer.jwks_file
        try:
            st = os.stat(issuer.jwks_file)
        except OSError as exc:
            raise BackendUnavailable(
                UNAVAILABLE, detail=f"JWKS of issuer {issuer.name}: jwks_file unreadable "
                                    f"({exc.__class__.__name__})") from exc
        return (st.st_mtime_ns, st.st_size)

    def _read_file(self, path: str) -> Any:
        try:
            with open(path, "rb") as fh:
                body = fh.read(self.max_response_bytes + 1)
        except OSError as exc:
            raise _FetchError(f"jwks_file unreadable ({exc.__class__.__name__})") from exc
        if len(body) > self.max_response_bytes:
            raise _FetchError(f"jwks_file larger than {self.max_response_bytes} bytes")
        return self._json(body, "jwks_file")

    def _jwks_uri(self, entry: _IssuerKeys, issuer: IssuerConfig, rediscover: bool) -> str:
        if issuer.jwks_uri:
            return issuer.jwks_uri
        if entry.discovered_jwks_uri is not None and not rediscover:
            return entry.discovered_jwks_uri
        discovery_url = issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = self._fetch_json(discovery_url, "discovery document")
        if not isinstance(document, dict):
            raise _FetchError("discovery document is not a JSON object")
        if document.get("issuer") != issuer.issuer:
            # OpenID Connect Discovery 1.0 §4.3: the document must name the same issuer.
            raise _FetchError("discovery document names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise _FetchError("discovery document has no jwks_uri")
        entry.discovered_jwks_uri = jwks_uri
        return jwks_uri

    def _fetch_json(self, url: str, what: str) -> Any:
        if not is_allowed_fetch_url(url):
            raise _FetchError(
                f"{what} URL refused: https required (plain http only for loopback hosts)")
        host = urlsplit(url).hostname
        opener = self._opener_for(host)
        request = urllib.request.Request(
            url, headers={"Accept": "application/json", "User-Agent": "nhi-broker"})
        deadline = time.monotonic() + self.timeout
        try:
            with opener.open(request, timeout=self.timeout) as response:
                if response.status != 200:
                    raise _FetchError(f"{what} answered HTTP {response.status}")
                chunks: list[bytes] = []
                size = 0
                while True:
                    chunk = response.read(64 * 1024)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > self.max_response_bytes:
                        raise _FetchError(f"{what} larger than {self.max_response_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise _FetchError(f"{what} took longer than {self.timeout} s")
                    chunks.append(chunk)
        except _FetchError:
            raise
        except urllib.error.HTTPError as exc:
            if exc.msg == _REDIRECT_REFUSED:
                raise _FetchError(f"{what} redirected to a disallowed URL") from exc
            raise _FetchError(f"{what} answered HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None)
            kind = (reason if isinstance(reason, BaseException) else exc).__class__.__name__
            raise _FetchError(f"{what} at {printable(host, 100)} unreachable ({kind})") from exc
        except http.client.HTTPException as exc:
            raise _FetchError(f"{what} fetch failed ({exc.__class__.__name__})") from exc
        return self._json(b"".join(chunks), what)

    @staticmethod
    def _json(body: bytes, what: str) -> Any:
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise _FetchError(f"{what} is not valid JSON") from exc

    @staticmethod
    def _parse_jwks(document: Any) -> list[dict[str, Any]]:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise _FetchError("JWKS has no 'keys' list")
        usable: list[dict[str, Any]] = []
        for jwk in document["keys"]:
            if not isinstance(jwk, dict) or not any(key_fits_alg(jwk, a) for a in _KEY_SHAPES):
                continue
            try:
                jwt.PyJWK(jwk, algorithm=next(a for a in _KEY_SHAPES if key_fits_alg(jwk, a)))
            except jwt.PyJWTError:
                continue  # an unusable member does not spoil the set
            usable.append(jwk)
        if not usable:
            raise _FetchError("JWKS holds no usable signing key")
        return usable
