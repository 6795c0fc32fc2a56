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


def test_a_caller_whose_item_misses_a_full_batch_waits_for_the_next() -> None:
    """More appends queued than one batch takes: each caller still returns its own event, never
    None (the lock holder's batch may hold other callers' items and not its own)."""
    committed: list[list[int]] = []
    gate = threading.Event()

    def commit(items: list[Item]) -> None:
        gate.wait(10)                       # the first holder waits until all are queued
        committed.append([int(i.draft.details["n"]) for i in items])
        for i in items:
            i.event = i.draft  # type: ignore[assignment]   # any non-None marker of "written"

    group = GroupCommitter(commit, max_batch=2)
    got: dict[int, object] = {}
    threads = [threading.Thread(target=lambda n=n: got.__setitem__(
        n, group.submit(Item(draft=EventDraft(type="deny", details={"n": n}))))) for n in range(9)]
    for t in threads:
        t.start()
    while len(group._queue) + group.items < 9:   # every caller has queued its item
        threading.Event().wait(0.01)
    gate.set()
    for t in threads:
        t.join(10)
    assert sorted(got) == list(range(9))
    assert all(got[n] is not None and got[n].details["n"] == n for n in got)  # type: ignore[attr-defined]
    assert all(len(batch) <= 2 for batch in committed)
    assert sorted(n for batch in committed for n in batch) == list(range(9))


def _mint_item(ledger: Ledger, cid: str, *, key: str, parent: str | None = None,
               now: int = 1_000) -> Item:
    """The Item record_mint queues for a mint claiming attestation ``key``."""
    from broker.common.canonical import sha256_hex
    from broker.ledger.rows import (
        SQL_CLAIM_SINGLE_USE,
        SQL_INSERT_CREDENTIAL,
        SQL_INSERT_LINEAGE,
        SQL_UNCLAIM_SINGLE_USE,
        credential_params,
        lineage_params,
    )

    record = CredentialRecord(credential_id=cid, principal="p", run={"id": "r1"},
                              authorizer={"type": "policy"}, target="t", target_type="jwt",
                              scope="s", issued_at=now, expires_at=now + 300, parent_id=parent)
    digest = sha256_hex(key.encode())
    return Item(draft=EventDraft(type="mint", credential_id=cid, parent_id=parent, principal="p",
                                 run={"id": "r1"}, target="t"),
                extra=((SQL_INSERT_CREDENTIAL, credential_params(record)),
                       (SQL_INSERT_LINEAGE, lineage_params(record))),
                claim=(SQL_CLAIM_SINGLE_USE, (digest, now + 360, cid, now)),
                unclaim=(SQL_UNCLAIM_SINGLE_USE, (digest, cid)))


def test_a_large_batch_of_mints_writes_what_one_by_one_would(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch past the PostgreSQL backend's COPY threshold (and the same batch on SQLite):
    each mint its event, credential and lineage rows; an attestation already used, and one
    repeated within the batch, refused with SingleUseTaken and nothing written for them."""
    from broker.ledger.errors import SingleUseTaken
    from broker.ledger.postgres import COPY_BATCH

    ledger._commit_guarded([_mint_item(ledger, "root", key="k-root")])
    items = [_mint_item(ledger, f"c{n}", key=f"k{n}") for n in range(COPY_BATCH + 4)]
    items[3] = _mint_item(ledger, "c3", key="k-root")                  # used before
    items[6] = _mint_item(ledger, "c6", key="k5")                      # repeats item 5's
    items[8] = _mint_item(ledger, "c8", key="k8", parent="root")      # a child: lineage walk
    copied: list[int] = []
    if ledger.dialect == "postgres":
        original = ledger._commit_copy  # type: ignore[attr-defined]
        monkeypatch.setattr(ledger, "_commit_copy",
                            lambda batch: (copied.append(len(batch)), original(batch))[1])
    ledger._commit_guarded(items)
    assert copied == ([len(items)] if ledger.dialect == "postgres" else [])
    refused = {i.draft.credential_id for i in items if i.error is not None}
    assert refused == {"c3", "c6"}
    assert all(isinstance(i.error, SingleUseTaken) and i.event is None
               for i in items if i.error is not None)
    written = [i for i in items if i.error is None]
    assert [i.event.seq for i in written] == list(range(2, 2 + len(written)))
    for item in written:
        cid = item.draft.credential_id or ""
        record = ledger.get_credential(cid)
        assert record is not None and record.issued_at == 1_000 and record.scope == "s"
    assert ledger.get_credential("c3") is None and ledger.get_credential("c6") is None
    assert [r.credential_id for r in ledger.ancestors_of("c8")] == ["c8", "root"]
    rows = ledger.read("SELECT ancestor_id, depth FROM credential_lineage WHERE credential_id = %s"
                       " ORDER BY depth", ("c8",))
    assert [tuple(r) for r in rows] == [("c8", 0), ("root", 1)]
    rows = ledger.read("SELECT ancestor_id, depth FROM credential_lineage WHERE credential_id = %s",
                       ("c0",))
    assert [tuple(r) for r in rows] == [("c0", 0)]
    assert ledger.verify().ok and ledger.verify().count == 1 + len(written)
    # the claims are anchored: the same attestation again is refused, one by one too
    again = _mint_item(ledger, "c-again", key="k0")
    ledger._commit_guarded([again])
    assert isinstance(again.error, SingleUseTaken)


def test_a_large_batch_with_a_guard_keeps_the_one_by_one_path(ledger: Ledger) -> None:
    """A guard decides per item (in order), so a batch holding one is not copied."""
    from broker.ledger.postgres import COPY_BATCH
    from broker.ledger.rows import SQL_SET_REVOKED

    ledger.record_mint(EventDraft(type="mint", credential_id="c1"), _record("c1"))
    items = [Item(draft=EventDraft(type="deny", details={"n": n})) for n in range(COPY_BATCH)]
    items += [Item(draft=EventDraft(type="revoke", credential_id="c1", details={"n": n}),
                   guard=(SQL_SET_REVOKED, (10, "c1"))) for n in (1, 2)]
    ledger._commit_guarded(items)
    assert all(i.event is not None for i in items[:COPY_BATCH])
    assert items[-2].event is not None and items[-1].event is None
    assert ledger.verify().ok


def test_a_commit_interrupted_by_a_base_exception_leaves_no_stuck_lead() -> None:
    """KeyboardInterrupt inside a commit fails that batch; the next append still commits (a lead
    left taken would stop every append of the process)."""
    calls: list[int] = []

    def commit(items: list[Item]) -> None:
        calls.append(len(items))
        if len(calls) == 1:
            raise KeyboardInterrupt
        for i in items:
            i.event = i.draft  # type: ignore[assignment]

    group = GroupCommitter(commit)
    with pytest.raises(KeyboardInterrupt):
        group.submit(Item(draft=EventDraft(type="deny")))
    done: list[object] = []
    t = threading.Thread(target=lambda: done.append(group.submit(Item(draft=EventDraft(type="deny")))))
    t.start()
    t.join(5)
    assert done and done[0] is not None and calls == [1, 1]


def test_a_waiter_that_gives_up_drops_its_item_and_passes_on_a_lead_handed_to_it() -> None:
    group = GroupCommitter(lambda items: None)
    waiting = Item(draft=EventDraft(type="deny"), wake=threading.Lock())
    assert waiting.wake is not None
    waiting.wake.acquire()
    group._leading, group._queue = True, [waiting]         # another thread leads
    group._abandon(waiting)
    assert group._queue == [] and group._leading            # not handed: the leader still leads
    handed = Item(draft=EventDraft(type="deny"), wake=threading.Lock())
    group._queue = [handed]                                  # the leader handed it the lead
    group._abandon(handed)
    assert group._queue == [] and not group._leading        # passed on: nobody left, lead free
    group.submit(Item(draft=EventDraft(type="deny")))       # and the next caller leads at once
