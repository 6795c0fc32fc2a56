"""Shared pieces of the benchmark scripts: a real broker process and a load generator.

Figures come from these scripts, never from timed assertions in the test suite.
"""
from __future__ import annotations

import contextlib
import http.client
import multiprocessing as mp
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def broker_process(env: dict[str, str], *, workers: int, threads: int = 4) -> Iterator[str]:
    """`broker serve` (gunicorn) in its own process group; yields the base URL."""
    with broker_server(env, workers=workers, threads=threads) as (base, _proc):
        yield base


@contextlib.contextmanager
def broker_server(env: dict[str, str], *, workers: int,
                  threads: int = 4) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`broker serve` (gunicorn); yields the base URL and the master process (whose children
    are the workers)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "serve", "--port", str(port), "--workers", str(workers),
         "--threads", str(threads)],
        env={**os.environ, "BROKER_ISSUER": base, "BROKER_LOG_LEVEL": "WARNING", **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"broker exited with {proc.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("broker did not start")
            time.sleep(0.1)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _client(args: tuple[str, list[bytes], mp.Queue]) -> None:
    base, bodies, out = args
    url = urllib.parse.urlsplit(base)
    assert url.hostname is not None
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    latencies, failures = [], 0
    for body in bodies:
        start = time.perf_counter()
        conn.request("POST", "/token", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - start)
        if response.status != 200:
            failures += 1
    conn.close()
    out.put((latencies, failures))


def run_clients_raw(client: Callable[[tuple[Any, list[Any], mp.Queue]], None], target: Any,
                    work: list[Any], clients: int) -> tuple[list[float], int, float, float]:
    """Split ``work`` over ``clients`` processes, each running ``client((target, chunk, queue))``
    and putting ``(latencies, failures)`` on the queue. Return the sorted latencies (s), the
    failures, the wall seconds and the client processes' own user+sys CPU seconds (rusage of
    the reaped children, so call it with no other child of this process exiting meanwhile)."""
    chunks = [work[i::clients] for i in range(clients)]
    queue: mp.Queue = mp.Queue()
    procs = [mp.Process(target=client, args=((target, chunk, queue),)) for chunk in chunks]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    latencies = sorted(t for lat, _ in results for t in lat)
    failures = sum(f for _, f in results)
    return latencies, failures, elapsed, cpu


def summarize(latencies: list[float], failures: int, elapsed: float, cpu: float) -> dict[str, float]:
    """Throughput, p50/p99 (ms) of sorted latencies, and the load generator's CPU share
    (client CPU seconds / wall seconds / cores)."""
    return {
        "requests": len(latencies),
        "failures": failures,
        "per_second": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "client_cpu_share": cpu / elapsed / (os.cpu_count() or 1),
    }


def run_clients(client: Callable[[tuple[Any, list[Any], mp.Queue]], None], target: Any,
                work: list[Any], clients: int) -> dict[str, float]:
    """Split ``work`` over ``clients`` processes, each running ``client((target, chunk, queue))``
    and putting ``(latencies, failures)`` on the queue; return throughput and latency."""
    return summarize(*run_clients_raw(client, target, work, clients))


def run_load(base: str, bodies: list[bytes], clients: int) -> dict[str, float]:
    """Send the request bodies from `clients` processes with keep-alive; return throughput and latency."""
    return run_clients(_client, base, bodies, clients)


def exchange_body(token: str, target: str, scope: str | None = None) -> bytes:
    form = {"grant_type": GRANT, "subject_token": token, "subject_token_type": JWT_TYPE, "audience": target}
    if scope:
        form["scope"] = scope
    return urllib.parse.urlencode(form).encode()


@contextlib.contextmanager
def fresh_pg_database(admin_dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres") -> Iterator[str]:
    import secrets

    import psycopg
    from psycopg import sql

    name = f"nhb_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield admin_dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
