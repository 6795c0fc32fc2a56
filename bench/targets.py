"""Issue 14's table in one run: each row's benchmark, the command that produced it, its figures.

    .venv/bin/python -m bench.targets [--quick] [--only ROW[,ROW…]]

Runs, one after another (never two at once: they share the machine), the bench scripts that
measure the rows of issue 14's "Targets" table, each with its anchor side by side in the same
run, and prints, per row, the command and the lines of its output that carry the figures and
ratios. ``--quick`` runs every script with smaller sizes (the figures are noisier; the ratios
still come from one run). The rows: ``jwt`` (bench.openbao), ``pg`` (bench.vault), ``lineage``
(bench.lineage), ``ingest`` (bench.ingest), ``ledger`` (bench.ledger), ``soak`` (bench.soak).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

from bench.common import REPO

#: row -> (what the issue measures, full arguments, quick arguments, output lines to keep)
ROWS: dict[str, tuple[str, list[str], list[str], str]] = {
    "jwt": ("JWT exchange vs OpenBao auth/jwt/login (dev and raft); must reach >= 2.0x raft, "
            "p99 <= 0.5x",
            ["bench.openbao"], ["bench.openbao", "--rounds", "1", "--requests", "1500"],
            r"^(total:|system |broker |bao-dev |bao-raft |broker/bao-dev)"),
    "pg": ("PostgreSQL credentials vs OpenBao JWT login + database/creds; must reach >= 2.5x, "
           "p99 <= 0.5x",
           ["bench.vault"], ["bench.vault", "--requests", "300"],
           r"^(vault-database|path |broker |broker-pg |direct |clients=|target)"),
    "lineage": ("lineage / run / who-ran-this at 1,000,000 events, p99 over HTTP; must reach "
                "< 20 ms on both backends",
                ["bench.lineage"], ["bench.lineage", "--events", "200000", "--iterations", "100"],
                r"^(\w+: [\d,]+ events|  query|  lineage|  run|  who ran|target)"),
    "ingest": ("PostgreSQL log ingest, every line a minted role's; must reach >= 50,000 lines/s",
               ["bench.ingest", "--mix", "all", "--format", "jsonlog", "--ledger", "postgres"],
               ["bench.ingest", "--mix", "all", "--format", "jsonlog", "--ledger", "postgres",
                "--lines", "50000"],
               r"^ingest "),
    "ledger": ("ledger appends, concurrent, PostgreSQL; must reach >= 20,000 events/s in batches",
               ["bench.ledger"], ["bench.ledger", "--events", "12000"],
               r"^(ledger appends|row |one commit|group commit|append_many|target)"),
    "soak": ("broker worker memory over 100,000 mints; must reach RSS growth < 10 % after warm-up",
             ["bench.soak"], ["bench.soak", "--mints", "20000", "--warmup", "5000", "--round", "2500"],
             r"^anchor "),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes for every script")
    parser.add_argument("--only", default="", help=f"comma-separated rows ({', '.join(ROWS)})")
    args = parser.parse_args()
    chosen = [r for r in args.only.split(",") if r] or list(ROWS)
    unknown = [r for r in chosen if r not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(ROWS)}")
    env = {**os.environ, "BROKER_INSECURE_DEV_ISSUER": "1"}   # the benches' own local issuer
    report: list[str] = []
    for row in chosen:
        what, full, quick, keep = ROWS[row]
        argv = quick if args.quick else full
        command = "python -m " + " ".join(argv)
        print(f"== {row}: {command}", flush=True)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=env,
                              capture_output=True, text=True, check=False)
        seconds = time.monotonic() - started
        out = done.stdout.splitlines()
        totals = [i for i, line in enumerate(out) if line.startswith("total:")]
        if totals:                      # a script with rounds: its summary is the figure
            out = out[totals[-1]:]
        lines = [line for line in out if re.search(keep, line)]
        report.append(f"\n## {row}: {what}\n$ {command}    ({seconds:.0f} s, exit {done.returncode})")
        report.extend(lines or ["(no figures: " + (done.stderr.strip().splitlines() or ["?"])[-1]
                                + ")"])
    print("\n".join(report))


if __name__ == "__main__":
    main()
