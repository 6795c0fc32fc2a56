"""Known answers: RFC 6962 hashing and the CT test tree (transparency-dev/merkle's
proof/verify_test.go and rfc6962_test.go), including their corrupted-proof probes."""
from __future__ import annotations

import pytest

from broker.transparency import merkle
from tests.support.merkle import (
    CONSISTENCY_VECTORS,
    EMPTY_TREE_HASH,
    INCLUSION_VECTORS,
    LEAVES,
    ROOTS,
    SOME_HASH,
    dh,
)

LEAF_HASHES = [merkle.leaf_hash(leaf) for leaf in LEAVES]
ERRORS = (merkle.InvalidProof, merkle.ForkedLog)


@pytest.mark.parametrize("got, want", [
    pytest.param(merkle.EMPTY_ROOT, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                 id="empty tree"),
    pytest.param(merkle.leaf_hash(b""), "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                 id="empty leaf"),
    pytest.param(merkle.leaf_hash(b"L123456"),
                 "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56", id="leaf"),
    pytest.param(merkle.node_hash(b"N123", b"N456"),
                 "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb", id="node"),
])
def test_rfc6962_hashes(got: bytes, want: str) -> None:
    assert got.hex() == want


def test_domain_separation() -> None:
    left, right = merkle.leaf_hash(b"Hello"), merkle.leaf_hash(b"World")
    assert merkle.node_hash(left, right) != merkle.leaf_hash(left + right)
    assert merkle.node_hash(left, right) != merkle.node_hash(right, left)
    assert merkle.root_hash([]) == merkle.EMPTY_ROOT != merkle.leaf_hash(b"")


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_of_the_ct_test_tree(size: int) -> None:
    assert merkle.root_hash(LEAF_HASHES[:size]) == ROOTS[size - 1]


@pytest.mark.parametrize("index, size, path", INCLUSION_VECTORS,
                         ids=[f"leaf{i}-size{s}" for i, s, _ in INCLUSION_VECTORS])
def test_inclusion_known_answers(index: int, size: int, path: list[str]) -> None:
    proof = merkle.inclusion_proof(index, LEAF_HASHES[:size])
    assert [h.hex() for h in proof] == path
    assert merkle.verify_inclusion(LEAF_HASHES[index], index, size, proof, ROOTS[size - 1]) is None


@pytest.mark.parametrize("size1, size2, path", CONSISTENCY_VECTORS,
                         ids=[f"{a}-to-{b}" for a, b, _ in CONSISTENCY_VECTORS])
def test_consistency_known_answers(size1: int, size2: int, path: list[str]) -> None:
    proof = merkle.consistency_proof(size1, LEAF_HASHES[:size2])
    assert [h.hex() for h in proof] == path
    assert merkle.verify_consistency(size1, size2, proof, ROOTS[size1 - 1], ROOTS[size2 - 1]) is None


def _inclusion_probes(index, size, proof, root, leaf):
    """transparency-dev's corruptInclusionProof."""
    probes = [
        ("leafIndex - 1", index - 1, size, root, leaf, proof),
        ("leafIndex + 1", index + 1, size, root, leaf, proof),
        ("leafIndex ^ 2", index ^ 2, size, root, leaf, proof),
        ("treeSize * 2", index, size * 2, root, leaf, proof),
        ("treeSize / 2", index, size // 2, root, leaf, proof),
        ("wrong leaf", index, size, root, merkle.leaf_hash(b"WrongLeaf"), proof),
        ("empty root", index, size, EMPTY_TREE_HASH, leaf, proof),
        ("random root", index, size, SOME_HASH, leaf, proof),
        ("trailing garbage", index, size, root, leaf, proof + [b""]),
        ("trailing root", index, size, root, leaf, proof + [root]),
        ("preceding garbage", index, size, root, leaf, [b""] + proof),
        ("preceding root", index, size, root, leaf, [root] + proof),
    ]
    for i in range(len(proof)):
        wrong = list(proof)
        wrong[i] = bytes([wrong[i][0] ^ 8]) + wrong[i][1:]
        probes.append((f"modified proof[{i}] bit 3", index, size, root, leaf, wrong))
    if proof:
        probes.append(("removed component", index, size, root, leaf, proof[:-1]))
    if len(proof) > 1:
        probes.append(("inserted component", index, size, root, leaf,
                       [proof[0], SOME_HASH] + proof[1:]))
    return probes


@pytest.mark.parametrize("index, size, path", INCLUSION_VECTORS[:4],
                         ids=[f"leaf{i}-size{s}" for i, s, _ in INCLUSION_VECTORS[:4]])
def test_corrupted_inclusion_proofs_are_rejected(index: int, size: int, path: list[str]) -> None:
    proof = [dh(h) for h in path]
    for desc, i, s, root, leaf, wrong in _inclusion_probes(index, size, proof, ROOTS[size - 1],
                                                           LEAF_HASHES[index]):
        if i < 0:
            continue
        with pytest.raises(merkle.InvalidProof):
            merkle.verify_inclusion(leaf, i, s, wrong, root)
            pytest.fail(desc)


def _consistency_probes(size1, size2, root1, root2, proof):
    """transparency-dev's corruptConsistencyProof."""
    probes = [
        ("size1 - 1", size1 - 1, size2, root1, root2, proof),
        ("size1 + 1", size1 + 1, size2, root1, root2, proof),
        ("size1 ^ 2", size1 ^ 2, size2, root1, root2, proof),
        ("size2 * 2", size1, size2 * 2, root1, root2, proof),
        ("size2 / 2", size1, size2 // 2, root1, root2, proof),
        ("wrong root1", size1, size2, b"WrongRoot", root2, proof),
        ("wrong root2", size1, size2, root1, b"WrongRoot", proof),
        ("swapped roots", size1, size2, root2, root1, proof),
        ("empty proof", size1, size2, root1, root2, []),
        ("trailing garbage", size1, size2, root1, root2, proof + [b""]),
        ("trailing root1", size1, size2, root1, root2, proof + [root1]),
        ("trailing root2", size1, size2, root1, root2, proof + [root2]),
        ("preceding garbage", size1, size2, root1, root2, [b""] + proof),
        ("preceding root1", size1, size2, root1, root2, [root1] + proof),
        ("preceding root2", size1, size2, root1, root2, [root2] + proof),
        ("preceding proof[0]", size1, size2, root1, root2, [proof[0]] + proof),
        ("truncated proof", size1, size2, root1, root2, proof[:-1]),
    ]
    for i in range(len(proof)):
        wrong = list(proof)
        wrong[i] = bytes([wrong[i][0] ^ 16]) + wrong[i][1:]
        probes.append((f"modified proof[{i}] bit 4", size1, size2, root1, root2, wrong))
    return probes


@pytest.mark.parametrize("size1, size2, path", CONSISTENCY_VECTORS[1:],
                         ids=[f"{a}-to-{b}" for a, b, _ in CONSISTENCY_VECTORS[1:]])
def test_corrupted_consistency_proofs_are_rejected(size1: int, size2: int, path: list[str]) -> None:
    proof = [dh(h) for h in path]
    for desc, s1, s2, r1, r2, wrong in _consistency_probes(size1, size2, ROOTS[size1 - 1],
                                                           ROOTS[size2 - 1], proof):
        with pytest.raises(ERRORS):
            merkle.verify_consistency(s1, s2, wrong, r1, r2)
            pytest.fail(desc)


ROOT1, ROOT2 = SOME_HASH, bytes(32)


@pytest.mark.parametrize("size1, size2, root1, root2, proof, error", [
    pytest.param(0, 0, ROOT1, ROOT2, [], merkle.ForkedLog, id="0-0 different roots"),
    pytest.param(1, 1, ROOT1, ROOT2, [], merkle.ForkedLog, id="1-1 different roots"),
    pytest.param(0, 0, ROOT1, ROOT1, [], None, id="0-0 same root"),
    pytest.param(0, 1, EMPTY_TREE_HASH, ROOT2, [], None, id="from the empty tree"),
    pytest.param(0, 1, ROOT1, ROOT2, [], merkle.InvalidProof, id="empty tree with a wrong root"),
    pytest.param(1, 1, ROOT2, ROOT2, [], None, id="1-1 same root"),
    pytest.param(1, 0, ROOT1, ROOT2, [], merkle.InvalidProof, id="time travel 1-0"),
    pytest.param(2, 1, ROOT1, ROOT2, [], merkle.InvalidProof, id="time travel 2-1"),
    pytest.param(1, 2, ROOT1, ROOT2, [], merkle.InvalidProof, id="empty proof"),
    pytest.param(0, 0, EMPTY_TREE_HASH, EMPTY_TREE_HASH, [EMPTY_TREE_HASH], merkle.InvalidProof,
                 id="0-0 non-empty proof"),
    pytest.param(0, 1, EMPTY_TREE_HASH, EMPTY_TREE_HASH, [EMPTY_TREE_HASH], merkle.InvalidProof,
                 id="0-1 non-empty proof"),
    pytest.param(1, 1, EMPTY_TREE_HASH, EMPTY_TREE_HASH, [EMPTY_TREE_HASH], merkle.InvalidProof,
                 id="1-1 non-empty proof"),
])
def test_consistency_edge_cases(size1, size2, root1, root2, proof, error) -> None:
    if error is None:
        assert merkle.verify_consistency(size1, size2, proof, root1, root2) is None
    else:
        with pytest.raises(error):
            merkle.verify_consistency(size1, size2, proof, root1, root2)


@pytest.mark.parametrize("index, size", [(0, 0), (0, 1), (1, 0), (2, 1)])
def test_inclusion_edge_cases(index: int, size: int) -> None:
    for leaf, root in ((SOME_HASH, b""), (b"", EMPTY_TREE_HASH), (SOME_HASH, EMPTY_TREE_HASH)):
        with pytest.raises(merkle.InvalidProof):
            merkle.verify_inclusion(leaf, index, size, [], root)


def test_single_entry_tree() -> None:
    h = merkle.leaf_hash(b"data")
    assert merkle.verify_inclusion(h, 0, 1, [], h) is None
    for leaf, root in ((h, b""), (b"", h), (b"", b"")):
        with pytest.raises(merkle.InvalidProof):
            merkle.verify_inclusion(leaf, 0, 1, [], root)


@pytest.mark.parametrize("bad", [-1, True, 1.0, "3", None])
def test_sizes_must_be_non_negative_integers(bad) -> None:
    with pytest.raises(merkle.InvalidProof):
        merkle.verify_inclusion(LEAF_HASHES[0], bad, 8, [], ROOTS[7])
    with pytest.raises(merkle.InvalidProof):
        merkle.verify_consistency(bad, 8, [], ROOTS[0], ROOTS[7])
