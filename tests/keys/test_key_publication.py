"""Keys are published before they sign: after `broker keys rotate` the new key is in the JWKS
at least the activation delay (>= the JWKS cache lifetime) before any token carries its kid."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import jwt

from broker.keys import JWKS_MAX_AGE, KEY_ACTIVATION_DELAY
from broker.keys.file import FileSigner
from tests.support.oauth import AUDIENCE, exchange_form
from tests.support.server import REPO
from tests.support.standards import app, client, ledger, make_app, policy_dir  # noqa: F401 (fixtures)

CLAIMS = {"iss": "https://broker.test", "sub": "s", "jti": "j", "iat": 1, "exp": 2**31}


def test_the_default_delay_outlasts_the_jwks_cache(client):
    assert KEY_ACTIVATION_DELAY >= JWKS_MAX_AGE
    cache = client.get("/.well-known/jwks.json").headers["Cache-Control"]
    assert cache == f"public, max-age={JWKS_MAX_AGE}"


def test_a_rotated_file_key_is_published_first_and_signs_after_the_delay(tmp_path):
    signer = FileSigner(str(tmp_path), issuer="https://broker.test", activation_delay=2)
    old = jwt.get_unverified_header(signer.sign(CLAIMS))["kid"]      # the first key: at once
    new = signer.rotate()
    rotated_at = time.monotonic()
    # it activates at ceil(rotation time + 2 s): at the latest this whole second
    activates_by = math.ceil(time.time() + 2)
    assert {old, new} <= {k["kid"] for k in signer.jwks()["keys"]}
    while time.monotonic() - rotated_at < 1.5:
        assert jwt.get_unverified_header(signer.sign(CLAIMS))["kid"] == old
        assert signer.active_kid == old
        time.sleep(0.2)
    time.sleep(max(0.0, activates_by - time.time()) + 0.05)
    assert jwt.get_unverified_header(signer.sign(CLAIMS))["kid"] == new
    # the old key stays published (its retention counts from when it stopped signing)
    assert old in {k["kid"] for k in signer.jwks()["keys"]}


def test_broker_keys_rotate_never_signs_with_an_unpublished_key(make_app, tmp_path, dev_issuer):
    """A running broker and `broker keys rotate` in another process: every token's kid was in
    the JWKS the broker served at least the delay before the token was minted."""
    delay = 3
    app = make_app(KEY_ACTIVATION_DELAY=delay)
    client = app.test_client()
    first_seen: dict[str, float] = {}

    def look() -> None:
        for key in client.get("/.well-known/jwks.json").get_json()["keys"]:
            first_seen.setdefault(key["kid"], time.monotonic())

    look()
    env = {**os.environ, "BROKER_STATE_DIR": str(tmp_path / "state"),
           "BROKER_KEY_ACTIVATION_DELAY": str(delay)}
    rotated = subprocess.run([sys.executable, "-m", "broker.cli", "keys", "rotate"], env=env,
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert rotated.returncode == 0, rotated.stderr
    new_kid = rotated.stdout.split("new signing key: ")[1].split()[0]
    kids = []
    deadline = time.monotonic() + delay + 5
    while time.monotonic() < deadline:
        look()
        token = client.post("/token", data=exchange_form(
            dev_issuer.mint_github(audience=AUDIENCE))).get_json()["access_token"]
        kid = jwt.get_unverified_header(token)["kid"]
        minted_at = time.monotonic()
        assert kid in first_seen, "a token signed with a key the JWKS never showed"
        if kid == new_kid:
            assert minted_at - first_seen[kid] >= delay - 1.5       # the keyring is re-read each 1 s
            kids.append(kid)
            break
        kids.append(kid)
        time.sleep(0.25)
    assert kids[-1] == new_kid and kids[0] != new_kid
