"""AWS credentials: exchanges per second for ``type: aws`` targets against moto's STS, and
CloudTrail ingestion in records per second.

    .venv/bin/python -m bench.cloud [--requests N] [--workers W] [--threads T]
                                    [--records N] [--per-file N] [--ledger sqlite|postgres|both]

Exchanges: ``broker serve`` (gunicorn) with three targets — ``aws`` in ``mode: assume`` (sign a
web-identity JWT, ``AssumeRoleWithWebIdentity`` through boto3 to moto's real HTTP server in its
own process, record the mint), ``aws`` in ``mode: token`` (sign it, no STS call) and a ``jwt``
target (the pipeline alone) — from 1 and 4 client processes with keep-alive. Each row prints
mints/s, p50/p99, and the CPU the client processes, the broker and moto used per second of wall
time (2 cores are all there is here: a busy client or moto takes them from the broker).

Ingestion: CloudTrail log files (gzipped ``{"Records": [...]}``, ``--per-file`` records each, in
the S3 layout) of which some records are API calls by broker sessions (100 credentials in the
ledger, matched by ``sessionContext.sourceIdentity``) and half by other principals, ingested into an
empty ledger (read, gunzip, parse, match, hash chain, batched commits); records/s and usage
events/s end to end, and the ingester's CPU share. A trail holds the whole account's activity,
of which the broker's sessions are a part: runs with 10 % and 50 % of the records by broker
sessions (``--broker-share``); every matched record is one hash-chained ledger event, which is
what bounds the rate as that share grows.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import broker_process, exchange_body, free_port, fresh_pg_database, run_load

os.environ.setdefault("BROKER_INSECURE_DEV_ISSUER", "1")   # the bench's own local issuer
ACCOUNT = "123456789012"
REGION = "eu-west-1"

POLICY = """
kind: issuer
name: bench
preset: github-actions
issuer: {issuer}
audience: nhi-broker-bench
---
kind: target
name: aws-assume
type: aws
role_arn: {role}
region: eu-west-1
max_ttl: 15m
tags: {{repository: "{{run.repository}}"}}
---
kind: target
name: aws-token
type: aws
mode: token
role_arn: {role}
region: eu-west-1
max_ttl: 15m
---
kind: target
name: jwt-api
type: jwt
max_ttl: 15m
---
kind: policy
name: bench-aws
issuer: bench
targets: [aws-assume, aws-token, jwt-api]
match:
  repository: acme/payments
max_ttl: 15m
"""


def proc_cpu(pid: int) -> float:
    """User+system CPU seconds of a process and its descendants so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            children = Path(f"/proc/{current}/task/{current}/children").read_text()
            pending.extend(int(x) for x in children.split())
        except (FileNotFoundError, IndexError, ValueError):
            pass
    return total / tick


@contextlib.contextmanager
def moto_process() -> Iterator[tuple[str, int]]:
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def broker_pid(port: int) -> int | None:
    """The gunicorn master listening on ``port`` (its workers are its children)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in cmd and str(port).encode() in cmd:
                return int(entry.name)
    return None


def bench_exchanges(args: argparse.Namespace) -> list[tuple[str, int, dict]]:
    import boto3

    from broker.devtools.dev_issuer import DevIssuer
    from broker.http.server import default_workers

    workers = args.workers or default_workers()
    rows: list[tuple[str, int, dict]] = []
    with tempfile.TemporaryDirectory() as tmp, DevIssuer() as issuer, moto_process() as (moto_url, moto_pid):
        iam = boto3.client("iam", endpoint_url=moto_url, region_name=REGION, aws_access_key_id="bench",
                           aws_secret_access_key="bench")
        role = iam.create_role(RoleName="bench", AssumeRolePolicyDocument="{}",
                               MaxSessionDuration=3600)["Role"]["Arn"]
        policy_dir = Path(tmp) / "policies"
        policy_dir.mkdir()
        (policy_dir / "bench.yaml").write_text(POLICY.format(issuer=issuer.issuer, role=role))
        env = {"BROKER_POLICY_DIR": str(policy_dir), "BROKER_STATE_DIR": str(Path(tmp) / "state"),
               "AWS_ENDPOINT_URL_STS": moto_url, "AWS_ENDPOINT_URL_IAM": moto_url,
               "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_EC2_METADATA_DISABLED": "true",
               "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
        total = args.requests * 2 * 3 + 300
        print(f"pre-signing {total} attestations …", flush=True)
        tokens = [issuer.mint_github(audience="nhi-broker-bench") for _ in range(total)]
        with broker_process(env, workers=workers, threads=args.threads) as base:
            pid = broker_pid(int(base.rsplit(":", 1)[1]))
            warm = [exchange_body(tokens.pop(), target) for target in ("aws-assume", "aws-token", "jwt-api")
                    for _ in range(100)]
            run_load(base, warm, 2)
            for target in ("aws-assume", "aws-token", "jwt-api"):
                for clients in (1, 4):
                    bodies = [exchange_body(tokens.pop(), target) for _ in range(args.requests)]
                    times0, broker0, moto0, start = os.times(), proc_cpu(pid) if pid else 0.0, \
                        proc_cpu(moto_pid), time.perf_counter()
                    result = run_load(base, bodies, clients)
                    wall = time.perf_counter() - start
                    times1 = os.times()
                    result["client_cpu"] = ((times1.children_user - times0.children_user)
                                            + (times1.children_system - times0.children_system)) / wall
                    result["broker_cpu"] = ((proc_cpu(pid) - broker0) / wall) if pid else float("nan")
                    result["moto_cpu"] = (proc_cpu(moto_pid) - moto0) / wall
                    rows.append((target, clients, result))
                    print(f"{target:11s} clients={clients}  {result['per_second']:7.0f} mints/s  "
                          f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  "
                          f"failures {result['failures']}  cpu: client {result['client_cpu']:.2f} "
                          f"broker {result['broker_cpu']:.2f} moto {result['moto_cpu']:.2f}", flush=True)
    print()
    print(f"aws exchanges through POST /token, gunicorn {workers} workers x {args.threads} threads, "
          f"{os.cpu_count()} CPUs, {args.requests} requests per row (moto's STS in its own process)")
    print(f"{'target':11s} {'clients':>7s} {'mints/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} "
          f"{'client cpu':>10s} {'broker cpu':>10s} {'moto cpu':>9s}")
    for target, clients, r in rows:
        print(f"{target:11s} {clients:7d} {r['per_second']:8.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
              f"{r['client_cpu']:10.2f} {r['broker_cpu']:10.2f} {r['moto_cpu']:9.2f}")
    return rows


# ---------------------------------------------------------------------------- ingestion

def _record(*, cid: str | None, n: int) -> dict:
    session = cid or f"someone-{n % 50}"
    identity = {"type": "AssumedRole", "principalId": f"AROAEXAMPLE:{session}",
                "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/{'deploy' if cid else 'other'}/{session}",
                "accountId": ACCOUNT, "accessKeyId": f"ASIA{n:016d}",
                "sessionContext": {"sessionIssuer": {"type": "Role", "principalId": "AROAEXAMPLE",
                                                     "arn": f"arn:aws:iam::{ACCOUNT}:role/deploy",
                                                     "accountId": ACCOUNT, "userName": "deploy"},
                                   "attributes": {"creationDate": "2026-03-01T10:00:00Z",
                                                  "mfaAuthenticated": "false"}}}
    if cid:
        identity["sessionContext"]["sourceIdentity"] = cid
    return {"eventVersion": "1.09", "userIdentity": identity, "eventTime": "2026-03-01T10:00:05Z",
            "eventSource": "s3.amazonaws.com", "eventName": "GetObject" if n % 3 else "PutObject",
            "awsRegion": REGION, "sourceIPAddress": "203.0.113.7", "userAgent": "[aws-cli/2.15.0]",
            "requestParameters": {"bucketName": "deploy", "key": f"k/{n}"}, "responseElements": None,
            "requestID": f"R{n:015d}", "eventID": str(uuid.uuid4()), "readOnly": True,
            "resources": [{"type": "AWS::S3::Object", "ARN": f"arn:aws:s3:::deploy/k/{n}"}],
            "eventType": "AwsApiCall", "managementEvent": False, "recipientAccountId": ACCOUNT,
            "eventCategory": "Data"}


def _credentials(ledger, count: int) -> list[str]:
    from broker.common.ids import new_credential_id
    from broker.ledger.events import CredentialRecord, EventDraft

    ids = []
    now = int(time.time())
    for _ in range(count):
        cid = new_credential_id()
        run, authz = {"id": "1"}, {"type": "policy", "name": "bench", "digest": "sha256:0"}
        record = CredentialRecord(credential_id=cid, principal="github:acme/payments:bench", run=run,
                                  authorizer=authz, target="aws-assume", target_type="aws", scope="",
                                  issued_at=now, expires_at=now + 900, issuer="bench", parent_id=None,
                                  details={"access_key_id": f"ASIA{cid[:16].upper()}",
                                           "source_identity": cid})
        ledger.record_mint(EventDraft(type="mint", credential_id=cid, principal=record.principal, run=run,
                                      authorizer=authz, target="aws-assume", details={}), record)
        ids.append(cid)
    return ids


def bench_ingest(args: argparse.Namespace) -> list[tuple[str, dict]]:
    from broker.ledger import open_ledger
    from broker.usage.cloudtrail import ingest_cloudtrail

    rows: list[tuple[str, dict[str, Any]]] = []
    backends = ["sqlite", "postgres"] if args.ledger == "both" else [args.ledger]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "trail"
        folder = root / "AWSLogs" / ACCOUNT / "CloudTrail" / REGION / "2026" / "03" / "01"
        folder.mkdir(parents=True)
        print(f"writing {args.records} CloudTrail records …", flush=True)
        for backend, share in [(b, share) for b in backends for share in args.broker_share]:
            with (fresh_pg_database() if backend == "postgres" else contextlib.nullcontext(
                    f"sqlite:///{tmp}/ledger-{len(rows)}.db")) as url:
                ledger = open_ledger(url)
                try:
                    ids = _credentials(ledger, 100)
                    for old in folder.iterdir():
                        old.unlink()
                    n = 0
                    every = max(1, round(1 / share))
                    for file_no in range(args.records // args.per_file):
                        records = []
                        for _ in range(args.per_file):
                            records.append(_record(cid=ids[n % len(ids)] if n % every == 0 else None, n=n))
                            n += 1
                        stamp = f"20260301T{file_no // 60 % 24:02d}{file_no % 60:02d}Z"
                        name = f"{ACCOUNT}_CloudTrail_{REGION}_{stamp}_{file_no:08x}.json.gz"
                        body = json.dumps({"Records": records}).encode()
                        (folder / name).write_bytes(gzip.compress(body, 6))
                    cpu0, start = time.process_time(), time.perf_counter()
                    stats = ingest_cloudtrail(ledger, root)
                    wall = time.perf_counter() - start
                    cpu = (time.process_time() - cpu0) / wall
                finally:
                    ledger.close()
            result = {"records": stats.records, "recorded": stats.recorded, "wall": wall,
                      "share": share, "records_per_s": stats.records / wall,
                      "events_per_s": stats.recorded / wall, "cpu": cpu}
            rows.append((backend, result))
            print(f"{backend:8s} broker share {share:.0%}: {stats.records} records "
                  f"({stats.recorded} usage events) in {wall:.2f}s: "
                  f"{result['records_per_s']:,.0f} records/s, {result['events_per_s']:,.0f} usage events/s, "
                  f"ingester cpu {cpu:.2f}", flush=True)
    print()
    print(f"CloudTrail ingest, {args.records} records in {args.records // args.per_file} gzipped files "
          f"(aim: >= 50,000 records/s)")
    print(f"{'ledger':8s} {'by broker':>9s} {'records/s':>10s} {'events/s':>9s} {'cpu':>5s}")
    for backend, r in rows:
        print(f"{backend:8s} {r['share']:9.0%} {r['records_per_s']:10,.0f} "
              f"{r['events_per_s']:9,.0f} {r['cpu']:5.2f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="mints per row")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--per-file", type=int, default=1000)
    parser.add_argument("--ledger", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--broker-share", type=float, nargs="+", default=[0.1, 0.5],
                        help="fractions of the records made by broker sessions (one run each)")
    parser.add_argument("--skip-exchanges", action="store_true")
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args()
    if not args.skip_exchanges:
        bench_exchanges(args)
        print()
    if not args.skip_ingest:
        bench_ingest(args)


if __name__ == "__main__":
    main()
