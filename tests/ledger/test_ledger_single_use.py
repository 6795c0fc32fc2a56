"""Single use anchored in the ledger: a mint claims its attestation in the mint's own
transaction, so a second mint from the same attestation is refused whatever the replay store
remembers — on both backends, across processes, and concurrently."""
from __future__ import annotations

import threading
import time

import pytest

from broker.ledger import Ledger, SingleUseTaken, open_ledger
from tests.ledger.test_ledger_store import credential, mint_draft

KEY = "github-actions:jti:run-4242-attempt-1"


def _mint(ledger: Ledger, key: str = KEY, *, until: int | None = None, now: int | None = None,
          guard=None):
    record = credential()
    until = int(time.time()) + 300 if until is None else until
    return record, ledger.record_mint(mint_draft(record), record, single_use=(key, until),
                                      now=now, guard=guard)


def test_a_second_mint_from_the_same_attestation_writes_nothing(ledger: Ledger) -> None:
    first, event = _mint(ledger)
    assert event is not None and ledger.get_credential(first.credential_id) is not None
    head = ledger.head()
    second = credential()
    with pytest.raises(SingleUseTaken):
        ledger.record_mint(mint_draft(second), second, single_use=(KEY, int(time.time()) + 300))
    assert ledger.head() == head                       # no event, no credential row
    assert ledger.get_credential(second.credential_id) is None
    assert ledger.verify().ok


def test_other_attestations_are_independent(ledger: Ledger) -> None:
    _mint(ledger, "github-actions:jti:a")
    _, event = _mint(ledger, "github-actions:jti:b")
    assert event is not None


def test_a_lapsed_use_can_be_taken_over_and_is_pruned(ledger: Ledger, raw_sql) -> None:
    now = int(time.time())
    _mint(ledger, until=now - 10, now=now - 20)        # claimed until 10 s ago
    _, event = _mint(ledger, until=now + 300, now=now)  # lapsed: the ledger lets it go
    assert event is not None
    _mint(ledger, "github-actions:jti:old", until=now - 5, now=now - 20)
    assert ledger.prune_single_use(now=now) == 1       # only the lapsed one goes
    assert raw_sql("SELECT count(*) FROM attestation_uses")[0][0] == 1


def test_the_key_is_stored_as_its_digest_only(ledger: Ledger, raw_sql) -> None:
    _mint(ledger)
    (stored,), = raw_sql("SELECT key_sha256 FROM attestation_uses")
    assert len(stored) == 64 and "jti" not in stored


def test_a_failed_guard_releases_the_claim(ledger: Ledger) -> None:
    """The approval guard matched nothing: nothing is written and the attestation is not
    burnt by the ledger (the claim ran first in the same transaction and is undone)."""
    never = ("UPDATE credentials SET revoked_at = 1 WHERE credential_id = %s"
             " RETURNING credential_id", ("no-such-credential",))
    _, event = _mint(ledger, guard=never)
    assert event is None
    _, event = _mint(ledger)
    assert event is not None


def test_concurrent_mints_from_one_attestation_across_processes_one_wins(database_url: str) -> None:
    """Several ledgers (as several broker processes) race the same attestation: exactly one
    mint is recorded."""
    ledgers = [open_ledger(database_url) for _ in range(4)]
    results: list[str] = []
    barrier = threading.Barrier(len(ledgers) * 2)

    def race(store: Ledger) -> None:
        barrier.wait()
        try:
            _mint(store)
            results.append("minted")
        except SingleUseTaken:
            results.append("refused")

    threads = [threading.Thread(target=race, args=(store,)) for store in ledgers for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert sorted(results) == ["minted"] + ["refused"] * 7
        assert ledgers[0].verify().ok
    finally:
        for store in ledgers:
            store.close()
