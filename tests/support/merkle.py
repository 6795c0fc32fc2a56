"""Helpers for the Merkle tests: a naive RFC 6962 reference, an independent verifier, the
known-answer vectors, and a tamperer that rewrites history with raw SQL."""
from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from typing import Any

import psycopg

from broker.ledger.events import GENESIS_HASH, Event
from broker.ledger.rows import EVENT_COLUMNS, SQL_INSERT_EVENT, event_from_row, event_params
from tests.support.oauth import AUDITOR, INTROSPECTOR, sha

POLICY_YAML = f"""
kind: issuer
name: gha
preset: github-actions
issuer: https://issuer.invalid
audience: nhi-broker-test
---
kind: target
name: reports-api
type: jwt
max_ttl: 15m
---
kind: client
name: {AUDITOR[0]}
secret_sha256: "{sha(AUDITOR[1])}"
may: [audit]
---
kind: client
name: {INTROSPECTOR[0]}
secret_sha256: "{sha(INTROSPECTOR[1])}"
may: [introspect]
"""


def fill(ledger: Any, n: int, *, start: int = 0) -> None:
    """Append ``n`` usage events."""
    from broker.ledger import EventDraft

    for i in range(start, start + n):
        ledger.append(EventDraft(type="usage", credential_id=f"c{i % 3}", principal="ci:acme",
                                 run={"id": f"r{i % 2}"}, details={"statement": f"SELECT {i}"}))


# -- known answers: transparency-dev/merkle proof/verify_test.go (the CT test tree) ---------------
def dh(text: str) -> bytes:
    return bytes.fromhex(text)


LEAVES = [dh(x) for x in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                          "606162636465666768696a6b6c6d6e6f")]
ROOTS = [dh(x) for x in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
# (leaf index, tree size, audit path); the Go file numbers leaves from 1, these from 0.
INCLUSION_VECTORS = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (0, 1, []),
]
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]
SOME_HASH = dh("abacaba000000000000000000000000000000000000000000060061e00123456")
EMPTY_TREE_HASH = dh("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


# -- a naive RFC 6962 §2.1 reference, written straight from the recursive definitions ----------
def ref_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def ref_mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return ref_leaf(leaves[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return ref_path(m, leaves[:k]) + [ref_mth(leaves[k:])]
    return ref_path(m - k, leaves[k:]) + [ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [ref_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return ref_subproof(m, leaves[:k], complete) + [ref_mth(leaves[k:])]
    return ref_subproof(m - k, leaves[k:], False) + [ref_mth(leaves[:k])]


def ref_proof(m: int, leaves: list[bytes]) -> list[bytes]:
    return ref_subproof(m, leaves, True) if 0 < m < len(leaves) else []


# -- an independent verifier (the decomposition used by transparency-dev's Go code) ------------
class Rejected(Exception):
    pass


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _decomp(index: int, size: int) -> tuple[int, int]:
    inner = (index ^ (size - 1)).bit_length()
    border = bin(index >> inner).count("1")
    return inner, border


def _chain_inner(seed: bytes, proof: list[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        seed = _node(seed, h) if (index >> i) & 1 == 0 else _node(h, seed)
    return seed


def _chain_inner_right(seed: bytes, proof: list[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        if (index >> i) & 1:
            seed = _node(h, seed)
    return seed


def _chain_border_right(seed: bytes, proof: list[bytes]) -> bytes:
    for h in proof:
        seed = _node(h, seed)
    return seed


def independent_verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: list[bytes],
                                 root: bytes) -> None:
    if index >= size or len(leaf_hash) != 32:
        raise Rejected("bad index or leaf hash")
    inner, border = _decomp(index, size)
    if len(proof) != inner + border:
        raise Rejected("wrong proof size")
    got = _chain_border_right(_chain_inner(leaf_hash, proof[:inner], index), proof[inner:])
    if got != root:
        raise Rejected("root mismatch")


def independent_verify_consistency(size1: int, size2: int, proof: list[bytes], root1: bytes,
                                   root2: bytes) -> None:
    if size2 < size1:
        raise Rejected("size2 < size1")
    if size1 == size2:
        if proof or root1 != root2:
            raise Rejected("equal sizes")
        return
    if size1 == 0 or not proof:
        raise Rejected("empty")
    inner, border = _decomp(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1
    inner -= shift
    seed, start = proof[0], 1
    if size1 == 1 << shift:
        seed, start = root1, 0
    if len(proof) != start + inner + border:
        raise Rejected("wrong proof size")
    proof = proof[start:]
    mask = (size1 - 1) >> shift
    hash1 = _chain_border_right(_chain_inner_right(seed, proof[:inner], mask), proof[inner:])
    if hash1 != root1:
        raise Rejected("root1 mismatch")
    hash2 = _chain_border_right(_chain_inner(seed, proof[:inner], mask), proof[inner:])
    if hash2 != root2:
        raise Rejected("root2 mismatch")


# -- the tamperer ----------------------------------------------------------------------------------
def raw_sql(url: str, statements: list[tuple[str, tuple[Any, ...]]],
            *, many: tuple[str, list[tuple[Any, ...]]] | None = None) -> list[tuple[Any, ...]]:
    """Run statements in one transaction behind the broker's back; returns the last rows."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            rows: list[tuple[Any, ...]] = []
            for sql, params in statements:
                rows = conn.execute(sql.replace("%s", "?"), params).fetchall()
            if many:
                conn.executemany(many[0].replace("%s", "?"), many[1])
            conn.execute("COMMIT")
            return rows
        finally:
            conn.close()
    with psycopg.connect(url) as pg:
        rows = []
        for sql, params in statements:
            result = pg.execute(sql, params or None)
            rows = result.fetchall() if result.description else []
        if many:
            with pg.cursor() as cur:
                cur.executemany(many[0], many[1])
        return rows


def read_events(url: str) -> list[Event]:
    rows = raw_sql(url, [(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY seq", ())])
    return [event_from_row(row) for row in rows]


def rewrite_history(url: str, transform: Callable[[list[Event]], list[Event]], *,
                    rebuild_tree: bool = True) -> None:
    """What a careful attacker with database access does: change the events, then recompute
    the whole hash chain (new seq, prev_hash, hash), move the head, rebuild the Merkle tree
    with the broker's own code and delete the stored checkpoints."""
    events = transform(read_events(url))
    prev, sealed = GENESIS_HASH, []
    for i, event in enumerate(events, start=1):
        body = {**event.__dict__, "seq": i, "prev_hash": prev, "hash": ""}
        unsealed = Event(**body)
        resealed = Event(**{**body, "hash": unsealed.computed_hash()})
        sealed.append(resealed)
        prev = resealed.hash
    last = sealed[-1] if sealed else None
    raw_sql(url, [
        ("DELETE FROM events", ()),
        ("DELETE FROM merkle_nodes", ()),
        ("UPDATE merkle_head SET size = 0 WHERE id = 1", ()),
        ("DELETE FROM checkpoints", ()),
        ("UPDATE ledger_head SET seq = %s, hash = %s WHERE id = 1",
         (last.seq if last else 0, last.hash if last else GENESIS_HASH)),
    ], many=(SQL_INSERT_EVENT, [event_params(e) for e in sealed]))
    if rebuild_tree:
        from broker.ledger import open_ledger
        from broker.transparency.tree import LedgerTree

        with open_ledger(url) as ledger:
            LedgerTree(ledger).sync()


def edit_event(seq: int) -> Callable[[list[Event]], list[Event]]:
    def transform(events: list[Event]) -> list[Event]:
        return [Event(**{**e.__dict__, "principal": "ci:someone-else"}) if e.seq == seq else e
                for e in events]
    return transform


def delete_event(seq: int) -> Callable[[list[Event]], list[Event]]:
    def transform(events: list[Event]) -> list[Event]:
        return [e for e in events if e.seq != seq]
    return transform


def swap_events(a: int, b: int) -> Callable[[list[Event]], list[Event]]:
    def transform(events: list[Event]) -> list[Event]:
        out = list(events)
        out[a - 1], out[b - 1] = out[b - 1], out[a - 1]
        return out
    return transform
