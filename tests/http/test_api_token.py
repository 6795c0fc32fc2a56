"""POST /token through the Flask app, on SQLite and on PostgreSQL, with a real HTTP issuer."""
from __future__ import annotations

import time

import jwt
import pytest

from tests.support.oauth import AUDITOR, GRANT, JWT_TYPE, basic, exchange_form


def _jwks_key(client, kid):
    jwks = client.get("/.well-known/jwks.json").get_json()
    return jwt.PyJWKSet.from_dict(jwks)[kid].key


def test_exchange_mints_an_attributed_jwt(client, dev_issuer, ledger):
    attestation = dev_issuer.mint_github(audience="nhi-broker-test", run_id="4242", run_attempt="2")
    response = client.post("/token", data=exchange_form(attestation))
    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) == {"access_token", "issued_token_type", "token_type", "expires_in", "scope",
                         "credential_id"}
    assert body["token_type"] == "Bearer"
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert body["scope"] == "reports:read"
    assert 0 < body["expires_in"] <= 600          # policy max_ttl 10m < target 15m

    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "ES256" and header["kid"]
    claims = jwt.decode(body["access_token"], _jwks_key(client, header["kid"]), algorithms=["ES256"],
                        audience="https://reports.internal", issuer="http://broker.test")
    assert claims["jti"] == body["credential_id"]
    assert claims["sub"] == ("github:acme/payments:"
                             "acme/payments/.github/workflows/deploy.yml@refs/heads/main")
    assert claims["run"]["id"] == "4242" and claims["run"]["attempt"] == "2"
    assert claims["run"]["repository"] == "acme/payments"
    assert claims["authz"]["type"] == "policy" and claims["authz"]["name"] == "payments-reports"
    assert claims["authz"]["digest"].startswith("sha256:")
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    assert claims["nbf"] == claims["iat"]
    assert claims["attestation"]["iss"] == dev_issuer.issuer
    assert len(claims["attestation"]["sha256"]) == 64
    assert claims["scope"] == "reports:read"

    events = ledger.events_for_credential(body["credential_id"])
    assert [e.type for e in events] == ["mint"]
    mint = events[0]
    assert mint.principal == claims["sub"] and mint.run == claims["run"]
    assert mint.authorizer == claims["authz"] and mint.target == "reports-api"
    assert mint.details["attestation_sha256"] == claims["attestation"]["sha256"]


def test_requested_ttl_shortens_and_scope_defaults_to_policy(client, dev_issuer):
    attestation = dev_issuer.mint_github(audience="nhi-broker-test")
    body = client.post("/token", data=exchange_form(attestation, scope=None, ttl="90s")).get_json()
    assert body["expires_in"] == 90
    assert body["scope"] == "reports:read reports:write"


def _refusal(response, status, error):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"] == error
    assert set(body) <= {"error", "error_description", "reason", "event_id"}  # docs: README refusals
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and "File \"" not in text
    return body


@pytest.mark.parametrize("case, form_change", [
    ("missing grant_type", {"grant_type": None}),
    ("missing subject_token", {"subject_token": None}),
    ("missing subject_token_type", {"subject_token_type": None}),
    ("unsupported subject_token_type", {"subject_token_type": "urn:ietf:params:oauth:token-type:saml2"}),
    ("missing audience", {"audience": None}),
    ("bad ttl", {"ttl": "soon"}),
    ("ttl in other digits", {"ttl": "\u0663\u0663"}),                  # was read as 33 s
    ("ttl of more digits than any lifetime", {"ttl": "9" * 4000}),
    ("unsupported requested_token_type", {"requested_token_type": "urn:x"}),
])
def test_invalid_request(client, case, form_change):
    form = {k: v for k, v in {**exchange_form("x.y.z"), **form_change}.items() if v is not None}
    _refusal(client.post("/token", data=form), 400, "invalid_request")


def test_duplicate_parameters_are_invalid_request(client):
    body = "&".join([f"grant_type={GRANT}", "subject_token=a.b.c", "subject_token=d.e.f",
                     f"subject_token_type={JWT_TYPE}", "audience=reports-api"])
    response = client.post("/token", data=body, content_type="application/x-www-form-urlencoded")
    _refusal(response, 400, "invalid_request")


def test_json_body_and_query_parameters_are_refused(client, dev_issuer):
    form = exchange_form(dev_issuer.mint_github(audience="nhi-broker-test"))
    _refusal(client.post("/token", json=form), 400, "invalid_request")
    _refusal(client.post("/token", query_string={"scope": "x"}, data=form), 400, "invalid_request")


def test_unsupported_grant_type(client):
    _refusal(client.post("/token", data=exchange_form("x", grant_type="client_credentials")),
             400, "unsupported_grant_type")


def test_unknown_target_is_invalid_target_and_recorded(client, dev_issuer, ledger):
    before = ledger.count()
    _refusal(client.post("/token", data=exchange_form(dev_issuer.mint_github(
        audience="nhi-broker-test"), audience="no-such-target")), 400, "invalid_target")
    assert ledger.count() == before + 1
    deny = list(ledger.iter_events(before + 1))[0]
    assert deny.type == "deny" and deny.details["error"] == "invalid_target"
    assert deny.principal and deny.run["repository"] == "acme/payments"


def test_scope_beyond_policy_is_invalid_scope(client, dev_issuer, ledger):
    token = dev_issuer.mint_github(audience="nhi-broker-test")
    _refusal(client.post("/token", data=exchange_form(token, scope="reports:read reports:admin")),
             400, "invalid_scope")
    last = list(ledger.iter_events(ledger.count()))[0]
    assert last.type == "deny" and last.details["error"] == "invalid_scope"
    assert last.details["requested_scope"] == "reports:read reports:admin"


@pytest.mark.parametrize("case, overrides, target", [
    ("other repository", {"repository": "evil/payments"}, "reports-api"),
    ("tag ref outside glob", {"ref": "refs/tags/v1"}, "reports-api"),
    ("target no policy grants", {}, "billing-api"),
])
def test_no_policy_is_unauthorized_client(client, dev_issuer, ledger, case, overrides, target):
    token = dev_issuer.mint_github(audience="nhi-broker-test", **overrides)
    scope = "reports:read" if target == "reports-api" else None
    _refusal(client.post("/token", data=exchange_form(token, audience=target, scope=scope)),
             400, "unauthorized_client")
    last = list(ledger.iter_events(ledger.count()))[0]
    assert last.type == "deny" and last.details["error"] == "unauthorized_client"


@pytest.mark.parametrize("case", ["expired", "wrong audience", "garbage", "alg none", "replayed"])
def test_bad_attestations_are_invalid_grant_and_recorded(client, dev_issuer, ledger, case):
    if case == "expired":
        token = dev_issuer.mint(dev_issuer.github_claims(), audience="nhi-broker-test",
                                now=time.time() - 3600, ttl=60)
    elif case == "wrong audience":
        token = dev_issuer.mint_github(audience="someone-else")
    elif case == "garbage":
        token = "not-a-jwt"
    elif case == "alg none":
        token = dev_issuer.mint(dev_issuer.github_claims(), audience="nhi-broker-test", alg="none")
    else:
        token = dev_issuer.mint_github(audience="nhi-broker-test")
        assert client.post("/token", data=exchange_form(token)).status_code == 200
    before = ledger.count()
    body = _refusal(client.post("/token", data=exchange_form(token)), 400, "invalid_grant")
    assert token not in str(body)
    assert ledger.count() == before + 1
    deny = list(ledger.iter_events(before + 1))[0]
    assert deny.type == "deny" and deny.details["error"] == "invalid_grant"
    assert deny.details["reason"]
    assert deny.details["attestation_sha256"]


def test_every_attempt_is_exactly_one_event_and_no_secret_reaches_the_ledger(client, dev_issuer, ledger):
    tokens, access_tokens = [], []
    for _ in range(4):
        token = dev_issuer.mint_github(audience="nhi-broker-test")
        tokens.append(token)
        access_tokens.append(client.post("/token", data=exchange_form(token)).get_json()["access_token"])
    client.post("/token", data=exchange_form(tokens[0]))              # replay: deny
    client.post("/introspect", data={"token": access_tokens[0]}, headers=basic(*AUDITOR))
    assert ledger.count() == 7      # 4 mints, 1 deny, the introspect and its usage event (issue 6)
    everything = " ".join(e.canonical_bytes().decode() for e in ledger.iter_events())
    for secret in tokens + access_tokens + [AUDITOR[1]]:
        assert secret not in everything
    assert ledger.verify().ok


def test_oversized_body_is_a_json_refusal(client):
    response = client.post("/token", data={"subject_token": "x" * 70000})
    assert response.status_code == 413
    assert response.get_json()["error"] == "invalid_request"


def test_unknown_path_and_method_are_json(client):
    assert client.get("/nope").get_json()["error"] == "not_found"
    response = client.get("/token")
    assert response.status_code == 405 and response.get_json()["error"] == "invalid_request"
