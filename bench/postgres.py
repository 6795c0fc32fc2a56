"""PostgreSQL credentials: mints per second and p50/p99 through the real server, against the
bare cost of ``CREATE ROLE … VALID UNTIL`` + ``DROP ROLE`` on the same server, and the rate of
usage ingestion from the database's log.

    .venv/bin/python -m bench.postgres [--requests N] [--workers W] [--threads T]
                                       [--ledger sqlite|postgres|both] [--ingest-lines N]

The target is the machine's PostgreSQL (127.0.0.1:5432, a fresh database per run). Each mint
is the whole pipeline — attestation verified, replay checked, policy evaluated, ``CREATE ROLE
nhb_<id> … VALID UNTIL … IN ROLE …`` + ``COMMENT ON ROLE`` (one round trip, one implicit
transaction, broker-computed SCRAM verifier), ES256 JWT signed, mint appended to the
hash-chained ledger — through gunicorn, from 1 and 4 client processes with keep-alive. The
roles are dropped at the end.

The baseline runs, on the same server in the same run, ``CREATE ROLE … LOGIN PASSWORD '<plain>'
VALID UNTIL …`` then ``DROP ROLE`` from 1 and 4 client threads (each its own connection); the
server hashes the plain password with its own SCRAM iteration count (``scram_iterations``,
4096 by default). The printed ratio is broker mints/s ÷ baseline pairs/s.

Ingestion: a ``jsonlog`` file (and a ``csvlog`` one) of statements by minted roles is written
and ingested into an empty ledger of each kind; lines per second, end to end (read, parse,
credential lookup, redaction, hash chain, batched commits), beside a bare decoding loop over the
same file (see :mod:`bench.ingest`, which runs only these rows: ``python -m bench.ingest``).
"""
from __future__ import annotations

import argparse
import os
import secrets
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.common import broker_process, exchange_body, fresh_pg_database, run_load
from bench.ingest import bench_ingest, print_table

os.environ.setdefault("BROKER_INSECURE_DEV_ISSUER", "1")   # the bench's own local issuer

PG_ADMIN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
ADMIN_ENV = "BENCH_PG_ADMIN_DSN"

POLICY = """
kind: issuer
name: bench
preset: github-actions
issuer: {issuer}
audience: nhi-broker-bench
---
kind: target
name: {target}
type: postgres
admin_dsn_env: {admin_env}
grants: [{grant}]
connection_limit: 2
max_ttl: 15m
---
kind: policy
name: bench-pg
issuer: bench
targets: [{target}]
match: {{repository: acme/payments, ref: {{glob: "refs/heads/*"}}}}
"""


def bare_create_drop(dsn: str, *, clients: int, pairs: int, grant: str) -> dict[str, float]:
    """CREATE ROLE … LOGIN PASSWORD … VALID UNTIL … IN ROLE + DROP ROLE, ``clients`` threads."""
    import psycopg
    from psycopg import sql

    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 900))
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def worker(n: int) -> None:
        mine: list[float] = []
        with psycopg.connect(dsn, autocommit=True) as conn:
            barrier.wait()
            for _ in range(n):
                role = f"bench_bare_{secrets.token_hex(6)}"
                start = time.perf_counter()
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} VALID UNTIL {} IN ROLE {}").format(
                    sql.Identifier(role), sql.Literal(secrets.token_urlsafe(32)), sql.Literal(until),
                    sql.Identifier(grant)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
                mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(pairs // clients,)) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {"per_second": len(latencies) / elapsed, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000}


def drop_minted(dsn: str, target: str) -> int:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        roles = [r[0] for r in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE 'nhb\\_%%'"
            " AND shobj_description(oid, 'pg_authid') LIKE %s", (f'%"target":"{target}"%',))]
        for role in roles:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    return len(roles)


# ---------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="mints per scenario")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ledger", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--ingest-lines", type=int, default=200_000)
    args = parser.parse_args()

    import psycopg
    from psycopg import sql

    from broker.devtools.dev_issuer import DevIssuer
    from broker.http.server import default_workers

    workers = args.workers or default_workers()
    ledgers = ["sqlite", "postgres"] if args.ledger == "both" else [args.ledger]
    tag = secrets.token_hex(3)
    target, grant = f"bench-db-{tag}", f"bench_reader_{tag}"
    mint_rows, bare_rows = [], []
    with fresh_pg_database(PG_ADMIN) as target_dsn, DevIssuer() as issuer, \
            tempfile.TemporaryDirectory() as tmp:
        with psycopg.connect(target_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(grant)))
            scram_iterations = conn.execute("SHOW scram_iterations").fetchone()[0] \
                if conn.info.server_version >= 160000 else "4096"
        try:
            policy_dir = Path(tmp) / "policies"
            policy_dir.mkdir()
            (policy_dir / "bench.yaml").write_text(POLICY.format(
                issuer=issuer.issuer, target=target, admin_env=ADMIN_ENV, grant=grant))
            total = args.requests * 2 * len(ledgers)
            print(f"pre-signing {total} attestations …", flush=True)
            bodies = [exchange_body(issuer.mint_github(audience="nhi-broker-bench"), target)
                      for _ in range(total)]
            offset = 0
            for kind in ledgers:
                env = {"BROKER_POLICY_DIR": str(policy_dir), "BROKER_STATE_DIR": f"{tmp}/state-{kind}",
                       "BROKER_REAPER_INTERVAL": "0", ADMIN_ENV: target_dsn}
                with (fresh_pg_database(PG_ADMIN) if kind == "postgres" else _null()) as ledger_url:
                    if ledger_url:
                        env.update({"BROKER_DATABASE_URL": ledger_url, "BROKER_REDIS_URL": args.redis_url})
                    with broker_process(env, workers=workers, threads=args.threads) as base:
                        warm = [exchange_body(issuer.mint_github(audience="nhi-broker-bench"), target)
                                for _ in range(100)]
                        run_load(base, warm, 2)            # JWKS cache, pools, first connections
                        for clients in (1, 4):
                            chunk = bodies[offset:offset + args.requests]
                            offset += args.requests
                            result = run_load(base, chunk, clients)
                            label = "sqlite (embedded)" if kind == "sqlite" else "postgresql + redis"
                            mint_rows.append((label, clients, result))
                            print(f"broker {label:20s} clients={clients}  {result['per_second']:7.0f} mints/s"
                                  f"  p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms"
                                  f"  failures {result['failures']}", flush=True)
                print(f"dropped {drop_minted(target_dsn, target)} minted roles", flush=True)
            for clients in (1, 4):
                bare = bare_create_drop(target_dsn, clients=clients, pairs=args.requests, grant=grant)
                bare_rows.append((clients, bare))
                print(f"bare CREATE ROLE … VALID UNTIL + DROP ROLE  clients={clients}  "
                      f"{bare['per_second']:7.0f} pairs/s  p50 {bare['p50_ms']:6.2f} ms  "
                      f"p99 {bare['p99_ms']:6.2f} ms", flush=True)
        finally:
            drop_minted(target_dsn, target)
            with psycopg.connect(target_dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(grant)))
    ingest_rows = bench_ingest(args.ingest_lines, ledgers)

    print()
    print(f"postgres credentials through POST /token: gunicorn {workers} workers x {args.threads} threads,"
          f" {os.cpu_count()} CPUs, {args.requests} mints per row;"
          f" target PostgreSQL {PG_ADMIN.split('@')[-1]}")
    print(f"{'ledger':22s} {'clients':>7s} {'mints/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'vs bare':>8s}")
    bare_by_clients = dict(bare_rows)
    for label, clients, r in mint_rows:
        ratio = r["per_second"] / bare_by_clients[clients]["per_second"]
        print(f"{label:22s} {clients:7d} {r['per_second']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}"
              f" {ratio:7.2f}x")
    for clients, r in bare_rows:
        print(f"{'bare CREATE+DROP ROLE':22s} {clients:7d} {r['per_second']:9.0f} {r['p50_ms']:8.2f}"
              f" {r['p99_ms']:8.2f}   (server-side SCRAM, {scram_iterations} iterations)")
    print()
    print_table(ingest_rows)

class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
