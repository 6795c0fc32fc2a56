"""The ledger queries fan-out relies on, on both backends: ancestors and (unrevoked) descendants."""
from __future__ import annotations

from broker.common.ids import new_credential_id
from broker.ledger.events import CredentialRecord, EventDraft

NOW = 1_900_000_000


def mint(ledger, parent=None, *, at=0):
    record = CredentialRecord(
        credential_id=new_credential_id(now=NOW + at), parent_id=parent.credential_id if parent else None,
        principal="github:acme/app", run={"id": "1"}, authorizer={"type": "policy", "name": "p"},
        target="reports-api", target_type="jwt", scope="", issued_at=NOW + at, expires_at=NOW + 900)
    ledger.record_mint(EventDraft(type="mint", credential_id=record.credential_id,
                                  parent_id=record.parent_id), record)
    return record


def test_ancestors_and_descendants(ledger):
    root = mint(ledger)
    a, b = mint(ledger, root, at=1), mint(ledger, root, at=2)
    a1, a2 = mint(ledger, a, at=3), mint(ledger, a, at=4)
    a1x = mint(ledger, a1, at=5)
    mint(ledger)                                                     # an unrelated root

    assert [r.credential_id for r in ledger.ancestors_of(a1x.credential_id)] == \
        [a1x.credential_id, a1.credential_id, a.credential_id, root.credential_id]
    assert [r.credential_id for r in ledger.ancestors_of(a1x.credential_id, max_depth=1)] == \
        [a1x.credential_id, a1.credential_id]
    assert ledger.ancestors_of(new_credential_id()) == []

    tree = ledger.descendants_of(root.credential_id)
    assert [(r.credential_id, d) for r, d in tree] == [
        (a.credential_id, 1), (b.credential_id, 1), (a1.credential_id, 2), (a2.credential_id, 2),
        (a1x.credential_id, 3)]
    assert [r.credential_id for r, _ in ledger.descendants_of(root.credential_id, max_depth=1)] == \
        [a.credential_id, b.credential_id]
    assert len(ledger.descendants_of(root.credential_id, limit=2)) == 2

    # revoked credentials are walked through but not returned with unrevoked_only
    ledger.record_revoke(a1.credential_id, EventDraft(type="revoke", credential_id=a1.credential_id),
                         revoked_at=NOW + 10)
    left = ledger.descendants_of(root.credential_id, unrevoked_only=True)
    assert [r.credential_id for r, _ in left] == [a.credential_id, b.credential_id, a2.credential_id,
                                                 a1x.credential_id]
