"""Attestations: the OpenID Connect audience rule, and single use keyed on what the signature
covers (re-signed, re-encoded and ECDSA-malleated copies are replays, with or without jti)."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from broker.attestation import AttestationError, JWKSCache, SQLiteReplayGuard
from broker.attestation.verify import verify_subject_token
from broker.devtools.dev_issuer import DevIssuer
from broker.policy import load_policy_dir
from tests.support.attestation import AUDIENCE, issuer_config, policy_set

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture
def replay(tmp_path):
    guard = SQLiteReplayGuard(tmp_path / "replay.sqlite3")
    yield guard
    guard.close()


@pytest.fixture(scope="module")
def es256_issuer():
    with DevIssuer(algorithm="ES256") as dev:
        yield dev


def verify(dev, token, replay, **config):
    ps = policy_set(issuer_config(dev, algorithms=(dev.key.alg,), **config))
    return verify_subject_token(token, policy_set=ps, jwks=JWKSCache(timeout=2.0), replay=replay)


# -- OIDC Core §3.1.3.7: no audience besides the broker's, unless allowed ---------------------

def test_an_attestation_listing_other_audiences_is_refused(es256_issuer, replay):
    token = es256_issuer.mint(DevIssuer.github_claims(),
                              audience=["https://kubernetes.default.svc", AUDIENCE])
    with pytest.raises(AttestationError) as caught:
        verify(es256_issuer, token, replay)
    assert "other audience" in caught.value.detail


def test_the_issuer_document_may_allow_extra_audiences(es256_issuer, replay):
    token = es256_issuer.mint(DevIssuer.github_claims(),
                              audience=["https://kubernetes.default.svc", AUDIENCE])
    assert verify(es256_issuer, token, replay, allow_extra_audiences=True).principal


def test_a_list_of_only_the_broker_is_fine(es256_issuer, replay):
    token = es256_issuer.mint(DevIssuer.github_claims(), audience=[AUDIENCE])
    assert verify(es256_issuer, token, replay).principal


def _issuer_doc(tmp_path, extra: str) -> Path:
    folder = tmp_path / "p"
    folder.mkdir(exist_ok=True)
    (folder / "issuer.yaml").write_text(
        "kind: issuer\nname: k8s\npreset: kubernetes\nissuer: https://k8s.example\n"
        f"audience: nhi-broker\n{extra}")
    return folder


def test_allow_extra_audiences_is_an_issuer_key_defaulting_to_false(tmp_path):
    assert load_policy_dir(_issuer_doc(tmp_path, "")).issuers["k8s"].allow_extra_audiences is False
    loaded = load_policy_dir(_issuer_doc(tmp_path, "allow_extra_audiences: true\n"))
    assert loaded.issuers["k8s"].allow_extra_audiences is True


def test_allow_extra_audiences_must_be_a_boolean(tmp_path):
    from broker.policy import PolicyError

    with pytest.raises(PolicyError) as caught:
        load_policy_dir(_issuer_doc(tmp_path, "allow_extra_audiences: \"yes\"\n"))
    assert "allow_extra_audiences must be true or false" in str(caught.value)


# -- single use: what the signature covers ---------------------------------------------------

def _malleate(token: str) -> str:
    """ECDSA: (r, s) and (r, n - s) are both valid signatures of the same signing input."""
    head, payload, signature = token.split(".")
    raw = b64url_decode(signature)
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    flipped = r.to_bytes(32, "big") + (P256_ORDER - s).to_bytes(32, "big")
    return f"{head}.{payload}.{b64url(flipped)}"


def _resign(dev: DevIssuer, token: str, *, reencode: bool = False) -> str:
    """The same header and claims signed again by the issuer's key (ECDSA picks a fresh nonce);
    with ``reencode`` the claims are serialised differently (member order, spacing)."""
    head, payload, _ = token.split(".")
    if reencode:
        claims = json.loads(b64url_decode(payload))
        payload = b64url(json.dumps(dict(reversed(list(claims.items()))), indent=1).encode())
    signing_input = f"{head}.{payload}".encode()
    algorithm = jwt.get_algorithm_by_name(dev.key.alg)
    signature = algorithm.sign(signing_input, algorithm.prepare_key(dev.key.private_key))
    return f"{head}.{payload}.{b64url(signature)}"


@pytest.mark.parametrize("with_jti", [True, False], ids=["with jti", "without jti"])
@pytest.mark.parametrize("copy", ["malleated (r, n-s)", "re-signed", "re-encoded and re-signed"])
def test_copies_of_a_used_attestation_are_replays(es256_issuer, replay, with_jti, copy):
    token = es256_issuer.mint(DevIssuer.github_claims(), audience=AUDIENCE,
                              omit=() if with_jti else ("jti",))
    if copy == "malleated (r, n-s)":
        other = _malleate(token)
        r1, s1 = decode_dss_signature(_der(token))
        r2, s2 = decode_dss_signature(_der(other))
        assert r1 == r2 and s1 + s2 == P256_ORDER
    else:
        other = _resign(es256_issuer, token, reencode=copy.startswith("re-encoded"))
    assert other != token
    probe = SQLiteReplayGuard(replay.path + ".probe")      # the copy is itself a valid token
    assert verify(es256_issuer, other, probe).principal
    probe.close()
    assert verify(es256_issuer, token, replay).principal
    with pytest.raises(AttestationError) as caught:
        verify(es256_issuer, other, replay)
    assert caught.value.detail == "token replayed"


def _der(token: str) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    raw = b64url_decode(token.split(".")[2])
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def test_distinct_attestations_without_jti_are_not_replays(es256_issuer, replay):
    first = es256_issuer.mint(DevIssuer.github_claims(), audience=AUDIENCE, omit=("jti",))
    second = es256_issuer.mint(DevIssuer.github_claims(), audience=AUDIENCE, omit=("jti",))
    assert verify(es256_issuer, first, replay).principal
    assert verify(es256_issuer, second, replay).principal
