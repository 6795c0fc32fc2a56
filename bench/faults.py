"""Faults, longer than the suite runs them, with figures: what was refused, how fast, how long
recovery took, and what the ledger wrote.

    .venv/bin/python -m bench.faults [--outage SECONDS] [--clients N]

The same lab as tests/faults/ (tests/faults/lab.py: the real gunicorn server, its own durable
PostgreSQL cluster as ledger and ``postgres`` target, its own Redis without persistence). Per
fault it prints requests by status and error, the slowest and median refusal, the time from the
dependency's return to the first success, the events written by type while it lasted, whether
every acknowledged credential is recorded, orphan roles left, and ``broker ledger verify``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("BROKER_INSECURE_DEV_ISSUER", "1")   # the lab's own local issuer


def _report(name: str, lab: Any, results: list[Any], head: int, *, restored: float | None,
            extra: str = "") -> None:
    refused = [r for r in results if r.status not in (200, None)]
    statuses: dict[str, int] = {}
    for r in results:
        key = "no answer" if r.status is None else f"{r.status} {r.error or 'ok'}"
        statuses[key] = statuses.get(key, 0) + 1
    first_ok = min((r.started + r.elapsed for r in results
                    if r.status == 200 and restored is not None and r.started >= restored),
                   default=None)
    acknowledged = {r.body["credential_id"] for r in results if r.status == 200}
    lost = len(acknowledged - lab.recorded(acknowledged))
    time.sleep(6)                                   # outage end events: after 5 s of quiet
    events = dict(lab.events_by_type(head))
    verified = lab.verify_chain().returncode == 0
    print(f"\n## {name}{extra}")
    print(f"  requests: {len(results)}  " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())))
    if refused:
        times = sorted(r.elapsed for r in refused)
        print(f"  refusals: median {statistics.median(times) * 1000:.0f} ms, "
              f"slowest {times[-1] * 1000:.0f} ms")
    if restored is not None:
        print("  recovery: " + (f"{(first_ok - restored) * 1000:.0f} ms from the dependency's return "
                                "to the first 200" if first_ok else "no success after the return"))
    print(f"  events written: {events}")
    print(f"  acknowledged: {len(acknowledged)}, lost: {lost}; orphan roles: {len(lab.orphan_roles())}; "
          f"chain verifies: {verified}")


def _outage(lab: Any, name: str, stop: Callable[[], None], start: Callable[[], None], *,
            seconds: float, clients: int, audience: str) -> None:
    head = lab.head()
    with lab.storm(threads=clients, audience=audience) as storm:
        time.sleep(1)
        stop()
        time.sleep(seconds)
        start()
        restored = time.monotonic()
        time.sleep(3)
    _report(name, lab, storm.results, head, restored=restored, extra=f" ({seconds:g} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=10, help="seconds each dependency is down")
    parser.add_argument("--clients", type=int, default=8, help="client threads")
    args = parser.parse_args()

    from broker.devtools.dev_issuer import DevIssuer
    from tests.faults.lab import JWT_TARGET, POSTGRES_TARGET, fault_lab, garbage_burst

    with DevIssuer() as issuer, fault_lab(issuer) as lab:
        lab.start_server()
        print(f"# faults: {args.clients} client threads, outages of {args.outage:g} s, "
              "broker serve --workers 2 --threads 4")

        _outage(lab, "PostgreSQL hard stop (ledger and target)", lab.stop_postgres, lab.start_postgres,
                seconds=args.outage, clients=args.clients, audience=POSTGRES_TARGET)
        used = lab.exchange(lab.attestation(), audience=JWT_TARGET)
        _outage(lab, "Redis kill -9 and restart (memory lost)", lab.kill_redis, lab.start_redis,
                seconds=args.outage, clients=args.clients, audience=JWT_TARGET)
        replay = lab.exchange(used.token, audience=JWT_TARGET)
        print(f"  a token used before the Redis restart, replayed after: {replay.status} "
              f"{replay.body.get('reason')}")

        head = lab.head()
        with lab.storm(threads=args.clients) as storm:
            time.sleep(3)
            lab.kill9_server()
        killed = time.monotonic()
        lab.start_server()
        swept = lab.wait_for(lambda: not lab.orphan_roles(), timeout=30)
        _report("kill -9 of the whole server mid-storm, then restart", lab, storm.results, head,
                restored=None, extra=f"; back up in {time.monotonic() - killed:.1f} s, "
                                     f"orphans gone {swept:.1f} s after" if swept is not None else "")

        head = lab.head()
        with lab.storm(threads=args.clients) as storm:
            time.sleep(3)
            took = lab.sigterm_server()
        lab.start_server()
        _report("SIGTERM with requests in flight", lab, storm.results, head, restored=None,
                extra=f"; shut down gracefully in {took:.1f} s")

        head = lab.head()
        started = time.monotonic()
        answers = garbage_burst("127.0.0.1", lab.port, rounds=30)
        fives = [a for a in answers if a.split(b" ")[1:2] and a.split(b" ")[1].startswith(b"5")]
        after = lab.exchange(lab.attestation())
        print(f"\n## garbage burst: {len(answers)} answers in {time.monotonic() - started:.1f} s, "
              f"{len(fives)} of them 5xx; a valid exchange right after: {after.status}; "
              f"events written: {dict(lab.events_by_type(head))}")
        lab.stop_server()


if __name__ == "__main__":
    main()
