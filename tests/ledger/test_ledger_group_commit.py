"""Group commit (broker/ledger/group.py): concurrent appends of one process share
transactions, and still every caller gets its own event, sealed in order into one chain,
guards still hold one by one, and a failed batch fails every caller in it."""
from __future__ import annotations

import threading

import pytest

from broker import errors
from broker.ledger import CredentialRecord, EventDraft, Ledger
from broker.ledger.group import GroupCommitter, Item

THREADS = 16
APPENDS = 40


def _record(cid: str) -> CredentialRecord:
    return CredentialRecord(credential_id=cid, principal="p", run={"id": "1"}, authorizer={"type": "policy"},
                            target="t", target_type="jwt", scope="", issued_at=1, expires_at=2_000_000_000)


def test_concurrent_appends_share_transactions_and_each_gets_its_event(ledger: Ledger) -> None:
    results: dict[int, list[int]] = {}
    barrier = threading.Barrier(THREADS)

    def work(worker: int) -> None:
        barrier.wait()
        results[worker] = [ledger.append(EventDraft(type="deny", details={"w": worker, "i": i})).seq
                           for i in range(APPENDS)]

    threads = [threading.Thread(target=work, args=(w,)) for w in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    seqs = sorted(s for got in results.values() for s in got)
    assert seqs == list(range(1, THREADS * APPENDS + 1))         # each its own, no gaps
    group = ledger.__dict__["_group"]
    assert group.items == THREADS * APPENDS and group.batches < group.items   # they shared
    for worker, got in results.items():                          # each thread's own order kept
        assert got == sorted(got)
        events = [ledger.search_events(after_seq=s - 1, limit=1)[0] for s in got]
        assert [e.details for e in events] == [{"w": worker, "i": i} for i in range(APPENDS)]
    assert ledger.verify().ok


def test_guards_in_one_batch_run_in_order(ledger: Ledger) -> None:
    """Two revocations of one credential in one transaction: the second guard sees the first."""
    ledger.record_mint(EventDraft(type="mint", credential_id="c1"), _record("c1"))
    from broker.ledger.rows import SQL_SET_REVOKED

    items = [Item(draft=EventDraft(type="revoke", credential_id="c1", details={"n": n}),
                  guard=(SQL_SET_REVOKED, (10, "c1"))) for n in (1, 2)]
    ledger._commit_guarded(items)           # one transaction, as the group committer runs it
    assert items[0].event is not None and items[1].event is None
    assert [e.type for e in ledger.events_for_credential("c1")] == ["mint", "revoke"]
    assert ledger.verify().ok


def test_a_failed_batch_fails_every_caller_in_it() -> None:
    calls: list[int] = []

    def commit(items: list[Item]) -> None:
        calls.append(len(items))
        raise errors.LedgerUnavailable("ledger database error during append")

    group = GroupCommitter(commit)
    with pytest.raises(errors.LedgerUnavailable):
        group.submit(Item(draft=EventDraft(type="deny")))
    items = [Item(draft=EventDraft(type="deny")) for _ in range(3)]
    group._run(items)                       # one transaction holding three callers' items
    assert calls == [1, 3]
    assert all(isinstance(i.error, errors.LedgerUnavailable) and i.event is None for i in items)
    assert len({id(i.error) for i in items}) == 3          # each caller raises its own copy
