"""PostgreSQL server log parsing: ``jsonlog``, ``csvlog`` and ``stderr`` (with a
``log_line_prefix``), into :class:`LogEntry` records, and what a record says a role did.

Parsers are incremental: ``feed(line)`` returns the entries that line completes and
``flush()`` the one still pending (a ``stderr`` message may continue on the next lines; a
``csvlog`` record may span lines inside a quoted field). Lines of roles the broker did not
mint are skipped before any real parsing (a substring test for the role prefix), which is
what keeps ingestion fast on a busy server's log.

No parser raises on any input, and none takes more than linear time in a line's length: a line
(or ``csvlog`` record) that is not a well-formed entry of a broker role — not JSON, JSON that is
not an object, a field of the wrong type, a number that is not ASCII digits, a record past
:data:`MAX_RECORD` characters — is skipped (``feed`` returns nothing for it), as is any other
line of a role the broker did not mint. A timestamp that names no real moment (an impossible
date, an offset of a day or more) is kept as logged; :func:`utc_time` gives None for it.
Entries hold no lone surrogates (``jsonlog`` ``\\udXXX`` escapes become U+FFFD), so every field
encodes as UTF-8.
"""
from __future__ import annotations

import csv
import io
import json
import json.scanner
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
    """The prefilter: could ``text`` be a line of a broker role? (A substring test, no parsing.)"""
    for prefix in USER_PREFIXES:
        if prefix in text:
            return True
    return False


#: Longest ``csvlog`` record read (characters); a longer one is skipped, whole.
MAX_RECORD = 1 << 24
#: Longest run of digits read as a number (pid, line number): 18 digits always fit an int64.
_MAX_DIGITS = 18


def _int(value: object) -> int | None:
    """An int from a log field: an int (not a bool), or a str of 1 to 18 ASCII digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and 0 < len(value) <= _MAX_DIGITS and value.isascii() and value.isdigit():
        return int(value)
    return None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


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

_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2})"
                   r"(?:\.([0-9]{1,6}))?(?: (\S+))?")
_OFFSET = re.compile(r"([+-])([0-9]{2}):?([0-9]{2})?")
_ZONES: dict[str, timezone | None] = {"UTC": UTC, "GMT": UTC, "Z": UTC}
_ZONE_CACHE = 256                   # zone names remembered (a log has one or two)
_SECONDS: dict[str, str | None] = {}   # "YYYY-MM-DD HH:MM:SS" (UTC) -> "YYYY-MM-DDTHH:MM:SS" or None
_SECOND_CACHE = 4096


def _zone(name: str) -> timezone | None:
    if name in _ZONES:
        return _ZONES[name]
    zone: timezone | None = None
    match = _OFFSET.fullmatch(name)
    if match:
        sign = -1 if match.group(1) == "-" else 1
        try:
            zone = timezone(sign * timedelta(hours=int(match.group(2)), minutes=int(match.group(3) or 0)))
        except ValueError:          # a day or more: no such offset
            zone = None
    elif len(name) <= 64:
        try:
            from zoneinfo import ZoneInfo

            info = ZoneInfo(name)
            offset = datetime.now(info).utcoffset()
            zone = timezone(offset) if offset is not None else None
        except Exception:  # noqa: BLE001 - an abbreviation zoneinfo does not know
            zone = None
    if len(_ZONES) < _ZONE_CACHE:
        _ZONES[name] = zone
    return zone


def _utc_second(second: str) -> str | None:
    """``"YYYY-MM-DD HH:MM:SS"`` (UTC) as ``"YYYY-MM-DDTHH:MM:SS"``, or None when no such second."""
    text = _SECONDS.get(second, "")
    if text != "":
        return text
    match = _TIME.fullmatch(second)
    text = None
    if match:
        try:
            year, month, day, hour, minute, sec = (int(part) for part in match.groups()[:6])
            datetime(year, month, day, hour, minute, sec)
            text = f"{second[:10]}T{second[11:]}"
        except ValueError:
            text = None
    if len(_SECONDS) >= _SECOND_CACHE:
        _SECONDS.clear()
    _SECONDS[second] = text
    return text


def utc_time(logged: str | None, *, epoch: float | None = None) -> str | None:
    """A log timestamp as RFC 3339 UTC with microseconds (the ledger's ``ts`` format), or
    None when it cannot be read or names no real moment. Set ``log_timezone = 'UTC'``
    (docs/postgres.md): named zone abbreviations other than UTC/GMT are resolved through
    zoneinfo at today's offset."""
    if epoch is not None:
        try:
            return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        except (ValueError, OverflowError, OSError):
            return None
    if not logged:
        return None
    # The common case, PostgreSQL's %m in UTC ("2026-03-01 10:00:00.123 UTC"), without a regex.
    if len(logged) == 27 and logged.endswith(" UTC") and logged[19] == ".":
        millis = logged[20:23]
        if millis.isascii() and millis.isdigit():
            second = _utc_second(logged[:19])
            return None if second is None else f"{second}.{millis}000Z"
        return None
    match = _TIME.fullmatch(logged)
    if not match:
        return None
    fraction, zone_name = match.group(7), match.group(8)
    micros = (fraction or "").ljust(6, "0")
    zone = _zone(zone_name or "UTC")
    if zone is None:
        return None
    try:
        year, month, day, hour, minute, sec = (int(part) for part in match.groups()[:6])
        moment = datetime(year, month, day, hour, minute, sec, int(micros), tzinfo=zone)
        if zone is UTC:
            return f"{logged[:10]}T{logged[11:19]}.{micros}Z"
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except (ValueError, OverflowError):     # no such date, or it leaves datetime's range
        return None


# ---------------------------------------------------------------------------- jsonlog

# the C scanner, without json.loads()' wrappers (typeshed types its argument as the scanner)
_scan_json = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_surrogates(entry: LogEntry) -> LogEntry:
    """``entry`` with every lone surrogate (from a ``\\udXXX`` escape) replaced by U+FFFD."""
    for name in ("time", "user", "database", "severity", "message", "session_id", "client",
                 "command_tag", "statement", "sqlstate", "application"):
        value = getattr(entry, name)
        if value and _SURROGATE.search(value):
            setattr(entry, name, _SURROGATE.sub("\ufffd", value))
    return entry


class JsonlogParser:
    """``log_destination = 'jsonlog'`` (PostgreSQL 15+): one JSON object per line."""

    def feed(self, line: str) -> list[LogEntry]:
        if not _mentions_user(line):
            return []
        start = 0
        while start < len(line) and line[start] in " \t\r\n":
            start += 1
        try:
            record, end = _scan_json(line, start)
        except (ValueError, StopIteration, RecursionError):     # not JSON, or nested too deep
            return []
        if end != len(line) and not line[end:].isspace():
            return []                                           # something after the value
        if not isinstance(record, dict):
            return []
        user, message = record.get("user"), record.get("message")
        if message is None:
            message = ""
        if not isinstance(user, str) or not user.startswith(USER_PREFIXES) \
                or not isinstance(message, str):
            return []
        host, port = _str(record.get("remote_host")), record.get("remote_port")
        if not isinstance(port, (str, int)) or isinstance(port, bool):
            port = None
        client = f"{host}:{port}" if host and port is not None else host
        entry = LogEntry(
            time=_str(record.get("timestamp")), user=user, database=_str(record.get("dbname")),
            severity=_str(record.get("error_severity")), message=message,
            session_id=_str(record.get("session_id")), line_num=_int(record.get("line_num")),
            pid=_int(record.get("pid")), client=client, command_tag=_str(record.get("ps")),
            statement=_str(record.get("statement")), sqlstate=_str(record.get("state_code")),
            application=_str(record.get("application_name")))
        return [_no_surrogates(entry) if "\\u" in line else entry]

    def flush(self, *, final: bool = True) -> list[LogEntry]:
        return []


# ---------------------------------------------------------------------------- csvlog

# Column positions of csvlog (stable since PostgreSQL 9.0 for these; later versions append).
_C_TIME, _C_USER, _C_DB, _C_PID, _C_FROM, _C_SESSION, _C_LINE, _C_TAG = range(8)
_C_SEVERITY, _C_SQLSTATE, _C_MESSAGE = 11, 12, 13
_C_QUERY, _C_APP = 19, 22


class CsvlogParser:
    """``log_destination = 'csvlog'``: one CSV record per message; a quoted field may hold
    newlines, so lines are gathered until the quotes balance (PostgreSQL doubles every quote
    inside a field, so text a role chose can never end a record early). A record longer than
    :data:`MAX_RECORD` is skipped; its quotes are still counted, so the records after it are
    read as they were written."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._quotes = 0
        self._size = 0
        self._oversized = False

    def feed(self, line: str) -> list[LogEntry]:
        quotes = line.count('"')
        if not self._parts and not self._oversized and not quotes % 2:
            # the common case: a whole record on one line
            if not _mentions_user(line):
                return []
            entry = self._parse(line)
            return [] if entry is None else [entry]
        self._quotes += quotes
        self._size += len(line)
        if self._size > MAX_RECORD:
            self._parts, self._oversized = [], True
        else:
            self._parts.append(line)
        if self._quotes % 2:
            return []                             # inside a quoted field: the record goes on
        return self._complete()

    def flush(self, *, final: bool = True) -> list[LogEntry]:
        if not (self._parts or self._oversized) or (self._quotes % 2 and not final):
            return []                             # a record still being written: wait
        return self._complete()

    def _complete(self) -> list[LogEntry]:
        text, oversized = "".join(self._parts), self._oversized
        self._parts, self._quotes, self._size, self._oversized = [], 0, 0, False
        if oversized or not _mentions_user(text):
            return []
        entry = self._parse(text)
        return [] if entry is None else [entry]

    @staticmethod
    def _parse(text: str) -> LogEntry | None:
        row: list[str] | None
        try:
            row = next(csv.reader((text,)))
        except csv.Error:
            row = _split_csv(text)                # e.g. a field past csv's field_size_limit
        except StopIteration:
            return None
        if row is None or len(row) <= _C_MESSAGE or not row[_C_USER].startswith(USER_PREFIXES):
            return None

        def col(i: int) -> str | None:
            return row[i] if len(row) > i and row[i] != "" else None

        return LogEntry(
            time=row[_C_TIME], user=row[_C_USER], database=col(_C_DB), severity=col(_C_SEVERITY),
            message=row[_C_MESSAGE], session_id=col(_C_SESSION), line_num=_int(row[_C_LINE]),
            pid=_int(row[_C_PID]), client=col(_C_FROM),
            command_tag=col(_C_TAG), statement=col(_C_QUERY), sqlstate=col(_C_SQLSTATE),
            application=col(_C_APP))


def _split_csv(text: str) -> list[str] | None:
    """The fields of one CSV record as PostgreSQL writes it (``"…"`` quoting, ``""`` for a
    quote), without a limit on a field's size (a statement of a megabyte is still a
    statement); None when it is not such a record. Linear in ``len(text)``."""
    if "\0" in text:
        return None
    text = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    fields: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            parts, i = [], i + 1
            while True:
                close = text.find('"', i)
                if close < 0:
                    return None
                parts.append(text[i:close])
                if text.startswith('"', close + 1):
                    parts.append('"')
                    i = close + 2
                    continue
                i = close + 1
                break
            fields.append("".join(parts))
            if i < n and text[i] != ",":
                return None
        else:
            comma = text.find(",", i)
            end = n if comma < 0 else comma
            value = text[i:end]
            if '"' in value or "\n" in value:
                return None
            fields.append(value)
            i = end
        if i >= n:
            return fields
        i += 1                                    # past the comma


# ---------------------------------------------------------------------------- stderr

# Every variable part is bounded (PostgreSQL truncates names to NAMEDATALEN - 1 = 63 bytes; a
# host name is at most 1025): with escapes written side by side (%a%u%d) a line that does not
# match would otherwise take time cubic in its length to be refused.
_ESCAPES: dict[str, tuple[str | None, str]] = {
    "a": ("application", r".{0,64}?"),
    "u": ("user", r"[^\s@\[\]]{0,64}?"),
    "d": ("database", r"[^\s@\[\]]{0,64}?"),
    "r": ("client", r"\S{0,1100}?"),
    "h": ("client", r"\S{0,1100}?"),
    "b": (None, r".{0,64}?"),
    "p": ("pid", r"[0-9]{1,18}"),
    "P": (None, r"[0-9]{0,18}"),
    "t": ("time", r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(?: \S{1,64})?"),
    "m": ("time", r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{1,6}(?: \S{1,64})?"),
    "n": ("epoch", r"[0-9]{1,12}\.[0-9]{1,9}"),
    "i": ("command_tag", r".{0,128}?"),
    "e": ("sqlstate", r"[0-9A-Z]{5}"),
    "c": ("session_id", r"[0-9a-f]{1,16}\.[0-9a-f]{1,16}"),
    "l": ("line_num", r"[0-9]{1,18}"),
    "s": (None, r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(?: \S{1,64})?"),
    "v": (None, r"\S{0,64}?"),
    "x": (None, r"[0-9]{0,20}"),
    "Q": (None, r"-?[0-9]{0,20}"),
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
        width, letter = match.group(1), match.group(2)
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
        pad = abs(int(width)) if width.lstrip("-") else 0
        if pad:                                  # %-20u: padded with spaces to 20 characters
            pattern = rf" {{0,{pad}}}{pattern} {{0,{pad}}}"
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
            line_num=_int(line_num), pid=_int(pid),
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
