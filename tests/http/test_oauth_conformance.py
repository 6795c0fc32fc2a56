"""Protocol conformance, checked with third-party code: RFC 6749 §2.3.1 client credentials,
RFC 8414 / OpenID Discovery metadata (Authlib's models), RFC 8693 audience/resource and
RFC 9068 JWT access tokens (Authlib's resource-server validator)."""
from __future__ import annotations

import base64
from urllib.parse import quote_plus

import jwt
import pytest
from authlib.oauth2.rfc6749.errors import OAuth2Error
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oauth2.rfc9068 import JWTBearerTokenValidator
from authlib.oidc.discovery import OpenIDProviderMetadata

from tests.support.oauth import AUDIENCE, GRANT, JWT_TYPE, exchange_form, sha
from tests.support.standards import BROKER_ISSUER, app, client, ledger, make_app, policy_dir  # noqa: F401 (fixtures)

SPACED = ("spaced-client", "a secret with spaces+and+plus signs")


def _basic_form_encoded(user: str, secret: str) -> dict[str, str]:
    """What RFC 6749 §2.3.1 says a client sends (and what Authlib's client does)."""
    raw = f"{quote_plus(user)}:{quote_plus(secret)}"
    return {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}


@pytest.fixture
def spaced_policy(policy_dir):
    (policy_dir / "spaced.yaml").write_text(
        f"kind: client\nname: {SPACED[0]}\nsecret_sha256: \"{sha(SPACED[1])}\"\n"
        "may: [introspect, revoke]\n")
    return policy_dir


def test_basic_credentials_are_form_urlencoded_before_base64(spaced_policy, make_app):
    client = make_app().test_client()
    headers = _basic_form_encoded(*SPACED)          # spaces travel as "+", "+" as "%2B"
    assert "+" in base64.b64decode(headers["Authorization"][6:]).decode()
    response = client.post("/introspect", data={"token": "x.y.z"}, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"active": False}
    # The same secret sent raw (not form-encoded) is a different secret: "+" is a space.
    raw = "Basic " + base64.b64encode(f"{SPACED[0]}:{SPACED[1]}".encode()).decode()
    refused = client.post("/introspect", data={"token": "x.y.z"}, headers={"Authorization": raw})
    assert refused.status_code == 401


@pytest.mark.parametrize("path, model", [
    ("/.well-known/oauth-authorization-server", AuthorizationServerMetadata),
    ("/.well-known/openid-configuration", OpenIDProviderMetadata),
])
def test_discovery_documents_validate_with_authlib(client, path, model):
    document = client.get(path).get_json()
    model(document).validate()                        # raises on any violation
    assert document["issuer"] == BROKER_ISSUER
    assert document["response_types_supported"] == ["none"]
    assert document["grant_types_supported"] == ["urn:ietf:params:oauth:grant-type:token-exchange"]
    # what the keys really sign with comes first; RS256 because OpenID Discovery requires it
    assert document["id_token_signing_alg_values_supported"][0] == "ES256"


# -- RFC 8693 §2.1 / §2.2.2: audience and resource -------------------------------------------

def _post(client, token, **form):
    data = {"grant_type": GRANT, "subject_token": token, "subject_token_type": JWT_TYPE,
            "scope": "reports:read", **form}
    return client.post("/token", data={k: v for k, v in data.items() if v is not None})


def test_resource_alone_selects_the_target_whose_uri_it_is(client, dev_issuer):
    response = _post(client, dev_issuer.mint_github(audience=AUDIENCE),
                     resource="https://reports.internal")
    assert response.status_code == 200, response.get_data(as_text=True)
    claims = jwt.decode(response.get_json()["access_token"], options={"verify_signature": False})
    assert claims["target"] == "reports-api" and claims["aud"] == "https://reports.internal"


def test_audience_and_resource_naming_the_same_target_are_accepted(client, dev_issuer):
    response = _post(client, dev_issuer.mint_github(audience=AUDIENCE), audience="reports-api",
                     resource="https://reports.internal")
    assert response.status_code == 200, response.get_data(as_text=True)


@pytest.mark.parametrize("case, form", [
    ("audience and resource of different targets",
     {"audience": "billing-api", "resource": "https://reports.internal"}),
    ("unknown resource", {"resource": "https://nowhere.internal"}),
    ("resource not an absolute URI", {"resource": "reports-api"}),
    ("resource with a fragment", {"resource": "https://reports.internal#x"}),
    ("resource urlsplit cannot read", {"resource": "http://[::1"}),     # was a 500 (tests/fuzz)
    ("an audience that cannot be a target name", {"audience": "reports api\r\nx"}),
])
def test_target_refusals_are_invalid_target(client, dev_issuer, case, form):
    response = _post(client, dev_issuer.mint_github(audience=AUDIENCE), **form)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_target", case


def test_several_audiences_are_invalid_target(client, dev_issuer):
    token = dev_issuer.mint_github(audience=AUDIENCE)
    body = "&".join([f"grant_type={GRANT}", f"subject_token={token}",
                     f"subject_token_type={JWT_TYPE}", "audience=reports-api",
                     "audience=billing-api"])
    response = client.post("/token", data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_target"


def test_an_unknown_audience_is_invalid_target(client, dev_issuer):
    response = _post(client, dev_issuer.mint_github(audience=AUDIENCE), audience="no-such-api")
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_target"


# -- RFC 9068: JWT access tokens ----------------------------------------------------------------

class _BrokerTokens(JWTBearerTokenValidator):
    def __init__(self, jwks, **kwargs):
        super().__init__(**kwargs)
        self._jwks = jwks

    def get_jwks(self):
        return self._jwks


def test_access_tokens_are_rfc9068_and_validate_with_authlib(client, dev_issuer):
    minted = client.post("/token", data=exchange_form(dev_issuer.mint_github(audience=AUDIENCE)))
    assert minted.status_code == 200, minted.get_data(as_text=True)
    token = minted.get_json()["access_token"]
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    jwks = client.get("/.well-known/jwks.json").get_json()
    validator = _BrokerTokens(jwks, issuer=BROKER_ISSUER, resource_server="https://reports.internal")
    claims = validator.authenticate_token(token)
    validator.validate_token(claims, scopes=["reports:read"], request=None)
    assert claims["client_id"] == claims["sub"]       # a workload is its own client
    # the validator really checks: another resource server refuses it
    other = _BrokerTokens(jwks, issuer=BROKER_ISSUER, resource_server="https://billing.internal")
    with pytest.raises(OAuth2Error):
        other.validate_token(other.authenticate_token(token), scopes=[], request=None)


def test_introspection_answers_include_client_id(client, dev_issuer):
    from tests.support.oauth import AUDITOR, basic

    token = client.post("/token", data=exchange_form(
        dev_issuer.mint_github(audience=AUDIENCE))).get_json()["access_token"]
    info = client.post("/introspect", data={"token": token}, headers=basic(*AUDITOR)).get_json()
    assert info["active"] is True
    assert info["client_id"] == info["sub"]
