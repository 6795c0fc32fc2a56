"""The ledger's RFC 6962 Merkle tree, persisted as complete subtrees.

Leaf ``i`` of the tree is event ``seq = i + 1``; its bytes are
:meth:`Event.canonical_bytes() <broker.ledger.events.Event.canonical_bytes>` (the same bytes
the hash chain covers). The store keeps, in ``merkle_nodes``, the hash of every *complete*
subtree: ``(level, idx)`` covers leaves ``[idx * 2**level, (idx + 1) * 2**level)``, level 0
being the leaf hashes. ``merkle_head.size`` says how many leaves they cover.

Nodes are not written by the append path (an append stays one short transaction). They are
added in batches by :meth:`LedgerTree.sync` — on demand before a proof or a checkpoint, and by
the periodic checkpointer — which reads the new events, checks that they extend the hash
chain, computes the leaf hashes and every node that becomes complete with a
:class:`~broker.transparency.merkle.CompactRange`, and inserts them in one transaction guarded by
``merkle_head`` (so concurrent syncs in several processes never write the same nodes twice).
Once in the tree, an event cannot change without the roots of every later checkpoint
changing with it.

Any root or proof for a size up to ``merkle_head.size`` needs only the few stored nodes that
tile its subtrees: at most about 2 log2(n) rows, fetched in one query.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from broker.common.canonical import sha256_hex
from broker.ledger.errors import LedgerUnavailable
from broker.ledger.events import GENESIS_HASH
from broker.ledger.rows import EVENT_COLUMNS, Reader, Row, event_from_row
from broker.ledger.store import Ledger
from broker.transparency import merkle

SQL_MERKLE_SIZE = "SELECT size FROM merkle_head WHERE id = 1"
SQL_SIZES = ("SELECT m.size, l.seq FROM merkle_head m, ledger_head l"
             " WHERE m.id = 1 AND l.id = 1")
SQL_EVENT = f"SELECT {EVENT_COLUMNS} FROM events WHERE seq = %s"
SQL_INSERT_NODE = "INSERT INTO merkle_nodes (level, idx, hash) VALUES (%s, %s, %s)"
SQL_MOVE_MERKLE_HEAD = "UPDATE merkle_head SET size = %s WHERE id = 1"
SQL_EVENT_RANGE = (f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > %s AND seq <= %s"
                   " ORDER BY seq")
SQL_EVENT_HASH = "SELECT hash FROM events WHERE seq = %s"
SQL_NODES_OF_LEVEL = ("SELECT idx, hash FROM merkle_nodes WHERE level = %s AND idx >= %s"
                      " ORDER BY idx LIMIT %s")
SQL_NODE_COUNT = "SELECT count(*) FROM merkle_nodes"

_KEYS_PER_QUERY = 200


class TreeIntegrityError(Exception):
    """The events to be added to the tree do not extend the hash chain (a row was altered,
    removed or reordered before it reached the tree; nothing is added), or a stored node is
    missing. ``seq`` names the first event concerned."""

    def __init__(self, message: str, *, seq: int) -> None:
        super().__init__(message)
        self.seq = seq


def nodes_below(size: int) -> int:
    """How many complete subtrees (level 0 included) a tree of ``size`` leaves has."""
    total, level_count = 0, size
    while level_count:
        total += level_count
        level_count >>= 1
    return total


def fetch_nodes(read: Reader, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """Stored node hashes by ``(level, idx)``; one query per 200 keys."""
    wanted = sorted(set(keys))
    found: dict[tuple[int, int], bytes] = {}
    for start in range(0, len(wanted), _KEYS_PER_QUERY):
        chunk = wanted[start:start + _KEYS_PER_QUERY]
        where = " OR ".join(["(level = %s AND idx = %s)"] * len(chunk))
        params = [v for key in chunk for v in key]
        for level, idx, hash_ in read(f"SELECT level, idx, hash FROM merkle_nodes WHERE {where}",
                                      params):
            found[(int(level), int(idx))] = bytes(hash_)
    missing = [key for key in wanted if key not in found]
    if missing:
        level, idx = missing[0]
        raise TreeIntegrityError(f"stored merkle node (level {level}, index {idx}) is missing",
                                 seq=(idx << level) + 1)
    return found


class _Plan:
    """Which stored nodes a set of subtree hashes needs, and how to fold them."""

    def __init__(self, ranges: Sequence[merkle.Range]) -> None:
        self.ranges = list(ranges)
        self.tiles = [merkle.range_nodes(lo, hi) for lo, hi in self.ranges]

    def keys(self) -> set[tuple[int, int]]:
        return {key for tiles in self.tiles for key in tiles}

    def hashes(self, nodes: dict[tuple[int, int], bytes]) -> list[bytes]:
        return [merkle.fold([nodes[key] for key in tiles]) for tiles in self.tiles]


@dataclass(frozen=True)
class InclusionProof:
    leaf_index: int
    tree_size: int
    leaf: bytes              # the event's canonical bytes
    leaf_hash: bytes
    hashes: list[bytes]
    root_hash: bytes


@dataclass(frozen=True)
class ConsistencyProof:
    first_size: int
    second_size: int
    hashes: list[bytes]
    first_root: bytes
    second_root: bytes


class LedgerTree:
    """Roots and proofs of the ledger's Merkle tree (stateless; cheap to build per use)."""

    def __init__(self, ledger: Ledger, *, batch: int = 4096) -> None:
        self.ledger = ledger
        self.batch = max(1, int(batch))

    # -- sizes -------------------------------------------------------------------------------
    def sizes(self) -> tuple[int, int]:
        """``(leaves in the tree, events in the ledger)``."""
        with self.ledger.unavailable_on_error("merkle sizes"):
            rows = self.ledger.read(SQL_SIZES, ())
        if not rows:
            raise LedgerUnavailable("merkle_head or ledger_head row is missing")
        return int(rows[0][0]), int(rows[0][1])

    # -- building ----------------------------------------------------------------------------
    def sync(self, *, upto: int | None = None) -> int:
        """Add events to the tree until it covers the ledger head (or ``upto`` events, if
        smaller). Returns the tree size reached. Raises :class:`TreeIntegrityError` when the
        events do not extend the chain."""
        while True:
            size, head = self.sizes()
            goal = head if upto is None else min(head, int(upto))
            if size >= goal:
                return size
            end = min(goal, size + self.batch)
            with self.ledger.unavailable_on_error("merkle sync"):
                with self.ledger.snapshot() as read:
                    frontier = self._frontier(read, size)
                    prev_hash = self._event_hash(read, size)
                    rows = read(SQL_EVENT_RANGE, (size, end))
                nodes = _extend(frontier, prev_hash, size, end, rows)
                with self.ledger.transaction() as tx:
                    current = tx.execute(SQL_MERKLE_SIZE + tx.lock_suffix, ())
                    if not current or int(current[0][0]) != size:
                        continue                     # another process added them meanwhile
                    tx.executemany(SQL_INSERT_NODE, nodes)
                    tx.execute(SQL_MOVE_MERKLE_HEAD, (end,))

    def ensure(self, size: int) -> None:
        """Make sure the tree covers ``size`` leaves (syncing if needed); LookupError when
        the ledger has fewer events."""
        tree_size, head = self.sizes()
        if size > head:
            raise LookupError(f"the ledger has {head} events, fewer than {size}")
        if size > tree_size:
            self.sync(upto=max(size, head))

    @staticmethod
    def _frontier(read: Reader, size: int) -> merkle.CompactRange:
        if size == 0:
            return merkle.CompactRange()
        keys = merkle.range_nodes(0, size)
        nodes = fetch_nodes(read, keys)
        return merkle.CompactRange(size, [nodes[key] for key in keys])

    @staticmethod
    def _event_hash(read: Reader, seq: int) -> str:
        if seq == 0:
            return GENESIS_HASH
        rows = read(SQL_EVENT_HASH, (seq,))
        if not rows:
            raise TreeIntegrityError(f"event {seq}, already in the tree, is missing", seq=seq)
        event_hash: str = rows[0][0]
        return event_hash

    # -- reading -----------------------------------------------------------------------------
    def _nodes(self, plans: Sequence[_Plan]) -> dict[tuple[int, int], bytes]:
        keys: set[tuple[int, int]] = set()
        for plan in plans:
            keys |= plan.keys()
        with self.ledger.unavailable_on_error("merkle read"):
            with self.ledger.snapshot() as read:
                return fetch_nodes(read, keys)

    def root(self, size: int) -> bytes:
        """MTH of the first ``size`` events (syncing the tree if needed)."""
        self.ensure(size)
        if size == 0:
            return merkle.EMPTY_ROOT
        plan = _Plan([(0, size)])
        return plan.hashes(self._nodes([plan]))[0]

    def inclusion_proof(self, seq: int, size: int) -> InclusionProof:
        """Event ``seq`` (leaf ``seq - 1``) is in the tree of the first ``size`` events."""
        if not 1 <= seq <= size:
            raise ValueError("need 1 <= seq <= size")
        self.ensure(size)
        index = seq - 1
        path = _Plan(merkle.inclusion_ranges(index, size))
        top = _Plan([(0, size)])
        nodes = self._nodes([path, top])
        with self.ledger.unavailable_on_error("merkle leaf"):
            rows = self.ledger.read(SQL_EVENT, (seq,))
        if not rows:
            raise LookupError(f"event {seq} is missing")
        leaf = event_from_row(rows[0]).canonical_bytes()
        return InclusionProof(leaf_index=index, tree_size=size, leaf=leaf,
                              leaf_hash=merkle.leaf_hash(leaf), hashes=path.hashes(nodes),
                              root_hash=top.hashes(nodes)[0])

    def consistency_proof(self, size1: int, size2: int) -> ConsistencyProof:
        """The tree of ``size2`` events extends the tree of ``size1`` events."""
        if not 0 <= size1 <= size2:
            raise ValueError("need 0 <= size1 <= size2")
        self.ensure(size2)
        proof = _Plan(merkle.consistency_ranges(size1, size2))
        roots = [_Plan([(0, s)]) for s in (size1, size2) if s]
        nodes = self._nodes([proof, *roots])
        first = roots[0].hashes(nodes)[0] if size1 else merkle.EMPTY_ROOT
        second = roots[-1].hashes(nodes)[0] if size2 else merkle.EMPTY_ROOT
        return ConsistencyProof(first_size=size1, second_size=size2, hashes=proof.hashes(nodes),
                                first_root=first, second_root=second)


def _extend(frontier: merkle.CompactRange, prev_hash: str, size: int, end: int,
            rows: Sequence[Row]) -> list[tuple[int, int, bytes]]:
    """The nodes that events ``size+1 .. end`` complete, after checking their chain links."""
    nodes: list[tuple[int, int, bytes]] = []
    expected = size + 1
    for row in rows:
        seq = int(row[0])
        if seq != expected:
            raise TreeIntegrityError(f"event {expected} is missing", seq=expected)
        try:
            event = event_from_row(row)
            leaf = event.canonical_bytes()
        except (TypeError, ValueError):
            raise TreeIntegrityError(f"event {seq} cannot be decoded", seq=seq) from None
        if sha256_hex(leaf) != event.hash or event.prev_hash != prev_hash:
            raise TreeIntegrityError(f"event {seq} does not extend the hash chain", seq=seq)
        prev_hash = event.hash
        nodes.extend(frontier.append(merkle.leaf_hash(leaf)))
        expected += 1
    if expected != end + 1:
        raise TreeIntegrityError(f"event {expected} is missing", seq=expected)
    return nodes


# -- verification (``broker ledger verify``) ------------------------------------------------------
@dataclass(frozen=True)
class TreeReport:
    ok: bool
    tree_size: int               # leaves the stored tree claims to cover
    checked_nodes: int
    reason: str = ""
    first_bad_seq: int | None = None
    roots: dict[int, bytes] | None = None     # recomputed roots at the sizes asked for
    ledger_size: int = 0                      # events in the snapshot (its root is in roots)
    consistency: list[bytes] | None = None    # recomputed proof from ``proof_from`` to ledger_size


class _LevelCursor:
    """Streams the stored nodes of one level in idx order (keyset pages)."""

    def __init__(self, read: Reader, level: int, batch: int) -> None:
        self.read, self.level, self.batch = read, level, batch
        self.next_idx = 0
        self.buffer: list[Row] = []
        self.pos = 0

    def get(self, idx: int) -> bytes | None:
        if self.pos >= len(self.buffer):
            self.buffer = self.read(SQL_NODES_OF_LEVEL, (self.level, idx, self.batch))
            self.pos = 0
        if self.pos < len(self.buffer) and int(self.buffer[self.pos][0]) == idx:
            value = bytes(self.buffer[self.pos][1])
            self.pos += 1
            return value
        # out of step (a node is missing): re-seek next time
        self.buffer, self.pos = [], 0
        return None


def verify_tree(read: Reader, *, sizes: Iterable[int] = (), proof_from: int | None = None,
                batch: int = 2000) -> TreeReport:
    """Recompute the tree from the events (within one snapshot) and compare every stored
    node with the recomputation; also return the recomputed roots at ``sizes`` and at the
    ledger's size (for checking checkpoints) and, with ``proof_from``, the consistency proof
    from that size to the ledger's size, built from the recomputation alone. Streams: memory
    stays bounded by ``batch`` and the tree height.

    Events beyond ``merkle_head.size`` are not in the stored tree yet; they are still hashed
    so that roots can be given for every size up to the last event.
    """
    rows = read(SQL_SIZES, ())
    if not rows:
        return TreeReport(False, 0, 0, "merkle_head or ledger_head row is missing")
    tree_size, head = int(rows[0][0]), int(rows[0][1])
    wanted = sorted({int(s) for s in (*sizes, head) if 0 <= int(s) <= head})
    plan = (_Plan(merkle.consistency_ranges(proof_from, head))
            if proof_from is not None and 0 <= proof_from <= head else None)
    capture = plan.keys() if plan is not None else set()
    roots: dict[int, bytes] = {}
    if wanted and wanted[0] == 0:
        roots[0] = merkle.EMPTY_ROOT
    pending = [s for s in wanted if s > 0]
    if tree_size > head:
        return TreeReport(False, tree_size, 0, f"the tree claims {tree_size} leaves but the"
                          f" ledger has only {head} events", first_bad_seq=head + 1,
                          ledger_size=head)
    compact = merkle.CompactRange()
    nodes = _NodeCheck(read, tree_size, batch, capture)
    seq = 0
    while seq < head:
        chunk = read(SQL_EVENT_RANGE, (seq, min(head, seq + batch)))
        if not chunk:
            break
        for row in chunk:
            if int(row[0]) != seq + 1:
                return TreeReport(False, tree_size, nodes.checked, f"event {seq + 1} is missing",
                                  first_bad_seq=seq + 1, roots=roots, ledger_size=head)
            seq += 1
            try:
                leaf = event_from_row(row).canonical_bytes()
            except (TypeError, ValueError):
                return TreeReport(False, tree_size, nodes.checked, f"event {seq} cannot be decoded",
                                  first_bad_seq=seq, roots=roots, ledger_size=head)
            for level, idx, computed in compact.append(merkle.leaf_hash(leaf)):
                nodes.add(seq, level, idx, computed)
            while pending and pending[0] == compact.size:
                roots[pending.pop(0)] = compact.root()
    if seq != head:
        return TreeReport(False, tree_size, nodes.checked, f"event {seq + 1} is missing",
                          first_bad_seq=seq + 1, roots=roots, ledger_size=head)
    consistency = plan.hashes(nodes.captured) if plan is not None else None
    return _final_report(read, nodes, roots, head, consistency)


class _NodeCheck:
    """Compares each recomputed node of the stored tree with the stored one (remembering the
    first mismatch) and captures the nodes a consistency proof needs."""

    def __init__(self, read: Reader, tree_size: int, batch: int,
                 capture: Collection[tuple[int, int]]) -> None:
        self.read, self.tree_size, self.batch, self.capture = read, tree_size, batch, capture
        self.cursors: dict[int, _LevelCursor] = {}
        self.captured: dict[tuple[int, int], bytes] = {}
        self.checked = 0
        self.bad: TreeReport | None = None

    def add(self, seq: int, level: int, idx: int, computed: bytes) -> None:
        if (level, idx) in self.capture:
            self.captured[(level, idx)] = computed
        if self.bad is not None or seq > self.tree_size:
            return
        cursor = self.cursors.get(level)
        if cursor is None:
            cursor = self.cursors[level] = _LevelCursor(self.read, level, self.batch)
        stored = cursor.get(idx)
        self.checked += 1
        if stored != computed:
            first = (idx << level) + 1
            what = "missing" if stored is None else "differs from the events"
            self.bad = TreeReport(False, self.tree_size, self.checked,
                                  f"stored merkle node (level {level}, index {idx}) {what}"
                                  f" (covers events {first}..{(idx + 1) << level})",
                                  first_bad_seq=first)


def _final_report(read: Reader, nodes: _NodeCheck, roots: dict[int, bytes], head: int,
                  consistency: list[bytes] | None) -> TreeReport:
    """Every event hashed: the first bad node, else a wrong count of stored nodes, else ok."""
    tree_size, checked, bad = nodes.tree_size, nodes.checked, nodes.bad
    if bad is not None:
        return TreeReport(bad.ok, bad.tree_size, bad.checked_nodes, bad.reason,
                          bad.first_bad_seq, roots, head, consistency)
    stored_count = int(read(SQL_NODE_COUNT, ())[0][0])
    if stored_count != nodes_below(tree_size):
        return TreeReport(False, tree_size, checked, f"{stored_count} merkle nodes stored,"
                          f" {nodes_below(tree_size)} expected for {tree_size} leaves",
                          roots=roots, ledger_size=head, consistency=consistency)
    return TreeReport(True, tree_size, checked, roots=roots, ledger_size=head,
                      consistency=consistency)


__all__ = [
    "ConsistencyProof", "InclusionProof", "LedgerTree", "TreeIntegrityError", "TreeReport",
    "fetch_nodes", "nodes_below", "verify_tree",
]
