"""Transit keys are published before they sign (broker/keys/transit.py, real OpenBao): after a
rotation the new version is in the JWKS at once and signs only after the activation delay."""
from __future__ import annotations

import secrets
import time

import jwt

CLAIMS = {"iss": "http://broker.test", "sub": "s", "jti": "j", "iat": 1, "exp": 2**31}


def test_a_rotated_transit_key_is_published_first_and_signs_after_the_delay(make_app, bao,
                                                                           vault_env):
    name = f"broker-activation-{secrets.token_hex(3)}"
    bao.client().secrets.transit.create_key(name=name, key_type="ecdsa-p256")
    app = make_app(SIGNER=f"vault-transit:{name}", VAULT_ADDR=bao.addr,
                   VAULT_TOKEN=bao.root_token, KEY_ACTIVATION_DELAY=4)
    signer = app.extensions["broker"].signer
    assert jwt.get_unverified_header(signer.sign(CLAIMS))["kid"] == f"{name}-v1"   # at once
    new = signer.rotate()
    assert new == f"{name}-v2"
    rotated_at = time.monotonic()
    jwks = app.test_client().get("/.well-known/jwks.json").get_json()
    assert {f"{name}-v1", f"{name}-v2"} <= {k["kid"] for k in jwks["keys"]}
    while time.monotonic() - rotated_at < 2.5:
        assert jwt.get_unverified_header(signer.sign(CLAIMS))["kid"] == f"{name}-v1"
        time.sleep(0.3)
    deadline = time.monotonic() + 15           # Transit's creation time has 1 s granularity
    while jwt.get_unverified_header(signer.sign(CLAIMS))["kid"] != f"{name}-v2":
        assert time.monotonic() < deadline, "the new version never started signing"
        time.sleep(0.3)
    assert time.monotonic() - rotated_at >= 3
    listed = {k["kid"]: k for k in signer.describe()}
    assert listed[f"{name}-v2"]["activates_at"] >= listed[f"{name}-v2"]["created_at"] + 4
    assert listed[f"{name}-v1"]["retired_at"] == listed[f"{name}-v2"]["activates_at"]
