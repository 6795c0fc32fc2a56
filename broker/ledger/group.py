"""Group commit: concurrent appends of one process share one chain transaction.

Every append that adds one event (a mint, a deny, a revoke, an approval…) is an
:class:`Item`. A thread that appends queues its item; when no batch is being committed it
leads: it takes **every** item queued so far and commits them in one transaction — one head
lock, one commit, each event still sealed in queue order into the one chain, each guard still
run in order (so two mints consuming one approval cannot both succeed). The others wait until
their item is done and return at once: a caller never waits behind a later batch it is not in,
so it can queue its next item while that batch commits. Under load the batches grow by
themselves; alone, a thread commits its own item with no added wait.

Each caller returns only after the transaction that holds its event has committed (durable), and
with that event (or None when its guard matched nothing). When a batch fails (the database went
away, a statement failed), every item in it fails with the same :class:`LedgerUnavailable`:
nothing issued is answered without its record. Across processes, the chain head's row lock
(PostgreSQL) or the database write lock (SQLite) orders the batches.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from broker.errors import LedgerUnavailable
from broker.ledger.events import Event, EventDraft
from broker.ledger.rows import Statement

#: The most items one transaction takes (a bound on the lock hold and the statement size).
MAX_BATCH = 256


@dataclass
class Item:
    """One event to append. ``claim`` (an attestation's single use, run before ``guard``) and
    ``guard`` must each touch a row or nothing is written: a failed claim sets ``error`` to
    :class:`~broker.ledger.errors.SingleUseTaken`; a failed guard undoes the claim
    (``unclaim``) and leaves ``event`` None."""
    draft: EventDraft
    guard: Statement | None = None
    extra: Sequence[Statement] = ()
    claim: Statement | None = None
    unclaim: Statement | None = None
    done: bool = False
    event: Event | None = None
    error: BaseException | None = None
    wake: threading.Lock | None = None      # the waiting caller's (GroupCommitter.submit)


class GroupCommitter:
    """Batches :class:`Item`s into ``commit(items)`` calls (the backend's one transaction).

    Leader and followers: a caller queues its item; if no batch is being committed it becomes
    the leader, takes every queued item (at most ``max_batch``) and commits them without
    holding the queue lock. The others each block on their own item's wake-up lock, not on the
    commit: the leader wakes the members of its batch when it is done (so they return, and can
    queue their next item, while the next batch commits) and hands the lead to the owner of
    the oldest item still queued. One wake-up per item, none per waiting thread and batch.
    """

    def __init__(self, commit: Callable[[list[Item]], None], *, max_batch: int = MAX_BATCH) -> None:
        self._commit = commit
        self._max_batch = max_batch
        self._queue: list[Item] = []
        self._lock = threading.Lock()
        self._leading = False       # a batch is being committed, or the lead is being handed on
        self.batches = 0            # transactions committed or failed (for benchmarks)
        self.items = 0              # items they held

    def submit(self, item: Item) -> Event | None:
        wake = item.wake = threading.Lock()
        wake.acquire()
        with self._lock:
            self._queue.append(item)
            lead = not self._leading
            self._leading = True
        if not lead:
            try:
                wake.acquire()              # released when the item is done, or handed the lead
            except BaseException:           # interrupted (a signal handler raised): let go
                self._abandon(item)
                raise
        if not item.done:
            self._lead(item)
        if item.error is not None:
            raise item.error
        return item.event

    def _lead(self, item: Item) -> None:
        """Commit batches in queue order until one has taken ``item`` (a full batch may not
        reach it), then hand the lead to the oldest item still queued, if any. Whatever
        happens, every member of a batch is answered and the lead is passed on (a stuck lead
        would stop every append of the process)."""
        try:
            while not item.done:
                with self._lock:
                    batch, self._queue = self._queue[:self._max_batch], self._queue[self._max_batch:]
                try:
                    self._run(batch)
                finally:
                    for member in batch:
                        if not member.done:     # _run itself was interrupted
                            member.error = LedgerUnavailable("ledger append interrupted")
                            member.done = True
                        if member is not item:
                            member.wake.release()   # type: ignore[union-attr]
        finally:
            self._hand_on()

    def _hand_on(self) -> None:
        with self._lock:
            if self._queue:
                self._queue[0].wake.release()   # type: ignore[union-attr]  # it leads next
            else:
                self._leading = False

    def _abandon(self, item: Item) -> None:
        """A caller stops waiting: drop its item if no batch has taken it, and pass on the lead
        if it had been handed to it (its wake-up lock released while the item is not done)."""
        with self._lock:
            if item not in self._queue:
                return                      # in a batch: that batch answers it, to nobody
            self._queue.remove(item)
            handed = not item.done and item.wake is not None and item.wake.acquire(blocking=False)
        if handed:
            self._hand_on()

    def _run(self, batch: list[Item]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            self._commit(batch)
        except BaseException as exc:      # the whole transaction failed: so does every item
            for index, member in enumerate(batch):
                member.error = exc if index == 0 else _own_copy(exc)
        for member in batch:
            member.done = True


def _own_copy(exc: BaseException) -> BaseException:
    """Each waiting thread raises its own exception object (tracebacks are per raise)."""
    if isinstance(exc, LedgerUnavailable):
        copy = LedgerUnavailable(exc.detail, description=exc.description)
        copy.__cause__ = exc.__cause__
        return copy
    return exc
