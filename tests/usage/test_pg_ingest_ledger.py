"""The ledger side of usage ingestion: batch appends, line-key dedupe, both backends."""
from __future__ import annotations

import threading

import pytest

from broker.ledger import open_ledger
from broker.ledger.chain import Sealer
from broker.ledger.events import Event, EventDraft
from broker.ledger.rows import event_params
from broker.usage import ingest_postgres_log

ROLE_CID = "01jdtestcred0000000000000a"


@pytest.mark.parametrize("draft", [
    EventDraft(type="usage", credential_id="c", principal='p"q\u2028\x01é', run={"id": "1", "ü": [1, None]},
               authorizer={"type": "policy", "name": "x"}, target="t",
               details={"statement": "UPDATE \"x\" SET y = '✓'\n", "n": 1.5, "b": None}),
    EventDraft(type="mint"),
], ids=["unicode and escapes", "empty"])
def test_batch_sealing_is_exactly_event_sealing(draft):
    event, row = Sealer().seal(draft, seq=7, ts="2026-03-01T10:00:00.000000Z", prev_hash="ab" * 32)
    unsealed = Event(seq=7, ts="2026-03-01T10:00:00.000000Z", type=draft.type,
                     credential_id=draft.credential_id, parent_id=draft.parent_id,
                     principal=draft.principal, run=draft.run, authorizer=draft.authorizer,
                     target=draft.target, details=dict(draft.details), prev_hash="ab" * 32, hash="")
    reference = Event(**{**unsealed.__dict__, "hash": unsealed.computed_hash()})
    assert event == reference and row == event_params(reference)


def _usage(key: str, n: int) -> tuple[EventDraft, str, str, str]:
    statement = f"UPDATE accounts SET n = {n}"
    return (EventDraft(type="usage", credential_id=ROLE_CID, details={"statement": statement, "line_key": key}),
            key, "2026-03-01T10:00:00.000000Z", statement)


def test_record_usage_skips_keys_it_holds_and_repeats_within_a_batch(database_url):
    ledger = open_ledger(database_url)
    try:
        ledger.append(EventDraft(type="deny"))
        first = ledger.record_usage([_usage("k1", 1), _usage("k2", 2), _usage("k1", 3)])
        assert [e.details["statement"] for e in first] == ["UPDATE accounts SET n = 1", "UPDATE accounts SET n = 2"]
        assert [e.seq for e in first] == [2, 3]
        again = ledger.record_usage([_usage("k2", 2), _usage("k3", 4)])
        assert [e.seq for e in again] == [4]
        assert [e.seq for e in ledger.append_many([EventDraft(type="deny"), EventDraft(type="deny")])] == [5, 6]
        assert [e.seq for e in ledger.find_usage(statement="set n =")] == [2, 3, 4]
        assert [e.seq for e in ledger.find_usage(statement="N = 2")] == [3]
        assert ledger.find_usage(statement="100%_") == []
        report = ledger.verify()
        assert report.ok and report.count == 6
    finally:
        ledger.close()


def _json_lines(n: int) -> str:
    return "".join(
        '{"timestamp":"2026-03-01 10:00:00.%03d UTC","user":"nhb_%s","dbname":"p","pid":2,'
        '"session_id":"c.%d","line_num":%d,"error_severity":"LOG","message":"statement: SELECT %d"}\n'
        % (i % 1000, ROLE_CID, i // 10, i % 10 + 1, i) for i in range(n))


def test_two_ingesters_at_once_record_each_line_once(database_url, tmp_path):
    log = tmp_path / "postgresql.json"
    log.write_text(_json_lines(3000))
    ledgers = [open_ledger(database_url) for _ in range(2)]
    results, barrier = [], threading.Barrier(2)

    def run(ledger):
        barrier.wait()
        results.append(ingest_postgres_log(ledger, log, batch_size=250))

    threads = [threading.Thread(target=run, args=(ledger,)) for ledger in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert sum(r.recorded for r in results) == 3000
        assert sum(r.duplicates for r in results) == 3000
        assert sum(1 for e in ledgers[0].iter_events() if e.type == "usage") == 3000
        assert ledgers[0].verify().ok
    finally:
        for ledger in ledgers:
            ledger.close()
