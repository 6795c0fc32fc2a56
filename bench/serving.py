"""Serving models for the same Flask app on the JWT exchange (issue 14, "a serving path that
costs little"): gunicorn gthread at several workers x threads, gunicorn sync, gevent and granian.

    .venv/bin/python -m bench.serving [--requests N] [--clients C] [--rounds R]

Every variant serves the same app (``broker:create_app``) with its own fresh PostgreSQL ledger
database and the same Redis, on a ``type: jwt`` target — RS256 verification, single use,
policy, ES256 signing, the hash-chained ledger append. The ledger schema and signing key are
created once before any server starts (what ``broker serve``'s master does before forking), so
servers that have no such step are not racing for them. All servers run at once (idle ones
cost memory, not CPU: the reaper is off); rounds alternate variants, each round sending the
same number of distinct pre-signed attestations from C client processes over keep-alive
connections. Ratios are against ``broker serve``'s default (gthread, 2 x CPUs workers, 4
threads). gevent and granian are measured when installed (``pip install gevent granian``);
they are not dependencies of the broker.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    REPO,
    _client,
    exchange_body,
    free_port,
    fresh_pg_database,
    run_clients_raw,
    summarize,
)
from bench.exchange import POLICY

os.environ.setdefault("BROKER_INSECURE_DEV_ISSUER", "1")   # the bench's own local issuer


@dataclass(frozen=True)
class Variant:
    label: str
    server: str            # gunicorn-gthread, gunicorn-sync, gunicorn-gevent, granian
    workers: int
    threads: int           # threads per worker (gevent: connections per worker)

    def command(self, port: int) -> list[str]:
        bind = ["-b", f"127.0.0.1:{port}"]
        gunicorn = [sys.executable, "-m", "gunicorn", *bind, "-w", str(self.workers),
                    "--keep-alive", "30", "--log-level", "warning"]
        if self.server == "gunicorn-gthread":
            return [*gunicorn, "-k", "gthread", "--threads", str(self.threads), "broker:create_app()"]
        if self.server == "gunicorn-sync":
            return [*gunicorn, "-k", "sync", "broker:create_app()"]
        if self.server == "gunicorn-gevent":
            return [*gunicorn, "-k", "gevent", "--worker-connections", str(self.threads),
                    "broker:create_app()"]
        if self.server == "granian":
            return [sys.executable, "-m", "granian", "--interface", "wsgi", "--factory",
                    "--host", "127.0.0.1", "--port", str(port), "--workers", str(self.workers),
                    "--blocking-threads", str(self.threads), "--no-access-log",
                    "--log-level", "warning", "broker:create_app"]
        raise ValueError(self.server)

    def available(self) -> bool:
        module = {"gunicorn-gevent": "gevent", "granian": "granian"}.get(self.server)
        return module is None or importlib.util.find_spec(module) is not None


def variants() -> list[Variant]:
    from broker.http.server import default_workers

    cpus = os.cpu_count() or 1
    default = default_workers()
    return [
        Variant(f"gthread {default}x4 (serve default)", "gunicorn-gthread", default, 4),
        Variant("gthread 1x8", "gunicorn-gthread", 1, 8),
        Variant(f"gthread {cpus}x4", "gunicorn-gthread", cpus, 4),
        Variant(f"gthread {cpus}x8", "gunicorn-gthread", cpus, 8),
        Variant(f"sync {default}", "gunicorn-sync", default, 1),
        Variant(f"gevent {cpus}x64", "gunicorn-gevent", cpus, 64),
        Variant("granian 1x8", "granian", 1, 8),
        Variant(f"granian {cpus}x4", "granian", cpus, 4),
    ]


@contextlib.contextmanager
def serving(variant: Variant, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(variant.command(port), env={**os.environ, **env, "BROKER_ISSUER": base},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{variant.label}: server exited with {proc.returncode}")
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{variant.label}: server did not start")
            time.sleep(0.1)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def prepare(env: dict[str, str]) -> None:
    """What `broker serve`'s master does before forking: schema, signing key."""
    from broker import build_context
    from broker.config import env_config

    build_context(env_config({**os.environ, **env})).close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per variant per round")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--only", default="", help="comma-separated label prefixes to run")
    args = parser.parse_args()

    from broker.devtools.dev_issuer import DevIssuer

    chosen = [v for v in variants()
              if not args.only or any(v.label.startswith(p.strip()) for p in args.only.split(","))]
    skipped = [v for v in chosen if not v.available()]
    chosen = [v for v in chosen if v.available()]
    for v in skipped:
        print(f"{v.label}: not installed, not measured")
    n, warm = args.requests, 100
    raw: dict[str, list[tuple[list[float], int, float, float]]] = {v.label: [] for v in chosen}
    with DevIssuer() as issuer, tempfile.TemporaryDirectory(prefix="nhb-bench-serving-") as tmp, \
            contextlib.ExitStack() as stack:
        policy_dir = Path(tmp) / "policies"
        policy_dir.mkdir()
        (policy_dir / "bench.yaml").write_text(POLICY.format(issuer=issuer.issuer))
        bases = {}
        for index, variant in enumerate(chosen):
            env = {"BROKER_POLICY_DIR": str(policy_dir),
                   "BROKER_STATE_DIR": str(Path(tmp) / f"state-{index}"),
                   "BROKER_REDIS_URL": args.redis_url, "BROKER_REAPER_INTERVAL": "0",
                   "BROKER_LOG_LEVEL": "WARNING",
                   "BROKER_DATABASE_URL": stack.enter_context(fresh_pg_database())}
            prepare(env)
            bases[variant.label] = stack.enter_context(serving(variant, env))
        total = (n * args.rounds + warm) * len(chosen)
        print(f"pre-signing {total} attestations …", flush=True)
        tokens = iter([issuer.mint_github(audience="nhi-broker-bench", ttl=3600)
                       for _ in range(total)])

        def bodies(count: int) -> list[bytes]:
            return [exchange_body(next(tokens), "reports-api", "reports:read") for _ in range(count)]

        for variant in chosen:
            _, failures, _, _ = run_clients_raw(_client, bases[variant.label], bodies(warm),
                                                args.clients)
            if failures:
                raise RuntimeError(f"{variant.label} warm-up: {failures} of {warm} failed")
        for rnd in range(args.rounds):
            print(f"\nround {rnd + 1}/{args.rounds}, {args.clients} clients", flush=True)
            for variant in chosen:
                result = run_clients_raw(_client, bases[variant.label], bodies(n), args.clients)
                raw[variant.label].append(result)
                print(_line(variant.label, summarize(*result)), flush=True)

    totals = {label: summarize(sorted(t for lat, _, _, _ in rounds for t in lat),
                               sum(f for _, f, _, _ in rounds), sum(e for _, _, e, _ in rounds),
                               sum(c for _, _, _, c in rounds))
              for label, rounds in raw.items()}
    anchor = totals[chosen[0].label]
    print()
    print(f"total: {args.rounds} rounds x {n} requests per variant, {args.clients} client processes, "
          f"{os.cpu_count()} CPUs, PostgreSQL ledger + Redis; ratios vs {chosen[0].label}")
    print(f"{'variant':34s} {'mints/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} {'fail':>5s} "
          f"{'client cpu':>10s} {'x thr':>6s} {'x p99':>6s}")
    for label, r in totals.items():
        print(f"{_line(label, r)} {r['per_second'] / anchor['per_second']:6.2f} "
              f"{r['p99_ms'] / anchor['p99_ms']:6.2f}")


def _line(label: str, r: dict[str, float]) -> str:
    return (f"{label:34s} {r['per_second']:8.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
            f"{int(r['failures']):5d} {r['client_cpu_share'] * 100:9.0f}%")


if __name__ == "__main__":
    main()
