"""Many processes (and threads) against one ledger: one schema, one chain, nothing lost.

Children are started with the ``spawn`` method on purpose: like a gunicorn worker that builds
its app after forking, each child opens its own Ledger and inherits no connection, pool
thread or lock from the test process. A barrier releases them together.
"""
from __future__ import annotations

import multiprocessing
import threading
from collections import Counter

import pytest

from broker.ledger import EventDraft, Ledger, open_ledger
from broker.ledger.schema import MIGRATIONS

SPAWN = multiprocessing.get_context("spawn")
PROCESSES = 4
APPENDS_PER_PROCESS = 250
JOIN_TIMEOUT = 60


def _open_then_append(url: str, worker: int, barrier) -> None:
    barrier.wait(timeout=JOIN_TIMEOUT)
    with open_ledger(url, timeout=30) as ledger:
        ledger.append(EventDraft(type="deny", details={"worker": worker}))


def _append_many(url: str, worker: int, count: int, barrier) -> None:
    with open_ledger(url, timeout=30) as ledger:
        barrier.wait(timeout=JOIN_TIMEOUT)
        for i in range(count):
            ledger.append(EventDraft(type="usage", credential_id=f"cred-{worker}",
                                     details={"worker": worker, "i": i}))


def _run_children(target, args_for) -> None:
    barrier = SPAWN.Barrier(PROCESSES)
    children = [SPAWN.Process(target=target, args=(*args_for(worker), barrier))
                for worker in range(PROCESSES)]
    for child in children:
        child.start()
    for child in children:
        child.join(JOIN_TIMEOUT)
    for child in children:
        if child.is_alive():
            child.kill()
    assert [child.exitcode for child in children] == [0] * PROCESSES


def test_schema_creation_races_safely_on_an_empty_database(database_url: str, raw_sql) -> None:
    _run_children(_open_then_append, lambda worker: (database_url, worker))

    assert raw_sql("SELECT version FROM schema_version ORDER BY version") == \
        [(m.version,) for m in sorted(MIGRATIONS, key=lambda m: m.version)]
    with open_ledger(database_url) as ledger:
        assert ledger.count() == PROCESSES
        report = ledger.verify()
        assert report.ok and report.count == PROCESSES
        assert sorted(e.details["worker"] for e in ledger.iter_events()) == list(range(PROCESSES))


def test_concurrent_appends_from_processes_keep_one_chain(ledger: Ledger, database_url: str,
                                                          raw_sql) -> None:
    _run_children(_append_many, lambda worker: (database_url, worker, APPENDS_PER_PROCESS))

    total = PROCESSES * APPENDS_PER_PROCESS
    assert ledger.count() == total
    report = ledger.verify()
    assert report.ok and report.count == total, report
    assert ledger.head()[0] == total
    assert raw_sql("SELECT count(DISTINCT seq), min(seq), max(seq) FROM events") == [
        (total, 1, total)]
    events = list(ledger.iter_events())
    # every append of every worker is there exactly once
    assert Counter((e.details["worker"], e.details["i"]) for e in events) == Counter(
        {(w, i): 1 for w in range(PROCESSES) for i in range(APPENDS_PER_PROCESS)})
    # time order is seq order
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    # each worker's own appends kept their order
    for worker in range(PROCESSES):
        mine = ledger.events_for_credential(f"cred-{worker}", limit=APPENDS_PER_PROCESS)
        assert [e.details["i"] for e in mine] == list(range(APPENDS_PER_PROCESS))


def test_concurrent_appends_from_threads_share_one_ledger(ledger: Ledger) -> None:
    threads_n, per_thread = 8, 40
    errors: list[BaseException] = []
    start = threading.Barrier(threads_n)

    def work(worker: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                if i % 10 == 0:
                    ledger.verify()               # readers alongside the writers
                ledger.append(EventDraft(type="usage", details={"worker": worker, "i": i}))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert errors == []
    assert ledger.count() == threads_n * per_thread
    assert ledger.verify().ok


def test_concurrent_revokes_of_one_credential_record_one_event(ledger: Ledger) -> None:
    from broker.common.ids import new_credential_id
    from broker.ledger import CredentialRecord

    record = CredentialRecord(
        credential_id=new_credential_id(), principal="ci:a", run={"id": "r"},
        authorizer={"policy": "p"}, target="db", target_type="postgres", scope="read",
        issued_at=1, expires_at=2)
    ledger.record_mint(EventDraft(type="mint", credential_id=record.credential_id), record)
    results: list[object] = []
    start = threading.Barrier(6)

    def revoke() -> None:
        start.wait()
        results.append(ledger.record_revoke(
            record.credential_id,
            EventDraft(type="revoke", credential_id=record.credential_id), revoked_at=5))

    threads = [threading.Thread(target=revoke) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert sum(result is not None for result in results) == 1
    assert [e.type for e in ledger.events_for_credential(record.credential_id)] == [
        "mint", "revoke"]
    assert ledger.verify().ok


@pytest.fixture(autouse=True)
def _no_leftover_children():
    yield
    for child in multiprocessing.active_children():
        child.kill()
