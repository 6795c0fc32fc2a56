"""verify_subject_token against a real dev issuer over HTTP: every refusal, then acceptance.

Tokens are signed with real keys served as a real JWKS; nothing in the verifier is patched.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest

from broker.attestation import AttestationError, JWKSCache, RedisReplayGuard, verify_subject_token
from broker.attestation.errors import EXPIRED, NOT_ACCEPTABLE, REPLAYED, UNTRUSTED_ISSUER
from broker.devtools.dev_issuer import DevIssuer, DevKey
from broker.http.errors import body_of, status_of
from broker.policy.presets import BASE_REQUIRED_CLAIMS, PRESETS
from tests.support.attestation import (
    AUDIENCE,
    b64url,
    b64url_json,
    issuer_config,
    policy_set,
    segments,
    with_claims,
    with_header,
)

GITHUB_PRINCIPAL = "github:acme/payments:acme/payments/.github/workflows/deploy.yml@refs/heads/main"


@cache
def attacker_key(alg: str = "RS256") -> DevKey:
    """A key the issuer never published."""
    return DevKey.generate(alg)


def gh(**overrides: Any) -> dict[str, Any]:
    return DevIssuer.github_claims(**overrides)


def valid(dev: DevIssuer, **overrides: Any) -> str:
    return dev.mint(gh(**overrides), audience=AUDIENCE)


@dataclass(frozen=True)
class Refusal:
    name: str
    make_token: Callable[[DevIssuer], str]
    detail: str                                   # expected in AttestationError.detail
    description: str = NOT_ACCEPTABLE
    config: dict[str, Any] = field(default_factory=dict)   # IssuerConfig overrides

    def __str__(self) -> str:
        return self.name


def _now() -> int:
    return int(time.time())


def _alg_none_over_valid_signature(dev: DevIssuer) -> str:
    return with_header(valid(dev), alg="none")


def _hmac_with_public_key(dev: DevIssuer) -> str:
    # The classic confusion: HMAC keyed with the issuer's *public* key, which anyone can fetch.
    return dev.mint(gh(), audience=AUDIENCE, alg="HS256", key=dev.key.public_pem())


def _hmac_with_public_jwk_json(dev: DevIssuer) -> str:
    jwk_json = json.dumps(dev.key.public_jwk())
    return dev.mint(gh(), audience=AUDIENCE, alg="HS256", key=jwk_json)


def _payload_altered(dev: DevIssuer) -> str:
    return with_claims(valid(dev), repository="acme/admin")


def _attacker_embeds_own_jwk(dev: DevIssuer) -> str:
    evil = attacker_key()
    return dev.mint(gh(), audience=AUDIENCE, key=evil, headers={"jwk": evil.public_jwk()})


def _oversized(dev: DevIssuer) -> str:
    return valid(dev, padding="x" * 17_000)


def _missing(claim: str) -> Refusal:
    return Refusal(f"missing {claim}",
                   lambda dev: dev.mint(gh(), audience=AUDIENCE, omit=(claim,)),
                   f"missing required claim {claim}")


REQUIRED = tuple(dict.fromkeys((*BASE_REQUIRED_CLAIMS, *PRESETS["github-actions"].required_claims)))

REFUSALS: list[Refusal] = [
    # -- size and shape --------------------------------------------------------------------
    Refusal("larger than 16 KiB", _oversized, "subject_token larger than 16384 bytes"),
    Refusal("garbage", lambda dev: "garbage", "malformed token: 1 segments"),
    Refusal("empty string", lambda dev: "", "malformed token: 1 segments"),
    Refusal("two segments", lambda dev: ".".join(valid(dev).split(".")[:2]),
            "malformed token: 2 segments"),
    Refusal("five segments (JWE shape)", lambda dev: valid(dev) + ".AAAA.BBBB",
            "malformed token: 5 segments"),
    Refusal("bad base64", lambda dev: "!!!.###.$$$", "malformed token: header is not base64url"),
    Refusal("bad base64 in payload",
            lambda dev: valid(dev).split(".")[0] + ".%%%." + valid(dev).split(".")[2],
            "malformed token: payload is not base64url"),
    Refusal("non-JSON header", lambda dev: f"{b64url('not json')}.{b64url_json({})}.AAAA",
            "malformed token: header is not JSON"),
    Refusal("non-JSON payload",
            lambda dev: f"{b64url_json({'alg': 'RS256'})}.{b64url('{oops')}.AAAA",
            "malformed token: payload is not JSON"),
    Refusal("header is a JSON array", lambda dev: f"{b64url_json(['RS256'])}.{b64url_json({})}.AAAA",
            "malformed token: header is not a JSON object"),
    Refusal("duplicate alg in header",
            lambda dev: b64url('{"alg":"RS256","alg":"none"}') + "." + b64url_json({}) + ".AAAA",
            "malformed token: header has a duplicate member"),
    Refusal("not ASCII", lambda dev: valid(dev) + "\u00e9", "malformed token: not ASCII"),
    Refusal("kid is not a string", lambda dev: with_header(valid(dev), kid=7),
            "malformed token: kid is not a string"),
    # -- algorithms ------------------------------------------------------------------------
    Refusal("alg none", lambda dev: dev.mint(gh(), audience=AUDIENCE, alg="none"),
            "alg none not allowed"),
    Refusal("alg None (mixed case)",
            lambda dev: dev.mint(gh(), audience=AUDIENCE, alg="none", headers={"alg": "None"}),
            "alg none not allowed"),
    Refusal("alg none over a valid signature", _alg_none_over_valid_signature,
            "alg none not allowed"),
    Refusal("HS256 keyed with the issuer's public key PEM", _hmac_with_public_key,
            "alg HS256 not allowed (symmetric)"),
    Refusal("HS256 keyed with the public key even if misconfigured into the allowlist",
            _hmac_with_public_key, "alg HS256 not allowed (symmetric)",
            config={"algorithms": ("RS256", "HS256")}),
    Refusal("HS256 keyed with the public JWK", _hmac_with_public_jwk_json,
            "alg HS256 not allowed (symmetric)"),
    Refusal("HS512 with a made-up secret",
            lambda dev: dev.mint(gh(), audience=AUDIENCE, alg="HS512", key=b"s" * 64),
            "alg HS512 not allowed (symmetric)"),
    Refusal("alg that is no JWS algorithm", lambda dev: with_header(valid(dev), alg="RS1"),
            "alg RS1 not allowed"),
    Refusal("ES256 outside the GitHub allowlist",
            lambda dev: dev.mint(gh(), audience=AUDIENCE, key=attacker_key("ES256")),
            "alg ES256 not allowed for issuer github"),
    Refusal("PS256 with the issuer's own RSA key, outside the allowlist",
            lambda dev: dev.mint(gh(), audience=AUDIENCE, alg="PS256"),
            "alg PS256 not allowed for issuer github"),
    Refusal("ES256 token naming the issuer's RSA kid",
            lambda dev: dev.mint(gh(), audience=AUDIENCE, alg="ES256",
                                 key=attacker_key("ES256").private_key),
            "cannot verify ES256", config={"algorithms": ("RS256", "ES256")}),
    # -- headers naming their own keys -----------------------------------------------------
    Refusal("jku header", lambda dev: dev.mint(gh(), audience=AUDIENCE,
                                               headers={"jku": dev.jwks_uri}),
            "header jku not allowed"),
    Refusal("x5u header", lambda dev: dev.mint(gh(), audience=AUDIENCE,
                                               headers={"x5u": "https://evil.example/cert.pem"}),
            "header x5u not allowed"),
    Refusal("jwk header embedding the attacker's signing key", _attacker_embeds_own_jwk,
            "header jwk not allowed"),
    Refusal("x5c header", lambda dev: dev.mint(gh(), audience=AUDIENCE,
                                               headers={"x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOC"]}),
            "header x5c not allowed"),
    Refusal("crit header", lambda dev: dev.mint(gh(), audience=AUDIENCE,
                                                headers={"crit": ["exp"], "exp": 1}),
            "header crit not supported"),
    # -- keys and signatures ---------------------------------------------------------------
    Refusal("unknown kid", lambda dev: dev.mint(gh(), audience=AUDIENCE,
                                                headers={"kid": "never-published"}),
            "unknown kid"),
    Refusal("signed by another key under the issuer's kid",
            lambda dev: dev.mint(gh(), audience=AUDIENCE, key=attacker_key().private_key),
            "signature verification failed"),
    Refusal("payload altered after signing", _payload_altered, "signature verification failed"),
    # -- issuer and audience ---------------------------------------------------------------
    Refusal("iss of another issuer",
            lambda dev: dev.mint(gh(iss="https://token.evil.example"), audience=AUDIENCE),
            "untrusted issuer", UNTRUSTED_ISSUER),
    Refusal("iss with a trailing slash",
            lambda dev: dev.mint(gh(iss=dev.issuer + "/"), audience=AUDIENCE),
            "untrusted issuer", UNTRUSTED_ISSUER),
    Refusal("iss not a string", lambda dev: dev.mint(gh(iss=["x"]), audience=AUDIENCE),
            "iss is not a string"),
    Refusal("aud of another service", lambda dev: dev.mint(gh(), audience="https://vault.acme"),
            "audience mismatch"),
    Refusal("aud list without the broker",
            lambda dev: dev.mint(gh(), audience=["https://kubernetes.default.svc", "other"]),
            "audience mismatch"),
    Refusal("aud of the wrong type", lambda dev: dev.mint(gh(), audience={"a": 1}),  # type: ignore[arg-type]
            "aud is not a string or a list of strings"),
    # -- time ------------------------------------------------------------------------------
    Refusal("expired", lambda dev: dev.mint(gh(), audience=AUDIENCE, now=_now() - 1000, ttl=300),
            "token expired", EXPIRED),
    Refusal("nbf in the future", lambda dev: valid(dev, nbf=_now() + 600), "nbf in the future"),
    Refusal("iat in the future beyond leeway", lambda dev: valid(dev, iat=_now() + 600),
            "iat in the future"),
    Refusal("older than max_token_age",
            lambda dev: dev.mint(gh(), audience=AUDIENCE, now=_now() - 1000, ttl=3600),
            "token older than max_token_age", EXPIRED, config={"max_token_age": 600}),
    Refusal("exp given as a numeric string", lambda dev: valid(dev, exp=str(_now() + 300)),
            "invalid exp claim"),
    Refusal("exp not a number at all", lambda dev: valid(dev, exp="soon"),
            "malformed token claims"),
    Refusal("exp after the year 9999", lambda dev: valid(dev, exp=10**400),
            "invalid exp claim"),
    Refusal("exp of Infinity", lambda dev: valid(dev, exp=float("inf")),
            "malformed token: payload is not JSON"),
    # -- required claims -------------------------------------------------------------------
    *[_missing(claim) for claim in REQUIRED],
    Refusal("required claim present but empty", lambda dev: valid(dev, repository=""),
            "missing required claim repository"),
    Refusal("claim required by the issuer config",
            lambda dev: valid(dev, environment=None), "missing required claim environment",
            config={"required_claims": (*PRESETS["github-actions"].required_claims,
                                        "environment")}),
    Refusal("iat required because of max_token_age",
            lambda dev: dev.mint(gh(), audience=AUDIENCE, omit=("iat",)),
            "missing required claim iat",
            config={"required_claims": ("sub",), "max_token_age": 600}),
    Refusal("principal claim is structured", lambda dev: valid(dev, repository={"name": "x"}),
            "missing claim repository for principal"),
    Refusal("principal claim with a newline", lambda dev: valid(dev, repository="acme/a\nb"),
            "claim repository for principal has control characters"),
    Refusal("jti not a string", lambda dev: valid(dev, jti=12345), "invalid jti claim"),
    Refusal("sub not a string", lambda dev: valid(dev, sub=12345), "invalid sub claim"),
]


def _verify(dev: DevIssuer, token: str, replay, **config: Any):
    ps = policy_set(issuer_config(dev, **config))
    return verify_subject_token(token, policy_set=ps, jwks=JWKSCache(timeout=2.0), replay=replay)


def assert_token_absent(exc: BaseException, token: str) -> None:
    """Neither the token nor any sizeable piece of it may appear in what is logged or sent."""
    texts = [str(exc), repr(exc), json.dumps(getattr(exc, "to_dict", dict)()),
             str(getattr(exc, "detail", "")), str(getattr(exc, "description", "")),
             str(getattr(exc, "unverified_issuer", ""))]
    pieces = [token] if len(token) >= 8 else []
    pieces += [part for part in token.split(".") if len(part) >= 16]
    for text in texts:
        for piece in pieces:
            assert piece not in text, f"token material leaked into {text[:80]!r}"


@pytest.mark.parametrize("case", REFUSALS, ids=str)
def test_refusal(case: Refusal, dev_issuer: DevIssuer, sqlite_replay) -> None:
    token = case.make_token(dev_issuer)
    with pytest.raises(AttestationError) as caught:
        _verify(dev_issuer, token, sqlite_replay, **case.config)
    exc = caught.value
    assert case.detail in exc.detail
    assert exc.description == case.description
    assert exc.error == "invalid_grant" and status_of(exc) == 400
    assert body_of(exc) == {"error": "invalid_grant", "error_description": case.description}
    if len(token) <= 16384:
        assert exc.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    else:
        assert exc.token_sha256 is None
    assert_token_absent(exc, token)


def test_refusals_record_the_unverified_issuer(dev_issuer: DevIssuer, sqlite_replay) -> None:
    long_iss = "https://evil.example/" + "a" * 500
    with pytest.raises(AttestationError) as caught:
        _verify(dev_issuer, dev_issuer.mint(gh(iss=long_iss), audience=AUDIENCE), sqlite_replay)
    assert caught.value.unverified_issuer.startswith("https://evil.example/aaa")
    assert len(caught.value.unverified_issuer or "") == 200

    with pytest.raises(AttestationError) as caught:
        _verify(dev_issuer, _payload_altered(dev_issuer), sqlite_replay)
    assert caught.value.unverified_issuer == dev_issuer.issuer

    with pytest.raises(AttestationError) as caught:   # refused for its header, iss still noted
        _verify(dev_issuer, dev_issuer.mint(gh(), audience=AUDIENCE, alg="none"), sqlite_replay)
    assert caught.value.unverified_issuer == dev_issuer.issuer

    with pytest.raises(AttestationError) as caught:
        _verify(dev_issuer, "garbage", sqlite_replay)
    assert caught.value.unverified_issuer is None


def test_no_refusal_message_contains_the_token(dev_issuer: DevIssuer, tmp_path) -> None:
    from broker.attestation import SQLiteReplayGuard
    replay = SQLiteReplayGuard(tmp_path / "r.sqlite3")
    leaks = []
    for case in REFUSALS:
        token = case.make_token(dev_issuer)
        try:
            _verify(dev_issuer, token, replay, **case.config)
        except AttestationError as exc:
            try:
                assert_token_absent(exc, token)
            except AssertionError:
                leaks.append(case.name)
    # And the replay refusal, which follows a fully valid token.
    token = valid(dev_issuer)
    _verify(dev_issuer, token, replay)
    with pytest.raises(AttestationError) as caught:
        _verify(dev_issuer, token, replay)
    assert_token_absent(caught.value, token)
    assert leaks == []


# -- acceptance --------------------------------------------------------------------------------

def test_github_actions_token_accepted(dev_issuer: DevIssuer, sqlite_replay) -> None:
    claims = gh()
    token = dev_issuer.mint(claims, audience=AUDIENCE)
    attestation = _verify(dev_issuer, token, sqlite_replay)
    assert attestation.issuer.name == "github"
    assert attestation.principal == GITHUB_PRINCIPAL
    assert attestation.run == {
        "id": claims["run_id"],
        "attempt": "1",
        "repository": "acme/payments",
        "workflow": "acme/payments/.github/workflows/deploy.yml@refs/heads/main",
        "sha": claims["sha"],
        "ref": "refs/heads/main",
        "actor": "octocat",
        "event": "push",
        "environment": "production",
    }
    assert attestation.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert attestation.expires_at == segments(token)[1]["exp"]
    assert attestation.claims["repository_owner"] == "acme"


def test_token_from_the_github_style_token_endpoint_accepted(dev_issuer: DevIssuer,
                                                             sqlite_replay) -> None:
    request = urllib.request.Request(
        dev_issuer.token_url + "&audience=" + AUDIENCE,
        headers={"Authorization": f"Bearer {dev_issuer.request_token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        token = json.load(response)["value"]
    attestation = _verify(dev_issuer, token, sqlite_replay)
    assert attestation.principal == GITHUB_PRINCIPAL


def test_run_skips_claims_the_token_lacks(dev_issuer: DevIssuer, sqlite_replay) -> None:
    attestation = _verify(dev_issuer, valid(dev_issuer, environment=None), sqlite_replay)
    assert "environment" not in attestation.run


def test_gitlab_ci_token_accepted(dev_issuer: DevIssuer, sqlite_replay) -> None:
    claims = DevIssuer.gitlab_claims()
    token = dev_issuer.mint(claims, audience=AUDIENCE)
    attestation = _verify(dev_issuer, token, sqlite_replay, preset="gitlab-ci")
    assert attestation.principal == (
        "gitlab:acme/payments:gitlab.com/acme/payments//.gitlab-ci.yml@refs/heads/main")
    assert attestation.run == {
        "id": claims["pipeline_id"], "job": claims["job_id"], "repository": "acme/payments",
        "sha": claims["sha"], "ref": "main", "actor": "alice", "event": "push",
        "environment": "production",
    }


def test_kubernetes_token_accepted(sqlite_replay) -> None:
    # Kubernetes clusters commonly sign with ES256 and put a list in `aud`.
    with DevIssuer(algorithm="ES256") as cluster:
        claims = DevIssuer.kubernetes_claims(pod_name="deployer-7c9f")
        token = cluster.mint(claims, audience=["https://kubernetes.default.svc", AUDIENCE],
                             omit=("jti",))
        attestation = _verify(cluster, token, sqlite_replay, preset="kubernetes",
                              allow_extra_audiences=True)
    assert attestation.principal == "k8s:payments:deployer"
    assert attestation.run == {
        "id": claims["kubernetes.io"]["pod"]["uid"], "pod": "deployer-7c9f",
        "namespace": "payments", "service_account": "deployer",
    }


def test_kubernetes_token_without_the_kubernetes_claims_refused(sqlite_replay) -> None:
    with DevIssuer(algorithm="ES256") as cluster:
        token = cluster.mint({"sub": "system:serviceaccount:x:y"}, audience=AUDIENCE)
        with pytest.raises(AttestationError) as caught:
            _verify(cluster, token, sqlite_replay, preset="kubernetes")
    assert caught.value.detail == "missing required claim kubernetes.io"


def test_token_without_kid_accepted_when_the_issuer_has_one_key(dev_issuer: DevIssuer,
                                                               sqlite_replay) -> None:
    token = dev_issuer.mint(gh(), audience=AUDIENCE, headers={"kid": None})
    assert "kid" not in segments(token)[0]
    assert _verify(dev_issuer, token, sqlite_replay).principal == GITHUB_PRINCIPAL


@pytest.mark.parametrize("make_token", [
    pytest.param(lambda dev: dev.mint(gh(), audience=AUDIENCE, now=_now() - 330, ttl=300),
                 id="expired 30 s ago, within the 60 s leeway"),
    pytest.param(lambda dev: valid(dev, iat=_now() + 30), id="iat 30 s ahead, within the leeway"),
    pytest.param(lambda dev: dev.mint(gh(), audience=AUDIENCE, omit=("nbf",)), id="no nbf claim"),
    pytest.param(lambda dev: dev.mint(gh(), audience=["https://github.com/acme", AUDIENCE]),
                 id="aud list containing the broker"),
    pytest.param(lambda dev: dev.mint(gh(), audience=AUDIENCE, now=_now() - 500, ttl=3600),
                 id="just under max_token_age"),
])
def test_edge_accepted(make_token, dev_issuer: DevIssuer, sqlite_replay) -> None:
    attestation = _verify(dev_issuer, make_token(dev_issuer), sqlite_replay, max_token_age=600,
                          allow_extra_audiences=True)
    assert attestation.principal == GITHUB_PRINCIPAL


def test_size_limit_is_16_kib(dev_issuer: DevIssuer, sqlite_replay) -> None:
    padding = (16384 - len(valid(dev_issuer, padding=""))) * 3 // 4
    while len(token := valid(dev_issuer, padding="x" * padding)) > 16384:
        padding -= 1
    assert 16380 < len(token) <= 16384
    assert _verify(dev_issuer, token, sqlite_replay).principal == GITHUB_PRINCIPAL

    while len(token := valid(dev_issuer, padding="x" * padding)) <= 16384:
        padding += 1
    with pytest.raises(AttestationError) as caught:
        _verify(dev_issuer, token, sqlite_replay)
    assert caught.value.detail == "subject_token larger than 16384 bytes"


def test_issuers_sharing_iss_are_chosen_by_audience(dev_issuer: DevIssuer, sqlite_replay) -> None:
    deploy = issuer_config(dev_issuer, name="gh-deploy", audience="broker-deploy")
    audit = issuer_config(dev_issuer, name="gh-audit", audience="broker-audit",
                          principal="audit:{repository}")
    ps = policy_set(deploy, audit)
    cache_ = JWKSCache(timeout=2.0)
    token = dev_issuer.mint(gh(), audience="broker-audit")
    attestation = verify_subject_token(token, policy_set=ps, jwks=cache_, replay=sqlite_replay)
    assert (attestation.issuer.name, attestation.principal) == ("gh-audit", "audit:acme/payments")
    with pytest.raises(AttestationError) as caught:
        verify_subject_token(dev_issuer.mint(gh(), audience="broker-other"), policy_set=ps,
                             jwks=cache_, replay=sqlite_replay)
    assert caught.value.detail == "audience mismatch"


def test_next_config_tried_when_the_first_refuses(dev_issuer: DevIssuer, sqlite_replay) -> None:
    strict = issuer_config(dev_issuer, name="a-strict",
                           required_claims=("sub", "deployment_approval"))
    plain = issuer_config(dev_issuer, name="b-plain")
    ps = policy_set(strict, plain)
    attestation = verify_subject_token(valid(dev_issuer), policy_set=ps,
                                       jwks=JWKSCache(timeout=2.0), replay=sqlite_replay)
    assert attestation.issuer.name == "b-plain"
    with pytest.raises(AttestationError) as caught:
        verify_subject_token(valid(dev_issuer, repository=None), policy_set=ps,
                             jwks=JWKSCache(timeout=2.0), replay=sqlite_replay)
    assert caught.value.detail == "missing required claim deployment_approval"  # the first's


def test_weak_rsa_key_refused(fresh_issuer: DevIssuer, sqlite_replay) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    weak = fresh_issuer.add_key(DevKey(kid="weak-1024", alg="RS256",
                                       private_key=rsa.generate_private_key(65537, 1024)))
    token = fresh_issuer.mint(gh(), audience=AUDIENCE, key=weak)
    with pytest.raises(AttestationError) as caught:
        _verify(fresh_issuer, token, sqlite_replay)
    assert caught.value.detail == "signing key rejected (too weak or unusable)"


# -- replay ------------------------------------------------------------------------------------

class RecordingGuard:
    """Wraps a real guard to show which key the verifier used (the store itself is real)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.keys: list[Any] = []

    def first_use(self, key: str, ttl_seconds: int) -> bool:
        self.keys.append((key, ttl_seconds))
        return self.inner.first_use(key, ttl_seconds)


def test_replayed_token_refused_by_jti(dev_issuer: DevIssuer, sqlite_replay) -> None:
    guard = RecordingGuard(sqlite_replay)
    token = valid(dev_issuer, jti="run-42-attempt-1")
    _verify(dev_issuer, token, guard)
    with pytest.raises(AttestationError) as caught:
        _verify(dev_issuer, token, guard)
    assert (caught.value.detail, caught.value.description) == ("token replayed", REPLAYED)
    assert guard.keys[0][0] == "github:jti:run-42-attempt-1"
    assert 300 <= guard.keys[0][1] <= 361      # exp - now + leeway
    # Another token reusing that jti is a replay too; a fresh jti is not.
    with pytest.raises(AttestationError):
        _verify(dev_issuer, valid(dev_issuer, jti="run-42-attempt-1"), guard)
    _verify(dev_issuer, valid(dev_issuer), guard)


def test_replayed_token_without_jti_refused_by_hash(dev_issuer: DevIssuer, sqlite_replay) -> None:
    guard = RecordingGuard(sqlite_replay)
    token = dev_issuer.mint(gh(), audience=AUDIENCE, omit=("jti",))
    attestation = _verify(dev_issuer, token, guard)
    with pytest.raises(AttestationError) as caught:
        _verify(dev_issuer, token, guard)
    assert caught.value.detail == "token replayed"
    assert guard.keys[0][0].startswith("github:claims:")           # the signed claims, not the text
    assert attestation.token_sha256 not in guard.keys[0][0]


def test_replay_refused_through_redis(dev_issuer: DevIssuer, redis_url: str,
                                      redis_prefix: str) -> None:
    guard = RedisReplayGuard(redis_url, prefix=redis_prefix)
    token = valid(dev_issuer)
    _verify(dev_issuer, token, guard)
    with pytest.raises(AttestationError) as caught:
        _verify(dev_issuer, token, guard)
    assert caught.value.detail == "token replayed"


def test_refused_token_is_not_recorded_as_used(dev_issuer: DevIssuer, sqlite_replay) -> None:
    guard = RecordingGuard(sqlite_replay)
    with pytest.raises(AttestationError):
        _verify(dev_issuer, _payload_altered(dev_issuer), guard)
    assert guard.keys == []


def test_attestation_is_immutable(dev_issuer: DevIssuer, sqlite_replay) -> None:
    attestation = _verify(dev_issuer, valid(dev_issuer), sqlite_replay)
    with pytest.raises(dataclasses.FrozenInstanceError):
        attestation.principal = "someone-else"


def test_same_token_presented_concurrently_is_accepted_once(dev_issuer: DevIssuer,
                                                            redis_url: str,
                                                            redis_prefix: str) -> None:
    import threading
    ps = policy_set(issuer_config(dev_issuer))
    cache_, guard = JWKSCache(timeout=2.0), RedisReplayGuard(redis_url, prefix=redis_prefix)
    token = valid(dev_issuer)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def present() -> None:
        barrier.wait()
        try:
            verify_subject_token(token, policy_set=ps, jwks=cache_, replay=guard)
            outcomes.append("accepted")
        except AttestationError as exc:
            outcomes.append(exc.detail)

    threads = [threading.Thread(target=present) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["accepted"] + ["token replayed"] * 7


def test_unreachable_replay_store_fails_closed(dev_issuer: DevIssuer) -> None:
    from broker.attestation import ReplayStoreUnavailable
    guard = RedisReplayGuard("redis://127.0.0.1:1/0", socket_timeout=0.5)
    with pytest.raises(ReplayStoreUnavailable) as caught:
        _verify(dev_issuer, valid(dev_issuer), guard)
    assert caught.value.error == "temporarily_unavailable"
