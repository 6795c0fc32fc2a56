"""The dev human IdP is a real authorization server: PKCE S256 is verified, codes are single-use
and bound to the client and redirect URI, client authentication is required."""
from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests

from tests.support.people import CLIENT_ID, CLIENT_SECRET

REDIRECT = "http://broker.test/login/callback"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(idp, challenge: str, **extra) -> requests.Response:
    params = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT,
              "scope": "openid email", "state": "s1", "nonce": "n1", "code_challenge": challenge,
              "code_challenge_method": "S256", "login_hint": "alice@acme.example", **extra}
    return requests.get(f"{idp.issuer}/authorize", params={k: v for k, v in params.items() if v is not None},
                        allow_redirects=False, timeout=10)


def code_of(response) -> str:
    return parse_qs(urlsplit(response.headers["Location"]).query)["code"][0]


def token(idp, code: str, verifier: str, *, secret: str = CLIENT_SECRET, redirect: str = REDIRECT):
    return requests.post(f"{idp.issuer}/token", data={"grant_type": "authorization_code", "code": code,
                                                       "redirect_uri": redirect, "code_verifier": verifier},
                         auth=(CLIENT_ID, secret), timeout=10)


def test_the_code_flow_with_pkce_gives_an_id_token(human_idp):
    verifier, challenge = pkce()
    response = token(human_idp, code_of(authorize(human_idp, challenge)), verifier)
    assert response.status_code == 200
    id_token = response.json()["id_token"]
    jwk = human_idp.key.public_jwk()
    claims = jwt.decode(id_token, jwt.PyJWK(jwk).key, algorithms=["RS256"], audience=CLIENT_ID)
    assert claims["email"] == "alice@acme.example" and claims["nonce"] == "n1"
    assert claims["groups"] == ["dba", "staff"] and claims["preferred_username"] == "alice"


@pytest.mark.parametrize("case", ["wrong verifier", "reused code", "wrong secret", "other redirect"])
def test_the_token_endpoint_refuses(human_idp, case):
    verifier, challenge = pkce()
    code = code_of(authorize(human_idp, challenge))
    if case == "reused code":
        assert token(human_idp, code, verifier).status_code == 200
        response = token(human_idp, code, verifier)
    elif case == "wrong verifier":
        response = token(human_idp, code, pkce()[0])
    elif case == "wrong secret":
        response = token(human_idp, code, verifier, secret="nope")
    else:
        response = token(human_idp, code, verifier, redirect="http://evil.example/cb")
    assert response.status_code in (400, 401)
    assert response.json()["error"] in ("invalid_grant", "invalid_client")


def test_authorize_refuses_plain_pkce_and_unknown_redirects(human_idp):
    _, challenge = pkce()
    plain = authorize(human_idp, challenge, code_challenge_method="plain")
    assert "error=invalid_request" in plain.headers["Location"]
    assert authorize(human_idp, challenge, redirect_uri="http://evil.example/cb").status_code == 400
    form = authorize(human_idp, challenge, login_hint=None)
    assert form.status_code == 200 and "id='sign-in'" in form.text


def test_it_refuses_to_run_outside_tests(monkeypatch):
    import broker.devtools.dev_human_idp as module

    monkeypatch.setattr(module, "_dev_issuer_allowed", lambda: False)
    with pytest.raises(RuntimeError, match="dev-only"):
        module.DevHumanIdP()
