"""Signing keys in OpenBao Transit: tokens signed by ``transit/sign``, verified with PyJWT
against the broker's JWKS; rotation; the broker never holds a private key."""
from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import time

import jwt
import pytest
import requests

from tests.support.oauth import AUDIENCE, AUDITOR, basic
from tests.support.server import REPO, running_broker
from tests.support.vault import token_form


@pytest.fixture
def transit_key(bao):
    def make(key_type: str = "ecdsa-p256") -> str:
        name = f"broker-{key_type}-{secrets.token_hex(3)}"
        bao.client().secrets.transit.create_key(name=name, key_type=key_type)
        return name
    return make


def transit_app(make_app, bao, key: str):
    return make_app(SIGNER=f"vault-transit:{key}", VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.root_token)


def exchange(client, dev_issuer) -> dict:
    response = client.post("/token", data=token_form(dev_issuer.mint_github(audience=AUDIENCE), "reports-api"))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def verify_with_jwks(token: str, jwks: dict, issuer: str) -> dict:
    header = jwt.get_unverified_header(token)
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    key = jwt.PyJWK(jwk)
    return jwt.decode(token, key.key, algorithms=[jwk["alg"]], issuer=issuer,
                      options={"require": ["iss", "sub", "exp", "iat", "jti"], "verify_aud": False})


@pytest.mark.parametrize("key_type, alg, kty", [("ecdsa-p256", "ES256", "EC"), ("ed25519", "EdDSA", "OKP")],
                         ids=["ES256 on P-256 (jws marshaling)", "EdDSA on Ed25519"])
def test_tokens_are_signed_by_transit_and_verify_against_the_jwks(make_app, bao, vault_env, dev_issuer,
                                                                  transit_key, key_type, alg, kty):
    key = transit_key(key_type)
    app = transit_app(make_app, bao, key)
    client = app.test_client()
    body = exchange(client, dev_issuer)
    header = jwt.get_unverified_header(body["access_token"])
    assert header == {"alg": alg, "kid": f"{key}-v1", "typ": "at+jwt"}
    jwks = client.get("/.well-known/jwks.json").get_json()
    assert [(k["kid"], k["kty"], k["alg"]) for k in jwks["keys"]] == [(f"{key}-v1", kty, alg)]
    assert all("d" not in k for k in jwks["keys"])
    claims = verify_with_jwks(body["access_token"], jwks, "http://broker.test")
    assert claims["jti"] == body["credential_id"]
    # Transit's own verification agrees (the signature is what Vault made).
    signing_input, _, signature = body["access_token"].rpartition(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    encoded = (base64.urlsafe_b64encode(raw).rstrip(b"=").decode() if alg == "ES256"
               else base64.b64encode(raw).decode())
    verified = bao.client().secrets.transit.verify_signed_data(
        name=key, hash_input=base64.b64encode(signing_input.encode()).decode(),
        signature=f"vault:v1:{encoded}", hash_algorithm="sha2-256" if alg == "ES256" else None,
        marshaling_algorithm="jws" if alg == "ES256" else None)
    assert verified["data"]["valid"] is True
    # The broker verifies its own tokens locally (introspection).
    introspected = client.post("/introspect", data={"token": body["access_token"]}, headers=basic(*AUDITOR))
    assert introspected.get_json()["active"] is True


def test_the_broker_holds_no_private_key(make_app, bao, vault_env, dev_issuer, transit_key, tmp_path):
    key = transit_key()
    app = transit_app(make_app, bao, key)
    exchange(app.test_client(), dev_issuer)
    assert not (tmp_path / "state" / "keys").exists()                   # no file keyring made
    info = bao.client().secrets.transit.read_key(name=key)["data"]
    assert info["exportable"] is False


def test_rotation_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_version(
        bao, vault_env, dev_issuer, transit_key, policy_dir, tmp_path):
    key = transit_key()
    env = {"BROKER_POLICY_DIR": str(policy_dir), "BROKER_STATE_DIR": str(tmp_path / "state"),
           "BROKER_SIGNER": f"vault-transit:{key}", "BROKER_VAULT_ADDR": bao.addr,
           "BROKER_VAULT_ROLE_ID": vault_env.role_id,              # AppRole from the environment
           "BROKER_VAULT_SECRET_ID_FILE": str(vault_env.secret_id_file),
           "BROKER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}", "BROKER_REAPER_INTERVAL": "0",
           "BROKER_KEY_ACTIVATION_DELAY": "0"}    # the delay itself: test_vault_transit_activation.py
    with running_broker(env) as base:
        def token() -> str:
            response = requests.post(f"{base}/token", data=token_form(
                dev_issuer.mint_github(audience=AUDIENCE), "reports-api"), timeout=10)
            assert response.status_code == 200, response.text
            return response.json()["access_token"]

        old = token()
        jwk_client = jwt.PyJWKClient(f"{base}/.well-known/jwks.json", cache_keys=False, cache_jwk_set=False)
        assert jwt.get_unverified_header(old)["kid"] == f"{key}-v1"

        cli_env = {**os.environ, **env, "BROKER_ISSUER": base}
        cli_env.pop("BROKER_VAULT_TOKEN", None)
        rotated = subprocess.run([sys.executable, "-m", "broker.cli", "keys", "rotate"], env=cli_env,
                                 cwd=REPO, capture_output=True, text=True, timeout=60)
        assert rotated.returncode == 0, rotated.stderr
        assert f"{key}-v2" in rotated.stdout
        assert bao.client().secrets.transit.read_key(name=key)["data"]["latest_version"] == 2

        listed = subprocess.run([sys.executable, "-m", "broker.cli", "keys", "list"], env=cli_env,
                                cwd=REPO, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and f"{key}-v1" in listed.stdout and f"{key}-v2" in listed.stdout

        deadline = time.monotonic() + 20                  # brokers re-read the key every 5 s
        new = token()
        while jwt.get_unverified_header(new)["kid"] != f"{key}-v2":
            assert time.monotonic() < deadline, "the broker did not pick up the rotation"
            time.sleep(0.5)
            new = token()
        kids = {k["kid"] for k in requests.get(f"{base}/.well-known/jwks.json", timeout=5).json()["keys"]}
        assert kids == {f"{key}-v1", f"{key}-v2"}
        for t in (old, new):
            signing_key = jwk_client.get_signing_key_from_jwt(t)
            claims = jwt.decode(t, signing_key.key, algorithms=["ES256"], issuer=base,
                                options={"verify_aud": False})
            assert claims["iss"] == base
        # The broker still introspects the old token as active.
        introspected = requests.post(f"{base}/introspect", data={"token": old},
                                     headers=basic(*AUDITOR), timeout=5).json()
        assert introspected["active"] is True


def test_a_sealed_transit_refuses_cleanly_and_keeps_serving_the_jwks(make_app, bao, vault_env, dev_issuer,
                                                                     transit_key):
    from tests.support.vault import sealed

    key = transit_key()
    app = transit_app(make_app, bao, key)
    client = app.test_client()
    exchange(client, dev_issuer)
    ledger = app.extensions["broker"].ledger
    with sealed(bao):
        response = client.post("/token", data=token_form(dev_issuer.mint_github(audience=AUDIENCE),
                                                         "reports-api"))
        assert response.status_code == 503
        assert response.get_json()["error"] == "temporarily_unavailable"
        assert client.get("/.well-known/jwks.json").status_code == 200
    assert app.extensions["broker"].outages.flush()
    events = list(ledger.iter_events())
    assert [e.type for e in events] == ["mint", "outage"]   # the signer's outage starts
    assert events[-1].details["cause"] == "signer"
    assert "sealed" in events[-1].details["reason"]
    assert len(ledger.find_credentials(limit=10)) == 1


def test_open_signer_refuses_a_missing_or_unsuitable_key(bao, vault_env, tmp_path):
    from broker.keys import open_signer

    bao.client().secrets.transit.create_key(name="aes-key", key_type="aes256-gcm96")
    config = {"VAULT_ADDR": bao.addr, "VAULT_TOKEN": bao.root_token}
    for spec, message in (("vault-transit:no-such-key", "cannot use transit key"),
                          ("vault-transit:aes-key", "ecdsa-p256 or ed25519"),
                          ("vault-transit:", "needs a Transit key name")):
        with pytest.raises(ValueError, match=message) as info:
            open_signer(spec, state_dir=str(tmp_path), issuer="http://b", retention=60, config=config)
        assert bao.root_token not in str(info.value)
    with pytest.raises(ValueError, match="BROKER_VAULT_ADDR"):
        open_signer("vault-transit:k", state_dir=str(tmp_path), issuer="http://b", retention=60, config={})
