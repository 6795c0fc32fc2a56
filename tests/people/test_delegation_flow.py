"""Delegation (RFC 8693 actor_token): a person grants an agent a bounded delegation; the agent's
exchange names both; every way past its bounds is refused; revoking it revokes what it minted."""
from __future__ import annotations

import jwt
import pytest

from broker.people.store import PeopleStore
from tests.support.oauth import AUDITOR, GRANT, ID_TOKEN_TYPE, JWT_TYPE, basic, bearer, claims_of
from tests.support.people import AGENT, agent_job, id_token


def grant(client, human_idp, email="alice@acme.example", **overrides):
    form = {"agent": AGENT, "target": "reports-api", "scope": "reports:read", "ttl": "1h"}
    form.update(overrides)
    return client.post("/v1/delegations", data={k: v for k, v in form.items() if v is not None},
                       headers=bearer(id_token(human_idp, email)))


def act(client, subject: str, actor: str, *, subject_type=JWT_TYPE, **overrides):
    form = {"grant_type": GRANT, "subject_token": subject, "subject_token_type": subject_type,
            "actor_token": actor, "actor_token_type": JWT_TYPE, "audience": "reports-api"}
    form.update(overrides)
    return client.post("/token", data={k: v for k, v in form.items() if v is not None})


def test_an_agent_acts_for_a_person_within_the_grant(client, ledger, dev_issuer, human_idp):
    response = grant(client, human_idp)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    token, delegation_id = body["delegation_token"], body["delegation_id"]
    assert jwt.get_unverified_header(token)["typ"] == "nhi-delegation+jwt"
    dclaims = claims_of(token)
    assert dclaims["token_use"] == "delegation" and dclaims["sub"] == "alice@acme.example"
    assert dclaims["aud"] == "http://broker.test/token" and dclaims["jti"] == delegation_id

    agent = agent_job(dev_issuer)
    minted = act(client, token, agent.attestation())
    assert minted.status_code == 200, minted.get_json()
    claims = claims_of(minted.get_json()["access_token"])
    assert claims["sub"] == "alice@acme.example"
    assert claims["act"] == {"sub": AGENT, "iss": dev_issuer.issuer}
    policy = next(p for p in client.application.extensions["broker"].policy_set.policies
                  if p.name == "agents-for-staff")
    assert claims["authz"] == {"type": "delegation", "grant_id": delegation_id,
                               "granted_by": "alice@acme.example", "via": "delegation",
                               "policy": {"name": "agents-for-staff", "digest": policy.digest}}
    assert claims["scope"] == "reports:read" and claims["run"]["id"] == agent.run_id
    assert claims["aud"] == "https://reports.internal"

    delegate = ledger.search_events(type="delegate", limit=10)[-1]
    assert delegate.details["delegation_id"] == delegation_id and delegate.details["agent"] == AGENT
    assert token not in str(delegate.to_dict())
    mint = ledger.search_events(type="mint", limit=100)[-1]
    assert mint.principal == "alice@acme.example" and mint.details["actor"] == AGENT
    assert mint.details["delegation_id"] == delegation_id
    assert PeopleStore(ledger).get_delegation(delegation_id).uses == 1
    assert ledger.verify().ok


@pytest.mark.parametrize("case,expected", [
    ("wider scope", "invalid_scope"), ("other target", "invalid_target"),
    ("other agent", "invalid_grant"), ("actor from another repository", "invalid_grant"),
    ("replayed actor token", "invalid_grant"), ("no actor token", "invalid_grant"),
    ("credential as subject", "invalid_grant"), ("actor token type missing", "invalid_request"),
])
def test_a_delegation_is_refused_beyond_its_bounds(client, ledger, dev_issuer, human_idp, case, expected):
    token = grant(client, human_idp).get_json()["delegation_token"]
    agent = agent_job(dev_issuer)
    before = ledger.head()[0]
    if case == "wider scope":
        response = act(client, token, agent.attestation(), scope="reports:write")
    elif case == "other target":
        response = act(client, token, agent.attestation(), audience="prod-api")
    elif case in ("other agent", "actor from another repository"):
        other = agent_job(dev_issuer, job_workflow_ref="acme/agents/.github/workflows/other.yml@refs/heads/main")
        if case == "actor from another repository":
            other = agent_job(dev_issuer, repository="acme/payments")
        response = act(client, token, other.attestation())
    elif case == "replayed actor token":
        actor = agent.attestation()
        assert act(client, token, actor).status_code == 200
        response = act(client, token, actor)
    elif case == "no actor token":
        response = client.post("/token", data={"grant_type": GRANT, "subject_token": token,
                                               "subject_token_type": JWT_TYPE, "audience": "reports-api"})
    elif case == "credential as subject":
        # a credential the broker minted is not a delegation token
        cred = act(client, token, agent.attestation()).get_json()["access_token"]
        response = act(client, cred, agent_job(dev_issuer).attestation())
    else:
        response = act(client, token, agent.attestation(), actor_token_type=None)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"] == expected, response.get_json()
    events = [e for e in ledger.iter_events(before + 1) if e.type == "deny"]
    if expected != "invalid_request":          # refused before attestation checking: not an attempt
        last = events[-1]
        assert last.details.get("delegation") is True or \
            last.details["reason"] == "delegation token without actor_token"


def test_revoking_a_delegation_revokes_what_was_minted_under_it(client, ledger, dev_issuer, human_idp):
    body = grant(client, human_idp, ttl="2h", target="reports-api").get_json()
    token, delegation_id = body["delegation_token"], body["delegation_id"]
    first = act(client, token, agent_job(dev_issuer).attestation()).get_json()
    second = act(client, token, agent_job(dev_issuer).attestation()).get_json()

    def active(access_token):
        return client.post("/introspect", data={"token": access_token},
                           headers=basic(*AUDITOR)).get_json()["active"]

    assert active(first["access_token"]) and active(second["access_token"])
    # someone else may not revoke it
    other = client.post(f"/v1/delegations/{delegation_id}/revoke",
                        headers=bearer(id_token(human_idp, "bob@acme.example")))
    assert other.status_code == 403
    revoked = client.post(f"/v1/delegations/{delegation_id}/revoke",
                          headers=bearer(id_token(human_idp, "alice@acme.example")))
    assert revoked.status_code == 200, revoked.get_json()
    assert sorted(revoked.get_json()["credentials_revoked"]) == sorted([first["credential_id"],
                                                                        second["credential_id"]])
    assert revoked.get_json()["status"] == "revoked"
    assert not active(first["access_token"]) and not active(second["access_token"])
    for cid in (first["credential_id"], second["credential_id"]):
        event = [e for e in ledger.events_for_credential(cid) if e.type == "revoke"][-1]
        assert event.details["cause"] == "delegation revoked" and event.details["delegation_id"] == delegation_id
    after = act(client, token, agent_job(dev_issuer).attestation())
    assert after.status_code == 400 and after.get_json()["error"] == "invalid_grant"
    assert "revoked" in after.get_json()["error_description"]
    # a client that may revoke can revoke too (idempotent)
    again = client.post(f"/v1/delegations/{delegation_id}/revoke", headers=basic(*AUDITOR))
    assert again.status_code == 200 and again.get_json()["credentials_revoked"] == []


def test_a_delegation_token_is_never_a_credential(client, human_idp):
    token = grant(client, human_idp).get_json()["delegation_token"]
    introspection = client.post("/introspect", data={"token": token}, headers=basic(*AUDITOR))
    assert introspection.get_json() == {"active": False}
    derive = client.post("/token", data={"grant_type": GRANT, "subject_token": token,
                                         "subject_token_type": JWT_TYPE, "audience": "reports-api"})
    assert derive.status_code == 400 and derive.get_json()["error"] == "invalid_grant"


def test_the_person_s_id_token_works_when_the_policy_allows(client, dev_issuer, human_idp):
    person = id_token(human_idp, "bob@acme.example")
    response = act(client, person, agent_job(dev_issuer).attestation(), subject_type=ID_TOKEN_TYPE,
                   scope="reports:write")
    assert response.status_code == 200, response.get_json()
    claims = claims_of(response.get_json()["access_token"])
    assert claims["sub"] == "bob@acme.example" and claims["authz"]["via"] == "id_token"
    assert claims["authz"]["grant_id"] is None and claims["act"]["sub"] == AGENT
    forged = act(client, id_token(human_idp, "bob@acme.example", forge=True),
                 agent_job(dev_issuer).attestation(), subject_type=ID_TOKEN_TYPE)
    assert forged.status_code == 400 and forged.get_json()["error"] == "invalid_grant"
    expired = act(client, id_token(human_idp, "bob@acme.example", ttl=-600),
                  agent_job(dev_issuer).attestation(), subject_type=ID_TOKEN_TYPE)
    assert expired.get_json()["error"] == "invalid_grant"
    outsider = act(client, id_token(human_idp, "mallory@elsewhere.example"),
                   agent_job(dev_issuer).attestation(), subject_type=ID_TOKEN_TYPE)
    assert outsider.get_json()["error"] == "unauthorized_client"       # not in group staff


@pytest.mark.parametrize("email,form,status,error", [
    ("mallory@elsewhere.example", {}, 403, "access_denied"),                 # no delegation policy matches
    ("alice@acme.example", {"scope": "reports:delete"}, 400, "invalid_scope"),
    ("alice@acme.example", {"target": "nope"}, 400, "invalid_target"),
    ("alice@acme.example", {"target": "prod-api"}, 403, "access_denied"),    # no delegation policy lists it
    ("alice@acme.example", {"ttl": "2d"}, 400, "invalid_request"),           # over delegation_max_ttl
    ("alice@acme.example", {"agent": ""}, 400, "invalid_request"),
])
def test_what_a_person_may_not_delegate(client, ledger, human_idp, email, form, status, error):
    before = ledger.head()[0]
    response = grant(client, human_idp, email, **form)
    assert response.status_code == status and response.get_json()["error"] == error, response.get_json()
    assert [e.type for e in ledger.iter_events(before + 1)] == []


def test_people_list_their_delegations(client, human_idp):
    delegation_id = grant(client, human_idp).get_json()["delegation_id"]
    mine = client.get("/v1/delegations", headers=bearer(id_token(human_idp, "alice@acme.example"))).get_json()
    assert delegation_id in [d["delegation_id"] for d in mine["delegations"]]
    theirs = client.get("/v1/delegations", headers=bearer(id_token(human_idp, "bob@acme.example"))).get_json()
    assert delegation_id not in [d["delegation_id"] for d in theirs["delegations"]]
