"""The persisted tree on SQLite and PostgreSQL: batched sync, proofs equal to the pure
functions, concurrent syncs, integrity checks before nodes are written, verify_tree."""
from __future__ import annotations

import threading

import pytest

from broker.ledger import Ledger
from broker.transparency import merkle
from broker.transparency.tree import LedgerTree, TreeIntegrityError, nodes_below, verify_tree
from tests.support.merkle import fill, raw_sql, read_events


def leaf_hashes(ledger: Ledger) -> list[bytes]:
    return [merkle.leaf_hash(e.canonical_bytes()) for e in ledger.iter_events()]


def test_sync_in_batches_then_every_proof_matches(ledger: Ledger, database_url: str) -> None:
    fill(ledger, 21)
    tree = LedgerTree(ledger, batch=4)
    assert tree.sizes() == (0, 21)
    assert tree.sync(upto=10) == 10
    assert tree.sizes() == (10, 21)
    assert tree.sync() == 21
    hashes = leaf_hashes(ledger)
    assert raw_sql(database_url, [("SELECT count(*) FROM merkle_nodes", ())])[0][0] == nodes_below(21)
    for size in range(1, 22):
        assert tree.root(size) == merkle.root_hash(hashes[:size])
        for seq in range(1, size + 1):
            proof = tree.inclusion_proof(seq, size)
            assert proof.hashes == merkle.inclusion_proof(seq - 1, hashes[:size])
            assert proof.leaf_hash == hashes[seq - 1]
            merkle.verify_inclusion(proof.leaf_hash, proof.leaf_index, size, proof.hashes,
                                    proof.root_hash)
        for size1 in range(0, size + 1):
            c = tree.consistency_proof(size1, size)
            assert c.hashes == merkle.consistency_proof(size1, hashes[:size])
            merkle.verify_consistency(size1, size, c.hashes, c.first_root, c.second_root)


def test_proofs_sync_the_tree_on_demand(ledger: Ledger) -> None:
    fill(ledger, 5)
    tree = LedgerTree(ledger)
    assert tree.inclusion_proof(5, 5).tree_size == 5
    assert tree.sizes() == (5, 5)
    fill(ledger, 3, start=5)
    assert tree.consistency_proof(5, 8).second_size == 8
    assert tree.sizes() == (8, 8)
    with pytest.raises(LookupError):
        tree.root(9)


def test_concurrent_syncs_write_each_node_once(ledger: Ledger, database_url: str) -> None:
    fill(ledger, 40)
    errors: list[BaseException] = []

    def sync() -> None:
        try:
            LedgerTree(ledger, batch=3).sync()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=sync) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert raw_sql(database_url, [("SELECT count(*) FROM merkle_nodes", ())])[0][0] == nodes_below(40)
    assert LedgerTree(ledger).root(40) == merkle.root_hash(leaf_hashes(ledger))


def test_sync_refuses_events_that_break_the_chain(ledger: Ledger, database_url: str) -> None:
    fill(ledger, 6)
    LedgerTree(ledger).sync()
    fill(ledger, 4, start=6)
    raw_sql(database_url, [("UPDATE events SET principal = %s WHERE seq = 8", ("ci:mallory",))])
    with pytest.raises(TreeIntegrityError) as caught:
        LedgerTree(ledger).sync()
    assert caught.value.seq == 8
    assert LedgerTree(ledger).sizes() == (6, 10)          # nothing was added


def test_verify_tree_finds_a_changed_node_and_gives_roots(ledger: Ledger, database_url: str) -> None:
    fill(ledger, 13)
    tree = LedgerTree(ledger)
    tree.sync()
    fill(ledger, 2, start=13)                                # not yet in the stored tree
    hashes = leaf_hashes(ledger)
    with ledger.snapshot() as read:
        report = verify_tree(read, sizes=[0, 5, 13], proof_from=5)
    assert report.ok and report.tree_size == 13 and report.ledger_size == 15
    assert report.checked_nodes == nodes_below(13)
    assert report.roots == {n: merkle.root_hash(hashes[:n]) for n in (0, 5, 13, 15)}
    assert report.consistency == merkle.consistency_proof(5, hashes)

    raw_sql(database_url, [("UPDATE merkle_nodes SET hash = %s WHERE level = 1 AND idx = 2",
                            (bytes(32),))])
    with ledger.snapshot() as read:
        report = verify_tree(read)
    assert not report.ok and report.first_bad_seq == 5 and "level 1, index 2" in report.reason

    raw_sql(database_url, [("DELETE FROM merkle_nodes WHERE level = 0 AND idx = 12", ())])
    raw_sql(database_url, [("UPDATE merkle_nodes SET hash = %s WHERE level = 1 AND idx = 2",
                            (merkle.node_hash(hashes[4], hashes[5]),))])
    with ledger.snapshot() as read:
        report = verify_tree(read)
    assert not report.ok and report.first_bad_seq == 13 and "missing" in report.reason


def test_leaf_is_the_events_canonical_bytes(ledger: Ledger, database_url: str) -> None:
    fill(ledger, 3)
    proof = LedgerTree(ledger).inclusion_proof(2, 3)
    event = read_events(database_url)[1]
    assert proof.leaf == event.canonical_bytes() and proof.leaf_index == 1
