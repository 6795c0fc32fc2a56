"""Concurrent ledger appends on PostgreSQL: group commit against one commit per event, side by
side in one run (issue 14, "ledger appends, concurrent, PostgreSQL": >= 20,000 events/s in
batches).

    .venv/bin/python -m bench.ledger [--events N] [--threads T] [--processes P] [--kind mint|deny]

Every row appends the same kind of events through the ledger's public API from T threads in
each of P processes (``multiprocessing``, fork), each process with its own ``PostgresLedger``
(pool of 4 connections, the broker's default), on a fresh database:

* **one commit each** (the anchor): the group committer limited to one item per transaction, so
  every append takes the chain head's row lock, writes and commits alone, as before group commit;
* **group commit**: the ledger as shipped: whoever holds the commit lock takes every queued
  append of its process into one transaction (one head lock, one commit); processes order their
  batches on the head row lock.

* **append_many** (last row): lists of ``--bulk`` deny events per call from each process, the
  path of the gateway's statement drain and of log ingest (one transaction per list).

``--kind mint`` (default) appends what an exchange appends: ``record_mint`` (the mint event, its
credential row, its lineage row and the attestation's single-use claim); ``--kind deny`` plain
``append`` of a refusal event. After each row the chain is verified (``Ledger.verify``) and its
length checked, so a fast row that lost or forked events would say so. Printed per row:
events/s, transactions (and events per transaction) summed over the processes, p50/p99 of one
append as its caller waits for it, the appending processes' CPU share (user+sys / wall / cores:
the rest of the machine is PostgreSQL), and the ratio to the anchor of the same shape.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import secrets
import statistics
import threading
import time
from typing import Any

from bench.common import fresh_pg_database
from broker.ledger import open_ledger
from broker.ledger.events import CredentialRecord, EventDraft
from broker.ledger.group import GroupCommitter

TARGET_PER_S = 20_000
RUN = {"provider": "github-actions", "repository": "acme/payments", "run_id": "1",
       "workflow": "deploy", "ref": "refs/heads/main"}
AUTHORIZER = {"type": "policy", "policy": "payments-deploy", "digest": "sha256:" + "0" * 64}


def _append_events(url: str, kind: str, batch_of_one: bool, threads: int, per_thread: int,
                   start: Any, out: Any) -> None:
    """One process: ``threads`` threads appending ``per_thread`` events each."""
    ledger = open_ledger(url, pool_size=4)
    if batch_of_one:       # the anchor: the same code path, one item per transaction
        ledger.__dict__["_group"] = GroupCommitter(ledger._commit_guarded, max_batch=1)
    tag = secrets.token_hex(4)
    latencies: list[list[float]] = [[] for _ in range(threads)]

    def work(index: int) -> None:
        mine = latencies[index]
        now = int(time.time())
        for n in range(per_thread):
            credential_id = f"cred_{tag}_{index}_{n}"
            begin = time.perf_counter()
            if kind == "mint":
                draft = EventDraft(type="mint", credential_id=credential_id,
                                   principal="repo:acme/payments:ref:refs/heads/main", run=RUN,
                                   authorizer=AUTHORIZER, target="payments-api",
                                   details={"scope": "deploy", "expires_at": now + 300})
                record = CredentialRecord(
                    credential_id=credential_id, principal=draft.principal or "", run=RUN,
                    authorizer=AUTHORIZER, target="payments-api", target_type="jwt",
                    scope="deploy", issued_at=now, expires_at=now + 300, issuer="github")
                ledger.record_mint(draft, record, single_use=(f"github|{credential_id}", now + 360))
            else:
                ledger.append(EventDraft(type="deny", principal="repo:acme/payments", run=RUN,
                                         target="payments-api",
                                         details={"error": "invalid_target",
                                                  "reason": "no_matching_policy"}))
            mine.append(time.perf_counter() - begin)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    start.wait()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    group: GroupCommitter = ledger.__dict__["_group"]
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    out.put(([t for lat in latencies for t in lat], group.batches, cpu))
    ledger.close()


def _append_batches(url: str, batch: int, batches: int, start: Any, out: Any) -> None:
    """One process appending ``batches`` lists of ``batch`` deny events with append_many (the
    path of the gateway's drain and of log ingest: one transaction per list)."""
    ledger = open_ledger(url, pool_size=4)
    drafts = [EventDraft(type="deny", principal="repo:acme/payments", run=RUN,
                         target="payments-api", details={"error": "invalid_target", "n": n})
              for n in range(batch)]
    latencies = []
    start.wait()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(batches):
        begin = time.perf_counter()
        ledger.append_many(drafts)
        latencies.append(time.perf_counter() - begin)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    out.put((latencies, batches, cpu))
    ledger.close()


def run_row(kind: str, batch_of_one: bool, processes: int, threads: int, events: int,
            bulk: int = 0) -> dict[str, float]:
    per_thread = max(1, events // (processes * max(1, threads)))
    total = per_thread * processes * threads
    ctx = mp.get_context("fork")
    with fresh_pg_database() as url:
        open_ledger(url).close()               # the schema, before the clock starts
        start, out = ctx.Event(), ctx.Queue()
        if bulk:             # append_many lists of ``bulk`` events
            per_process = max(1, events // (processes * bulk))
            total = per_process * bulk * processes
            procs = [ctx.Process(target=_append_batches, args=(url, bulk, per_process, start, out))
                     for _ in range(processes)]
        else:
            procs = [ctx.Process(target=_append_events,
                                 args=(url, kind, batch_of_one, threads, per_thread, start, out))
                     for _ in range(processes)]
        for proc in procs:
            proc.start()
        time.sleep(0.5)                        # every process has opened its pool
        began = time.perf_counter()
        start.set()
        results = [out.get() for _ in procs]
        elapsed = time.perf_counter() - began
        for proc in procs:
            proc.join()
        with open_ledger(url) as ledger:
            report = ledger.verify()
        if not report.ok or report.count != total:
            raise SystemExit(f"chain check failed after the row: {report}")
    latencies = sorted(t for lat, _, _ in results for t in lat)
    transactions = sum(b for _, b, _ in results)
    cpu = sum(c for _, _, c in results)
    return {
        "events": total, "per_second": total / elapsed, "transactions": transactions,
        "per_transaction": total / max(1, transactions),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "cpu_share": cpu / elapsed / (os.cpu_count() or 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--threads", type=int, default=64, help="appending threads per process")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--kind", choices=("mint", "deny"), default="mint")
    parser.add_argument("--bulk", type=int, default=500,
                        help="events per append_many list in the last row")
    args = parser.parse_args()
    shapes = [(1, args.threads), (args.processes, args.threads)] if args.processes > 1 \
        else [(1, args.threads)]
    print(f"ledger appends on PostgreSQL ({args.kind} events), {args.events:,} per row, "
          f"{os.cpu_count()} cores; command: python -m bench.ledger --events {args.events} "
          f"--threads {args.threads} --processes {args.processes} --kind {args.kind} "
          f"--bulk {args.bulk}")
    print(f"{'row':32s} {'events/s':>9s} {'txns':>7s} {'ev/txn':>7s} {'p50 ms':>7s} "
          f"{'p99 ms':>7s} {'cpu':>5s} {'ratio':>6s}")
    for processes, threads in shapes:
        # the anchor gets a fifth of the events: one commit each is slow, the ratio is per second
        anchor = run_row(args.kind, True, processes, threads, max(2_000, args.events // 5))
        grouped = run_row(args.kind, False, processes, threads, args.events)
        shape = f"{processes} proc x {threads} threads"
        for name, row, ratio in ((f"one commit each, {shape}", anchor, 1.0),
                                 (f"group commit, {shape}", grouped,
                                  grouped["per_second"] / anchor["per_second"])):
            print(f"{name:32s} {row['per_second']:9,.0f} {row['transactions']:7,.0f} "
                  f"{row['per_transaction']:7.1f} {row['p50_ms']:7.2f} {row['p99_ms']:7.2f} "
                  f"{row['cpu_share']:5.2f} {ratio:5.2f}x")
    bulk = run_row("deny", False, args.processes, 0, args.events * 2, bulk=args.bulk)
    print(f"{f'append_many x {args.bulk}, {args.processes} proc':32s} {bulk['per_second']:9,.0f} "
          f"{bulk['transactions']:7,.0f} {bulk['per_transaction']:7.1f} {bulk['p50_ms']:7.2f} "
          f"{bulk['p99_ms']:7.2f} {bulk['cpu_share']:5.2f}      (deny events; p50/p99 per list)")
    print(f"target: >= {TARGET_PER_S:,} events/s in batches (issue 14)")


if __name__ == "__main__":
    main()
