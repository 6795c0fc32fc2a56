"""A broker worker's memory over many mints: RSS growth after warm-up (issue 14: < 10 %).

    .venv/bin/python -m bench.soak [--mints 100000] [--round 5000] [--clients 4] [--sqlite]

One gunicorn worker (so there is one RSS to watch) with its threads, on a PostgreSQL ledger and
Redis (``--sqlite``: the embedded defaults). Attestations are pre-signed by the dev issuer one
round at a time (the broker is idle meanwhile); each round is sent by ``--clients`` processes
and the worker's VmRSS is read from /proc after it. The anchor is the worker's own RSS once the
first ``--warmup`` mints have filled its caches and pools: the table prints every round's RSS
next to it and the growth since, then the verdict against the target.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.common import broker_server, exchange_body, fresh_pg_database, run_load
from bench.exchange import POLICY

os.environ.setdefault("BROKER_INSECURE_DEV_ISSUER", "1")   # the bench's own local issuer

#: RSS growth after warm-up the issue accepts
TARGET_GROWTH = 0.10


def rss_kib(pid: int) -> int:
    """A process's resident set (VmRSS, KiB) from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def worker_pids(master: int) -> list[int]:
    """The gunicorn master's children (its workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid …: comm may hold spaces and parentheses, so split after it.
        if int(stat.rsplit(")", 1)[1].split()[1]) == master:
            children.append(int(entry.name))
    return sorted(children)


@contextlib.contextmanager
def _ledger_env(sqlite: bool, redis_url: str) -> Iterator[dict[str, str]]:
    if sqlite:
        yield {}
        return
    with fresh_pg_database() as pg_url:
        yield {"BROKER_DATABASE_URL": pg_url, "BROKER_REDIS_URL": redis_url}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mints", type=int, default=100_000, help="mints in all")
    parser.add_argument("--round", type=int, default=5_000, help="mints between RSS readings")
    parser.add_argument("--warmup", type=int, default=10_000, help="mints before the anchor")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--sqlite", action="store_true", help="embedded SQLite ledger, no Redis")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    if args.warmup % args.round or args.mints % args.round or args.warmup >= args.mints:
        parser.error("--warmup and --mints must be multiples of --round, warm-up below mints")

    from broker.devtools.dev_issuer import DevIssuer

    backend = "sqlite (embedded)" if args.sqlite else "postgresql + redis"
    with DevIssuer() as issuer, tempfile.TemporaryDirectory() as tmp, \
            _ledger_env(args.sqlite, args.redis_url) as ledger_env:
        policy_dir = Path(tmp) / "policies"
        policy_dir.mkdir()
        (policy_dir / "bench.yaml").write_text(POLICY.format(issuer=issuer.issuer))
        env = {"BROKER_POLICY_DIR": str(policy_dir), "BROKER_STATE_DIR": str(Path(tmp) / "state"),
               **ledger_env}
        with broker_server(env, workers=1, threads=args.threads) as (base, master):
            (worker,) = worker_pids(master.pid)
            started_kib = rss_kib(worker)
            print(f"nhi-broker soak: {args.mints} mints, {backend}, 1 worker x {args.threads} "
                  f"threads, {args.clients} clients, {os.cpu_count()} CPUs; worker pid {worker}, "
                  f"RSS at start {started_kib / 1024:.1f} MiB", flush=True)
            print(f"{'mints':>8s} {'mints/s':>8s} {'p99 ms':>7s} {'fail':>5s} {'RSS MiB':>8s} "
                  f"{'vs anchor':>9s}", flush=True)
            anchor_kib: int | None = None
            peak_growth = 0.0
            done = failures = 0
            while done < args.mints:
                bodies = [exchange_body(issuer.mint_github(audience="nhi-broker-bench"),
                                        "reports-api", "reports:read") for _ in range(args.round)]
                result = run_load(base, bodies, args.clients)
                done += args.round
                failures += int(result["failures"])
                now_kib = rss_kib(worker)
                if done == args.warmup:
                    anchor_kib = now_kib
                growth = "" if anchor_kib is None else f"{(now_kib / anchor_kib - 1) * 100:+8.1f}%"
                if anchor_kib is not None:
                    peak_growth = max(peak_growth, now_kib / anchor_kib - 1)
                print(f"{done:8d} {result['per_second']:8.0f} {result['p99_ms']:7.1f} "
                      f"{int(result['failures']):5d} {now_kib / 1024:8.1f} {growth:>9s}", flush=True)
            final_kib = rss_kib(worker)
    assert anchor_kib is not None
    final_growth = final_kib / anchor_kib - 1
    verdict = "meets" if peak_growth < TARGET_GROWTH else "MISSES"
    print()
    print(f"anchor (after {args.warmup} mints) {anchor_kib / 1024:.1f} MiB; after {args.mints}: "
          f"{final_kib / 1024:.1f} MiB ({final_growth * 100:+.1f}%), peak growth "
          f"{peak_growth * 100:+.1f}% — {verdict} the < {TARGET_GROWTH * 100:.0f}% target; "
          f"{failures} failed requests")


if __name__ == "__main__":
    main()
