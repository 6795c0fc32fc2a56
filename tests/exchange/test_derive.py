"""Child credentials through the Flask app, on SQLite and PostgreSQL ledgers: linking, the act
chain, narrowing, introspection and the mint/revoke race (the revocation cascade and
self-revocation: tests/lifecycle/test_revocation.py)."""
from __future__ import annotations

import itertools

from broker.ledger.events import EventDraft
from tests.support.fanout import SERVICE, derive, derive_form, introspect, mint_root
from tests.support.oauth import claims_of


def test_a_chain_three_deep_is_linked_narrowed_and_records_its_actors(client, dev_issuer, ledger):
    root = mint_root(client, dev_issuer)
    child = derive(client, root, "reports-api", scope="reports:read reports:write")
    grandchild = derive(client, child, "reports-api", scope="reports:read")
    great = derive(client, grandchild, "billing-api")
    chain = [root, child, grandchild, great]
    claims = [claims_of(c["access_token"]) for c in chain]

    assert [c.get("parent_id") for c in chain] == [None] + [c["credential_id"] for c in chain[:-1]]
    assert {c["sub"] for c in claims} == {claims[0]["sub"]}             # the principal stays
    assert all(c["run"] == claims[0]["run"] for c in claims)
    assert all(c["attestation"] == claims[0]["attestation"] for c in claims)
    assert [c["scope"] for c in claims] == ["deploy", "reports:read reports:write", "reports:read",
                                            "billing:read"]
    assert [c["aud"] for c in claims[1:3]] == ["https://reports.internal"] * 2
    for parent, kid in itertools.pairwise(claims):
        assert kid["exp"] <= parent["exp"]
        assert kid["parent_id"] == parent["jti"]
        assert kid["act"]["sub"] == parent["jti"] and kid["act"]["target"] == parent["target"]
        assert kid["act"].get("act") == parent.get("act")            # the parent's chain, nested
        assert kid["authz"]["type"] == "derive" and kid["authz"]["parent_authz"] == parent["authz"]
    assert claims[3]["act"]["act"]["act"] == {"sub": root["credential_id"], "target": "deploy-api"}
    assert claims[3]["exp"] - claims[3]["iat"] <= 300                  # billing rule: max_ttl 5m
    authz = claims[3]["authz"]
    while authz["type"] == "derive":
        assert authz["name"] == "payments-deploy"
        authz = authz["parent_authz"]
    assert authz == claims[0]["authz"] and authz["type"] == "policy"

    for depth, issued in enumerate(chain):
        record = ledger.get_credential(issued["credential_id"])
        assert record.parent_id == issued.get("parent_id")
        (mint,) = [e for e in ledger.events_for_credential(issued["credential_id"]) if e.type == "mint"]
        assert mint.parent_id == issued.get("parent_id")
        if depth:
            assert mint.details["depth"] == depth
            assert mint.details["root_id"] == root["credential_id"]
    assert [r.credential_id for r in ledger.ancestors_of(great["credential_id"])] == \
        [c["credential_id"] for c in reversed(chain)]


def test_introspection_shows_the_chain_and_records_the_caller_as_usage(client, dev_issuer, ledger):
    root = mint_root(client, dev_issuer)
    child = derive(client, root, "reports-api", scope="reports:read")
    info = introspect(client, child["access_token"], who=SERVICE)
    assert info["active"] is True and info["parent_id"] == root["credential_id"]
    assert info["act"] == {"sub": root["credential_id"], "target": "deploy-api"}
    types = [(e.type, e.details.get("client")) for e in ledger.events_for_credential(child["credential_id"])]
    assert types == [("mint", None), ("introspect", SERVICE[0]), ("usage", SERVICE[0])]
    usage = ledger.events_for_credential(child["credential_id"])[-1]
    assert usage.parent_id == root["credential_id"] and usage.details["source"] == "introspect"


def test_a_child_minted_while_its_parent_is_revoked_is_revoked_and_refused(app, client, dev_issuer, ledger):
    root = mint_root(client, dev_issuer)
    real_record_mint = ledger.record_mint

    def record_mint_then_parent_revoked(draft, credential, **kwargs):
        event = real_record_mint(draft, credential, **kwargs)
        parent = ledger.get_credential(root["credential_id"])
        ledger.record_revoke(parent.credential_id, EventDraft(
            type="revoke", credential_id=parent.credential_id, details={"cause": "concurrent"}),
            revoked_at=parent.issued_at)
        return event

    ledger.record_mint = record_mint_then_parent_revoked
    try:
        before = ledger.head()[0]
        response = client.post("/token", data=derive_form(root["access_token"], "reports-api"))
    finally:
        del ledger.record_mint
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"
    events = list(ledger.iter_events(before + 1))
    assert [e.type for e in events] == ["mint", "revoke", "revoke"]     # no deny: one event per attempt
    child_id = events[0].credential_id
    assert events[2].credential_id == child_id and events[2].details["cause"] == "parent revoked"
    assert ledger.get_credential(child_id).revoked_at is not None
