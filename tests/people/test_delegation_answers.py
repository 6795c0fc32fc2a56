"""Answers in one request (issue 16): for a statement run under a delegation, or under any
credential derived from one, the usage hit, the credential record and the lineage name the
acting agent (``act``: its principal, issuer and run) beside the person."""
from __future__ import annotations

from broker.ledger.events import EventDraft
from tests.people.test_delegation_flow import act, grant
from tests.support.oauth import AUDITOR, basic, claims_of
from tests.support.people import AGENT, agent_job


def _statement(ledger, credential_id: str, text: str) -> None:
    record = ledger.get_credential(credential_id)
    draft = EventDraft(type="usage", credential_id=credential_id, principal=record.principal,
                       run=record.run, authorizer=record.authorizer, target=record.target,
                       details={"statement": text, "source": "test"})
    ledger.record_usage([(draft, f"test:{credential_id}:{text}", "2026-12-01T10:00:00.000000Z", text)])


def test_the_acting_agent_is_in_every_answer(client, ledger, dev_issuer, human_idp):
    delegation = grant(client, human_idp).get_json()
    agent = agent_job(dev_issuer)
    minted = act(client, delegation["delegation_token"], agent.attestation()).get_json()
    cid = minted["credential_id"]
    expected = {"sub": AGENT, "iss": dev_issuer.issuer,
                "run": claims_of(minted["access_token"])["run"]}
    _statement(ledger, cid, "UPDATE reports SET done = true")

    hits = client.get("/v1/usage", query_string={"statement": "update reports"},
                      headers=basic(*AUDITOR)).get_json()["usage"]
    assert len(hits) == 1
    hit = hits[0]
    assert hit["principal"] == "alice@acme.example" and hit["act"] == expected
    assert hit["authorizer"]["type"] == "delegation"            # who allowed it, same answer

    record = client.get(f"/v1/credentials/{cid}", headers=basic(*AUDITOR)).get_json()
    assert record["principal"] == "alice@acme.example" and record["act"] == expected
    assert record["usage"][0]["act"] == expected

    lineage = client.get(f"/v1/credentials/{cid}/lineage", headers=basic(*AUDITOR)).get_json()
    assert lineage["credential"]["act"] == expected


def test_act_is_found_through_derived_credentials_and_absent_without_a_delegation(
        client, ledger, dev_issuer, human_idp):
    from broker.audit.acting import ActingAgents
    from broker.ledger.events import CredentialRecord

    delegation = grant(client, human_idp).get_json()
    minted = act(client, delegation["delegation_token"], agent_job(dev_issuer).attestation()).get_json()
    parent = ledger.get_credential(minted["credential_id"])
    child = CredentialRecord(
        credential_id="01" + "c" * 24, parent_id=parent.credential_id, principal=parent.principal,
        run=parent.run, authorizer={"type": "derive", "parent_authz": parent.authorizer},
        target="reports-api", target_type="jwt", scope="", issued_at=parent.issued_at,
        expires_at=parent.expires_at)
    with ledger.transaction() as tx:           # a child row as the derive path writes it
        from broker.ledger.rows import SQL_INSERT_CREDENTIAL, credential_params
        tx.execute(SQL_INSERT_CREDENTIAL, credential_params(child))
    agents = ActingAgents(ledger)
    assert agents.of_record(child)["sub"] == AGENT
    plain = CredentialRecord(credential_id="01" + "d" * 24, principal="p", run={},
                             authorizer={"type": "policy", "name": "x"}, target="t",
                             target_type="jwt", scope="", issued_at=1, expires_at=2)
    assert agents.of_record(plain) is None
