"""PostgreSQL server log parsing: ``jsonlog``, ``csvlog`` and ``stderr`` (with a
``log_line_prefix``), into :class:`LogEntry` records, and what a record says a role did.

Parsers are incremental: ``feed(line)`` returns the entries that line completes and
``flush()`` the one still pending (a ``stderr`` message may continue on the next lines; a
``csvlog`` record may span lines inside a quoted field). Lines of roles the broker did not
mint are skipped before any real parsing (a substring test for the role prefix), which is
what keeps ingestion fast on a busy server's log.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Protocol

ROLE_PREFIX = "nhb_"
#: Users whose log entries are read: the broker's own roles, and the users that Vault/OpenBao's
#: database engine generates (its default username templates begin with "v-"), which the
#: ingester links by name (broker.targets.vault_database.credential_id_for_username).
USER_PREFIXES: tuple[str, ...] = (ROLE_PREFIX, "v-")


def _mentions_user(text: str) -> bool:
    return any(prefix in text for prefix in USER_PREFIXES)
FORMATS = ("jsonlog", "csvlog", "stderr")
DEFAULT_PREFIX = "%m [%p] %q%u@%d "      # PostgreSQL's default is '%m [%p] '; %u is required


@dataclass(slots=True)
class LogEntry:
    """One log message (with its DETAIL/STATEMENT lines for ``stderr``)."""
    time: str | None            # as logged, e.g. "2026-03-01 10:00:00.123 UTC"
    user: str | None
    database: str | None
    severity: str | None        # LOG, ERROR, FATAL, …
    message: str
    session_id: str | None = None
    line_num: int | None = None
    pid: int | None = None
    client: str | None = None    # "host:port" (or "[local]")
    command_tag: str | None = None
    statement: str | None = None     # the statement an ERROR refers to
    sqlstate: str | None = None
    application: str | None = None
    raw: str | None = None       # stderr only: the text, for a dedupe key without %c/%l
    epoch: float | None = None   # stderr %n


# ---------------------------------------------------------------------------- time

_TIME = re.compile(r"(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)(?:\.(\d{1,6}))?(?: (\S+))?$")
_OFFSET = re.compile(r"([+-])(\d\d):?(\d\d)?$")
_ZONES: dict[str, timezone | None] = {"UTC": UTC, "GMT": UTC, "Z": UTC}


def _zone(name: str) -> timezone | None:
    if name in _ZONES:
        return _ZONES[name]
    zone: timezone | None = None
    match = _OFFSET.fullmatch(name)
    if match:
        sign = -1 if match.group(1) == "-" else 1
        zone = timezone(sign * timedelta(hours=int(match.group(2)), minutes=int(match.group(3) or 0)))
    else:
        try:
            from zoneinfo import ZoneInfo

            info = ZoneInfo(name)
            offset = datetime.now(info).utcoffset()
            zone = timezone(offset) if offset is not None else None
        except Exception:  # noqa: BLE001 - an abbreviation zoneinfo does not know
            zone = None
    _ZONES[name] = zone
    return zone


def utc_time(logged: str | None, *, epoch: float | None = None) -> str | None:
    """A log timestamp as RFC 3339 UTC with microseconds (the ledger's ``ts`` format), or
    None when it cannot be read. Set ``log_timezone = 'UTC'`` (docs/postgres.md): named zone
    abbreviations other than UTC/GMT are resolved through zoneinfo at today's offset."""
    if epoch is not None:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if not logged:
        return None
    match = _TIME.match(logged)
    if not match:
        return None
    day, clock, fraction, zone_name = match.groups()
    micros = (fraction or "").ljust(6, "0")
    zone = _zone(zone_name or "UTC")
    if zone is UTC:
        return f"{day}T{clock}.{micros}Z"            # the common case, without datetime
    if zone is None:
        return None
    moment = datetime.strptime(f"{day} {clock}.{micros}", "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=zone)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------- jsonlog

class JsonlogParser:
    """``log_destination = 'jsonlog'`` (PostgreSQL 15+): one JSON object per line."""

    def feed(self, line: str) -> list[LogEntry]:
        if not _mentions_user(line):
            return []
        try:
            record = json.loads(line)
        except ValueError:
            return []
        user = record.get("user")
        if not isinstance(record, dict) or not isinstance(user, str) or not user.startswith(USER_PREFIXES):
            return []
        host, port = record.get("remote_host"), record.get("remote_port")
        client = f"{host}:{port}" if host and port is not None else host
        line_num = record.get("line_num")
        return [LogEntry(
            time=record.get("timestamp"), user=user, database=record.get("dbname"),
            severity=record.get("error_severity"), message=record.get("message") or "",
            session_id=record.get("session_id"),
            line_num=int(line_num) if isinstance(line_num, int) else None,
            pid=record.get("pid"), client=client, command_tag=record.get("ps"),
            statement=record.get("statement"), sqlstate=record.get("state_code"),
            application=record.get("application_name"))]

    def flush(self, *, final: bool = True) -> list[LogEntry]:
        return []


# ---------------------------------------------------------------------------- csvlog

# Column positions of csvlog (stable since PostgreSQL 9.0 for these; later versions append).
_C_TIME, _C_USER, _C_DB, _C_PID, _C_FROM, _C_SESSION, _C_LINE, _C_TAG = range(8)
_C_SEVERITY, _C_SQLSTATE, _C_MESSAGE = 11, 12, 13
_C_QUERY, _C_APP = 19, 22


class CsvlogParser:
    """``log_destination = 'csvlog'``: one CSV record per message; a quoted field may hold
    newlines, so lines are gathered until the quotes balance."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._quotes = 0

    def feed(self, line: str) -> list[LogEntry]:
        self._parts.append(line)
        self._quotes += line.count('"')
        if self._quotes % 2:
            return []                             # inside a quoted field: the record goes on
        text = "".join(self._parts)
        self._parts, self._quotes = [], 0
        if not _mentions_user(text):
            return []
        entry = self._parse(text)
        return [] if entry is None else [entry]

    def flush(self, *, final: bool = True) -> list[LogEntry]:
        if not self._parts or (self._quotes % 2 and not final):
            return []                             # a record still being written: wait
        text = "".join(self._parts)
        self._parts, self._quotes = [], 0
        entry = self._parse(text) if _mentions_user(text) else None
        return [] if entry is None else [entry]

    @staticmethod
    def _parse(text: str) -> LogEntry | None:
        try:
            row = next(csv.reader(io.StringIO(text)))
        except (csv.Error, StopIteration):
            return None
        if len(row) <= _C_MESSAGE or not row[_C_USER].startswith(USER_PREFIXES):
            return None

        def col(i: int) -> str | None:
            return row[i] if len(row) > i and row[i] != "" else None

        line = col(_C_LINE)
        pid = col(_C_PID)
        return LogEntry(
            time=row[_C_TIME], user=row[_C_USER], database=col(_C_DB), severity=col(_C_SEVERITY),
            message=row[_C_MESSAGE], session_id=col(_C_SESSION),
            line_num=int(line) if line and line.isdigit() else None,
            pid=int(pid) if pid and pid.isdigit() else None, client=col(_C_FROM),
            command_tag=col(_C_TAG), statement=col(_C_QUERY), sqlstate=col(_C_SQLSTATE),
            application=col(_C_APP))


# ---------------------------------------------------------------------------- stderr

_ESCAPES: dict[str, tuple[str | None, str]] = {
    "a": ("application", r".*?"),
    "u": ("user", r"[^\s@\[\]]*?"),
    "d": ("database", r"[^\s@\[\]]*?"),
    "r": ("client", r"\S*?"),
    "h": ("client", r"\S*?"),
    "b": (None, r".*?"),
    "p": ("pid", r"\d+"),
    "P": (None, r"\d*"),
    "t": ("time", r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?: \S+)?"),
    "m": ("time", r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+(?: \S+)?"),
    "n": ("epoch", r"\d+\.\d+"),
    "i": ("command_tag", r".*?"),
    "e": ("sqlstate", r"[0-9A-Z]{5}"),
    "c": ("session_id", r"[0-9a-f]+\.[0-9a-f]+"),
    "l": ("line_num", r"\d+"),
    "s": (None, r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?: \S+)?"),
    "v": (None, r"\S*?"),
    "x": (None, r"\d*"),
    "Q": (None, r"-?\d*"),
}
_SEVERITY = (r"(?P<severity>LOG|ERROR|FATAL|PANIC|WARNING|NOTICE|INFO|DEBUG[1-5]|DETAIL|HINT"
             r"|QUERY|CONTEXT|LOCATION|STATEMENT):  (?P<message>.*)")
_ATTACHED = frozenset({"DETAIL", "HINT", "QUERY", "CONTEXT", "LOCATION", "STATEMENT"})


def prefix_regex(prefix: str) -> re.Pattern[str]:
    """A regex matching one stderr log line written with ``log_line_prefix = prefix``.

    Raises ValueError when the prefix has no ``%u`` (lines could not be tied to a role) or an
    escape PostgreSQL does not know.
    """
    parts: list[str] = []
    optional_from: int | None = None
    seen: set[str] = set()
    i = 0
    while i < len(prefix):
        ch = prefix[i]
        if ch != "%":
            parts.append(re.escape(ch))
            i += 1
            continue
        match = re.match(r"%(-?\d*)([a-zA-Z%])", prefix[i:])
        if not match:
            raise ValueError("log_line_prefix ends with a lone %")
        padded, letter = bool(match.group(1)), match.group(2)
        i += match.end()
        if letter == "%":
            parts.append("%")
            continue
        if letter == "q":
            optional_from = len(parts)
            continue
        if letter not in _ESCAPES:
            raise ValueError(f"log_line_prefix: unknown escape %{letter}")
        name, pattern = _ESCAPES[letter]
        if padded:
            pattern = rf"\s*{pattern}\s*"
        if name and name not in seen:
            seen.add(name)
            parts.append(f"(?P<{name}>{pattern})")
        else:
            parts.append(f"(?:{pattern})")
    if "user" not in seen:
        raise ValueError("log_line_prefix must contain %u (the role) to link lines to credentials")
    if optional_from is not None:
        head, tail = parts[:optional_from], parts[optional_from:]
        body = "".join(head) + "(?:" + "".join(tail) + ")?"
    else:
        body = "".join(parts)
    return re.compile(body + _SEVERITY, re.DOTALL)


class StderrParser:
    """``log_destination = 'stderr'`` (usually through the logging collector) with a
    ``log_line_prefix`` holding ``%u`` (and best ``%m %c %l %d %r``). A message continues on
    lines starting with a tab; DETAIL/STATEMENT/… lines attach to the message before them."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self._regex = prefix_regex(prefix)
        self._current: dict[str, Any] | None = None
        self._raw: list[str] = []

    def feed(self, line: str) -> list[LogEntry]:
        text = line.rstrip("\n")
        if text.startswith("\t"):
            if self._current is not None:
                self._current["message_parts"][-1].append(text[1:])
                self._raw.append(text)
            return []
        match = self._regex.match(text)
        if match is None:
            return []                      # not a log line we understand
        fields = match.groupdict()
        severity = fields["severity"]
        if severity in _ATTACHED and self._current is not None \
                and fields.get("pid") == self._current.get("pid"):
            self._current["attached"].append(severity)
            self._current["message_parts"].append([fields["message"]])
            self._raw.append(text)
            return []
        out = self.flush()
        self._current = {**fields, "message_parts": [[fields["message"]]], "attached": [None]}
        self._raw = [text]
        return out

    def flush(self, *, final: bool = True) -> list[LogEntry]:
        current, raw = self._current, self._raw
        self._current, self._raw = None, []
        if current is None:
            return []
        user = current.get("user") or ""
        if not user.startswith(USER_PREFIXES):
            return []
        message, statement = "", None
        for label, lines in zip(current["attached"], current["message_parts"], strict=True):
            joined = "\n".join(lines)
            if label is None:
                message = joined
            elif label == "STATEMENT":
                statement = joined
        line_num = current.get("line_num")
        pid = current.get("pid")
        epoch = current.get("epoch")
        client = current.get("client") or None
        if client and client.endswith(")") and "(" in client:      # %r writes host(port)
            host, _, port = client[:-1].partition("(")
            client = f"{host}:{port}"
        return [LogEntry(
            time=current.get("time"), user=user, database=current.get("database") or None,
            severity=current["severity"], message=message,
            session_id=current.get("session_id") or None,
            line_num=int(line_num) if line_num else None, pid=int(pid) if pid else None,
            client=client, command_tag=current.get("command_tag") or None, statement=statement,
            sqlstate=current.get("sqlstate") or None,
            application=current.get("application") or None, raw="\n".join(raw),
            epoch=float(epoch) if epoch else None)]


class LogParser(Protocol):
    """What the parser of every log format does: lines in, entries out."""

    def feed(self, line: str) -> list[LogEntry]: ...

    def flush(self, *, final: bool = True) -> list[LogEntry]: ...


def make_parser(fmt: str, *, prefix: str = DEFAULT_PREFIX) -> LogParser:
    if fmt == "jsonlog":
        return JsonlogParser()
    if fmt == "csvlog":
        return CsvlogParser()
    if fmt == "stderr":
        return StderrParser(prefix)
    raise ValueError(f"unknown log format {fmt!r} (one of: {', '.join(FORMATS)})")


def parse_lines(lines: Iterable[str], fmt: str, *, prefix: str = DEFAULT_PREFIX) -> Iterable[LogEntry]:
    parser = make_parser(fmt, prefix=prefix)
    for line in lines:
        yield from parser.feed(line)
    yield from parser.flush()


# ---------------------------------------------------------------------------- what it says

@dataclass(frozen=True, slots=True)
class Activity:
    """What one log entry says the role did."""
    kind: str                     # statement | connect | disconnect | error
    statement: str | None = None
    duration_ms: float | None = None
    command_tag: str | None = None
    error: str | None = None


_EXECUTE = re.compile(r"execute (?:fetch from )?[^:\s]*(?:/[^:\s]*)?: ", re.DOTALL)
_DURATION = re.compile(
    r"duration: (\d+(?:\.\d+)?) ms(?:  (statement|execute [^:]*|parse [^:]*|bind [^:]*): (.*))?", re.DOTALL)
_TAG = re.compile(r"[A-Z][A-Z ]*[A-Z]|[A-Z]")


def _tag(entry: LogEntry) -> str | None:
    tag = entry.command_tag
    return tag if tag and _TAG.fullmatch(tag) else None


def activity_of(entry: LogEntry) -> Activity | None:
    """The statement, connection or error in ``entry``; None for anything else (a bare
    ``duration`` line, parse/bind steps, notices …)."""
    severity = entry.severity
    if severity == "LOG":
        return _logged_activity(entry, entry.message)
    if severity in ("ERROR", "FATAL", "PANIC"):
        return Activity("error", statement=entry.statement, error=entry.message, command_tag=_tag(entry))
    return None


def _logged_activity(entry: LogEntry, message: str) -> Activity | None:
    """What a ``LOG`` line says: a statement (plain, extended protocol, with its duration, or
    pgaudit's), a connection or a disconnection."""
    if message.startswith("statement: "):
        return Activity("statement", statement=message[11:], command_tag=_tag(entry))
    if message.startswith("execute "):
        match = _EXECUTE.match(message)
        if match:
            return Activity("statement", statement=message[match.end():], command_tag=_tag(entry))
        return None
    if message.startswith("duration: "):
        match = _DURATION.fullmatch(message)
        if match and match.group(2) and not match.group(2).startswith(("parse", "bind")):
            return Activity("statement", statement=match.group(3),
                            duration_ms=float(match.group(1)), command_tag=_tag(entry))
        return None
    if message.startswith("AUDIT: "):                  # pgaudit
        try:
            fields = next(csv.reader(io.StringIO(message[7:])))
        except (csv.Error, StopIteration):
            return None
        if len(fields) >= 8:
            return Activity("statement", statement=fields[7], command_tag=fields[4] or None)
        return None
    if message.startswith("connection authorized: "):
        return Activity("connect")
    if message.startswith("disconnection: "):
        return Activity("disconnect")
    return None
