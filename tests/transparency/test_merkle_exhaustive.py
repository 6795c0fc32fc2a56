"""Every tree size 1..64: every inclusion proof and every consistency proof is the one the RFC
6962 recursion gives, verifies (with our verifier and an independent one), and fails when
tampered with; a rewritten history is reported as a forked log, not as a bad proof."""
from __future__ import annotations

import pytest

from broker.transparency import merkle
from tests.support.merkle import (
    Rejected,
    independent_verify_consistency,
    independent_verify_inclusion,
    ref_mth,
    ref_path,
    ref_proof,
)

MAX = 64
DATA = [f"event {i}".encode() for i in range(MAX)]
HASHES = [merkle.leaf_hash(d) for d in DATA]
ROOTS = [merkle.root_hash(HASHES[:n]) for n in range(MAX + 1)]
ERRORS = (merkle.InvalidProof, merkle.ForkedLog)


def _accepts(verify, *args) -> bool:
    try:
        verify(*args)
    except (merkle.InvalidProof, merkle.ForkedLog, Rejected):
        return False
    return True


def flip(h: bytes, bit: int = 0) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


def test_roots_match_the_recursive_definition() -> None:
    for n in range(MAX + 1):
        assert ROOTS[n] == ref_mth(DATA[:n])


@pytest.mark.parametrize("size", range(1, MAX + 1))
def test_every_inclusion_proof(size: int) -> None:
    root = ROOTS[size]
    for index in range(size):
        proof = merkle.inclusion_proof(index, HASHES[:size])
        assert proof == ref_path(index, DATA[:size])
        leaf = HASHES[index]
        assert merkle.verify_inclusion(leaf, index, size, proof, root) is None
        independent_verify_inclusion(leaf, index, size, proof, root)
        tampered = [
            (leaf, index, size, proof, flip(root)),                      # wrong root
            (flip(leaf), index, size, proof, root),                      # wrong leaf
            (leaf, index, size, proof + [root], root),                   # extra hash
            (leaf, index, size, [root] + proof, root),
        ]
        tampered += [(leaf, index, size, proof[:i] + [flip(p, 7)] + proof[i + 1:], root)
                     for i, p in enumerate(proof)]                       # flipped bit
        if proof:
            tampered.append((leaf, index, size, proof[:-1], root))       # missing hash
            tampered.append((leaf, index, size, proof[1:], root))
        for args in tampered:
            with pytest.raises(merkle.InvalidProof):
                merkle.verify_inclusion(*args)
        # Wrong index or size. Where the claimed position has a path of another length the
        # proof is always refused. Where it has the same shape (leaf 0 of 3 and of 4 hash
        # alike) RFC 9162 verification cannot tell, and no verifier can: ours agrees with the
        # independent one on every probe.
        wrong = {(index - 1, size), (index + 1, size), (index ^ 2, size), (index, size - 1),
                 (index, size + 1), (index, size * 2), (index, size // 2)} - {(index, size)}
        for i2, s2 in sorted(p for p in wrong if 0 <= p[0] < p[1]):
            ours = _accepts(merkle.verify_inclusion, leaf, i2, s2, proof, root)
            assert ours == _accepts(independent_verify_inclusion, leaf, i2, s2, proof, root)
            if len(merkle.inclusion_ranges(i2, s2)) != len(proof) or s2 in (size * 2, size // 2):
                assert not ours, (index, size, i2, s2)


@pytest.mark.parametrize("size2", range(1, MAX + 1))
def test_every_consistency_proof(size2: int) -> None:
    root2 = ROOTS[size2]
    for size1 in range(0, size2 + 1):
        root1 = ROOTS[size1]
        proof = merkle.consistency_proof(size1, HASHES[:size2])
        assert proof == ref_proof(size1, DATA[:size2])
        assert merkle.verify_consistency(size1, size2, proof, root1, root2) is None
        if size1:
            independent_verify_consistency(size1, size2, proof, root1, root2)
        if not proof:
            continue
        tampered = [
            (size1, size2, proof, flip(root1), root2),
            (size1, size2, proof, root1, flip(root2)),
            (size1, size2, proof, root2, root1),
            (size1, size2, proof + [root2], root1, root2),               # extra hash
            (size1, size2, [proof[0]] + proof, root1, root2),
            (size1, size2, proof[:-1], root1, root2),                    # missing hash
            (size1, size2, [], root1, root2),
        ]
        tampered += [(size1, size2, proof[:i] + [flip(p, 3)] + proof[i + 1:], root1, root2)
                     for i, p in enumerate(proof)]
        for args in tampered:
            with pytest.raises(ERRORS):
                merkle.verify_consistency(*args)
        # Wrong sizes: refused when the proof has another length for them; otherwise ours
        # agrees with the independent verifier (see test_every_inclusion_proof).
        wrong = {(size1 - 1, size2), (size1 + 1, size2), (size1 ^ 2, size2), (size1, size2 + 1),
                 (size1, size2 - 1), (size1, size2 * 2), (size1, size2 // 2)} - {(size1, size2)}
        for s1, s2 in sorted(p for p in wrong if 0 < p[0] < p[1]):
            ours = _accepts(merkle.verify_consistency, s1, s2, proof, root1, root2)
            assert ours == _accepts(independent_verify_consistency, s1, s2, proof, root1, root2)
            if len(merkle.consistency_ranges(s1, s2)) != len(proof) or s2 in (size2 * 2, size2 // 2):
                assert not ours, (size1, size2, s1, s2)


@pytest.mark.parametrize("size2", range(2, MAX + 1))
def test_a_rewritten_history_is_a_forked_log(size2: int) -> None:
    """The log later shows a tree of size2 whose first size1 leaves differ from what the old
    root committed to. With an honest proof from that new tree the verifier calls it a fork
    (when size1 is not a power of two, the proof carries the new tree's view of the old
    subtree; when it is, the old root is the proof's seed and the proof merely fails)."""
    for size1 in range(1, size2):
        for changed in {0, size1 // 2, size1 - 1}:
            forged = list(HASHES[:size2])
            forged[changed] = merkle.leaf_hash(b"edited " + DATA[changed])
            proof = merkle.consistency_proof(size1, forged)
            new_root = merkle.root_hash(forged)
            if size1 & (size1 - 1):
                with pytest.raises(merkle.ForkedLog) as caught:
                    merkle.verify_consistency(size1, size2, proof, ROOTS[size1], new_root)
                assert caught.value.computed_root1 == merkle.root_hash(forged[:size1])
            else:
                with pytest.raises(merkle.InvalidProof):
                    merkle.verify_consistency(size1, size2, proof, ROOTS[size1], new_root)
            with pytest.raises(Rejected):
                independent_verify_consistency(size1, size2, proof, ROOTS[size1], new_root)


def test_two_roots_for_one_size_is_a_fork() -> None:
    with pytest.raises(merkle.ForkedLog):
        merkle.verify_consistency(5, 5, [], ROOTS[5], ROOTS[6])


def test_a_proof_that_leads_nowhere_is_not_called_a_fork() -> None:
    proof = merkle.consistency_proof(5, HASHES[:9])
    with pytest.raises(merkle.InvalidProof):
        merkle.verify_consistency(5, 9, [flip(h) for h in proof], ROOTS[5], ROOTS[9])


def test_compact_range_emits_every_complete_node_once() -> None:
    compact, seen = merkle.CompactRange(), {}
    for i, h in enumerate(HASHES):
        for level, idx, node in compact.append(h):
            assert (level, idx) not in seen
            seen[(level, idx)] = node
            assert node == merkle.root_hash(HASHES[idx << level:(idx + 1) << level])
        assert compact.root() == ROOTS[i + 1]
        resumed = merkle.CompactRange(compact.size, [seen[k] for k in merkle.range_nodes(0, i + 1)])
        assert resumed.root() == ROOTS[i + 1]
    assert len(seen) == 2 * MAX - 1


def test_range_nodes_tile_every_proof_subtree() -> None:
    for size in range(1, MAX + 1):
        ranges = [(0, size)] + [r for m in range(size) for r in merkle.inclusion_ranges(m, size)]
        ranges += [r for m in range(size + 1) for r in merkle.consistency_ranges(m, size)]
        for lo, hi in ranges:
            nodes = merkle.range_nodes(lo, hi)
            covered = [i for level, idx in nodes for i in range(idx << level, (idx + 1) << level)]
            assert covered == list(range(lo, hi))
            sizes = [1 << level for level, _ in nodes]
            assert sizes == sorted(sizes, reverse=True)
            hashes = [merkle.root_hash(HASHES[idx << level:(idx + 1) << level]) for level, idx in nodes]
            assert merkle.fold(hashes) == merkle.root_hash(HASHES[lo:hi])
