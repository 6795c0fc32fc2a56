"""Fan-out through the real gunicorn server: deriving 1,000 children, revoking a tree of 1,000.

    .venv/bin/python -m bench.fanout [--children N] [--workers W] [--threads T]
                                     [--backend sqlite|postgres|both]

For each ledger backend (embedded SQLite; PostgreSQL + Redis):

* **derive** — one root credential (from a dev-issuer attestation), then N children derived
  from it (``POST /token`` with the root's token as ``subject_token``), with 1 and with 4
  concurrent clients (separate processes, keep-alive). Each derivation verifies the parent's
  ES256 signature, reads its lineage from the ledger (one recursive query), applies the derive
  rules, signs the child and appends its mint to the hash-chained ledger.
* **revoke** — a tree of N credentials (a root; 9 children; 90 grandchildren; 900
  great-grandchildren for N = 1,000), then ONE ``POST /revoke`` of the root: the broker
  revokes the root and cascades to every descendant, one ``revoke`` event each. The figure is
  that request's wall time; the script then checks that every credential of the tree is
  revoked in the ledger.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import tempfile
import time
import urllib.parse
from pathlib import Path

from bench.common import GRANT, JWT_TYPE, broker_process, fresh_pg_database, run_load

os.environ.setdefault("BROKER_INSECURE_DEV_ISSUER", "1")   # the bench's own local issuer

AUDITOR = ("auditor", "auditor-secret-0123456789")

POLICY = """
kind: issuer
name: bench
preset: github-actions
issuer: {issuer}
audience: nhi-broker-bench
---
kind: target
name: deploy-api
type: jwt
max_ttl: 30m
---
kind: target
name: reports-api
type: jwt
max_ttl: 30m
---
kind: policy
name: bench-deploy
issuer: bench
targets: [deploy-api]
match: {{repository: acme/payments}}
scopes: [deploy]
derive:
  - target: reports-api
    scopes: [reports:read]
max_depth: 3
---
kind: client
name: auditor
secret_sha256: "{auditor_sha}"
may: [audit, introspect, revoke]
"""


def form(token: str, target: str, scope: str | None = None) -> bytes:
    body = {"grant_type": GRANT, "subject_token": token, "subject_token_type": JWT_TYPE,
            "audience": target}
    if scope:
        body["scope"] = scope
    return urllib.parse.urlencode(body).encode()


class Client:
    """One keep-alive connection to the broker."""

    def __init__(self, base: str) -> None:
        url = urllib.parse.urlsplit(base)
        assert url.hostname is not None
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=300)

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
        self.conn.request("POST", path, body=body, headers={
            "Content-Type": "application/x-www-form-urlencoded", **(headers or {})})
        response = self.conn.getresponse()
        raw = response.read()
        return response.status, (json.loads(raw) if raw else {})

    def token(self, body: bytes) -> dict:
        status, answer = self.post("/token", body)
        if status != 200:
            raise RuntimeError(f"token request failed: {status} {answer}")
        return answer


def build_tree(client: Client, root: dict, size: int) -> list[str]:
    """Level by level, fan-out 9 then 10: 1 + 9 + 90 + 900 = 1,000 for size 1,000."""
    ids, level, fanout = [root["credential_id"]], [root], 9
    while len(ids) < size and level:
        nxt = []
        for parent in level:
            for _ in range(fanout):
                if len(ids) >= size:
                    break
                kid = client.token(form(parent["access_token"], "reports-api"))
                ids.append(kid["credential_id"])
                nxt.append(kid)
        level, fanout = nxt, 10
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--children", type=int, default=1000, help="children derived; tree size")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    import hashlib

    from broker.devtools.dev_issuer import DevIssuer
    from broker.http.server import default_workers
    from broker.ledger import open_ledger

    workers = args.workers or default_workers()
    auth = {"Authorization": "Basic " + base64.b64encode(f"{AUDITOR[0]}:{AUDITOR[1]}".encode()).decode()}
    rows: list[tuple[str, str, float, dict[str, float] | None]] = []
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    with DevIssuer() as issuer, tempfile.TemporaryDirectory() as tmp:
        policy_dir = Path(tmp) / "policies"
        policy_dir.mkdir()
        (policy_dir / "bench.yaml").write_text(POLICY.format(
            issuer=issuer.issuer, auditor_sha=hashlib.sha256(AUDITOR[1].encode()).hexdigest()))
        for n, backend in enumerate(backends):
            env = {"BROKER_POLICY_DIR": str(policy_dir), "BROKER_STATE_DIR": str(Path(tmp) / f"state-{n}"),
                   "BROKER_REAPER_INTERVAL": "0"}
            with (fresh_pg_database() if backend == "postgres" else _null()) as pg_url:
                database = pg_url or f"sqlite:///{Path(tmp) / f'ledger-{n}.db'}"
                env["BROKER_DATABASE_URL"] = database
                if backend == "postgres":
                    env["BROKER_REDIS_URL"] = args.redis_url
                label = "sqlite (embedded)" if backend == "sqlite" else "postgresql + redis"
                with broker_process(env, workers=workers, threads=args.threads) as base:
                    client = Client(base)

                    def new_root(client: Client = client) -> dict:
                        return client.token(form(issuer.mint_github(audience="nhi-broker-bench"),
                                                 "deploy-api", "deploy"))

                    warm = new_root()
                    run_load(base, [form(warm["access_token"], "reports-api")] * 50, 2)
                    for clients in (1, 4):
                        root = new_root()
                        bodies = [form(root["access_token"], "reports-api")] * args.children
                        start = time.perf_counter()
                        result = run_load(base, bodies, clients)
                        elapsed = time.perf_counter() - start
                        rows.append((label, f"derive {args.children} children, {clients} client(s)",
                                     elapsed, result))
                        print(f"{label:20s} derive  clients={clients}  {elapsed:6.2f} s  "
                              f"{result['per_second']:6.0f}/s  p50 {result['p50_ms']:6.2f} ms  "
                              f"p99 {result['p99_ms']:6.2f} ms  failures {result['failures']}", flush=True)

                    root = new_root()
                    ids = build_tree(client, root, args.children)
                    start = time.perf_counter()
                    status, _ = client.post("/revoke", urllib.parse.urlencode(
                        {"credential_id": root["credential_id"]}).encode(), auth)
                    elapsed = time.perf_counter() - start
                    ledger = open_ledger(database)
                    try:
                        left = [i for i in ids if ledger.get_credential(i).revoked_at is None]
                    finally:
                        ledger.close()
                    rows.append((label, f"revoke a tree of {len(ids)} (depth 3), one request",
                                 elapsed, None))
                    print(f"{label:20s} revoke  tree={len(ids)}  {elapsed:6.2f} s  "
                          f"({len(ids) / elapsed:.0f} credentials/s)  status {status}  "
                          f"still live {len(left)}", flush=True)
                    if status != 200 or left:
                        raise SystemExit("revocation cascade incomplete")
    print()
    print(f"nhi-broker fan-out, gunicorn {workers} workers x {args.threads} threads, {os.cpu_count()} CPUs")
    for label, what, elapsed, measured in rows:
        extra = (f"  ({measured['per_second']:.0f}/s, p50 {measured['p50_ms']:.1f} ms,"
                 f" p99 {measured['p99_ms']:.1f} ms)" if measured else "")
        print(f"{label:20s} {what:44s} {elapsed:7.2f} s{extra}")


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
