"""PostgreSQL log ingest: lines per second, end to end, beside the physical-limit anchor.

    .venv/bin/python -m bench.ingest [--lines N] [--ledger sqlite|postgres|both]
                                     [--format jsonlog|csvlog|both] [--mix all|mixed|both]
                                     [--profile FORMAT:LEDGER] [--top N]

A ``jsonlog`` file and a ``csvlog`` file of statements (every line a minted role's, and one
line in ten a minted role's) are written and ingested into an empty ledger of each kind
(SQLite in a temporary folder; PostgreSQL in a fresh database on 127.0.0.1:5432) holding the
20 credentials the lines name. A row is the whole ``broker ingest postgres-log``: read, parse,
credential lookup, redaction, hash chain, batched commits (``ingest_postgres_log``); the chain
is verified afterwards (not timed).

The anchor is the least any ingest must do with the same file: read it line by line and
decode each line (``json.loads`` per line for jsonlog; ``csv.reader`` over the file for
csvlog), nothing kept. ``vs anchor`` is ingest lines/s ÷ anchor lines/s.

``--profile jsonlog:sqlite`` (any format:ledger) runs that one ingest under cProfile instead
and prints the functions with the most own time, with their share of the total.
``bench.postgres`` runs the same ingest rows after its mint figures (``make bench-postgres``).
"""
from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from bench.common import fresh_pg_database

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
MIXES = {"all": "every line by a minted role", "mixed": "1 line in 10 by a minted role"}


def write_logs(folder: Path, credential_ids: list[str], lines: int, *, minted_every: int = 1,
               name: str = "postgresql") -> tuple[Path, Path]:
    """A jsonlog and a csvlog file of ``lines`` statements; one line in ``minted_every`` is by
    a minted role (the given credentials'), the others by the application's own role."""
    json_path, csv_path = folder / f"{name}.json", folder / f"{name}.csv"
    with open(json_path, "w") as jf, open(csv_path, "w") as cf:
        for n in range(lines):
            cid = credential_ids[n % len(credential_ids)]
            user = f"nhb_{cid}" if n % minted_every == 0 else "payments_app"
            session = f"6b0c{n // 50:04x}.{n // 50 % 65536:x}"
            line_num = n % 50 + 1
            ms = n % 1000
            statement = f"UPDATE accounts SET balance = balance - {n % 97} WHERE id = {n % 1000}"
            jf.write(json.dumps({
                "timestamp": f"2026-03-01 10:{n // 60000 % 60:02d}:{n // 1000 % 60:02d}.{ms:03d} UTC",
                "user": user, "dbname": "payments", "pid": 4000 + n // 50,
                "remote_host": "10.0.0.7", "remote_port": 50000 + n // 50, "session_id": session,
                "line_num": line_num, "ps": "idle", "session_start": "2026-03-01 10:00:00 UTC",
                "vxid": "3/1", "txid": 0, "error_severity": "LOG",
                "message": f"statement: {statement}", "backend_type": "client backend",
                "query_id": 0}, separators=(",", ":")) + "\n")
            cf.write(f'2026-03-01 10:{n // 60000 % 60:02d}:{n // 1000 % 60:02d}.{ms:03d} UTC,"{user}",'
                     f'"payments",{4000 + n // 50},"10.0.0.7:{50000 + n // 50}",{session},{line_num},'
                     f'"idle",2026-03-01 10:00:00 UTC,3/1,0,LOG,00000,"statement: {statement}",'
                     f',,,,,,,,"psql","client backend",,0\n')
    return json_path, csv_path


def bench_credentials(count: int = 20) -> list[Any]:
    from broker.common.ids import new_credential_id
    from broker.ledger.events import CredentialRecord

    now = int(time.time())
    return [CredentialRecord(
        credential_id=new_credential_id(), principal=f"github:acme/payments:run-{i}",
        run={"id": str(9_000_000 + i), "attempt": "1"},
        authorizer={"type": "policy", "name": "bench-pg", "digest": "sha256:" + "0" * 64},
        target="bench-db", target_type="postgres", scope="", issued_at=now, expires_at=now + 900)
        for i in range(count)]


@contextmanager
def ledger_url(kind: str, tmp: str, label: str) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp}/ingest-{label}.db"
    else:
        with fresh_pg_database(PG_ADMIN) as url:
            yield url


def ingest_rate(url: str, path: Path, fmt: str, credentials: list[Any], *,
                profile: Any = None) -> tuple[float, int]:
    """Lines/s of one ingest of ``path`` into the ledger at ``url`` (minted ``credentials``
    first) and the number of usage events recorded."""
    from broker.ledger import open_ledger
    from broker.ledger.events import EventDraft
    from broker.usage import ingest_postgres_log

    ledger = open_ledger(url)
    try:
        for record in credentials:
            ledger.record_mint(EventDraft(type="mint", credential_id=record.credential_id,
                                          principal=record.principal, run=record.run,
                                          authorizer=record.authorizer, target=record.target), record)
        with profile if profile is not None else nullcontext():
            start = time.perf_counter()
            stats = ingest_postgres_log(ledger, path, fmt=fmt, batch_size=2000)
            elapsed = time.perf_counter() - start
        assert stats.recorded == stats.matched > 0, stats
        assert ledger.verify().ok
        return stats.lines / elapsed, stats.recorded
    finally:
        ledger.close()


def anchor_rate(path: Path, fmt: str) -> float:
    """Lines/s of reading ``path`` and decoding every line, nothing else."""
    start = time.perf_counter()
    count = 0
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        if fmt == "jsonlog":
            loads = json.loads
            for line in handle:
                loads(line)
                count += 1
        else:
            for _ in csv.reader(handle):
                count += 1
    return count / (time.perf_counter() - start)


def bench_ingest(lines: int, ledgers: list[str], *, formats: tuple[str, ...] = ("jsonlog", "csvlog"),
                 mixes: tuple[str, ...] = tuple(MIXES)) -> list[tuple[str, str, str, float, int, float]]:
    """Rows ``(ledger, format, mix, lines/s, events, anchor lines/s)``, printed as they come."""
    credentials = bench_credentials()
    ids = [c.credential_id for c in credentials]
    rows: list[tuple[str, str, str, float, int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        logs = {mix: write_logs(Path(tmp), ids, lines, minted_every=1 if mix == "all" else 10, name=mix)
                for mix in mixes}
        for kind in ledgers:
            for mix in mixes:
                json_path, csv_path = logs[mix]
                for fmt, path in (("jsonlog", json_path), ("csvlog", csv_path)):
                    if fmt not in formats:
                        continue
                    anchor = anchor_rate(path, fmt)
                    with ledger_url(kind, tmp, f"{fmt}-{mix}-{len(rows)}") as url:
                        rate, recorded = ingest_rate(url, path, fmt, credentials)
                    rows.append((kind, fmt, MIXES[mix], rate, recorded, anchor))
                    print(f"ingest {fmt:8s} into {kind:8s} ledger, {MIXES[mix]}: {rate:10.0f} lines/s"
                          f"  (anchor {anchor:.0f} lines/s, {rate / anchor:.2f}x; {lines} lines,"
                          f" {recorded} usage events)", flush=True)
    return rows


def print_table(rows: list[tuple[str, str, str, float, int, float]]) -> None:
    print(f"{'usage ingest':18s} {'format':>8s} {'lines/s':>10s} {'anchor/s':>10s} {'vs anchor':>9s}  log")
    for kind, fmt, mix, rate, recorded, anchor in rows:
        print(f"{kind + ' ledger':18s} {fmt:>8s} {rate:10.0f} {anchor:10.0f} {rate / anchor:8.2f}x"
              f"  {mix} ({recorded} events)")


def profile_ingest(lines: int, fmt: str, kind: str, *, top: int) -> None:
    import cProfile
    import pstats

    credentials = bench_credentials()
    with tempfile.TemporaryDirectory() as tmp:
        json_path, csv_path = write_logs(Path(tmp), [c.credential_id for c in credentials], lines,
                                         name="all")
        profiler = cProfile.Profile()
        with ledger_url(kind, tmp, "profile") as url:
            rate, recorded = ingest_rate(url, json_path if fmt == "jsonlog" else csv_path, fmt,
                                         credentials, profile=profiler)
    stats = pstats.Stats(profiler)
    raw: dict[Any, Any] = stats.stats        # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values())
    print(f"profile: ingest {fmt} into {kind} ledger, {lines} lines, every line by a minted role"
          f" ({rate:.0f} lines/s under cProfile, {recorded} events); own time {total:.2f} s")
    print(f"{'own s':>7s} {'share':>6s} {'cum s':>7s} {'calls':>9s}  function")
    ranked = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)[:top]
    for (filename, line, name), (_, calls, own, cumulative, _) in ranked:
        where = filename.split("/site-packages/")[-1].split("/wt/ingest/")[-1]
        print(f"{own:7.3f} {own / total:6.1%} {cumulative:7.3f} {calls:9d}  {name} ({where}:{line})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--ledger", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--format", choices=["jsonlog", "csvlog", "both"], default="both")
    parser.add_argument("--mix", choices=["all", "mixed", "both"], default="both")
    parser.add_argument("--profile", metavar="FORMAT:LEDGER", default=None)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    if args.profile:
        fmt, _, kind = args.profile.partition(":")
        profile_ingest(args.lines, fmt, kind or "sqlite", top=args.top)
        return
    ledgers = ["sqlite", "postgres"] if args.ledger == "both" else [args.ledger]
    formats = ("jsonlog", "csvlog") if args.format == "both" else (args.format,)
    mixes = tuple(MIXES) if args.mix == "both" else (args.mix,)
    rows = bench_ingest(args.lines, ledgers, formats=formats, mixes=mixes)
    print()
    print(f"{args.lines} lines per file")
    print_table(rows)


if __name__ == "__main__":
    main()
