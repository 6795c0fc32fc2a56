"""Ingest a PostgreSQL server log into the ledger as ``usage`` events.

Each log entry of a minted role (``nhb_<credential id>``) that records a statement, a
connection, a disconnection or an error becomes one ``usage`` event carrying the credential's
principal, run and authorizer (looked up in the ledger once per credential) and, in
``details``: ``source``, ``kind``, ``statement`` (redacted), ``database``, ``session_id``,
``session_line``, ``client``, ``at`` (when the database logged it, RFC 3339 UTC),
``command_tag``, ``duration_ms``, ``error``, ``role``, ``line_key``.

Idempotence: every entry has a ``line_key`` — ``pg:<session id>:<session line number>``
(jsonlog and csvlog always carry both; stderr when the prefix has ``%c`` and ``%l``), else a
SHA-256 of the entry's text. :meth:`Ledger.record_usage` skips keys it already holds, so
reading a file again, or a rotated copy of it, records nothing twice.

Events are written in batches (one ledger transaction each, ``batch_size`` entries, or
whatever is pending when the log goes quiet in ``--follow`` mode). Parameter values of
extended-protocol statements (the ``DETAIL: parameters: …`` lines) are not recorded.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.common.ids import is_credential_id
from broker.ledger.events import CredentialRecord, EventDraft
from broker.usage.pglog import (
    DEFAULT_PREFIX,
    ROLE_PREFIX,
    Activity,
    LogEntry,
    activity_of,
    make_parser,
    utc_time,
)
from broker.usage.redact import redact_sql

#: what stands for an error message that could echo a redacted secret
WITHHELD = "(withheld: the statement held a secret)"

log = logging.getLogger("broker.usage")

SOURCE = "postgres-log"
DEFAULT_BATCH = 1000
_CACHE_SIZE = 100_000
IDLE = None            # what a line source yields when the file has nothing new for now
_NOT_A_CREDENTIAL: tuple[str, CredentialRecord | None] = ("", None)   # a user the broker did not mint


@dataclass
class IngestStats:
    lines: int = 0              # lines read
    entries: int = 0            # log entries of minted roles
    matched: int = 0            # … that are a statement, connection or error
    recorded: int = 0           # usage events appended
    duplicates: int = 0         # already in the ledger (re-read)
    unknown_credentials: int = 0    # entries of nhb_ roles the ledger has no credential for
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class UsageIngester:
    """Turns log entries into usage events, ``batch_size`` per ledger transaction.

    (A writer thread overlapping parsing with the ledger writes was measured and gave nothing:
    the work is CPU-bound under the GIL, so batches are written in the caller's thread.)
    """

    def __init__(self, ledger: Any, *, batch_size: int = DEFAULT_BATCH, source: str = SOURCE) -> None:
        self.ledger = ledger
        self.batch_size = max(1, int(batch_size))
        self.source = source
        self.stats = IngestStats()
        self._pending: list[tuple[EventDraft, str, str, str | None]] = []
        self._credentials: OrderedDict[str, CredentialRecord | None] = OrderedDict()
        self._users: OrderedDict[str, str | None] = OrderedDict()   # generated user -> cid
        self._roles: dict[str, tuple[str, CredentialRecord | None]] = {}   # user -> (cid, record)

    # -- credentials -----------------------------------------------------------------------
    def _credential(self, credential_id: str) -> CredentialRecord | None:
        if credential_id in self._credentials:
            self._credentials.move_to_end(credential_id)
            return self._credentials[credential_id]
        record: CredentialRecord | None = self.ledger.get_credential(credential_id)
        self._credentials[credential_id] = record
        if len(self._credentials) > _CACHE_SIZE:
            self._credentials.popitem(last=False)
        return record

    def _generated_user(self, user: str) -> str | None:
        """The credential of a database user whose name the broker did not choose (Vault's
        database engine generates it; the mint recorded it in the credential's details):
        username → credential id, looked up once per user. A user is in the log only after
        its mint was recorded, so a miss (any other user: the admin, an application) is
        remembered as one."""
        if not user:
            return None
        if user in self._users:
            self._users.move_to_end(user)
            return self._users[user]
        from broker.targets.vault_database import credential_id_for_username

        credential_id = credential_id_for_username(self.ledger, user)
        self._users[user] = credential_id
        if len(self._users) > _CACHE_SIZE:
            self._users.popitem(last=False)
        return credential_id

    # -- entries ---------------------------------------------------------------------------
    def add(self, entry: LogEntry) -> None:
        user = entry.user or ""
        role = self._roles.get(user)
        if role is None:
            role = self._role(user)
        if role is _NOT_A_CREDENTIAL:
            return
        stats = self.stats
        stats.entries += 1
        activity = activity_of(entry)
        if activity is None:
            return
        stats.matched += 1
        at = utc_time(entry.time, epoch=entry.epoch)
        if entry.session_id and entry.line_num is not None:
            key = f"pg:{entry.session_id}:{entry.line_num}"
        else:
            key = "pg:sha256:" + hashlib.sha256((entry.raw or repr(entry)).encode("utf-8")).hexdigest()
        statement = redact_sql(activity.statement)
        details = _usage_details(self.source, entry, activity, user=user, key=key,
                                 statement=statement, at=at)
        credential_id, record = role
        if record is None:
            stats.unknown_credentials += 1
            details["credential_known"] = False
            draft = EventDraft("usage", credential_id, details=details)
        else:
            draft = EventDraft("usage", credential_id, record.parent_id, record.principal, record.run,
                               record.authorizer, record.target, details)
        self._pending.append((draft, key, at or "", statement))
        if len(self._pending) >= self.batch_size:
            self.flush()

    def _role(self, user: str) -> tuple[str, CredentialRecord | None]:
        """What the ingester knows of a database user, looked up once per user: the credential
        it stands for and that credential's record (None while the ledger has none), or
        :data:`_NOT_A_CREDENTIAL`. A credential the ledger did not know is asked about again
        once the cache is full and starts over (its mint may have been recorded meanwhile)."""
        credential_id = self._credential_id_of(user)
        role = (credential_id, self._credential(credential_id)) if credential_id else _NOT_A_CREDENTIAL
        if len(self._roles) >= _CACHE_SIZE:
            self._roles.clear()
        self._roles[user] = role
        return role

    def _credential_id_of(self, user: str) -> str:
        """The credential id a database user stands for ("" for none)."""
        cid = user[len(ROLE_PREFIX):]
        if user.startswith(ROLE_PREFIX) and is_credential_id(cid):
            return cid
        return self._generated_user(user) or ""      # a user Vault's database engine generated, or none

    def flush(self) -> int:
        """Write what is pending; returns the number of events appended."""
        if not self._pending:
            return 0
        pending, self._pending = self._pending, []
        events = self.ledger.record_usage(pending)
        self.stats.recorded += len(events)
        self.stats.duplicates += len(pending) - len(events)
        return len(events)


def _usage_details(source: str, entry: LogEntry, activity: Activity, *, user: str, key: str,
                   statement: str | None, at: str | None) -> dict[str, Any]:
    """A usage event's ``details``: what the log line says, without empty fields."""
    details: dict[str, Any] = {"source": source, "kind": activity.kind, "role": user, "line_key": key}
    if statement:
        details["statement"] = statement
    if entry.database:
        details["database"] = entry.database
    if entry.session_id:
        details["session_id"] = entry.session_id
    if entry.line_num is not None:
        details["session_line"] = entry.line_num
    if entry.client:
        details["client"] = entry.client
    if at:
        details["at"] = at
    if activity.command_tag:
        details["command_tag"] = activity.command_tag
    if activity.duration_ms is not None:
        details["duration_ms"] = activity.duration_ms
    if activity.kind == "error":
        _add_error(details, entry, activity, redacted=statement != activity.statement)
    if entry.application:
        details["application"] = entry.application
    return details


def _add_error(details: dict[str, Any], entry: LogEntry, activity: Activity, *,
               redacted: bool) -> None:
    if activity.error:
        # An error can echo the statement ("syntax error at or near \"hunter2\""): when the
        # statement held a secret, the message is withheld, as the gateway does.
        details["error"] = WITHHELD if redacted else redact_sql(activity.error)
    if entry.sqlstate:
        details["sqlstate"] = entry.sqlstate


# ---------------------------------------------------------------------------- reading files

_SUFFIX = {"jsonlog": ".json", "csvlog": ".csv"}


def detect_format(path: str | Path) -> str:
    """jsonlog for ``*.json``, csvlog for ``*.csv``, else stderr; for a folder, the kind of
    file it holds (json before csv before anything else)."""
    path = Path(path)
    if path.is_dir():
        names = [p.name for p in path.iterdir() if p.is_file()]
        if any(n.endswith(".json") for n in names):
            return "jsonlog"
        if any(n.endswith(".csv") for n in names):
            return "csvlog"
        return "stderr"
    if path.suffix == ".json":
        return "jsonlog"
    if path.suffix == ".csv":
        return "csvlog"
    return "stderr"


def _log_files(folder: Path, fmt: str) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    suffix = _SUFFIX.get(fmt)
    if suffix:
        files = [p for p in files if p.name.endswith(suffix)]
    else:
        files = [p for p in files if not p.name.endswith((".json", ".csv"))]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))


class _Tail:
    """Reads one file by lines; keeps a partial last line until its newline arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = open(path, encoding="utf-8", errors="replace", newline="")
        self.inode = os.fstat(self.handle.fileno()).st_ino
        self.partial = ""

    def read(self) -> list[str]:
        lines = self.handle.readlines(1 << 20)
        if not lines:
            return []
        if self.partial:
            lines[0] = self.partial + lines[0]
            self.partial = ""
        if not lines[-1].endswith("\n"):
            self.partial = lines.pop()
        return lines

    def rest(self) -> list[str]:
        """Everything left, the partial line included (the file is finished)."""
        out: list[str] = []
        while True:
            chunk = self.read()
            if not chunk:
                break
            out.extend(chunk)
        if self.partial:
            out.append(self.partial)
            self.partial = ""
        return out

    def replaced(self) -> bool:
        """The path now names another file (rotation by rename) or this one shrank
        (truncation on rotation)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False                     # mid-rotation: look again later
        return st.st_ino != self.inode or st.st_size < self.handle.tell()

    def close(self) -> None:
        self.handle.close()


def read_lines(path: str | Path, fmt: str, *, follow: bool = False, poll: float = 0.25,
               should_stop: Callable[[], bool] = lambda: False,
               on_file: Callable[[str], None] = lambda _: None) -> Iterator[str | None]:
    """Lines of ``path`` (a log file, or a folder of them read oldest first). With
    ``follow``, keeps reading as the server writes and across rotation (a file renamed or
    truncated and recreated; for a folder, a newer file appearing), yielding :data:`IDLE`
    whenever nothing new has come, until ``should_stop()``."""
    path = Path(path)
    files = _Files(path, fmt)
    folder = files.folder
    current = files.next()
    if current is None:
        if not follow:
            return
        current = yield from _first_file(files, poll, should_stop)
        if current is None:
            return
    tail = _Tail(current)
    on_file(str(current))
    try:
        while True:
            lines = tail.read()
            if lines:
                yield from lines
                continue
            # at the end of the current file
            newer = files.newer(tail.path)
            if newer is not None:
                yield from tail.rest()
                tail.close()
                tail = _Tail(newer)
                on_file(str(newer))
                continue
            if not follow:
                yield from tail.rest()
                return
            if folder is None and tail.replaced():
                yield from tail.rest()
                tail.close()
                reopened = _reopen(path, poll, should_stop)
                if reopened is None:
                    return
                tail = reopened
                on_file(str(path))
                continue
            if should_stop():
                yield from tail.rest()
                return
            yield IDLE
            time.sleep(poll)
    finally:
        tail.close()


class _Files:
    """Which file :func:`read_lines` reads next: ``path`` itself, or a folder's log files
    oldest first, each once."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self.folder = path if path.is_dir() else None
        self.done: set[str] = set()

    def next(self) -> Path | None:
        if self.folder is None:
            return self.path if str(self.path) not in self.done else None
        for candidate in _log_files(self.folder, self.fmt):
            if str(candidate) not in self.done:
                return candidate
        return None

    def newer(self, finished: Path) -> Path | None:
        """In a folder, the file after ``finished`` (which is then done), if one has come."""
        if self.folder is None:
            return None
        self.done.add(str(finished))
        newer = self.next()
        if newer is None:
            self.done.discard(str(finished))
        return newer


def _first_file(files: _Files, poll: float,
                should_stop: Callable[[], bool]) -> Generator[None, None, Path | None]:
    """Following a folder that has no file yet: :data:`IDLE` until one comes (or a stop)."""
    while not should_stop():
        yield IDLE
        time.sleep(poll)
        current = files.next()
        if current is not None:
            return current
    return None


def _reopen(path: Path, poll: float, should_stop: Callable[[], bool]) -> _Tail | None:
    """The file that now has the rotated file's name, once it exists (None on a stop)."""
    try:
        return _Tail(path)
    except FileNotFoundError:
        return _wait_for(path, poll, should_stop)


def _wait_for(path: Path, poll: float, should_stop: Callable[[], bool]) -> _Tail | None:
    while not should_stop():
        try:
            return _Tail(path)
        except FileNotFoundError:
            time.sleep(poll)
    return None


def ingest_postgres_log(ledger: Any, path: str | Path, *, fmt: str | None = None,
                        prefix: str = DEFAULT_PREFIX, follow: bool = False,
                        batch_size: int = DEFAULT_BATCH, poll: float = 0.25,
                        should_stop: Callable[[], bool] = lambda: False,
                        on_batch: Callable[[IngestStats], None] | None = None) -> IngestStats:
    """Read ``path`` (see :func:`read_lines`) and record the usage it shows."""
    fmt = fmt or detect_format(path)
    parser = make_parser(fmt, prefix=prefix)
    ingester = UsageIngester(ledger, batch_size=batch_size)
    stats = ingester.stats

    def new_file(name: str) -> None:
        nonlocal parser
        for entry in parser.flush():        # a message cannot continue across files
            ingester.add(entry)
        parser = make_parser(fmt, prefix=prefix)
        stats.files.append(name)

    for line in read_lines(path, fmt, follow=follow, poll=poll, should_stop=should_stop,
                           on_file=new_file):
        if line is IDLE:
            for entry in parser.flush(final=False):
                ingester.add(entry)
            if ingester.flush() and on_batch is not None:
                on_batch(stats)
            continue
        stats.lines += 1
        for entry in parser.feed(line):
            ingester.add(entry)
    for entry in parser.flush():
        ingester.add(entry)
    ingester.flush()
    return stats
