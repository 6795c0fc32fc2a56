"""`broker ingest postgres-log|cloudtrail PATH [--follow]`: a database's own log and CloudTrail
files → usage events."""
from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from broker import config as cfg
from broker.cli.common import console, env_config, err_console

if TYPE_CHECKING:
    from broker.ledger import Ledger
    from broker.usage.ingest import IngestStats


def _run(database_url: str | None, ingest_with: Callable[[Ledger, Callable[[], bool]], Any]) -> Any:
    """Open the ledger, run ``ingest_with(ledger, should_stop)`` until it returns or SIGTERM/SIGINT
    asks it to stop, close the ledger; exit 3 with one line when the ledger cannot be reached."""
    from broker.ledger import LedgerUnavailable, open_ledger

    url = database_url or cfg.database_url(env_config())
    stopping = {"now": False}

    def stop(*_: object) -> None:
        stopping["now"] = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        ledger = open_ledger(url)
    except LedgerUnavailable as exc:
        err_console.print(f"[red]ledger unreachable[/red] ({cfg.redact_url(url)}): {exc}")
        sys.exit(3)
    try:
        return ingest_with(ledger, lambda: stopping["now"])
    except LedgerUnavailable as exc:
        err_console.print(f"[red]ledger unavailable[/red]: {exc}")
        sys.exit(3)
    finally:
        ledger.close()


@click.group()
def ingest() -> None:
    """Link downstream usage to credentials (usage events in the ledger)."""


@ingest.command("postgres-log")
@click.argument("path", type=click.Path(exists=True, dir_okay=True, file_okay=True))
@click.option("--format", "fmt", type=click.Choice(["auto", "jsonlog", "csvlog", "stderr"]),
              default="auto", show_default=True,
              help="Log format (auto: *.json jsonlog, *.csv csvlog, else stderr).")
@click.option("--prefix", default=None, metavar="LOG_LINE_PREFIX",
              help="The server's log_line_prefix, for --format stderr (must contain %u; "
                   "best with %m %c %l %d %r). Default: '%m [%p] %q%u@%d '.")
@click.option("--follow", is_flag=True, help="Keep reading as the server writes, across rotation.")
@click.option("--batch", "batch_size", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="Usage events per ledger transaction.")
@click.option("--database-url", default=None, help="Ledger URL (default $BROKER_DATABASE_URL).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def postgres_log(path: str, fmt: str, prefix: str | None, follow: bool, batch_size: int,
                 database_url: str | None, as_json: bool) -> None:
    """Read PostgreSQL's log at PATH (a file, or the log folder) and append one usage event per
    statement, connection or error of a minted role. Re-reading records nothing twice."""
    from broker.usage import DEFAULT_PREFIX, ingest_postgres_log
    from broker.usage.pglog import prefix_regex

    if prefix is not None:
        try:
            prefix_regex(prefix)
        except ValueError as exc:
            err_console.print(f"[red]--prefix:[/red] {exc}", markup=True)
            sys.exit(2)

    def progress(stats: IngestStats) -> None:
        if not as_json:
            console.print(f"recorded {stats.recorded} usage event(s) so far "
                          f"({stats.lines} lines read)")

    stats = _run(database_url, lambda ledger, should_stop: ingest_postgres_log(
        ledger, path, fmt=None if fmt == "auto" else fmt, prefix=prefix or DEFAULT_PREFIX,
        follow=follow, batch_size=batch_size, should_stop=should_stop,
        on_batch=progress if follow else None))
    if as_json:
        click.echo(json.dumps(stats.to_dict(), sort_keys=True))
    else:
        console.print(f"read {stats.lines} lines from {len(stats.files)} file(s): "
                      f"{stats.matched} entries of minted roles, {stats.recorded} usage event(s) "
                      f"recorded, {stats.duplicates} already recorded"
                      + (f", {stats.unknown_credentials} of roles unknown to the ledger"
                         if stats.unknown_credentials else ""))


@ingest.command("cloudtrail")
@click.argument("path", type=click.Path(exists=True, dir_okay=True, file_okay=True))
@click.option("--follow", is_flag=True,
              help="Keep looking for new log files (e.g. a folder `aws s3 sync` fills).")
@click.option("--poll", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True,
              help="Seconds between looks for new files with --follow.")
@click.option("--batch", "batch_size", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="Usage events per ledger transaction.")
@click.option("--database-url", default=None, help="Ledger URL (default $BROKER_DATABASE_URL).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def cloudtrail(path: str, follow: bool, poll: float, batch_size: int, database_url: str | None,
               as_json: bool) -> None:
    """Read CloudTrail log files at PATH (a file, or a folder searched recursively as S3
    delivers them: AWSLogs/<account>/CloudTrail/<region>/<yyyy>/<mm>/<dd>/, gzipped or not) and
    append one usage event per record made with a session of an aws target. Re-reading records
    nothing twice."""
    from broker.usage.cloudtrail import ingest_cloudtrail

    def progress(stats: Any) -> None:
        if not as_json:
            console.print(f"recorded {stats.recorded} usage event(s) so far "
                          f"({stats.records} records in {len(stats.files)} file(s))")

    stats = _run(database_url, lambda ledger, should_stop: ingest_cloudtrail(
        ledger, path, follow=follow, poll=poll, batch_size=batch_size, should_stop=should_stop,
        on_batch=progress if follow else None))
    if as_json:
        click.echo(json.dumps(stats.to_dict(), sort_keys=True))
    else:
        console.print(f"read {stats.records} records from {len(stats.files)} file(s): "
                      f"{stats.matched} made with the broker's sessions, {stats.recorded} usage "
                      f"event(s) recorded, {stats.duplicates} already recorded"
                      + (f", {stats.unknown_credentials} of credentials unknown to the ledger"
                         if stats.unknown_credentials else "")
                      + (f"; {len(stats.unreadable)} file(s) not CloudTrail logs"
                         if stats.unreadable else ""))
