"""The one liveness rule (broker.lifecycle.liveness) as introspection and derivation apply it:
an ancestor's expiry, revocation or end makes every descendant inactive and underivable."""
from __future__ import annotations

import time
from typing import Any

import pytest

from broker.ledger.events import CredentialRecord
from broker.lifecycle import liveness
from tests.support.fanout import derive, derive_form, introspect, mint_root


def _set(ledger, credential_id: str, column: str, value: int) -> None:
    assert column in ("expires_at", "ended_at", "revoked_at")
    with ledger.transaction() as tx:
        tx.execute(f"UPDATE credentials SET {column} = %s WHERE credential_id = %s",
                   (value, credential_id))


@pytest.mark.parametrize("column, state", [("expires_at", "expired"), ("ended_at", "ended"),
                                           ("revoked_at", "revoked")])
def test_an_ancestor_that_is_no_longer_live_makes_the_grandchild_inactive_and_underivable(
        client, dev_issuer, ledger, column, state):
    root = mint_root(client, dev_issuer)
    child = derive(client, root, "reports-api", scope="reports:read")
    grandchild = derive(client, child, "reports-api", scope="reports:read")
    assert introspect(client, grandchild["access_token"])["active"] is True

    # The root alone changes (an expiry in the past cannot happen to a live child through the
    # API: a child never outlives its parent; the row is edited to show the rule holds anyway).
    _set(ledger, root["credential_id"], column, int(time.time()) - 5)

    assert introspect(client, grandchild["access_token"]) == {"active": False}
    event = ledger.events_for_credential(grandchild["credential_id"])[-1]
    assert event.type == "introspect" and event.details["reason"] == f"ancestor {state}"

    refused = client.post("/token", data=derive_form(grandchild["access_token"], "reports-api"))
    assert refused.status_code == 400 and refused.get_json()["error"] == "invalid_grant"
    assert refused.get_json()["error_description"] == f"the parent credential's ancestor is {state}"
    deny = ledger.search_events(type="deny")[-1]
    assert deny.parent_id == grandchild["credential_id"]
    assert deny.details["reason"] == f"ancestor credential {root['credential_id']} {state}"


def _record(cid: str, *, parent: str | None = None, expires: int = 2_000_000_000,
            authorizer: dict | None = None, **states: Any) -> CredentialRecord:
    return CredentialRecord(credential_id=cid, parent_id=parent, principal="p", run={},
                            authorizer=authorizer or {"type": "policy"}, target="t",
                            target_type="jwt", scope="", issued_at=1, expires_at=expires, **states)


@pytest.mark.parametrize("lineage, grants, expected", [
    ([_record("a")], {}, (None, None, 0)),
    ([], {}, (liveness.UNKNOWN, None, 0)),
    ([_record("a", expires=100)], {}, (liveness.EXPIRED, "a", 0)),
    ([_record("b", parent="a"), _record("a", expires=100)], {}, (liveness.EXPIRED, "a", 1)),
    ([_record("b", parent="a"), _record("a", revoked_at=5)], {}, (liveness.REVOKED, "a", 1)),
    ([_record("c", parent="b"), _record("b", parent="a", ended_at=5), _record("a")], {},
     (liveness.ENDED, "b", 1)),
    ([_record("b", parent="a")], {}, (liveness.TOO_DEEP, "b", 0)),
    ([_record("b", parent="a"),
      _record("a", authorizer={"type": "delegation", "grant_id": "dlg_1"})],
     {"dlg_1": (7, 2_000_000_000)}, (liveness.DELEGATION_REVOKED, "a", 1)),
    ([_record("a", authorizer={"type": "delegation", "grant_id": "dlg_1"})],
     {"dlg_1": (None, 150)}, (liveness.DELEGATION_EXPIRED, "a", 0)),
    ([_record("a", authorizer={"type": "delegation", "grant_id": "dlg_1"})], {},
     (liveness.DELEGATION_REVOKED, "a", 0)),
    ([_record("a", authorizer={"type": "delegation", "grant_id": "dlg_1"})],
     {"dlg_1": (None, 2_000_000_000)}, (None, None, 0)),
], ids=["live root", "unknown", "expired", "expired parent", "revoked parent", "ended middle",
        "lineage cut short", "delegation revoked", "delegation expired", "delegation unknown",
        "delegation live"])
def test_the_rule_table(lineage, grants, expected):
    verdict = liveness.judge(lineage, now=200, delegation=grants.get)
    assert (verdict.state, verdict.culprit, verdict.depth) == expected
    assert verdict.live == (expected[0] is None)
