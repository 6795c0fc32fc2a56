"""Verifying a subject token (the attestation): :func:`verify_subject_token` -> Attestation.

The steps, in order; the first that fails refuses the token with :class:`AttestationError`:

1. size (at most 16 KiB), then the token's SHA-256 (what the ledger keeps, never the token);
2. shape: a compact JWS whose header and payload are JSON objects (no duplicate members);
3. header: ``alg`` asymmetric (never ``none``, never HMAC); no ``jku``/``x5u``/``jwk``/``x5c``
   (keys the token names for itself are never trusted) and no ``crit`` extensions;
4. the unverified ``iss`` and ``aud`` select the issuer configs to try;
5. the issuer's algorithm allowlist, its key from :class:`~broker.attestation.jwks.JWKSCache`,
   then :func:`verify_jwt_signature` -- the signature and the registered claims;
6. :func:`check_claims` -- declarative checks of time claims and required claims, run with the
   caller's clock, and the audience rule (:func:`check_audiences`: no audience besides the
   broker's unless the issuer allows extra audiences);
7. the principal and run rendered from the claims;
8. the replay guard, last, so only a token that would otherwise be accepted is recorded; keyed
   on what the signature covers (:func:`single_use_key`), not on the token's text.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt import exceptions as jwt_errors

from broker.attestation.errors import (
    EXPIRED,
    NOT_ACCEPTABLE,
    REPLAYED,
    UNTRUSTED_ISSUER,
    AttestationError,
    printable,
)
from broker.attestation.jwks import JWKSCache
from broker.attestation.replay import ReplayGuard
from broker.common.canonical import canonical_json, sha256_hex
from broker.policy.model import IssuerConfig, PolicySet, claim_text, claim_value
from broker.policy.presets import ASYMMETRIC_ALGORITHMS, BASE_REQUIRED_CLAIMS

MAX_TOKEN_BYTES = 16 * 1024

# Header parameters that point at, or carry, a key chosen by whoever made the token. A token
# is verified only with keys the issuer publishes, so these are refused outright.
FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c")

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Attestation:
    """A verified subject token: who is calling (``principal``) and which execution (``run``)."""
    issuer: IssuerConfig
    claims: dict[str, Any] = field(repr=False)
    principal: str
    run: dict[str, str]
    token_sha256: str
    expires_at: int
    #: What single use remembers (:func:`single_use_key`) and until when (epoch seconds: the
    #: token's ``exp`` plus the issuer's leeway, after which it could not be accepted anyway)
    single_use_key: str = ""
    single_use_until: int = 0


def verify_subject_token(unverified_token: str, *, policy_set: PolicySet, jwks: JWKSCache,
                         replay: ReplayGuard, now: float | None = None) -> Attestation:
    """Verify an RFC 8693 ``subject_token`` against the trusted issuers of ``policy_set``.

    Raises :class:`AttestationError` (``invalid_grant``) when the token is refused, with
    ``unverified_issuer`` and ``token_sha256`` set for the deny event, and
    :class:`~broker.errors.BackendUnavailable` when an issuer's keys or the replay store
    cannot be reached. ``now`` is the clock of the broker's own claim checks; PyJWT's checks of
    exp/nbf/iat in :func:`verify_jwt_signature` use the wall clock as well.
    """
    now = time.time() if now is None else float(now)
    presented = _Presented()
    try:
        return _verify(unverified_token, presented, policy_set=policy_set, jwks=jwks,
                       replay=replay, now=now)
    except AttestationError as exc:
        exc.stamp(unverified_issuer=presented.unverified_issuer,
                  token_sha256=presented.token_sha256)
        raise


@dataclass
class _Presented:
    """What is known about the presented token, for the deny event."""
    token_sha256: str | None = None
    unverified_issuer: str | None = None


def _refuse(detail: str, description: str = NOT_ACCEPTABLE) -> AttestationError:
    return AttestationError(description, detail=detail)


def _verify(unverified_token: str, presented: _Presented, *, policy_set: PolicySet,
            jwks: JWKSCache, replay: ReplayGuard, now: float) -> Attestation:
    if not isinstance(unverified_token, str):
        raise _refuse("subject_token is not text")
    if len(unverified_token) > MAX_TOKEN_BYTES:
        raise _refuse(f"subject_token larger than {MAX_TOKEN_BYTES} bytes")
    token_bytes = unverified_token.encode("utf-8", "surrogatepass")
    if len(token_bytes) > MAX_TOKEN_BYTES:
        raise _refuse(f"subject_token larger than {MAX_TOKEN_BYTES} bytes")
    presented.token_sha256 = token_sha256 = sha256_hex(token_bytes)

    unverified_header, unverified_claims = parse_unverified(unverified_token)
    unverified_issuer = unverified_claims.get("iss")
    if isinstance(unverified_issuer, str):
        presented.unverified_issuer = unverified_issuer   # the deny event names who it claims
    alg = check_header(unverified_header)
    candidates = issuers_for_token(policy_set, unverified_claims)

    # Several configs may share one `iss` and `aud`: the first that accepts the token wins;
    # when none does, the first config's reason is reported.
    first_refusal: AttestationError | None = None
    for issuer in candidates:
        try:
            claims = _verify_for_issuer(unverified_token, unverified_header, alg, issuer,
                                        jwks=jwks, now=now)
            principal = render_principal(issuer.principal, claims)
            run = render_run(issuer.run, claims)
            break
        except AttestationError as exc:
            first_refusal = first_refusal or exc
    else:
        assert first_refusal is not None
        raise first_refusal

    exp = claims["exp"]
    replay_key = single_use_key(issuer, claims)
    # Remember the token for as long as it could still be accepted.
    ttl = max(1, math.ceil(exp - now + issuer.leeway))
    if not replay.first_use(replay_key, ttl):
        raise _refuse("token replayed", REPLAYED)

    return Attestation(issuer=issuer, claims=claims, principal=principal, run=run,
                       token_sha256=token_sha256, expires_at=int(exp),
                       single_use_key=replay_key, single_use_until=math.ceil(now) + ttl)


def single_use_key(issuer: IssuerConfig, claims: dict[str, Any]) -> str:
    """What the replay guard remembers of an accepted attestation: what its signature vouches
    for, never the token's text. A ``jti`` names the attestation; without one, the SHA-256 of
    the signed claims in canonical JSON does. So a copy with another signature (ECDSA's
    ``(r, n-s)``, a fresh signature over the same claims, another key of the issuer) or another
    encoding of the same claims is the same attestation, and used once."""
    jti = claims.get("jti")
    if isinstance(jti, str) and jti:
        return f"{issuer.name}:jti:{jti}"
    return f"{issuer.name}:claims:{sha256_hex(canonical_json(claims))}"


# -- before the signature: shape, header, issuer selection ------------------------------------

class _DuplicateMember(ValueError):
    pass


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateMember(key)
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode_segment(segment: str, what: str) -> bytes:
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise _refuse(f"malformed token: {what} is not base64url")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise _refuse(f"malformed token: {what} is not base64url") from exc
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != segment:
        raise _refuse(f"malformed token: {what} is not canonical base64url")
    return data


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_object_without_duplicates,
                           parse_constant=_reject_constant)
    except _DuplicateMember as exc:
        raise _refuse(f"malformed token: {what} has a duplicate member") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _refuse(f"malformed token: {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise _refuse(f"malformed token: {what} is not a JSON object")
    return value


def parse_unverified(unverified_token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a compact JWS into its header and payload objects WITHOUT checking anything else.

    Both results are untrusted until :func:`verify_jwt_signature` has run.
    """
    if not unverified_token.isascii():
        raise _refuse("malformed token: not ASCII")
    segments = unverified_token.split(".")
    if len(segments) != 3:
        raise _refuse(f"malformed token: {len(segments)} segments, a JWS has 3")
    header_segment, payload_segment, signature_segment = segments
    unverified_header = _json_object(_decode_segment(header_segment, "header"), "header")
    unverified_claims = _json_object(_decode_segment(payload_segment, "payload"), "payload")
    _decode_segment(signature_segment, "signature")
    return unverified_header, unverified_claims


def check_header(unverified_header: dict[str, Any]) -> str:
    """Refuse headers the broker never accepts; return the (still unverified) ``alg``."""
    alg = unverified_header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise _refuse("malformed token: alg missing")
    if alg.lower() == "none":
        raise _refuse("alg none not allowed")
    if alg.upper().startswith("HS"):
        raise _refuse(f"alg {printable(alg, 32)} not allowed (symmetric)")
    if alg not in ASYMMETRIC_ALGORITHMS:
        raise _refuse(f"alg {printable(alg, 32)} not allowed")
    for name in FORBIDDEN_HEADERS:
        if name in unverified_header:
            raise _refuse(f"header {name} not allowed")
    if "crit" in unverified_header:
        # RFC 7515 §4.1.11: extensions the recipient does not understand must be refused.
        raise _refuse("header crit not supported")
    if "kid" in unverified_header and not isinstance(unverified_header["kid"], str):
        raise _refuse("malformed token: kid is not a string")
    return alg


def issuers_for_token(policy_set: PolicySet,
                      unverified_claims: dict[str, Any]) -> list[IssuerConfig]:
    """The issuer configs whose ``issuer`` is the token's ``iss`` and whose ``audience`` is in
    its ``aud``. Only selects: nothing here is verified yet."""
    unverified_issuer = unverified_claims.get("iss")
    if unverified_issuer is None:
        raise _refuse("missing required claim iss")
    if not isinstance(unverified_issuer, str):
        raise _refuse("iss is not a string")
    configs = policy_set.issuers_for_iss(unverified_issuer)
    if not configs:
        raise _refuse("untrusted issuer", UNTRUSTED_ISSUER)
    unverified_aud = unverified_claims.get("aud")
    if unverified_aud is None:
        raise _refuse("missing required claim aud")
    if isinstance(unverified_aud, str):
        unverified_aud = [unverified_aud]
    if not isinstance(unverified_aud, list) or not all(isinstance(a, str) for a in unverified_aud):
        raise _refuse("aud is not a string or a list of strings")
    matching = [c for c in configs if c.audience in unverified_aud]
    if not matching:
        raise _refuse("audience mismatch")
    return matching


# -- the signature ----------------------------------------------------------------------------

def _verify_for_issuer(unverified_token: str, unverified_header: dict[str, Any], alg: str,
                       issuer: IssuerConfig, *, jwks: JWKSCache, now: float) -> dict[str, Any]:
    if alg not in issuer.algorithms:
        raise _refuse(f"alg {alg} not allowed for issuer {issuer.name}")
    key = jwks.signing_key(issuer, unverified_header.get("kid"), alg)
    claims = verify_jwt_signature(unverified_token, key=key, alg=alg, issuer=issuer)
    check_claims(issuer, claims, now)
    return claims


def pyjwt_required_claims(issuer: IssuerConfig) -> list[str]:
    required = ["exp", "iss", "aud"]
    if "iat" in issuer.required_claims or issuer.max_token_age is not None:
        required.append("iat")
    return required


def verify_jwt_signature(unverified_token: str, *, key: jwt.PyJWK, alg: str,
                         issuer: IssuerConfig) -> dict[str, Any]:
    """Check the token's signature with ``key`` and the registered claims PyJWT knows (``iss``,
    ``aud``, ``exp``, ``nbf``, ``iat``, the types of ``sub`` and ``jti``), and return the claims.

    This does NOT judge the claims: whether they are complete, fresh enough for this issuer,
    or name a workload that may have anything is for :func:`check_claims` and the policy.
    """
    try:
        return jwt.decode(
            unverified_token,
            key=key,
            algorithms=[alg],                  # one, chosen by the issuer's allowlist
            audience=issuer.audience,
            issuer=issuer.issuer,
            leeway=issuer.leeway,
            options={
                "verify_signature": True,
                "verify_exp": True,
                "verify_nbf": True,
                "verify_iat": True,
                "verify_aud": True,
                "verify_iss": True,
                "verify_sub": True,
                "verify_jti": True,
                "strict_aud": False,           # Kubernetes tokens carry a list of audiences
                "require": pyjwt_required_claims(issuer),
                "enforce_minimum_key_length": True,
            },
        )
    except jwt.PyJWTError as exc:
        description, detail = _pyjwt_refusal(exc)
        raise AttestationError(description, detail=detail) from exc


# PyJWT's exception → our detail (the client sees NOT_ACCEPTABLE), checked in this order:
# DecodeError last, InvalidSignatureError is one of its subclasses.
_PYJWT_DETAILS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt_errors.InvalidAudienceError, "audience mismatch"),
    (jwt_errors.InvalidIssuerError, "issuer mismatch"),
    (jwt_errors.InvalidSignatureError, "signature verification failed"),
    (jwt_errors.InvalidAlgorithmError, "alg not allowed by the signing key"),
    (jwt_errors.InvalidKeyError, "signing key rejected (too weak or unusable)"),
    (jwt_errors.InvalidIssuedAtError, "invalid iat claim"),
    (jwt_errors.InvalidSubjectError, "invalid sub claim"),
    (jwt_errors.InvalidJTIError, "invalid jti claim"),
    (jwt_errors.DecodeError, "malformed token claims"),
)


def _pyjwt_refusal(exc: jwt.PyJWTError) -> tuple[str, str]:
    """Our words for PyJWT's exceptions (its messages never reach a client or the ledger)."""
    if isinstance(exc, jwt_errors.ExpiredSignatureError):
        return EXPIRED, "token expired"
    if isinstance(exc, jwt_errors.ImmatureSignatureError):
        return NOT_ACCEPTABLE, "iat in the future" if "(iat)" in str(exc) else "nbf in the future"
    if isinstance(exc, jwt_errors.MissingRequiredClaimError):
        return NOT_ACCEPTABLE, f"missing required claim {printable(exc.claim, 64)}"
    for kind, detail in _PYJWT_DETAILS:
        if isinstance(exc, kind):
            return NOT_ACCEPTABLE, detail
    return NOT_ACCEPTABLE, f"token rejected ({exc.__class__.__name__})"


# -- after the signature: declarative claim checks -------------------------------------------

Refusal = tuple[str, str]                      # (client description, detail)
TimeClaimCheck = Callable[[IssuerConfig, Any, float], "Refusal | None"]


_LATEST_TIME = 253402300799        # 9999-12-31T23:59:59Z: later times are not real claims


def _is_time(value: Any) -> bool:
    # The range check comes first: math.isfinite() overflows on huge ints.
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and 0 <= value <= _LATEST_TIME and math.isfinite(value))


def _check_exp(issuer: IssuerConfig, exp: Any, now: float) -> Refusal | None:
    if not _is_time(exp):
        return NOT_ACCEPTABLE, "invalid exp claim"
    if exp <= now - issuer.leeway:
        return EXPIRED, "token expired"
    return None


def _check_nbf(issuer: IssuerConfig, nbf: Any, now: float) -> Refusal | None:
    if nbf is None:
        return None
    if not _is_time(nbf):
        return NOT_ACCEPTABLE, "invalid nbf claim"
    if nbf > now + issuer.leeway:
        return NOT_ACCEPTABLE, "nbf in the future"
    return None


def _check_iat(issuer: IssuerConfig, iat: Any, now: float) -> Refusal | None:
    if iat is None:
        return None  # whether it must be present is the required-claims check's business
    if not _is_time(iat):
        return NOT_ACCEPTABLE, "invalid iat claim"
    if iat > now + issuer.leeway:
        return NOT_ACCEPTABLE, "iat in the future"
    if issuer.max_token_age is not None and now - iat > issuer.max_token_age:
        return EXPIRED, (f"token older than max_token_age "
                         f"({int(now - iat)}s > {issuer.max_token_age}s)")
    return None


# Claim name -> check of its value. Run in order, after the required-claims check.
TIME_CLAIM_CHECKS: dict[str, TimeClaimCheck] = {
    "exp": _check_exp,
    "nbf": _check_nbf,
    "iat": _check_iat,
}


def required_claims(issuer: IssuerConfig) -> tuple[str, ...]:
    """Claims (dotted paths allowed) a token of this issuer must carry."""
    extra = ("iat",) if issuer.max_token_age is not None else ()
    return tuple(dict.fromkeys((*BASE_REQUIRED_CLAIMS, *issuer.required_claims, *extra)))


def check_claims(issuer: IssuerConfig, claims: dict[str, Any], now: float) -> None:
    """Judge signature-verified claims: required claims present, time claims sane for ``now``.

    An empty check table fails closed.
    """
    if not TIME_CLAIM_CHECKS or not required_claims(issuer):
        raise _refuse("no claim checks configured")
    for path in required_claims(issuer):
        value = claim_value(claims, path)
        if value is None or value == "":
            raise _refuse(f"missing required claim {path}")
    for name, check in TIME_CLAIM_CHECKS.items():
        refusal = check(issuer, claims.get(name), now)
        if refusal is not None:
            description, detail = refusal
            raise _refuse(detail, description)
    refusal = check_audiences(issuer, claims.get("aud"))
    if refusal is not None:
        raise _refuse(refusal[1], refusal[0])


def check_audiences(issuer: IssuerConfig, aud: Any) -> Refusal | None:
    """OpenID Connect Core §3.1.3.7: the token must list the broker (the issuer config's
    ``audience``) and, unless the issuer document says ``allow_extra_audiences: true``, no
    audience besides it."""
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or issuer.audience not in audiences:
        return NOT_ACCEPTABLE, "audience mismatch"
    others = {a for a in audiences if a != issuer.audience}
    if others and not issuer.allow_extra_audiences:
        return NOT_ACCEPTABLE, (f"aud lists {len(others)} other audience(s) and issuer "
                                f"{issuer.name} does not allow_extra_audiences")
    return None


def render_principal(template: str, claims: dict[str, Any]) -> str:
    """Fill ``{dotted.claim}`` placeholders; a missing or structured value refuses the token."""
    def fill(match: re.Match[str]) -> str:
        path = match.group(1)
        text = claim_text(claim_value(claims, path))
        if not text:
            raise _refuse(f"missing claim {path} for principal")
        if _CONTROL.search(text):
            raise _refuse(f"claim {path} for principal has control characters")
        return text
    return _PLACEHOLDER.sub(fill, template)


def render_run(fields: dict[str, str], claims: dict[str, Any]) -> dict[str, str]:
    """Run field -> claim text, skipping claims the token does not carry."""
    run: dict[str, str] = {}
    for name, path in fields.items():
        text = claim_text(claim_value(claims, path))
        if text is not None:
            run[name] = text
    return run
