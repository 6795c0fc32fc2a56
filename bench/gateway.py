"""The gateway against direct connections and PgBouncer, side by side in one run.

    .venv/bin/python bench/gateway.py [--seconds 8] [--rounds 2] [--workers 2] [--scale 10]

What runs: a throwaway PostgreSQL cluster (SCRAM logins, fsync off), ``pgbench -i -s SCALE``, then
alternating rounds of ``pgbench -S`` (``-M simple`` and ``-M prepared``, 1 and 8 clients) against

- **direct**: the cluster itself;
- **pgbouncer**: Debian's PgBouncer in session pooling, recording nothing (installed with apt-get
  when absent);
- **gateway**: ``python -m broker.gateway.devserver`` with ``audit: required`` and
  ``parameters: hashed``: every statement goes through the spool before it is forwarded, and the
  drainer batches every record into a SQLite table (``INSERT OR IGNORE`` on ``line_key``, one
  transaction per batch, WAL) — the sink does real work on the same two cores.

Then ``COPY`` of 500,000 rows in (``psql \\copy … from``) and out (``\\copy (select …) to``),
direct vs gateway. Prints tps, p50/p99 latency (from ``pgbench --log``), ratios, the pgbench
client's CPU share, the gateway's CPU, and how many records reached the sink.
A figure comes from here, never from a timed test.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.pg_cluster import Cluster, free_port, start_cluster

REPO = Path(__file__).resolve().parents[1]

ROLE, PASSWORD = "bench_app", "bench-app-password-1"
TOKEN, CREDENTIAL = "bench-token-" + "x" * 40, "cred-bench"


def sh(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


def ensure_pgbouncer() -> str:
    path = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(path):
        print("installing pgbouncer (apt-get)…", flush=True)
        subprocess.run(["apt-get", "install", "-y", "pgbouncer"], check=True, capture_output=True)
        # the package starts a system instance on 6432 where systemd exists; it is not used here
    return path


def start_pgbouncer(cluster: Cluster, root: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    d = root / "pgbouncer"
    d.mkdir()
    (d / "userlist.txt").write_text(f'"{ROLE}" "{PASSWORD}"\n')
    (d / "pgbouncer.ini").write_text(f"""[databases]
benchdb = host=127.0.0.1 port={cluster.port} dbname=benchdb
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {d / 'userlist.txt'}
pool_mode = session
max_client_conn = 200
default_pool_size = 20
logfile = {d / 'pgbouncer.log'}
pidfile = {d / 'pgbouncer.pid'}
""")
    os.chmod(d, 0o777)
    for f in d.iterdir():
        os.chmod(f, 0o666)
    cmd = ["su", "postgres", "-s", "/bin/sh", "-c", f"exec {ensure_pgbouncer()} {d / 'pgbouncer.ini'}"] \
        if os.geteuid() == 0 else [ensure_pgbouncer(), str(d / "pgbouncer.ini")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(port)
    return proc, port


def start_gateway(cluster: Cluster, root: Path, workers: int,
                  drain_priority: str = "low") -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    sink = root / "records.sqlite"
    config = {"spool_dir": str(root / "spool"), "workers": workers, "shutdown_grace": 5,
              "drain_priority": drain_priority,
              "listeners": [{"target": "bench", "gateway": {
                  "listen": f"127.0.0.1:{port}", "audit": "required", "parameters": "hashed",
                  "upstream": {"host": "127.0.0.1", "port": cluster.port, "sslmode": "disable"}}}],
              "authenticator": "tests.gateway.gw_support:make_authenticator",
              "authenticator_options": {"tokens": {TOKEN: {
                  "credential_id": CREDENTIAL, "upstream_user": ROLE, "upstream_password": PASSWORD,
                  "dbname": "benchdb", "expires_in": 86400}}},
              "sink": {"kind": "sqlite", "path": str(sink)}}
    path = root / "gateway.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen([sys.executable, "-m", "broker.gateway.devserver", str(path)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            stderr=open(root / "gateway.log", "a"), start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError((root / "gateway.log").read_text())
    return proc, port, sink


def wait_port(port: int, timeout: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def proc_cpu(pids: list[int]) -> float:
    """User+system CPU seconds of these processes and their children so far."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        for p in [pid, *children(pid)]:
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (FileNotFoundError, IndexError):
                pass
    return total / tick


def children(pid: int) -> list[int]:
    try:
        out = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    kids = [int(x) for x in out]
    return kids + [g for k in kids for g in children(k)]


def pgbench(target: dict, *, clients: int, mode: str, seconds: int, root: Path,
            server_pids: list[int]) -> dict:
    logdir = Path(tempfile.mkdtemp(dir=root))
    env = {**os.environ, "PGPASSWORD": target["password"]}
    argv = ["pgbench", "-n", "-S", "-M", mode, "-c", str(clients), "-j", str(min(clients, 2)),
            "-T", str(seconds), "-h", "127.0.0.1", "-p", str(target["port"]), "-U", target["user"],
            "--log", f"--log-prefix={logdir}/tx", target["db"]]
    cpu0 = proc_cpu(server_pids)
    t0 = time.perf_counter()
    r0 = os.times()
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    r1 = os.times()
    wall = time.perf_counter() - t0
    cpu1 = proc_cpu(server_pids)
    tps = next(float(line.split("=")[1].split()[0]) for line in out.splitlines()
               if line.startswith("tps = "))
    lat = []
    for f in logdir.iterdir():
        for line in f.read_text().splitlines():
            lat.append(int(line.split()[2]))
    lat.sort()
    shutil.rmtree(logdir)
    client_cpu = (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)
    return {"tps": tps, "p50_ms": lat[len(lat) // 2] / 1000, "p99_ms": lat[int(len(lat) * 0.99)] / 1000,
            "client_cpu": client_cpu / wall, "middle_cpu": (cpu1 - cpu0) / wall}


def psql(target: dict, command: str) -> float:
    env = {**os.environ, "PGPASSWORD": target["password"]}
    t0 = time.perf_counter()
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(target["port"]),
                    "-U", target["user"], "-d", target["db"], "-c", command], env=env, check=True,
                   capture_output=True)
    return time.perf_counter() - t0


def ledger_drain(n: int, *, batch: int = 5000) -> float:
    """What `broker gateway` does with its records: :class:`broker.gateway.service.LedgerSink`
    into a PostgreSQL ledger (one transaction per batch of 5,000: the head lock, COPY of the
    sealed events and their dedupe keys, one commit), on the machine's own PostgreSQL. Records
    are built as the drainer builds them (:func:`broker.gateway.recording.usage_record`)."""
    import secrets as _secrets

    import psycopg
    from psycopg import sql as _sql

    from broker.gateway.recording import usage_record
    from broker.gateway.service import LedgerSink
    from broker.ledger import open_ledger

    admin = os.environ.get("BROKER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"nhb_bench_drain_{_secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(_sql.SQL("CREATE DATABASE {}").format(_sql.Identifier(name)))
    try:
        ledger = open_ledger(admin.rpartition("/")[0] + "/" + name)
        sink = LedgerSink(ledger)
        connection = {"credential_id": "01jdbenchcred00000000000000", "database": "benchdb",
                      "client_addr": "127.0.0.1", "target": "bench-db",
                      "record": {"principal": "github:acme/payments:deploy", "run": {"id": "4242"},
                                 "authorizer": {"type": "policy", "name": "p", "digest": "sha256:00"}}}
        start_ns = time.time_ns()
        records = [usage_record("c1", i + 1, connection, start_ns + i,
                                f"SELECT abalance FROM pgbench_accounts WHERE aid = {i % 100000}", {},
                                outcome="ok", end_ns=start_ns + i + 80_000, command_tag="SELECT 1",
                                sqlstate=None, outcome_extra=None) for i in range(n)]
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            sink.write_batch(records[i:i + batch])
        took = time.perf_counter() - t0
        report = ledger.verify()
        ledger.close()
        print(f"drain into the PostgreSQL ledger (LedgerSink, batches of {batch}): {n:,} records in "
              f"{took:.2f}s = {n / took:,.0f} records/s; chain verifies: {report.ok} ({report.count} events)")
        return n / took
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(_sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(_sql.Identifier(name)))


def main() -> int:  # noqa: C901 - a benchmark script: its steps in order, one place
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--copy-rows", type=int, default=500_000)
    ap.add_argument("--only", default="direct,pgbouncer,gateway")
    ap.add_argument("--ledger-records", type=int, default=200_000,
                    help="records drained into a PostgreSQL ledger by broker gateway's own sink")
    ap.add_argument("--drain-priority", choices=["low", "idle"], default="idle",
                    help="idle: the drainer runs SCHED_IDLE while its backlog is under 256 MB")
    args = ap.parse_args()
    ensure_pgbouncer()
    root = Path(tempfile.mkdtemp(prefix="nhb-gwbench-"))
    os.chmod(root, 0o777)
    cluster = start_cluster(logging=False, max_connections=100)
    procs: list[subprocess.Popen] = []
    try:
        import psycopg

        with psycopg.connect(cluster.admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
            conn.execute(f"CREATE DATABASE benchdb OWNER {ROLE}")
        direct = {"port": cluster.port, "user": ROLE, "password": PASSWORD, "db": "benchdb"}
        sh(["pgbench", "-i", "-q", "-s", str(args.scale), "-h", "127.0.0.1", "-p", str(cluster.port),
            "-U", ROLE, "benchdb"], env={**os.environ, "PGPASSWORD": PASSWORD})
        bouncer, bport = start_pgbouncer(cluster, root)
        procs.append(bouncer)
        gw, gport, sink = start_gateway(cluster, root, args.workers, args.drain_priority)
        procs.append(gw)
        targets = {"direct": direct,
                   "pgbouncer": {**direct, "port": bport},
                   "gateway": {"port": gport, "user": CREDENTIAL, "password": TOKEN, "db": "benchdb"}}
        pids = {"direct": [], "pgbouncer": [int((root / "pgbouncer" / "pgbouncer.pid").read_text())],
                "gateway": [gw.pid]}
        names = [n for n in ("direct", "pgbouncer", "gateway") if n in args.only.split(",")]
        results: dict[tuple[str, str, int], list[dict]] = {}
        print(f"pgbench -S, {args.seconds}s per run, {args.rounds} alternating rounds, scale {args.scale}, "
              f"gateway workers {args.workers}, drain priority {args.drain_priority}", flush=True)
        for rnd in range(args.rounds):
            for mode in ("simple", "prepared"):
                for clients in (1, 8):
                    for name in names:
                        r = pgbench(targets[name], clients=clients, mode=mode, seconds=args.seconds,
                                    root=root, server_pids=pids[name])
                        results.setdefault((name, mode, clients), []).append(r)
                        print(f"  round {rnd + 1} {mode:8} c={clients} {name:9} tps={r['tps']:8.0f} "
                              f"p50={r['p50_ms']:.3f}ms p99={r['p99_ms']:.3f}ms "
                              f"client_cpu={r['client_cpu']:.2f} middle_cpu={r['middle_cpu']:.2f}",
                              flush=True)
        print("\nmedian over rounds")
        print(f"{'mode':9} {'c':>2} {'target':9} {'tps':>8} {'p50 ms':>7} {'p99 ms':>7} {'client':>6} "
              f"{'middle':>6}  ratios")
        for mode in ("simple", "prepared"):
            for clients in (1, 8):
                med = {n: {k: statistics.median(r[k] for r in results[(n, mode, clients)])
                           for k in results[(n, mode, clients)][0]} for n in names}
                for n in names:
                    m = med[n]
                    ratio = ""
                    if n == "gateway" and "pgbouncer" in med:
                        ratio = (f"gw/bouncer={m['tps'] / med['pgbouncer']['tps']:.2f} "
                                 f"gw/direct={m['tps'] / med['direct']['tps']:.2f} "
                                 f"added_p50={(m['p50_ms'] - med['direct']['p50_ms']) * 1000:.0f}us")
                    print(f"{mode:9} {clients:2} {n:9} {m['tps']:8.0f} {m['p50_ms']:7.3f} {m['p99_ms']:7.3f} "
                          f"{m['client_cpu']:6.2f} {m['middle_cpu']:6.2f}  {ratio}")
        # COPY
        data = root / "copy.tsv"
        with open(data, "w") as f:
            for i in range(args.copy_rows):
                f.write(f"{i}\t{i * 7 % 100003}\tsome filler text for row {i}\n")
        os.chmod(data, 0o644)
        psql(direct, "CREATE TABLE copy_bench (a int, b int, c text)")
        print(f"\nCOPY of {args.copy_rows} rows (psql \\copy), best of 3")
        copy_results = {}
        for name in ("direct", "gateway"):
            t_in, t_out = [], []
            for _ in range(3):
                psql(direct, "TRUNCATE copy_bench")
                t_in.append(psql(targets[name], f"\\copy copy_bench from '{data}'"))
                t_out.append(psql(targets[name], "\\copy (select * from copy_bench) to '/dev/null'"))
            copy_results[name] = (min(t_in), min(t_out))
            print(f"  {name:8} in {min(t_in):.3f}s  out {min(t_out):.3f}s")
        d, g = copy_results["direct"], copy_results["gateway"]
        print(f"  gateway/direct: in {g[0] / d[0]:.2f}x  out {g[1] / d[1]:.2f}x")
        # records: did the drainer keep up, and how fast does it drain a backlog?
        def usage_count() -> int:
            with sqlite3.connect(sink) as db:
                return db.execute("SELECT count(*) FROM gateway_records WHERE type='usage'").fetchone()[0]

        def wait_stable(timeout: float = 600) -> int:
            last, still, t0 = -1, 0, time.perf_counter()
            while still < 4 and time.perf_counter() - t0 < timeout:
                time.sleep(0.25)
                now = usage_count()
                still = still + 1 if now == last else 0
                last = now
            return last

        t_end = time.perf_counter()
        at_end = usage_count()
        total = wait_stable()
        print(f"\nusage records in the SQLite sink: {total} ({at_end} had arrived when the load ended; "
              f"the rest {time.perf_counter() - t_end - 1.0:.1f}s later)")
        # drain rate: pause the supervisor (drainer) while the workers record 200,000 statements,
        # then let it drain them with nothing else running
        os.kill(gw.pid, signal.SIGSTOP)
        try:
            sh(["pgbench", "-n", "-S", "-c", "8", "-j", "2", "-t", "25000", "-h", "127.0.0.1",
                "-p", str(gport), "-U", CREDENTIAL, "benchdb"], env={**os.environ, "PGPASSWORD": TOKEN})
        finally:
            os.kill(gw.pid, signal.SIGCONT)
        t0 = time.perf_counter()
        before = total
        while usage_count() < before + 200_000 and time.perf_counter() - t0 < 600:
            time.sleep(0.05)
        took = time.perf_counter() - t0
        print(f"drain of a 200,000-statement backlog into SQLite: {took:.2f}s = "
              f"{200_000 / took:,.0f} records/s "
              f"(drainer thread at {args.drain_priority} priority, nothing else running)")
        ledger_drain(args.ledger_records)
        return 0
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)
            except Exception:  # noqa: BLE001
                pass
        pidfile = root / "pgbouncer" / "pgbouncer.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
