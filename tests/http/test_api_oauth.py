"""Introspection, revocation, the audit record, discovery and key rotation."""
from __future__ import annotations

import jwt
import pytest

from tests.support.oauth import AUDITOR, INTROSPECTOR, basic, exchange_form


@pytest.fixture
def minted(client, dev_issuer):
    body = client.post("/token", data=exchange_form(dev_issuer.mint_github(audience="nhi-broker-test")))
    assert body.status_code == 200
    return body.get_json()


@pytest.mark.parametrize("path", ["/introspect", "/revoke"])
@pytest.mark.parametrize("case, headers, status, error", [
    ("no credentials", {}, 401, "invalid_client"),
    ("wrong secret", basic("auditor", "wrong"), 401, "invalid_client"),
    ("unknown client", basic("nobody", "x"), 401, "invalid_client"),
    ("not basic", {"Authorization": "Bearer abc"}, 401, "invalid_client"),
    ("malformed basic", {"Authorization": "Basic !!!"}, 401, "invalid_client"),
])
def test_client_authentication_is_required(client, minted, path, case, headers, status, error):
    data = {"token": minted["access_token"]}
    if path == "/revoke" and not headers:   # token= alone is its holder revoking it (tests/lifecycle)
        data = {"credential_id": minted["credential_id"]}
    response = client.post(path, data=data, headers=headers)
    assert response.status_code == status
    assert response.get_json()["error"] == error
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Basic")


def test_permission_is_checked(client, minted):
    response = client.post("/revoke", data={"token": minted["access_token"]}, headers=basic(*INTROSPECTOR))
    assert response.status_code == 403 and response.get_json()["error"] == "access_denied"
    response = client.get(f"/v1/credentials/{minted['credential_id']}", headers=basic(*INTROSPECTOR))
    assert response.status_code == 403


def test_introspect_active_then_revoked_inactive(client, minted, ledger):
    token = minted["access_token"]
    info = client.post("/introspect", data={"token": token}, headers=basic(*INTROSPECTOR)).get_json()
    assert info["active"] is True
    assert info["jti"] == minted["credential_id"] == info["credential_id"]
    assert info["authz"]["name"] == "payments-reports" and info["run"]["repository"] == "acme/payments"

    response = client.post("/revoke", data={"token": token}, headers=basic(*AUDITOR))
    assert response.status_code == 200
    assert client.post("/introspect", data={"token": token},
                       headers=basic(*INTROSPECTOR)).get_json() == {"active": False}
    types = [e.type for e in ledger.events_for_credential(minted["credential_id"])]
    # an active introspection is also a usage of the credential by the calling client (issue 6)
    assert types == ["mint", "introspect", "usage", "revoke", "introspect"]
    revoke = ledger.events_for_credential(minted["credential_id"])[3]
    assert revoke.details["client"] == "auditor" and revoke.details["result"] == "revoked"
    assert ledger.get_credential(minted["credential_id"]).revoked_at is not None


def test_revoke_twice_and_unknown_tokens_answer_200_and_are_recorded(client, minted, ledger):
    for _ in range(2):
        assert client.post("/revoke", data={"credential_id": minted["credential_id"]},
                           headers=basic(*AUDITOR)).status_code == 200
    assert client.post("/revoke", data={"token": "garbage"}, headers=basic(*AUDITOR)).status_code == 200
    results = [e.details.get("result") for e in ledger.iter_events() if e.type == "revoke"]
    assert results == ["revoked", "already_revoked", "unknown_credential"]


def test_revoke_needs_exactly_one_of_token_or_credential_id(client, minted):
    response = client.post("/revoke", data={}, headers=basic(*AUDITOR))
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_request"
    response = client.post("/revoke", data={"credential_id": "../../etc"}, headers=basic(*AUDITOR))
    assert response.status_code == 400


def test_introspect_foreign_and_forged_tokens_are_inactive(client, dev_issuer, minted):
    foreign = dev_issuer.mint_github(audience="nhi-broker-test")
    head, payload, _sig = minted["access_token"].split(".")
    forged = f"{head}.{payload}.{'A' * 86}"
    for token in (foreign, forged, "garbage"):
        info = client.post("/introspect", data={"token": token}, headers=basic(*AUDITOR)).get_json()
        assert info == {"active": False}


def test_audit_credential_record(client, minted):
    cid = minted["credential_id"]
    assert client.get(f"/v1/credentials/{cid}").status_code == 401
    body = client.get(f"/v1/credentials/{cid}", headers=basic(*AUDITOR)).get_json()
    for field in ("credential_id", "principal", "run", "authorizer", "target", "scope", "issued_at",
                  "expires_at", "revoked_at", "parent_id", "events"):
        assert field in body
    assert body["credential_id"] == cid and body["revoked_at"] is None and body["parent_id"] is None
    assert body["events"][0]["type"] == "mint" and body["events"][0]["ts"]
    missing = "0" * 26
    response = client.get(f"/v1/credentials/{missing}", headers=basic(*AUDITOR))
    assert response.status_code == 404 and response.get_json()["error"] == "not_found"
    assert client.get("/v1/credentials/not-an-id", headers=basic(*AUDITOR)).status_code == 400


def test_discovery_and_jwks(client):
    meta = client.get("/.well-known/openid-configuration").get_json()
    assert meta["issuer"] == "http://broker.test"
    assert meta["token_endpoint"] == "http://broker.test/token"
    assert meta["jwks_uri"].endswith("/.well-known/jwks.json")
    assert meta["introspection_endpoint"].endswith("/introspect")
    assert meta["revocation_endpoint"].endswith("/revoke")
    assert "urn:ietf:params:oauth:grant-type:token-exchange" in meta["grant_types_supported"]
    keys = client.get("/.well-known/jwks.json").get_json()["keys"]
    assert keys and all(k["kty"] == "EC" and "d" not in k for k in keys)


def test_key_rotation_keeps_old_tokens_verifiable(app, client, dev_issuer, minted):
    signer = app.extensions["broker"].signer
    old_kid = jwt.get_unverified_header(minted["access_token"])["kid"]
    new_kid = signer.rotate()
    assert new_kid != old_kid
    kids = {k["kid"] for k in client.get("/.well-known/jwks.json").get_json()["keys"]}
    assert {old_kid, new_kid} <= kids
    fresh = client.post("/token", data=exchange_form(dev_issuer.mint_github(audience="nhi-broker-test"))).get_json()
    # published now, signing only after KEY_ACTIVATION_DELAY: the old key still signs
    assert jwt.get_unverified_header(fresh["access_token"])["kid"] == old_kid
    for token in (minted["access_token"], fresh["access_token"]):
        info = client.post("/introspect", data={"token": token}, headers=basic(*AUDITOR)).get_json()
        assert info["active"] is True
