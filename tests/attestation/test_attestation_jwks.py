"""JWKSCache against a real dev issuer over HTTP: caching, rotation, bounded refetch, URL rules,
unreachable and broken issuers, local JWKS files, thread safety."""
from __future__ import annotations

import json
import os
import secrets
import threading
import time
from typing import Any

import pytest

from broker.attestation import AttestationError, JWKSCache, verify_subject_token
from broker.attestation.jwks import is_allowed_fetch_url, key_fits_alg
from broker.devtools.dev_issuer import DevIssuer, DevKey
from broker.errors import BackendUnavailable
from broker.http.errors import body_of, status_of
from tests.support.attestation import AUDIENCE, issuer_config, policy_set


def verify(dev: DevIssuer, token: str, cache: JWKSCache, replay, **config: Any):
    ps = policy_set(issuer_config(dev, **config))
    return verify_subject_token(token, policy_set=ps, jwks=cache, replay=replay)


def token(dev: DevIssuer, **mint: Any) -> str:
    return dev.mint(dev.github_claims(), audience=AUDIENCE, **mint)


# -- caching and rotation ----------------------------------------------------------------------

def test_keys_are_fetched_once_and_cached(fresh_issuer: DevIssuer, sqlite_replay) -> None:
    cache = JWKSCache()
    for _ in range(5):
        verify(fresh_issuer, token(fresh_issuer), cache, sqlite_replay)
    assert fresh_issuer.request_counts == {"/.well-known/openid-configuration": 1,
                                           "/.well-known/jwks": 1}
    assert fresh_issuer.jwks_requests == 2


def test_keys_are_refetched_after_cache_ttl(fresh_issuer: DevIssuer, sqlite_replay) -> None:
    cache = JWKSCache(cache_ttl=0.2)
    verify(fresh_issuer, token(fresh_issuer), cache, sqlite_replay)
    verify(fresh_issuer, token(fresh_issuer), cache, sqlite_replay)
    assert fresh_issuer.jwks_requests == 2
    time.sleep(0.25)
    verify(fresh_issuer, token(fresh_issuer), cache, sqlite_replay)
    assert fresh_issuer.jwks_requests == 4       # discovery again, then the JWKS


def test_rotated_key_is_picked_up_by_its_new_kid(fresh_issuer: DevIssuer, sqlite_replay) -> None:
    cache = JWKSCache()                           # default 10 s refetch interval
    old_token = token(fresh_issuer)
    verify(fresh_issuer, token(fresh_issuer), cache, sqlite_replay)
    fresh_issuer.rotate()
    new_token = token(fresh_issuer)
    verify(fresh_issuer, new_token, cache, sqlite_replay)
    assert fresh_issuer.request_counts["/.well-known/jwks"] == 2
    assert fresh_issuer.request_counts["/.well-known/openid-configuration"] == 1
    verify(fresh_issuer, old_token, cache, sqlite_replay)   # the old key is still published
    assert fresh_issuer.jwks_requests == 3


def test_dropped_key_is_refused_after_refetch(fresh_issuer: DevIssuer, sqlite_replay) -> None:
    cache = JWKSCache(min_refetch_interval=0)
    old_token = token(fresh_issuer)
    verify(fresh_issuer, token(fresh_issuer), cache, sqlite_replay)
    fresh_issuer.rotate(drop_old=True)
    verify(fresh_issuer, token(fresh_issuer), cache, sqlite_replay)
    with pytest.raises(AttestationError) as caught:
        verify(fresh_issuer, old_token, cache, sqlite_replay)
    assert caught.value.detail.startswith("unknown kid ")


def test_random_kids_cannot_make_the_cache_hammer_the_issuer(fresh_issuer: DevIssuer,
                                                            sqlite_replay) -> None:
    cache = JWKSCache(min_refetch_interval=10)
    verify(fresh_issuer, token(fresh_issuer), cache, sqlite_replay)
    assert fresh_issuer.jwks_requests == 2
    for _ in range(50):
        with pytest.raises(AttestationError) as caught:
            verify(fresh_issuer, token(fresh_issuer, headers={"kid": secrets.token_hex(8)}),
                   cache, sqlite_replay)
        assert caught.value.detail.startswith("unknown kid ")
    assert fresh_issuer.jwks_requests == 3       # one refetch for fifty unknown kids


def test_unknown_kid_refetch_allowed_again_after_the_interval(fresh_issuer: DevIssuer) -> None:
    cache = JWKSCache(min_refetch_interval=0.2)
    config = issuer_config(fresh_issuer)
    cache.signing_key(config, fresh_issuer.kid, "RS256")
    for _ in range(3):
        with pytest.raises(AttestationError):
            cache.signing_key(config, "nope", "RS256")
    assert fresh_issuer.jwks_requests == 3
    time.sleep(0.25)
    with pytest.raises(AttestationError):
        cache.signing_key(config, "nope", "RS256")
    assert fresh_issuer.jwks_requests == 4


def test_concurrent_first_use_fetches_once(fresh_issuer: DevIssuer) -> None:
    cache = JWKSCache()
    config = issuer_config(fresh_issuer)
    start = threading.Barrier(16)
    keys, errors = [], []

    def worker() -> None:
        start.wait()
        try:
            keys.append(cache.signing_key(config, fresh_issuer.kid, "RS256"))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(keys) == 16
    assert fresh_issuer.jwks_requests == 2


def test_token_without_kid_refused_when_two_keys_are_published(fresh_issuer: DevIssuer,
                                                               sqlite_replay) -> None:
    fresh_issuer.rotate()
    with pytest.raises(AttestationError) as caught:
        verify(fresh_issuer, token(fresh_issuer, headers={"kid": None}), JWKSCache(),
               sqlite_replay)
    assert caught.value.detail == "token has no kid and issuer github has 2 keys for RS256"


def test_token_without_kid_picks_the_only_key_for_its_alg(sqlite_replay) -> None:
    with DevIssuer() as dev:
        dev.rotate(algorithm="ES256")             # one RSA and one EC key published
        attestation = verify(dev, token(dev, headers={"kid": None}), JWKSCache(), sqlite_replay,
                             algorithms=("RS256", "ES256"))
    assert attestation.claims["repository"] == "acme/payments"


def test_signing_key_bound_to_the_token_alg(fresh_issuer: DevIssuer) -> None:
    key = JWKSCache().signing_key(issuer_config(fresh_issuer), fresh_issuer.kid, "RS256")
    assert key.algorithm_name == "RS256" and key.key_id == fresh_issuer.kid


def test_signing_key_refuses_symmetric_alg(fresh_issuer: DevIssuer) -> None:
    with pytest.raises(AttestationError) as caught:
        JWKSCache().signing_key(issuer_config(fresh_issuer), fresh_issuer.kid, "HS256")
    assert caught.value.detail == "alg HS256 not allowed"
    assert fresh_issuer.jwks_requests == 0


# -- where keys may come from ------------------------------------------------------------------

@pytest.mark.parametrize("url, allowed", [
    ("https://token.actions.githubusercontent.com/.well-known/jwks", True),
    ("https://gitlab.com/oauth/discovery/keys", True),
    ("http://127.0.0.1:8080/jwks", True),
    ("http://127.42.0.9/jwks", True),
    ("http://[::1]:8080/jwks", True),
    ("http://localhost:8080/jwks", True),
    ("http://LOCALHOST/jwks", True),
    ("http://token.actions.githubusercontent.com/.well-known/jwks", False),
    ("http://10.0.0.5/jwks", False),
    ("http://169.254.169.254/latest/meta-data", False),
    ("http://localhost.evil.example/jwks", False),
    ("http://127.0.0.1.nip.io/jwks", False),
    ("http://[::ffff:10.0.0.1]/jwks", False),
    ("file:///etc/passwd", False),
    ("ftp://127.0.0.1/jwks", False),
    ("data:application/json,{}", False),
    ("https:///no-host", False),
    ("http://127.0.0.1:notaport/jwks", False),
    ("jwks.json", False),
])
def test_fetch_url_rules(url: str, allowed: bool) -> None:
    assert is_allowed_fetch_url(url) is allowed


def test_plain_http_jwks_uri_refused_for_a_non_loopback_host(fresh_issuer: DevIssuer) -> None:
    config = issuer_config(fresh_issuer, jwks_uri="http://jwks.example.com/keys")
    with pytest.raises(BackendUnavailable) as caught:
        JWKSCache().signing_key(config, fresh_issuer.kid, "RS256")
    assert caught.value.detail == ("JWKS of issuer github: JWKS URL refused: https required "
                                   "(plain http only for loopback hosts)")
    assert caught.value.error == "temporarily_unavailable" and status_of(caught.value) == 503


def test_discovery_naming_a_plain_http_jwks_uri_refused(fresh_issuer: DevIssuer) -> None:
    fresh_issuer.discovery_overrides = {"jwks_uri": "http://203.0.113.7/jwks"}
    with pytest.raises(BackendUnavailable) as caught:
        JWKSCache().signing_key(issuer_config(fresh_issuer), fresh_issuer.kid, "RS256")
    assert "JWKS URL refused: https required" in caught.value.detail
    assert fresh_issuer.request_counts["/.well-known/jwks"] == 0


def test_plain_http_discovery_refused_for_a_non_loopback_issuer() -> None:
    config = issuer_config("http://issuer.example.com")
    with pytest.raises(BackendUnavailable) as caught:
        JWKSCache().signing_key(config, "k1", "RS256")
    assert "discovery document URL refused: https required" in caught.value.detail


def test_discovery_naming_another_issuer_refused(fresh_issuer: DevIssuer) -> None:
    fresh_issuer.discovery_overrides = {"issuer": "https://token.actions.githubusercontent.com"}
    with pytest.raises(BackendUnavailable) as caught:
        JWKSCache().signing_key(issuer_config(fresh_issuer), fresh_issuer.kid, "RS256")
    assert caught.value.detail.endswith("discovery document names another issuer")


def test_explicit_jwks_uri_skips_discovery(fresh_issuer: DevIssuer) -> None:
    config = issuer_config(fresh_issuer, jwks_uri=fresh_issuer.jwks_uri)
    JWKSCache().signing_key(config, fresh_issuer.kid, "RS256")
    assert fresh_issuer.request_counts == {"/.well-known/jwks": 1}


def test_jwks_file_is_reread_when_it_changes(fresh_issuer: DevIssuer, tmp_path,
                                             sqlite_replay) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(fresh_issuer.jwks()))
    cache = JWKSCache()
    old_token = token(fresh_issuer)
    verify(fresh_issuer, token(fresh_issuer), cache, sqlite_replay, jwks_file=str(path))

    fresh_issuer.rotate(drop_old=True)
    path.write_text(json.dumps(fresh_issuer.jwks()))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    verify(fresh_issuer, token(fresh_issuer), cache, sqlite_replay, jwks_file=str(path))
    with pytest.raises(AttestationError):
        verify(fresh_issuer, old_token, cache, sqlite_replay, jwks_file=str(path))
    assert fresh_issuer.jwks_requests == 0        # never asked the network


def test_missing_jwks_file_is_unavailable(fresh_issuer: DevIssuer, tmp_path) -> None:
    config = issuer_config(fresh_issuer, jwks_file=str(tmp_path / "absent.json"))
    with pytest.raises(BackendUnavailable) as caught:
        JWKSCache().signing_key(config, fresh_issuer.kid, "RS256")
    assert caught.value.detail == ("JWKS of issuer github: jwks_file unreadable "
                                   "(FileNotFoundError)")


# -- unreachable or broken issuers -------------------------------------------------------------

def test_unreachable_issuer_is_temporarily_unavailable(sqlite_replay) -> None:
    with DevIssuer() as dev:
        a_token = token(dev)
        config = issuer_config(dev)
    # The issuer has stopped: nothing listens on its port any more.
    ps = policy_set(config)
    with pytest.raises(BackendUnavailable) as caught:
        verify_subject_token(a_token, policy_set=ps, jwks=JWKSCache(timeout=2.0),
                             replay=sqlite_replay)
    assert caught.value.detail.startswith("JWKS of issuer github: discovery document at "
                                          "127.0.0.1 unreachable")
    assert caught.value.description == ("the attestation issuer's signing keys are "
                                        "temporarily unavailable")
    for text in (str(caught.value), caught.value.detail, json.dumps(body_of(caught.value))):
        assert a_token not in text
        assert a_token.split(".")[1] not in text


def test_failed_fetch_is_not_retried_before_the_refetch_interval(fresh_issuer: DevIssuer) -> None:
    fresh_issuer.jwks_override = b"<html>maintenance</html>"
    cache = JWKSCache(min_refetch_interval=0.3)
    config = issuer_config(fresh_issuer)
    with pytest.raises(BackendUnavailable) as first:
        cache.signing_key(config, fresh_issuer.kid, "RS256")
    assert first.value.detail == "JWKS of issuer github: JWKS is not valid JSON"
    with pytest.raises(BackendUnavailable) as second:
        cache.signing_key(config, fresh_issuer.kid, "RS256")
    assert second.value.detail.endswith("(not retried yet)")
    assert fresh_issuer.jwks_requests == 2
    fresh_issuer.jwks_override = None
    time.sleep(0.35)
    assert cache.signing_key(config, fresh_issuer.kid, "RS256").key_id == fresh_issuer.kid


@pytest.mark.parametrize("served, reason", [
    pytest.param(b"not json", "JWKS is not valid JSON", id="not JSON"),
    pytest.param(["keys"], "JWKS has no 'keys' list", id="a JSON array"),
    pytest.param({"keys": {"kty": "RSA"}}, "JWKS has no 'keys' list", id="keys not a list"),
    pytest.param({"keys": []}, "JWKS holds no usable signing key", id="empty key list"),
    pytest.param({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}]},
                 "JWKS holds no usable signing key", id="only a symmetric key"),
    pytest.param({"keys": [{"kty": "RSA", "kid": "broken", "n": "AQAB"}]},
                 "JWKS holds no usable signing key", id="only a broken RSA key"),
    pytest.param(b" " * (1024 * 1024 + 1), "JWKS larger than 1048576 bytes", id="over 1 MiB"),
])
def test_broken_jwks_is_temporarily_unavailable(fresh_issuer: DevIssuer, served: Any,
                                                reason: str) -> None:
    fresh_issuer.jwks_override = served
    with pytest.raises(BackendUnavailable) as caught:
        JWKSCache().signing_key(issuer_config(fresh_issuer), fresh_issuer.kid, "RS256")
    assert caught.value.detail == f"JWKS of issuer github: {reason}"


def test_http_error_is_temporarily_unavailable(fresh_issuer: DevIssuer) -> None:
    fresh_issuer.discovery_overrides = {"jwks_uri": fresh_issuer.issuer + "/no-such-path"}
    with pytest.raises(BackendUnavailable) as caught:
        JWKSCache().signing_key(issuer_config(fresh_issuer), fresh_issuer.kid, "RS256")
    assert caught.value.detail == "JWKS of issuer github: JWKS answered HTTP 404"


def test_unusable_members_do_not_spoil_the_set(fresh_issuer: DevIssuer) -> None:
    good = fresh_issuer.jwks()["keys"]
    fresh_issuer.jwks_override = {"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
        "not an object",
        *good,
    ]}
    cache = JWKSCache()
    assert cache.signing_key(issuer_config(fresh_issuer), fresh_issuer.kid, "RS256").key_id
    with pytest.raises(AttestationError):
        cache.signing_key(issuer_config(fresh_issuer), "hmac", "RS256")


# -- which key may verify which alg ------------------------------------------------------------

RSA_JWK = DevKey.generate("RS256", kid="r").public_jwk()
EC_JWK = DevKey.generate("ES256", kid="e").public_jwk()


@pytest.mark.parametrize("jwk, alg, fits", [
    pytest.param(RSA_JWK, "RS256", True, id="RSA key, RS256"),
    pytest.param({**RSA_JWK, "alg": None}, "RS256", False, id="RSA key with a null alg"),
    pytest.param({k: v for k, v in RSA_JWK.items() if k != "alg"}, "PS256", True,
                 id="RSA key without alg, PS256"),
    pytest.param(RSA_JWK, "PS256", False, id="RSA key marked RS256, PS256 token"),
    pytest.param(RSA_JWK, "ES256", False, id="RSA key, ES256 token"),
    pytest.param(EC_JWK, "ES256", True, id="P-256 key, ES256"),
    pytest.param(EC_JWK, "ES384", False, id="P-256 key, ES384 token"),
    pytest.param(EC_JWK, "RS256", False, id="EC key, RS256 token"),
    pytest.param({**RSA_JWK, "use": "enc"}, "RS256", False, id="encryption key"),
    pytest.param({**RSA_JWK, "key_ops": ["encrypt"]}, "RS256", False, id="key_ops without verify"),
    pytest.param({**RSA_JWK, "key_ops": ["verify"]}, "RS256", True, id="key_ops verify"),
    pytest.param({"kty": "oct", "k": "c2VjcmV0"}, "HS256", False, id="symmetric key, HS256"),
    pytest.param({"kty": "oct", "k": "c2VjcmV0"}, "RS256", False, id="symmetric key, RS256"),
])
def test_key_fits_alg(jwk: dict[str, Any], alg: str, fits: bool) -> None:
    assert key_fits_alg(jwk, alg) is fits
