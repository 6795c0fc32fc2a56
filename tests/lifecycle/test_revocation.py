"""The revocation cascade through the Flask app, on SQLite and PostgreSQL ledgers: revoking a
root revokes every descendant (each with its own event), self-revocation by the holder, an
interrupted or bounded cascade finished by a retry, a backend that fails to revoke."""
from __future__ import annotations

import pytest

from broker.ledger.events import EventDraft
from tests.support.fanout import derive, derive_form, introspect, mint_root
from tests.support.oauth import AUDITOR, basic


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
