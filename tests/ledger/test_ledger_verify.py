"""Chain verification catches each kind of tampering done with raw SQL, naming the first bad
event."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from broker.common.canonical import canonical_json
from broker.ledger import EventDraft, Ledger
from broker.ledger.rows import EVENT_COLUMNS, event_from_row

SWAPPED_COLUMNS = ("ts", "type", "credential_id", "parent_id", "principal", "run", "run_id",
                   "authorizer", "target", "details", "prev_hash", "hash")


def fill(ledger: Ledger, n: int = 5) -> None:
    for i in range(1, n + 1):
        ledger.append(EventDraft(type="usage", credential_id="c", principal="ci:a",
                                 run={"id": "r1"}, details={"statement": i}))


def alter_details(sql) -> None:
    sql("UPDATE events SET details = %s WHERE seq = 3", '{"statement":333}')


def alter_principal(sql) -> None:
    sql("UPDATE events SET principal = %s WHERE seq = 2", "ci:someone-else")


def alter_run(sql) -> None:
    sql("UPDATE events SET run = %s WHERE seq = 4", '{"id":"r1","extra":1}')


def delete_middle(sql) -> None:
    sql("DELETE FROM events WHERE seq = 3")


def delete_first(sql) -> None:
    sql("DELETE FROM events WHERE seq = 1")


def delete_last(sql) -> None:
    sql("DELETE FROM events WHERE seq = 5")


def swap_2_and_3(sql) -> None:
    columns = ", ".join(SWAPPED_COLUMNS)
    row2 = sql(f"SELECT {columns} FROM events WHERE seq = 2")[0]
    row3 = sql(f"SELECT {columns} FROM events WHERE seq = 3")[0]
    assignments = ", ".join(f"{c} = %s" for c in SWAPPED_COLUMNS)
    sql(f"UPDATE events SET {assignments} WHERE seq = 2", *row3)
    sql(f"UPDATE events SET {assignments} WHERE seq = 3", *row2)


def forge_with_recomputed_hash(sql) -> None:
    """Alter seq 3 and give it the correct hash of its new content: seq 4 stops linking."""
    event = event_from_row(sql(f"SELECT {EVENT_COLUMNS} FROM events WHERE seq = 3")[0])
    forged = dataclasses.replace(event, details={"statement": 999})
    sql("UPDATE events SET details = %s, hash = %s WHERE seq = 3",
        canonical_json(forged.details).decode(), forged.computed_hash())


def forge_head(sql) -> None:
    sql("UPDATE ledger_head SET hash = %s WHERE id = 1", "f" * 64)


# (case, tampering, first_bad_seq, reason prefix, events that verified before it)
CASES: list[tuple[str, Callable, int, str, int]] = [
    ("altered-details", alter_details, 3, "hash mismatch", 2),
    ("altered-principal", alter_principal, 2, "hash mismatch", 1),
    ("altered-run", alter_run, 4, "hash mismatch", 3),
    # a missing row is named by the seq where the gap is seen
    ("deleted-middle-row", delete_middle, 4, "missing event(s) before seq 4", 2),
    ("deleted-first-row", delete_first, 2, "missing event(s) before seq 2", 0),
    ("deleted-last-row", delete_last, 5, "head does not match last event", 4),
    ("swapped-rows-2-and-3", swap_2_and_3, 2, "hash mismatch", 1),
    ("forged-row-with-recomputed-hash", forge_with_recomputed_hash, 4,
     "prev_hash does not link", 3),
    ("forged-head", forge_head, 5, "head does not match last event", 5),
]


def test_intact_chain_verifies(ledger: Ledger) -> None:
    fill(ledger)
    report = ledger.verify()
    assert report.ok
    assert report.count == 5
    assert report.first_bad_seq is None


@pytest.mark.parametrize(("tampering", "first_bad_seq", "reason", "count"),
                         [pytest.param(*case, id=name) for name, *case in CASES])
def test_tampering_is_detected(ledger: Ledger, raw_sql, tampering: Callable,
                               first_bad_seq: int, reason: str, count: int) -> None:
    fill(ledger)
    tampering(raw_sql)

    report = ledger.verify()

    assert not report.ok
    assert report.first_bad_seq == first_bad_seq, report
    assert report.reason.startswith(reason), report
    assert report.count == count, report


def test_verify_streams_across_batches(ledger: Ledger, raw_sql) -> None:
    fill(ledger, 12)
    report = ledger.verify(batch=5)
    assert (report.ok, report.count) == (True, 12)
    raw_sql("UPDATE events SET details = %s WHERE seq = 11", '{"statement":0}')
    report = ledger.verify(batch=5)
    assert (report.ok, report.first_bad_seq, report.count) == (False, 11, 10)
