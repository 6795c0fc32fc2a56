"""Granting and revoking a delegation on the people's pages (in-process; real sign-in)."""
from __future__ import annotations

from broker.people.store import PeopleStore
from tests.support.oauth import GRANT, JWT_TYPE, claims_of
from tests.support.people import AGENT, agent_job, sign_in


def csrf_of(html: str) -> str:
    return html.split('name="csrf_token" value="')[1].split('"')[0]


def test_grant_on_the_page_use_it_then_revoke_it(client, ledger, dev_issuer, human_idp):
    sign_in(client, human_idp, "bob@acme.example", "/delegations/")
    page = client.get("/delegations/").get_data(as_text=True)
    assert 'value="reports-api"' in page and "<script" not in page
    csrf = csrf_of(page)
    refused = client.post("/delegations/", data={"agent": AGENT, "target": "reports-api", "ttl": "1h"})
    assert refused.status_code == 403                                      # no CSRF token
    shown = client.post("/delegations/", data={"csrf_token": csrf, "agent": AGENT, "target": "reports-api",
                                               "scope": "reports:read", "ttl": "45m"})
    assert shown.status_code == 200 and shown.headers["Cache-Control"] == "no-store"
    html = shown.get_data(as_text=True)
    token = html.split('id="delegation-token" class="token">')[1].split("</textarea>")[0]
    claims = claims_of(token)
    assert claims["sub"] == "bob@acme.example" and claims["exp"] - claims["iat"] == 2700
    delegate = ledger.search_events(type="delegate", limit=5)[-1]
    assert delegate.details["via"] == "web" and delegate.details["granted_by"] == "bob@acme.example"

    minted = client.post("/token", data={
        "grant_type": GRANT, "subject_token": token, "subject_token_type": JWT_TYPE,
        "actor_token": agent_job(dev_issuer).attestation(), "actor_token_type": JWT_TYPE,
        "audience": "reports-api"})
    assert minted.status_code == 200, minted.get_json()
    credential_id = minted.get_json()["credential_id"]

    listing = client.get("/delegations/").get_data(as_text=True)
    assert claims["jti"] in listing and token not in listing                # shown once only
    revoked = client.post(f"/delegations/{claims['jti']}/revoke", data={"csrf_token": csrf_of(listing)})
    assert revoked.status_code == 303
    assert PeopleStore(ledger).get_delegation(claims["jti"]).revoked_at is not None
    assert ledger.get_credential(credential_id).revoked_at is not None


def test_a_bad_grant_is_an_error_page(client, human_idp):
    sign_in(client, human_idp, "mallory@elsewhere.example", "/delegations/")
    csrf = csrf_of(client.get("/delegations/").get_data(as_text=True))
    response = client.post("/delegations/", data={"csrf_token": csrf, "agent": AGENT,
                                                  "target": "reports-api", "ttl": "1h"})
    assert response.status_code == 403 and b"no delegation policy lets you delegate" in response.data
