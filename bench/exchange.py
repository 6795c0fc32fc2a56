"""Mints per second and p50/p99 latency of POST /token through the real gunicorn server.

    .venv/bin/python -m bench.exchange [--requests N] [--workers W] [--threads T]

Scenarios: embedded defaults (SQLite ledger, embedded replay store) and PostgreSQL + Redis,
each with 1 and 4 concurrent clients (separate processes, keep-alive connections). Attestations
are pre-signed by the dev issuer before timing; the broker verifies each one (RS256 against the
issuer's JWKS), checks replay, evaluates the policy, signs an ES256 JWT and appends the mint to
the hash-chained ledger — the whole pipeline.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bench.common import broker_process, exchange_body, fresh_pg_database, run_load

os.environ.setdefault("BROKER_INSECURE_DEV_ISSUER", "1")   # the bench's own local issuer

POLICY = """
kind: issuer
name: bench
preset: github-actions
issuer: {issuer}
audience: nhi-broker-bench
---
kind: target
name: reports-api
type: jwt
max_ttl: 15m
---
kind: policy
name: bench-reports
issuer: bench
targets: [reports-api]
match: {{repository: acme/payments, ref: {{glob: "refs/heads/*"}}}}
scopes: [reports:read]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="requests per scenario")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    from broker.devtools.dev_issuer import DevIssuer
    from broker.http.server import default_workers

    workers = args.workers or default_workers()
    rows = []
    with DevIssuer() as issuer, tempfile.TemporaryDirectory() as tmp:
        policy_dir = Path(tmp) / "policies"
        policy_dir.mkdir()
        (policy_dir / "bench.yaml").write_text(POLICY.format(issuer=issuer.issuer))
        total = args.requests * 4
        print(f"pre-signing {total} attestations …", flush=True)
        bodies = [exchange_body(issuer.mint_github(audience="nhi-broker-bench"), "reports-api",
                                "reports:read") for _ in range(total)]
        warm = [exchange_body(issuer.mint_github(audience="nhi-broker-bench"), "reports-api")
                for _ in range(200)]
        scenarios: list[tuple[str, str | None]] = [("sqlite (embedded)", None)]
        scenarios.append(("postgresql + redis", "pg"))
        offset = 0
        for label, kind in scenarios:
            env = {"BROKER_POLICY_DIR": str(policy_dir),
                   "BROKER_STATE_DIR": str(Path(tmp) / f"state-{offset}")}
            with fresh_pg_database() if kind else _null() as pg_url:
                if kind:
                    env.update({"BROKER_DATABASE_URL": pg_url, "BROKER_REDIS_URL": args.redis_url})
                with broker_process(env, workers=workers, threads=args.threads) as base:
                    run_load(base, warm[offset // 20 % 200:][:100] or warm[:100], 2)  # warm JWKS cache, pools
                    for clients in (1, 4):
                        chunk = bodies[offset:offset + args.requests]
                        offset += args.requests
                        result = run_load(base, chunk, clients)
                        rows.append((label, clients, result))
                        print(f"{label:22s} clients={clients}  {result['per_second']:8.0f} mints/s  "
                              f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  "
                              f"failures {result['failures']}", flush=True)
    print()
    print(f"nhi-broker POST /token, gunicorn {workers} workers x {args.threads} threads, "
          f"{os.cpu_count()} CPUs, {args.requests} requests per row")
    print(f"{'backend':22s} {'clients':>7s} {'mints/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for label, clients, r in rows:
        print(f"{label:22s} {clients:7d} {r['per_second']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}")


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
