"""Child credentials through the Flask app, on SQLite and PostgreSQL ledgers: linking, the act
chain, narrowing, the revocation cascade, self-revocation and the mint/revoke race."""
from __future__ import annotations

import pytest

from fanout_support import AUDITOR, SERVICE, basic, claims_of, derive_form
from broker.ledger.events import EventDraft

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def mint_root(client, dev_issuer, *, target="deploy-api", scope="deploy", ttl=None):
    form = {"grant_type": GRANT, "subject_token": dev_issuer.mint_github(audience="nhi-broker-test"),
            "subject_token_type": JWT_TYPE, "audience": target, "scope": scope}
    if ttl:
        form["ttl"] = ttl
    response = client.post("/token", data=form)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def derive(client, parent, target, **form):
    response = client.post("/token", data=derive_form(parent["access_token"], target, **form))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def introspect(client, token, who=AUDITOR):
    return client.post("/introspect", data={"token": token}, headers=basic(*who)).get_json()


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
    for parent, kid in zip(claims, claims[1:]):
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


def build_tree(client, dev_issuer):
    """root ─┬─ a ─┬─ a1 ── a1x
             │     └─ a2
             └─ b"""
    root = mint_root(client, dev_issuer)
    a = derive(client, root, "reports-api", scope="reports:read")
    b = derive(client, root, "deploy-api", scope="deploy")
    a1 = derive(client, a, "reports-api")
    a2 = derive(client, a, "billing-api")
    a1x = derive(client, a1, "reports-api")
    parents = {a["credential_id"]: root, b["credential_id"]: root, a1["credential_id"]: a,
               a2["credential_id"]: a, a1x["credential_id"]: a1}
    return root, [a, b, a1, a2, a1x], parents


def test_revoking_the_root_revokes_every_descendant_each_with_its_own_event(client, dev_issuer, ledger):
    root, descendants, parents = build_tree(client, dev_issuer)
    for issued in [root, *descendants]:
        assert introspect(client, issued["access_token"])["active"] is True
    response = client.post("/revoke", data={"credential_id": root["credential_id"]}, headers=basic(*AUDITOR))
    assert response.status_code == 200
    for issued in [root, *descendants]:
        assert introspect(client, issued["access_token"]) == {"active": False}
        record = ledger.get_credential(issued["credential_id"])
        assert record.revoked_at is not None
    (root_revoke,) = [e for e in ledger.events_for_credential(root["credential_id"]) if e.type == "revoke"]
    assert root_revoke.details["cause"] == "client request"
    for issued in descendants:
        (event,) = [e for e in ledger.events_for_credential(issued["credential_id"]) if e.type == "revoke"]
        assert event.parent_id == parents[issued["credential_id"]]["credential_id"]
        assert event.details == {"result": "revoked", "cause": "parent revoked",
                                 "root": root["credential_id"], "client": AUDITOR[0],
                                 "parent": parents[issued["credential_id"]]["credential_id"]}
    # a revoked credential can no longer derive
    refused = client.post("/token", data=derive_form(descendants[0]["access_token"], "reports-api"))
    assert refused.get_json()["error"] == "invalid_grant"
    assert ledger.verify().ok


def test_the_holder_revokes_its_own_credential_and_its_subtree_without_a_client(client, dev_issuer, ledger):
    root, (a, b, a1, a2, a1x), _ = build_tree(client, dev_issuer)
    response = client.post("/revoke", data={"token": a["access_token"]})       # no Authorization
    assert response.status_code == 200
    assert [introspect(client, c["access_token"])["active"] for c in (root, a, b, a1, a2, a1x)] == \
        [True, False, True, False, False, False]
    (event,) = [e for e in ledger.events_for_credential(a["credential_id"]) if e.type == "revoke"]
    assert event.details["cause"] == "holder request" and event.details["holder"] is True
    (child_event,) = [e for e in ledger.events_for_credential(a1x["credential_id"]) if e.type == "revoke"]
    assert child_event.details["root"] == a["credential_id"] and child_event.details["holder"] is True
    # twice: still 200, recorded as already revoked
    assert client.post("/revoke", data={"token": a["access_token"]}).status_code == 200
    assert ledger.events_for_credential(a["credential_id"])[-1].details["result"] == "already_revoked"


@pytest.mark.parametrize("case, data", [
    ("foreign token", "foreign"),
    ("garbage", {"token": "garbage"}),
    ("credential id needs a client", "by-id"),
    ("empty token", {"token": ""}),
])
def test_revoke_without_client_needs_a_valid_broker_token(client, dev_issuer, ledger, case, data):
    root = mint_root(client, dev_issuer)
    if data == "foreign":
        data = {"token": dev_issuer.mint_github(audience="nhi-broker-test")}
    elif data == "by-id":
        data = {"credential_id": root["credential_id"]}
    response = client.post("/revoke", data=data)
    assert response.status_code == 401 and response.get_json()["error"] == "invalid_client"
    assert ledger.get_credential(root["credential_id"]).revoked_at is None


def test_revoking_again_finishes_an_interrupted_cascade(client, dev_issuer, ledger):
    root, descendants, _ = build_tree(client, dev_issuer)
    record = ledger.get_credential(root["credential_id"])
    ledger.record_revoke(record.credential_id, EventDraft(type="revoke", credential_id=record.credential_id,
                                                          details={"result": "revoked", "cause": "test"}),
                         revoked_at=record.issued_at)
    # the children are already inactive (an ancestor is revoked), though not yet revoked themselves
    assert introspect(client, descendants[-1]["access_token"]) == {"active": False}
    assert ledger.events_for_credential(descendants[-1]["credential_id"])[-1].details["reason"] == "ancestor revoked"
    client.post("/revoke", data={"credential_id": root["credential_id"]}, headers=basic(*AUDITOR))
    assert ledger.events_for_credential(root["credential_id"])[-1].details["result"] == "already_revoked"
    assert all(ledger.get_credential(d["credential_id"]).revoked_at is not None for d in descendants)


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


def test_a_cascade_over_its_bound_answers_503_and_a_retry_finishes_it(client, dev_issuer, ledger, monkeypatch):
    import broker.lifecycle.revocation as revocation

    root, descendants, _ = build_tree(client, dev_issuer)
    monkeypatch.setattr(revocation, "MAX_CASCADE", 2)
    first = client.post("/revoke", data={"credential_id": root["credential_id"]}, headers=basic(*AUDITOR))
    assert first.status_code == 503 and first.get_json()["error"] == "temporarily_unavailable"
    assert sum(ledger.get_credential(d["credential_id"]).revoked_at is not None for d in descendants) == 2
    for _ in range(3):
        response = client.post("/revoke", data={"credential_id": root["credential_id"]}, headers=basic(*AUDITOR))
    assert response.status_code == 200
    assert all(ledger.get_credential(d["credential_id"]).revoked_at is not None for d in descendants)


def test_a_descendant_whose_backend_fails_stays_live_and_is_retried(app, client, dev_issuer, ledger):
    root, (a, b, a1, a2, a1x), _ = build_tree(client, dev_issuer)
    kind = app.extensions["broker"].issuers["jwt"]

    def failing_revoke(record):
        if record.credential_id == b["credential_id"]:
            raise ConnectionError("backend down")

    kind.revoke = failing_revoke
    try:
        response = client.post("/revoke", data={"credential_id": root["credential_id"]}, headers=basic(*AUDITOR))
    finally:
        del kind.revoke
    assert response.status_code == 503
    assert ledger.get_credential(b["credential_id"]).revoked_at is None
    assert all(ledger.get_credential(c["credential_id"]).revoked_at is not None for c in (root, a, a1, a2, a1x))
    assert introspect(client, b["access_token"]) == {"active": False}      # its ancestor is revoked
    assert client.post("/revoke", data={"credential_id": root["credential_id"]},
                       headers=basic(*AUDITOR)).status_code == 200
    assert ledger.get_credential(b["credential_id"]).revoked_at is not None
