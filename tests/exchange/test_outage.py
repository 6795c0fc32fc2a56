"""The outage recorder on a real ledger: many refusals, few events, every count kept."""
from __future__ import annotations

import threading

import pytest

from broker import errors
from broker.exchange.outage import OutageRecorder
from broker.ledger import Ledger, open_ledger

DOWN = errors.BackendUnavailable(detail="postgres target 'db': no admin connection within 1s")


@pytest.fixture
def ledger(database_url: str):
    store = open_ledger(database_url)
    yield store
    store.close()


def _attempt(n: int) -> dict[str, object]:
    return {"at": f"t{n}", "target": "db", "principal": None, "attestation_sha256": f"{n:064d}"}


def _outages(ledger: Ledger, recorder: OutageRecorder) -> list[dict[str, object]]:
    assert recorder.flush()                          # the writer thread has written the queue
    return [e.details for e in ledger.iter_events() if e.type == "outage"]


def test_concurrent_refusals_open_one_outage_and_count_every_one(ledger: Ledger) -> None:
    recorder = OutageRecorder(ledger)
    barrier = threading.Barrier(8)

    def refuse(n: int) -> None:
        barrier.wait()
        for i in range(25):
            recorder.refused("target:db", DOWN, _attempt(n * 100 + i))

    threads = [threading.Thread(target=refuse, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [d["phase"] for d in _outages(ledger, recorder)] == ["start"]
    recorder.succeeded("target:db")
    start, end = _outages(ledger, recorder)
    assert end["phase"] == "end" and end["count"] == 200 and end["cause"] == "target:db"
    assert ledger.verify().ok
    recorder.close()


def test_a_long_outage_writes_one_ongoing_event_per_window(ledger: Ledger) -> None:
    recorder = OutageRecorder(ledger, window=60, quiet=3600)
    for second in range(0, 181, 10):                 # a refusal every 10 s for 3 minutes
        recorder.refused("replay_store", DOWN, _attempt(second), now=1000.0 + second)
        assert recorder.flush()                      # (in real time the start is long written)
    phases = [(d["phase"], d.get("count")) for d in _outages(ledger, recorder)]
    assert phases == [("start", None), ("ongoing", 7), ("ongoing", 6), ("ongoing", 6)]
    recorder.end_idle(now=1000.0 + 181 + 3600)
    assert _outages(ledger, recorder)[-1]["count"] == 19
    recorder.close()


def test_an_unrelated_success_does_not_end_a_target_outage(ledger: Ledger) -> None:
    recorder = OutageRecorder(ledger)
    recorder.refused("target:db", DOWN, _attempt(1))
    recorder.succeeded("target:other-db")            # another target minted fine
    assert [d["phase"] for d in _outages(ledger, recorder)] == ["start"]
    recorder.succeeded("target:db")
    assert [d["phase"] for d in _outages(ledger, recorder)] == ["start", "end"]
    recorder.close()


def test_a_start_that_could_not_be_written_is_written_by_a_later_refusal(database_url: str) -> None:
    store = open_ledger(database_url)
    recorder = OutageRecorder(store)
    store.close()                                    # the ledger is gone too
    recorder.refused("signer", DOWN, _attempt(1))
    assert recorder.flush()                          # tried, and could not be written
    reopened = open_ledger(database_url)
    try:
        recorder._ledger = reopened                  # noqa: SLF001 - the ledger is back
        recorder.refused("signer", DOWN, _attempt(2))
        start, = _outages(reopened, recorder)
        assert start["phase"] == "start"
        assert start["first_attempt"]["at"] == "t1"  # the real first attempt
        recorder.close()                             # a clean shutdown ends what is open
        end = _outages(reopened, recorder)[-1]
        assert end["phase"] == "end" and end["count"] == 2
    finally:
        reopened.close()
