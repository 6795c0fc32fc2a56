"""RFC 6962 Merkle trees over the ledger: hashes, proofs and their verifiers. Pure: no I/O.

Hashing (RFC 6962 §2.1, with domain separation so a leaf can never pass for a node)::

    leaf hash   = SHA-256(0x00 || leaf)
    node hash   = SHA-256(0x01 || left || right)
    MTH({})     = SHA-256("")
    MTH(D[n])   = node(MTH(D[0:k]), MTH(D[k:n]))   k = the largest power of two < n

Proof generation follows RFC 6962 §2.1.1 (``PATH``) and §2.1.2 (``SUBPROOF``); verification
follows the algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2. Hashes are raw 32-byte ``bytes``
here; the API renders them as lowercase hex.

Verifiers return ``None`` or raise, and the two failures mean different things:

* :class:`InvalidProof` — the proof is malformed or does not lead to the claimed root(s).
  Nothing is learnt about the log; the proof (or whoever sent it) is wrong.
* :class:`ForkedLog` — two views of the log that cannot both be honest: two different roots
  for one tree size, or a consistency proof that does reproduce the newer root but not the
  older one, i.e. the first ``size1`` entries of the newer tree are not the entries the older
  root committed to (an old event was edited, removed or reordered). Keep the evidence.

Besides the list-based functions (handy for tests and small trees), this module offers the
pieces a store needs to serve proofs from persisted *complete subtrees* ("nodes", addressed by
``(level, index)``: the node covers leaves ``[index * 2**level, (index + 1) * 2**level)``):
:func:`inclusion_ranges` / :func:`consistency_ranges` say which subtree hashes a proof is made
of, :func:`range_nodes` which stored nodes make up one such subtree, :func:`fold` combines
them, and :class:`CompactRange` appends leaves one at a time, yielding every node that
becomes complete (so the store can persist it) and the root at any size.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
#: MTH of the empty tree: SHA-256 of the empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()

Range = tuple[int, int]          # [lo, hi): leaves lo..hi-1
NodeKey = tuple[int, int]        # (level, index) of a complete subtree


class MerkleError(Exception):
    """Base of the verification errors below."""


class InvalidProof(MerkleError):
    """The proof is malformed (sizes, length, hash sizes) or does not reproduce the root(s)."""


class ForkedLog(MerkleError):
    """Evidence of two incompatible views of the log (see the module docstring).

    ``size1``/``root1`` is the older view, ``size2``/``root2`` the newer; ``computed_root1``
    is what the newer view says the older tree's root should be, when the proof tells it.
    """

    def __init__(self, message: str, *, size1: int, size2: int, root1: bytes, root2: bytes,
                 computed_root1: bytes | None = None) -> None:
        super().__init__(message)
        self.size1, self.size2 = size1, size2
        self.root1, self.root2 = root1, root2
        self.computed_root1 = computed_root1


# -- hashing ---------------------------------------------------------------------------------
def leaf_hash(leaf: bytes) -> bytes:
    """SHA-256(0x00 || leaf)."""
    return hashlib.sha256(LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    if n < 2:
        raise ValueError("split_point needs n >= 2")
    return 1 << ((n - 1).bit_length() - 1)


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of the tree whose leaf hashes are given (O(n) time, O(log n) memory)."""
    compact = CompactRange()
    for h in leaf_hashes:
        compact.append(h)
    return compact.root()


# -- which subtrees make up a proof ----------------------------------------------------------
def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The subtrees whose MTHs form ``PATH(index, D[size])`` (RFC 6962 §2.1.1), leaf side
    first, as ``[lo, hi)`` leaf ranges."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    out: list[Range] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = split_point(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo = lo + k
    out.reverse()
    return out


def consistency_ranges(size1: int, size2: int) -> list[Range]:
    """The subtrees whose MTHs form ``PROOF(size1, D[size2])`` (RFC 6962 §2.1.2), in proof
    order. Empty when ``size1`` is 0 or equals ``size2``."""
    if not 0 <= size1 <= size2:
        raise ValueError(f"no consistency proof from size {size1} to size {size2}")
    if size1 == 0 or size1 == size2:
        return []
    out: list[Range] = []
    lo, hi, m, complete = 0, size2, size1, True     # SUBPROOF(m, D[lo:hi], complete)
    while True:
        n = hi - lo
        if m == n:
            if not complete:
                out.append((lo, hi))
            break
        k = split_point(n)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    out.reverse()
    return out


def range_nodes(lo: int, hi: int) -> list[NodeKey]:
    """The complete subtrees ``(level, index)`` that tile ``[lo, hi)``, left to right, largest
    aligned first. For the ranges of a proof (``lo`` aligned to a power of two at least
    ``hi - lo``) they shrink left to right, and :func:`fold` of their hashes is MTH(D[lo:hi])."""
    if not 0 <= lo < hi:
        raise ValueError(f"empty or negative range [{lo}, {hi})")
    out: list[NodeKey] = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1                 # the largest that fits …
        if lo:
            level = min(level, (lo & -lo).bit_length() - 1)   # … and is aligned at lo
        out.append((level, lo >> level))
        lo += 1 << level
    return out


def fold(hashes: Sequence[bytes]) -> bytes:
    """Combine the hashes of shrinking, adjacent complete subtrees right to left."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def proof_from_ranges(ranges: Iterable[Range], subtree: Callable[[int, int], bytes]) -> list[bytes]:
    """The proof hashes, given a function returning MTH(D[lo:hi])."""
    return [subtree(lo, hi) for lo, hi in ranges]


# -- proofs from a list of leaf hashes -------------------------------------------------------
def _list_subtree(leaf_hashes: Sequence[bytes]) -> Callable[[int, int], bytes]:
    def subtree(lo: int, hi: int) -> bytes:
        return root_hash(leaf_hashes[lo:hi])
    return subtree


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """``PATH(index, D[n])`` of RFC 6962 §2.1.1 for the tree of these leaf hashes."""
    return proof_from_ranges(inclusion_ranges(index, len(leaf_hashes)), _list_subtree(leaf_hashes))


def consistency_proof(size1: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """``PROOF(size1, D[n])`` of RFC 6962 §2.1.2 for the tree of these leaf hashes."""
    return proof_from_ranges(consistency_ranges(size1, len(leaf_hashes)),
                             _list_subtree(leaf_hashes))


# -- verification (RFC 9162 §2.1.3.2, §2.1.4.2) ----------------------------------------------
def _check_hash(value: object, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        raise InvalidProof(f"{what} is not a {HASH_SIZE}-byte hash")
    return bytes(value)


def _check_size(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidProof(f"{what} must be a non-negative integer")
    return value


def root_from_inclusion_proof(leaf: bytes, index: int, size: int,
                              proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` leads to from the leaf hash at ``index`` in a tree of ``size``
    (RFC 9162 §2.1.3.2 steps 1-5); raises :class:`InvalidProof` when malformed."""
    index, size = _check_size(index, "leaf index"), _check_size(size, "tree size")
    r = _check_hash(leaf, "leaf hash")
    if index >= size:
        raise InvalidProof(f"leaf index {index} is not below tree size {size}")
    fn, sn = index, size - 1
    for i, p in enumerate(proof):
        p = _check_hash(p, f"proof hash {i}")
        if sn == 0:
            raise InvalidProof("proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProof("proof is shorter than the path to the root")
    return r


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                     root: bytes) -> None:
    """Check that the leaf hash ``leaf`` is entry ``index`` of the tree of ``size`` with
    ``root``. Returns None or raises :class:`InvalidProof`."""
    root = _check_hash(root, "root hash")
    if root_from_inclusion_proof(leaf, index, size, proof) != root:
        raise InvalidProof("inclusion proof does not lead to the root hash")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes,
                       root2: bytes) -> None:
    """Check that the tree of ``size2`` with ``root2`` extends the tree of ``size1`` with
    ``root1`` (append-only). Returns None; raises :class:`InvalidProof` for a malformed or
    wrong proof, :class:`ForkedLog` for evidence of two incompatible histories."""
    size1, size2 = _check_size(size1, "first size"), _check_size(size2, "second size")
    root1, root2 = _check_hash(root1, "first root"), _check_hash(root2, "second root")
    hashes = [_check_hash(p, f"proof hash {i}") for i, p in enumerate(proof)]
    if size1 > size2:
        raise InvalidProof(f"first size {size1} is larger than second size {size2}")
    if size1 == size2 or size1 == 0:
        _verify_trivial_consistency(size1, size2, hashes, root1, root2)
        return
    fr, sr = _consistency_roots(size1, size2, hashes, root1)
    if sr != root2:
        raise InvalidProof("consistency proof does not lead to the second root")
    if fr != root1:
        raise ForkedLog(f"the tree of size {size2} does not extend the tree of size {size1}:"
                        " its first entries hash to a different root",
                        size1=size1, size2=size2, root1=root1, root2=root2, computed_root1=fr)


def _verify_trivial_consistency(size1: int, size2: int, hashes: list[bytes], root1: bytes,
                                root2: bytes) -> None:
    """Equal sizes, or from the empty tree: the proof must be empty."""
    if size1 == size2:
        if hashes:
            raise InvalidProof("trees of equal size need an empty consistency proof")
        if root1 != root2:
            raise ForkedLog(f"two different roots for tree size {size1}", size1=size1,
                            size2=size2, root1=root1, root2=root2)
        return
    if hashes:
        raise InvalidProof("a consistency proof from the empty tree is empty")
    if root1 != EMPTY_ROOT:
        raise InvalidProof("the root of the empty tree is SHA-256 of the empty string")


def _consistency_roots(size1: int, size2: int, hashes: list[bytes], root1: bytes
                       ) -> tuple[bytes, bytes]:
    """RFC 9162 §2.1.4.2 steps 2-7 for ``0 < size1 < size2``: the roots ``(fr, sr)`` the
    proof leads to for the first and the second tree."""
    if not hashes:
        raise InvalidProof("empty consistency proof")
    if size1 & (size1 - 1) == 0:                  # 2. an exact power of two: prepend root1
        hashes = [root1, *hashes]
    fn, sn = size1 - 1, size2 - 1                 # 3.
    while fn & 1:                                 # 4.
        fn >>= 1
        sn >>= 1
    fr = sr = hashes[0]                           # 5.
    for c in hashes[1:]:                          # 6.
        if sn == 0:
            raise InvalidProof("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:                                   # 7.
        raise InvalidProof("consistency proof is too short")
    return fr, sr


# -- incremental building ---------------------------------------------------------------------
class CompactRange:
    """The right edge ("frontier") of a tree being built left to right: the hashes of the
    complete subtrees that tile ``[0, size)``, largest first — at most log2(size) + 1 of them.

    ``append`` adds one leaf hash and returns every node that became complete, level 0 (the
    leaf itself) included, as ``(level, index, hash)``; ``root`` is the MTH at the current
    size. Resume from a store with ``CompactRange(size, hashes)``, where ``hashes`` are the
    nodes :func:`range_nodes(0, size) <range_nodes>` names, in that order.
    """

    __slots__ = ("size", "_hashes")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        expected = bin(size).count("1")
        if size < 0 or len(hashes) != expected:
            raise ValueError(f"a compact range of size {size} has {expected} hashes")
        self.size = size
        self._hashes = [bytes(h) for h in hashes]

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        index = self.size
        completed = [(0, index, leaf)]
        h, level = leaf, 0
        while index & 1:                      # the new node closes a pair: merge upwards
            h = node_hash(self._hashes.pop(), h)
            level += 1
            index >>= 1
            completed.append((level, index, h))
        self._hashes.append(h)
        self.size += 1
        return completed

    def root(self) -> bytes:
        return fold(self._hashes)

    @property
    def hashes(self) -> list[bytes]:
        return list(self._hashes)
