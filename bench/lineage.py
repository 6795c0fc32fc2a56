"""Latency of the audit queries on a large ledger, SQLite and PostgreSQL.

    .venv/bin/python -m bench.lineage [--events 1000000] [--iterations 300] [--backend both]
                                      [--verify]

Builds the ledger itself: ``--events`` events with a valid hash chain, computed in Python and
bulk-inserted straight into the tables (SQLite ``executemany`` in big transactions, PostgreSQL
``COPY`` into a fresh database that is dropped afterwards), then ``ANALYZE``/``VACUUM`` as
autovacuum would. Inside it, one *target* credential has 100 descendants (10 children × 9
grandchildren) and 1,000 usage events of its own (plus 10 per descendant), scattered over the
whole ledger among ~24,000 background credentials, their usage, denials and introspections.

Timed (each ``--iterations`` times after a warm-up; p50/p99/max in ms):

* ``lineage (HTTP)``  — ``GET /v1/credentials/<target>/lineage`` through Flask's test client:
  client authentication, parameter checks, every query, JSON shaping and serialization
  (101 nodes, usage count + first 10 usage events per node). The figure the target applies to.
* ``lineage (query)`` — the same view called directly on the ledger (no HTTP layer).
* ``run (HTTP)``      — ``GET /v1/runs/<run>``: the run's 3 attempts, its trees, its denials.
* ``who ran … (HTTP)`` — ``GET /v1/usage?statement=…``: a statement a fifth of all usage ran
  (first page of 100), one only the target ran 10 times, and one nobody ran.
* ``events (HTTP)``   — ``GET /v1/events?credential_id=<target>&type=usage&limit=100`` (page 1
  and a page from a cursor), and ``?principal=…&since=…&until=…`` over a window.

Usage events get their ``usage_lines`` row (what "who ran this" searches), as ``record_usage``
writes it. The rows go in behind the append path, so the projections of schema version 10
(lineage closure, usage counts, statement fingerprints) are then built by the migration's own
backfill (``projection_backfill``), timed and printed: what migrating a ledger of that size costs.
"""
from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from broker.common.ids import new_credential_id
from broker.ledger import GENESIS_HASH, CredentialRecord, Event, EventDraft, utc_timestamp
from broker.ledger.chain import Sealer
from broker.ledger.rows import (
    SQL_INSERT_CREDENTIAL,
    SQL_INSERT_EVENT,
    SQL_INSERT_USAGE_LINE,
    USAGE_LINE_COLUMNS,
    credential_params,
)
from broker.ledger.schema import projection_backfill

AUDITOR = ("bench-auditor", "bench-auditor-secret-0123456789")
POLICY = f"""
kind: client
name: {AUDITOR[0]}
secret_sha256: "{hashlib.sha256(AUDITOR[1].encode()).hexdigest()}"
may: [audit]
"""
TARGET_RUN = "bench-run-777"
TARGET_PRINCIPAL = "github:acme/payments:ref:refs/heads/main"
STATEMENTS = ["SELECT * FROM accounts WHERE id = $1",
              "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
              "INSERT INTO ledger_entries (account, amount) VALUES ($1, $2)", "SELECT count(*) FROM orders",
              "DELETE FROM sessions WHERE expires < now()"]
RARE_STATEMENT = "DROP TABLE audit_tmp_777"     # 10 usage events of the target, nobody else's


class Builder:
    """Generates the ledger's rows in seq order, each event sealed onto the chain."""

    def __init__(self, total: int, seed: int = 7) -> None:
        self.total = total
        self.rng = random.Random(seed)
        self.t0 = time.time() - total * 0.002          # 2 ms apart: ends about now
        self.seq, self.prev = 0, GENESIS_HASH
        self.last: Event | None = None
        self.credentials: list[tuple[Any, ...]] = []
        self.usage_lines: list[tuple[Any, ...]] = []
        self.backfill_seconds = 0.0
        self.credential_count = 0
        self.target_id = ""
        self.target_children: list[str] = []
        self.window: tuple[str, str] = ("", "")

    def ts(self) -> str:
        return utc_timestamp(self.t0 + self.seq * 0.002)

    def seal(self, draft: EventDraft) -> tuple[Any, ...]:
        self.seq += 1
        event, params = Sealer().seal(draft, seq=self.seq, ts=self.ts(), prev_hash=self.prev)
        self.prev, self.last = event.hash, event
        return params

    def mint(self, *, principal: str, run: dict[str, Any], parent: str | None = None,
             target: str = "orders-db") -> tuple[str, tuple[Any, ...]]:
        cid = new_credential_id(now=self.t0 + (self.seq + 1) * 0.002)
        issued = int(self.t0 + (self.seq + 1) * 0.002)
        authorizer = {"type": "policy", "name": "payments-deploy", "digest": "sha256:" + "ab" * 32}
        record = CredentialRecord(credential_id=cid, parent_id=parent, principal=principal, run=run,
                                  authorizer=authorizer, target=target, target_type="postgres",
                                  scope="read write", issued_at=issued, expires_at=issued + 900,
                                  issuer="github-actions", details={"role": f"nhb_{cid}"})
        self.credentials.append(credential_params(record))
        row = self.seal(EventDraft(type="mint", credential_id=cid, parent_id=parent, principal=principal,
                                   run=run, authorizer=authorizer, target=target,
                                   details={"issuer": "github-actions", "ttl": 900, "scope": "read write",
                                            "attestation_sha256": hashlib.sha256(cid.encode()).hexdigest()}))
        return cid, row

    def usage(self, cid: str, principal: str, n: int, statement: str | None = None) -> tuple[Any, ...]:
        statement = statement or STATEMENTS[n % len(STATEMENTS)]
        at = self.ts()
        row = self.seal(EventDraft(type="usage", credential_id=cid, principal=principal, target="orders-db",
                                   details={"statement": statement, "database": "orders",
                                            "command_tag": statement.split()[0], "session_id": f"s{n % 97}",
                                            "client_addr": "10.1.2.3", "duration_ms": n % 13,
                                            "log_time": at}))
        # fingerprint NULL: the backfill computes it, as migration 10 does for an older ledger
        self.usage_lines.append((self.seq, f"bench:{self.seq}", cid, at, statement, None))
        return row

    def rows(self) -> Iterator[tuple[Any, ...]]:
        """Every event row, in seq order; credential rows collect in ``self.credentials``."""
        rng, total = self.rng, self.total
        # Target events: planned at fixed positions so they spread over the whole ledger.
        start = total // 20
        planned: dict[int, Callable[[], tuple[Any, ...]]] = {}
        tree: list[tuple[str, str | None]] = []      # filled as the mints happen

        def mint_target(parent_index: int | None, attempt: int = 1) -> Callable[[], tuple[Any, ...]]:
            def go() -> tuple[Any, ...]:
                parent = tree[parent_index][0] if parent_index is not None else None
                cid, row = self.mint(principal=TARGET_PRINCIPAL, parent=parent,
                                     run={"id": TARGET_RUN, "attempt": attempt, "workflow": "deploy"})
                tree.append((cid, parent))
                return row
            return go

        # root (index 0), 10 children (1..10), 90 grandchildren (11..100), then attempt 2's root
        # with 5 children, and a denied attempt 3.
        plan = [mint_target(None)] + [mint_target(0) for _ in range(10)]
        plan += [mint_target(1 + i // 9) for i in range(90)]
        plan += [mint_target(None, attempt=2)] + [mint_target(101) for _ in range(5)]
        for i, step in enumerate(plan):
            planned[start + i * 3] = step
        planned[start + len(plan) * 3 + 1] = lambda: self.seal(EventDraft(
            type="deny", principal=TARGET_PRINCIPAL, run={"id": TARGET_RUN, "attempt": 3},
            target="orders-db", details={"error": "unauthorized_client", "reason": "ref not allowed"}))
        usage_start = start + len(plan) * 3 + 10
        spacing = max(1, (total - usage_start - 10) // 2000)

        def usage_of(owner: int, k: int) -> Callable[[], tuple[Any, ...]]:
            rare = RARE_STATEMENT if k % 200 == 0 else None
            return lambda: self.usage(tree[owner][0], TARGET_PRINCIPAL, k, rare)

        for k in range(2000):                  # 1000 on the root, 10 on each descendant
            owner = 0 if k % 2 == 0 else 1 + (k // 2) % 100
            planned[usage_start + k * spacing] = usage_of(owner, k)
        planned[total - 5] = lambda: self.seal(EventDraft(
            type="revoke", credential_id=tree[3][0], parent_id=tree[0][0], principal=TARGET_PRINCIPAL,
            run={"id": TARGET_RUN, "attempt": 1}, target="orders-db",
            details={"result": "revoked", "client": "ops", "cause": "client request"}))

        principals = [f"github:acme/svc-{i}:ref:refs/heads/main" for i in range(500)]
        current: tuple[str, str, int] | None = None     # (cid, principal, usage left)
        recent: list[str] = []
        while self.seq < total:
            planned_step = planned.get(self.seq + 1)
            if planned_step is not None:
                yield planned_step()
                continue
            if current is None or current[2] == 0:
                roll = rng.random()
                principal = rng.choice(principals)
                if roll < 0.03:
                    yield self.seal(EventDraft(type="deny", principal=principal,
                                               run={"id": str(rng.randrange(10**6)), "attempt": 1},
                                               target="orders-db",
                                               details={"error": "invalid_grant", "reason": "token expired"}))
                    continue
                parent = rng.choice(recent) if recent and roll < 0.2 else None
                cid, row = self.mint(principal=principal, parent=parent,
                                     run={"id": str(rng.randrange(10**6)), "attempt": 1})
                recent = (recent + [cid])[-50:]
                current = (cid, principal, rng.randint(10, 70))
                yield row
                continue
            cid, principal, left = current
            current = (cid, principal, left - 1)
            if rng.random() < 0.01:
                yield self.seal(EventDraft(type="introspect", credential_id=cid, principal=principal,
                                           details={"client": "api-gw", "active": True}))
            else:
                yield self.usage(cid, principal, left)
        self.target_id = tree[0][0]
        self.target_children = [cid for cid, parent in tree if parent == self.target_id]


def batches(rows: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_sqlite(path: str, builder: Builder) -> None:
    import sqlite3

    from broker.ledger import open_ledger

    open_ledger(f"sqlite:///{path}").close()          # schema, all migrations
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    insert_event = SQL_INSERT_EVENT.replace("%s", "?")
    for batch in batches(builder.rows(), 50_000):
        conn.execute("BEGIN")
        conn.executemany(insert_event, batch)
        conn.execute("COMMIT")
    conn.execute("BEGIN")
    conn.executemany(SQL_INSERT_CREDENTIAL.replace("%s", "?"), builder.credentials)
    conn.executemany(SQL_INSERT_USAGE_LINE.replace("%s", "?"), builder.usage_lines)
    last = builder.last
    assert last is not None
    conn.execute("UPDATE ledger_head SET seq = ?, hash = ?, ts = ? WHERE id = 1",
                 (last.seq, last.hash, last.ts))
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    from broker.ledger.sqlite import _fingerprint

    conn = sqlite3.connect(path, isolation_level=None)
    conn.create_function("nhb_fingerprint", 1, _fingerprint, deterministic=True)
    started = time.perf_counter()
    conn.execute("BEGIN")
    for sql, params in projection_backfill("sqlite"):
        conn.execute(sql.replace("%s", "?"), params)
    conn.execute("COMMIT")
    builder.backfill_seconds = time.perf_counter() - started
    conn.execute("ANALYZE")
    conn.close()


def build_postgres(url: str, builder: Builder) -> None:
    import psycopg

    from broker.ledger import open_ledger

    open_ledger(url).close()
    event_cols = SQL_INSERT_EVENT.split("(", 1)[1].split(")", 1)[0]
    cred_cols = SQL_INSERT_CREDENTIAL.split("(", 1)[1].split(")", 1)[0]
    with psycopg.connect(url) as conn:
        with conn.cursor() as cur:
            for batch in batches(builder.rows(), 50_000):
                with cur.copy(f"COPY events ({event_cols}) FROM STDIN") as copy:
                    for row in batch:
                        copy.write_row(row)
            with cur.copy(f"COPY credentials ({cred_cols}) FROM STDIN") as copy:
                for row in builder.credentials:
                    copy.write_row(row)
            with cur.copy(f"COPY usage_lines ({', '.join(USAGE_LINE_COLUMNS)}) FROM STDIN") as copy:
                for row in builder.usage_lines:
                    copy.write_row(row)
            last = builder.last
            assert last is not None
            cur.execute("UPDATE ledger_head SET seq = %s, hash = %s, ts = %s WHERE id = 1",
                        (last.seq, last.hash, last.ts))
        conn.commit()
        started = time.perf_counter()
        for sql, params in projection_backfill("postgres"):
            conn.execute(sql, params or None)
        conn.commit()
        builder.backfill_seconds = time.perf_counter() - started
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def timed(fn: Callable[[], Any], iterations: int, warmup: int = 20) -> tuple[float, float, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(round(0.99 * len(samples))) - 1)]
    return statistics.median(samples), p99, samples[-1]


def measure(url: str, builder: Builder, iterations: int, tmp: str) -> list[tuple[str, float, float, float]]:
    from broker import create_app
    from broker.audit import views

    policies = Path(tmp) / f"policies-{os.getpid()}"
    policies.mkdir(exist_ok=True)
    (policies / "clients.yaml").write_text(POLICY)
    app = create_app({"TESTING": False, "POLICY_DIR": str(policies), "STATE_DIR": str(Path(tmp) / "state"),
                      "DATABASE_URL": url, "LOG_LEVEL": "WARNING"})
    ledger = app.extensions["broker"].ledger
    client = app.test_client()
    headers = {"Authorization": "Basic " + base64.b64encode(f"{AUDITOR[0]}:{AUDITOR[1]}".encode()).decode()}
    target = builder.target_id

    def get(path: str) -> Callable[[], Any]:
        def go() -> Any:
            response = client.get(path, headers=headers)
            assert response.status_code == 200, (path, response.status_code, response.data[:300])
            return response
        return go

    body = get(f"/v1/credentials/{target}/lineage")().get_json()
    assert body["descendant_count"] == 100, body["descendant_count"]
    assert body["credential"]["usage"]["count"] == 1000, body["credential"]["usage"]["count"]
    who = get(f"/v1/usage?statement={quote(RARE_STATEMENT)}")().get_json()
    assert len(who["usage"]) == 10 and {u["credential_id"] for u in who["usage"]} == {target}, who
    common = get(f"/v1/usage?statement={quote(STATEMENTS[1][:15])}&limit=100")().get_json()
    assert len(common["usage"]) == 100, len(common["usage"])
    first = get(f"/v1/events?credential_id={target}&type=usage&limit=100")().get_json()
    cursor = first["next_cursor"]
    mid = builder.t0 + builder.total * 0.001
    since, until = utc_timestamp(mid), utc_timestamp(mid + 600)
    results = [
        ("lineage (HTTP)", *timed(get(f"/v1/credentials/{target}/lineage"), iterations)),
        ("lineage (query)", *timed(lambda: views.lineage_view(ledger, target), iterations)),
        ("run (HTTP)", *timed(get(f"/v1/runs/{TARGET_RUN}"), iterations)),
        ("events by credential (HTTP)",
         *timed(get(f"/v1/events?credential_id={target}&type=usage&limit=100"), iterations)),
        ("events, cursor page (HTTP)",
         *timed(get(f"/v1/events?credential_id={target}&type=usage&limit=100&cursor={cursor}"),
                iterations)),
        ("events by principal+window (HTTP)",
         *timed(get(f"/v1/events?principal={TARGET_PRINCIPAL}&since={since}&until={until}&limit=100"),
                iterations)),
        ("who ran: common statement (HTTP)",
         *timed(get(f"/v1/usage?statement={quote(STATEMENTS[1][:15])}&limit=100"), iterations)),
        ("who ran: rare statement (HTTP)",
         *timed(get(f"/v1/usage?statement={quote(RARE_STATEMENT)}"), iterations)),
        ("who ran: nobody (HTTP)",
         *timed(get(f"/v1/usage?statement={quote('TRUNCATE payroll')}"), iterations)),
        ("principal window (HTTP)",
         *timed(get(f"/v1/principals/{TARGET_PRINCIPAL}?since={utc_timestamp(builder.t0)}&limit=100"),
                max(20, iterations // 5))),
    ]
    app.extensions["broker"].close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--verify", action="store_true", help="also recompute the whole chain (slow)")
    parser.add_argument("--pg-admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    from bench.common import fresh_pg_database

    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    report: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            builder = Builder(args.events)
            started = time.perf_counter()
            if backend == "sqlite":
                url = f"sqlite:///{tmp}/bench-ledger.db"
                build_sqlite(url[len("sqlite:///"):], builder)
                results = run_backend(url, builder, args, tmp, started)
            else:
                with fresh_pg_database(args.pg_admin_dsn) as url:
                    build_postgres(url, builder)
                    results = run_backend(url, builder, args, tmp, started)
            report.append(f"\n{backend}: {builder.seq:,} events, {builder.credential_count:,} credentials"
                          f" (built in {results[0]:.0f} s, of which migration 10's backfill"
                          f" {builder.backfill_seconds:.1f} s)")
            report.append(f"  {'query':38} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
            for name, p50, p99, worst in results[1]:
                report.append(f"  {name:38} {p50:8.2f} {p99:8.2f} {worst:8.2f}")
            if results[2] is not None:
                report.append(f"  chain verification: {results[2]}")
    print("\n".join(report))
    print(f"\ntarget (issue 14): lineage, run and who-ran-this p99 < 20 ms over HTTP (aim < 10 ms) with"
          f" {args.events:,} events, 100 descendants, 1,000 usage events")


def run_backend(url: str, builder: Builder, args: argparse.Namespace, tmp: str,
                started: float) -> tuple[float, list[tuple[str, float, float, float]], str | None]:
    built = time.perf_counter() - started
    print(f"built {url.split('/')[-1]}: {builder.seq:,} events in {built:.0f} s", flush=True)
    verified = None
    if args.verify:
        from broker.ledger import open_ledger

        with open_ledger(url) as ledger:
            t = time.perf_counter()
            report = ledger.verify()
            verified = f"ok={report.ok} count={report.count} in {time.perf_counter() - t:.1f} s"
            print(f"  verify: {verified}", flush=True)
    # The generated rows are in the database now: drop them from this process, or every full
    # garbage collection during the timings walks millions of tuples (a 50 ms pause at 1,000,000
    # events, which was most of the p99) that no broker process holds.
    builder.credential_count = len(builder.credentials)
    builder.credentials.clear()
    builder.usage_lines.clear()
    gc.collect()
    return built, measure(url, builder, args.iterations, tmp), verified


if __name__ == "__main__":
    main()
