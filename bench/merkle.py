"""Merkle tree micro-benchmark: build a large ledger, compute the tree, time proofs.

    .venv/bin/python -m bench.merkle                      # 1,000,000 events, SQLite in a temp dir
    .venv/bin/python -m bench.merkle --events 200000 --database-url postgresql://postgres@127.0.0.1/bench

Events are bulk-inserted straight into the ``events`` table (a correct hash chain, sealed
by the broker's own code, but without the per-append transaction), then ``LedgerTree.sync``
computes every node. Printed: build and sync throughput, the latency of roots, inclusion and
consistency proofs from the store (p50/p99 over random positions), of the HTTP endpoint
(Flask test client: client authentication, parameter parsing, JSON), of a signed checkpoint
when the tree has grown by a few events, and of ``broker ledger verify``'s tree recomputation
(``--verify``).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from broker.ledger import EventDraft, open_ledger
from broker.ledger.chain import Sealer
from broker.ledger.events import GENESIS_HASH, Event, utc_timestamp
from broker.ledger.rows import SQL_INSERT_EVENT
from broker.transparency.merkle import verify_consistency, verify_inclusion
from broker.transparency.tree import LedgerTree, verify_tree

BATCH = 20_000
AUDITOR_SECRET = "bench-auditor-secret"


def build(url: str, n: int) -> float:
    """Bulk-insert ``n`` chained usage events; returns seconds."""
    ledger = open_ledger(url)
    ledger.close()
    started = time.perf_counter()
    prev, ts0 = GENESIS_HASH, time.time() - n / 1000
    rows = []
    last = None
    for seq in range(1, n + 1):
        draft = EventDraft(type="usage", credential_id=f"01jbench{seq % 5000:018d}",
                           principal="ci:github:acme/payments", run={"id": str(seq // 1000)},
                           target="payments-db",
                           details={"statement": f"SELECT * FROM accounts WHERE id = {seq}"})
        last, params = Sealer().seal(draft, seq=seq, ts=utc_timestamp(ts0 + seq / 1000), prev_hash=prev)
        prev = last.hash
        rows.append(params)
        if len(rows) == BATCH or seq == n:
            _insert(url, rows, last)
            rows = []
            print(f"\r  inserted {seq:,} events", end="", flush=True)
    print()
    return time.perf_counter() - started


def _insert(url: str, rows: list, last: Event) -> None:
    head = ("UPDATE ledger_head SET seq = %s, hash = %s, ts = %s WHERE id = 1",
            (last.seq, last.hash, last.ts))
    if url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        conn.executemany(SQL_INSERT_EVENT.replace("%s", "?"), rows)
        conn.execute(head[0].replace("%s", "?"), head[1])
        conn.execute("COMMIT")
        conn.close()
        return
    import psycopg

    with psycopg.connect(url) as pg:
        with pg.cursor() as cur:
            cur.executemany(SQL_INSERT_EVENT, rows)
            cur.execute(*head)


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def report(name: str, samples: list[float]) -> None:
    ms = [s * 1000 for s in samples]
    print(f"  {name:<42} p50 {statistics.median(ms):7.3f} ms   p99 {pct(ms, 99):7.3f} ms"
          f"   max {max(ms):7.3f} ms   (n={len(ms)})")

T = TypeVar("T")


def timed(fn: Callable[..., T], *args: Any) -> tuple[float, T]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--verify", action="store_true", help="also time verify_tree (slow)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (SQLite ledger)")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="nhb-merkle-bench-")
    url = args.database_url or f"sqlite:///{workdir}/ledger.db"
    n = args.events
    rng = random.Random(6962)

    print(f"ledger: {url.split('@')[-1]}  events: {n:,}")
    seconds = build(url, n)
    print(f"  bulk insert: {seconds:.1f} s ({n / seconds:,.0f} events/s)")

    ledger = open_ledger(url)
    tree = LedgerTree(ledger, batch=50_000)
    seconds, size = timed(tree.sync)
    print(f"  tree sync (all nodes): {seconds:.1f} s ({n / seconds:,.0f} events/s)")
    nodes = ledger.read("SELECT count(*) FROM merkle_nodes", ())[0][0]
    print(f"  merkle_nodes rows: {nodes:,}")
    if url.startswith("sqlite:///"):
        print(f"  database file: {os.path.getsize(url[len('sqlite:///'):]) / 1e6:,.0f} MB")

    print("proofs from the store:")
    samples = [timed(tree.root, rng.randint(1, size))[0] for _ in range(args.samples)]
    report("root(random size)", samples)
    samples, lengths = [], []
    for _ in range(args.samples):
        seq = rng.randint(1, size)
        elapsed, proof = timed(tree.inclusion_proof, seq, size)
        samples.append(elapsed)
        lengths.append(len(proof.hashes))
        verify_inclusion(proof.leaf_hash, proof.leaf_index, size, proof.hashes, proof.root_hash)
    report(f"inclusion_proof(random seq, {size:,})", samples)
    print(f"    audit path length: {min(lengths)}..{max(lengths)} hashes")
    samples = []
    for _ in range(args.samples):
        first = rng.randint(1, size)
        elapsed, consistency = timed(tree.consistency_proof, first, size)
        samples.append(elapsed)
        verify_consistency(first, size, consistency.hashes, consistency.first_root,
                           consistency.second_root)
    report(f"consistency_proof(random, {size:,})", samples)

    print("HTTP (Flask test client, client authentication included):")
    policies = Path(workdir) / "policies"
    policies.mkdir(exist_ok=True)
    digest = hashlib.sha256(AUDITOR_SECRET.encode()).hexdigest()
    (policies / "bench.yaml").write_text(
        f'kind: client\nname: auditor\nsecret_sha256: "{digest}"\nmay: [audit]\n')
    from base64 import b64encode

    from broker import create_app

    app = create_app({"TESTING": True, "POLICY_DIR": str(policies), "DATABASE_URL": url,
                      "STATE_DIR": os.path.join(workdir, "state"), "LOG_LEVEL": "WARNING"})
    client = app.test_client()
    headers = {"Authorization": "Basic " + b64encode(f"auditor:{AUDITOR_SECRET}".encode()).decode()}
    samples = []
    for _ in range(args.samples):
        path = f"/v1/ledger/proof/inclusion?seq={rng.randint(1, size)}&size={size}"
        started = time.perf_counter()
        response = client.get(path, headers=headers)
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200, response.json
    report("GET /v1/ledger/proof/inclusion", samples)
    samples = []
    for _ in range(args.samples):
        path = f"/v1/ledger/proof/consistency?from={rng.randint(1, size)}&to={size}"
        started = time.perf_counter()
        response = client.get(path, headers=headers)
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200, response.json
    report("GET /v1/ledger/proof/consistency", samples)
    samples = []
    ctx_ledger = app.extensions["broker"].ledger
    for i in range(20):
        for j in range(10):
            ctx_ledger.append(EventDraft(type="usage", details={"bench": i * 10 + j}))
        started = time.perf_counter()
        response = client.get("/v1/ledger/checkpoint", headers=headers)
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200, response.json
    report("GET /v1/ledger/checkpoint (10 new events)", samples)
    app.extensions["broker"].close()

    if args.verify:
        with ledger.snapshot() as read:
            seconds, result = timed(verify_tree, read)
        print(f"  verify_tree (recompute and compare every node): {seconds:.1f} s, ok={result.ok}")
    ledger.close()
    if args.keep:
        print(f"(kept {workdir})")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
