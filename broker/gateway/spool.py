"""The local spool: what makes a statement's record safe before the statement runs.

Each worker process appends to its own *stream* of segment files
(``<stream>.<n>.spool`` in the spool directory), holding an exclusive ``flock`` on the segment it
writes. A statement's start line is written with ``write(2)`` — one call per client packet,
whatever else is buffered rides along — before the packet is forwarded upstream, so a crash of the
gateway process cannot lose it (the kernel has it; ``fsync`` is only for machine crashes and is
optional). Outcome lines follow when the server answers.

One :class:`Drainer` per spool directory (it holds ``.drainer.lock``) reads every stream from its
durable offset, joins start, outcome and connection lines into records, hands them to the
:class:`~broker.gateway.recording.RecordSink` in batches and, only after ``write_batch`` returned,
advances the stream's offset (``<stream>.state``: offset plus the still-open connections and
statements, written to a temporary file and renamed). A stream whose segment is no longer locked
and does not end in a rotation or close line belongs to a process that died: its open statements
become ``outcome: "unknown"`` records, its open connections get a ``disconnect`` saying so, and
its files are removed. Re-delivery after a crash between ``write_batch`` and the offset update is
harmless: every record has a stable ``line_key``.

Line format (one record per line, tab-separated, JSON only where free text goes)::

    C <conn> <json connection>                     a session logged in
    S <conn> <seq> <t_ns> <json text> {<extra>}    a statement is about to be forwarded
    O <conn> <seq> <t_ns> <outcome> <tag> <sqlstate> {<extra>}
    D <conn> <json disconnect>                     a session ended
    X <json record>                                a standalone record (refusal, cancel, drops)
    R <next segment file name>                     rotated: continue there
    Z                                              the writer closed its stream cleanly
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.gateway.recording import RecordSink, usage_record

log = logging.getLogger("broker.gateway.spool")

#: perf_counter_ns() + CLOCK_OFFSET_NS ≈ time.time_ns() in this process (t_ns in spool lines is
#: perf_counter_ns, monotonic; the connection line carries the offset).
CLOCK_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


class SpoolError(OSError):
    """The spool cannot be written: with ``audit: required`` statements are refused."""


class SpoolWriter:
    """One worker process's append-only stream. Not thread-safe: one event loop uses it."""

    def __init__(self, directory: str | os.PathLike[str], *, segment_bytes: int = 64 << 20,
                 fsync: bool = False, stream: str | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stream = stream or (f"gw-{socket.gethostname()}-{os.getpid()}-"
                                 f"{time.time_ns() // 1_000_000:x}-{secrets.token_hex(2)}")
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._buffer: list[str] = []
        self.add_line = self._buffer.append      # the hot path's add(), without a Python frame
        self._segment_no = 0
        self._fd = -1
        self._size = 0
        self.failed = False                  # the last write failed (a torn line may be on disk)
        self.dropped = 0                     # lines lost (best-effort) since the last report
        self.lines_written = 0
        self._open_segment()

    # -- segments
    def _segment_name(self, n: int) -> str:
        return f"{self.stream}.{n:06d}.spool"

    def _open_segment(self) -> None:
        """Create, lock, then rename into place, so a drainer never sees an unlocked live file."""
        name = self._segment_name(self._segment_no)
        tmp = self.directory / f".{name}.new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, self.directory / name)
        old, self._fd, self._size = self._fd, fd, 0
        if old >= 0:
            self._write_raw(old, f"R\t{name}\n".encode())
            os.close(old)

    @property
    def segment_path(self) -> Path:
        return self.directory / self._segment_name(self._segment_no)

    # -- writing
    def add(self, line: str) -> None:
        """Buffer one line (with its trailing newline); it goes out with the next :meth:`flush`."""
        self._buffer.append(line)

    @property
    def pending(self) -> bool:
        return bool(self._buffer)

    def flush(self) -> None:
        """One ``write(2)`` of everything buffered. Raises :class:`SpoolError` on failure (the
        buffered lines are then dropped and counted)."""
        if not self._buffer:
            return
        data = "".join(self._buffer).encode("utf-8", "surrogatepass")
        count = len(self._buffer)
        self._buffer.clear()
        if self.failed:
            data = b"\n" + data              # end a torn line from the failed write
        try:
            self._write_raw(self._fd, data)
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            self.failed = True
            self.dropped += count
            raise SpoolError(exc.errno or errno.EIO, "the audit spool cannot be written") from exc
        self.failed = False
        self.lines_written += count
        self._size += len(data)
        if self._size >= self.segment_bytes:
            self._segment_no += 1
            try:
                self._open_segment()
            except OSError as exc:
                self._segment_no -= 1
                log.error("spool rotation failed: %s", exc.strerror)

    @staticmethod
    def _write_raw(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def close(self) -> None:
        """Flush, mark the stream closed (``Z``), release the lock."""
        if self._fd < 0:
            return
        try:
            self.add("Z\n")
            self.flush()
        except SpoolError:
            log.error("the spool could not be closed cleanly; the drainer will recover it")
        os.close(self._fd)
        self._fd = -1


# ---------------------------------------------------------------- draining

@dataclass
class _Stream:
    name: str
    segment: str
    offset: int = 0
    connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: dict[str, list[Any]] = field(default_factory=dict)    # "conn:seq" → start fields
    suspended_outcomes: int = 0

    def state(self) -> dict[str, Any]:
        return {"segment": self.segment, "offset": self.offset, "connections": self.connections,
                "pending": self.pending}


def _is_locked(path: Path) -> bool:
    """Whether a writer still holds ``path``: a non-blocking shared lock fails while it does."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class Drainer:
    """Moves records from a spool directory into a :class:`RecordSink`, at least once, in order
    per stream. ``run_once`` is one pass; ``start``/``stop`` run passes on a thread."""

    def __init__(self, directory: str | os.PathLike[str], sink: RecordSink, *, batch: int = 5000,
                 interval: float = 0.05, max_read: int = 8 << 20, fsync: bool = False,
                 nice: int = 10, idle_priority: bool = False,
                 backlog_limit: int = 256 << 20) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sink = sink
        self.batch = batch
        self.interval = interval
        self.max_read = max_read
        self.fsync = fsync
        self.nice = nice
        self.idle_priority = idle_priority
        self.backlog_limit = backlog_limit
        self.delivered = 0
        self.failures = 0
        self._streams: dict[str, _Stream] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lock_fd = os.open(self.directory / ".drainer.lock",
                                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)          # one drainer per directory

    # -- discovery
    def _discover(self) -> None:
        for path in self.directory.glob("*.spool"):
            stream = path.name.rsplit(".", 2)[0]
            if stream in self._streams:
                continue
            state_path = self.directory / f"{stream}.state"
            if state_path.exists():
                data = json.loads(state_path.read_text())
                self._streams[stream] = _Stream(stream, data["segment"], data["offset"],
                                                data["connections"], data["pending"])
            else:
                first = min(p.name for p in self.directory.glob(f"{stream}.*.spool"))
                self._streams[stream] = _Stream(stream, first)

    # -- one pass
    def run_once(self) -> int:
        """Drain whatever is there now; returns the number of records delivered."""
        self._discover()
        total = 0
        for stream in list(self._streams.values()):
            total += self._drain_stream(stream)
        return total

    def _drain_stream(self, stream: _Stream) -> int:
        delivered = 0
        while True:
            path = self.directory / stream.segment
            alive = _is_locked(path)       # checked before reading: if dead, all its data is there
            try:
                with open(path, "rb") as f:
                    f.seek(stream.offset)
                    data = f.read(self.max_read)
            except FileNotFoundError:
                data = b""
            end = data.rfind(b"\n") + 1
            records: list[dict[str, Any]] = []
            next_segment: str | None = None
            closed = False
            if end:
                next_segment, closed = self._parse(stream, data[:end], records)
            more = end < len(data) or len(data) == self.max_read
            finished = closed or (not alive and next_segment is None and not more)
            if finished:
                records.extend(self._finalize(stream, clean=closed))
            self._deliver(records)
            delivered += len(records)
            stream.offset += end
            old_segment = stream.segment
            if next_segment is not None:
                stream.segment, stream.offset = next_segment, 0
            if finished:
                self._remove_stream(stream)
                return delivered
            self._save(stream)
            if next_segment is not None:
                _unlink(self.directory / old_segment)
                continue
            if not more:
                return delivered

    def _parse(self, stream: _Stream, data: bytes, out: list[dict[str, Any]]) -> tuple[str | None, bool]:  # noqa: C901 - one branch per line kind
        connections, pending = stream.connections, stream.pending
        next_segment: str | None = None
        closed = False
        for raw in data.split(b"\n"):
            if not raw:
                continue
            try:
                line = raw.decode("utf-8", "surrogateescape")
                kind = line[0]
                if kind == "S":
                    _, conn, seq, t_ns, text, extra = line.split("\t", 5)
                    pending[f"{conn}:{seq}"] = [int(t_ns), text, extra]
                elif kind == "O":
                    _, conn, seq, t_ns, outcome, tag, sqlstate, extra = line.split("\t", 7)
                    start = pending.pop(f"{conn}:{seq}", None)
                    if start is None or outcome in ("empty", "skipped"):
                        continue                   # delivered before, or never executed
                    out.append(self._usage(stream, conn, int(seq), start, outcome, int(t_ns),
                                           tag or None, sqlstate or None, extra))
                elif kind == "C":
                    _, conn, info = line.split("\t", 2)
                    connection = json.loads(info)
                    connections[conn] = connection
                    out.append(_connect_record(conn, connection))
                elif kind == "D":
                    _, conn, info = line.split("\t", 2)
                    connection = connections.pop(conn, None) or {}
                    out.extend(self._unknowns(stream, conn))
                    out.append(_disconnect_record(conn, connection, json.loads(info)))
                elif kind == "X":
                    record = json.loads(line[2:])
                    if record.get("type") == "cancel" and not record.get("credential_id"):
                        _attribute_cancel(record, [s.connections for s in self._streams.values()])
                    out.append(record)
                elif kind == "R":
                    next_segment = line[2:]
                elif kind == "Z":
                    closed = True
            except (ValueError, IndexError, KeyError):
                log.error("spool %s: skipped a malformed line", stream.segment)
        return next_segment, closed

    def _usage(self, stream: _Stream, conn: str, seq: int, start: list[Any], outcome: str,
               end_ns: int | None, tag: str | None, sqlstate: str | None,
               outcome_extra: str) -> dict[str, Any]:
        t_ns, text, start_extra = start
        connection = stream.connections.get(conn, {})
        value = text[1:-1] if "\\" not in text else json.loads(text)
        return usage_record(conn, seq, connection, t_ns, value,
                            json.loads(start_extra) if len(start_extra) > 2 else {},
                            outcome=outcome, end_ns=end_ns, command_tag=tag, sqlstate=sqlstate,
                            outcome_extra=json.loads(outcome_extra) if len(outcome_extra) > 2 else None)

    def _unknowns(self, stream: _Stream, conn: str) -> list[dict[str, Any]]:
        prefix = conn + ":"
        keys = [k for k in stream.pending if k.startswith(prefix)]
        out = []
        for key in sorted(keys, key=lambda k: int(k.rsplit(":", 1)[1])):
            start = stream.pending.pop(key)
            out.append(self._usage(stream, conn, int(key.rsplit(":", 1)[1]), start, "unknown",
                                   None, None, None, ""))
        return out

    def _finalize(self, stream: _Stream, *, clean: bool) -> list[dict[str, Any]]:
        """The writer is gone: close out every statement and connection it left open."""
        out: list[dict[str, Any]] = []
        for conn in sorted({k.rsplit(":", 1)[0] for k in stream.pending}):
            out.extend(self._unknowns(stream, conn))
        for conn, connection in list(stream.connections.items()):
            reason = ("gateway stopped" if clean else
                      "gateway process ended without closing the session (crash); "
                      "statements in flight are recorded with outcome unknown")
            out.append(_disconnect_record(conn, connection, {"reason": reason, "unclean": not clean}))
        stream.connections.clear()
        return out

    def _deliver(self, records: list[dict[str, Any]]) -> None:
        for i in range(0, len(records), self.batch):
            chunk = records[i:i + self.batch]
            while True:
                try:
                    self.sink.write_batch(chunk)
                    break
                except Exception as exc:  # noqa: BLE001 - the sink is outside; retry, never drop
                    self.failures += 1
                    # one line (the cause's class and message), never a traceback in the log;
                    # the first failure of a run of them is logged, then every 60th
                    if self.failures % 60 == 1:
                        cause = exc.__cause__ or exc
                        log.error("record sink failed (%s: %s); retrying the batch of %d",
                                  type(cause).__name__,
                                  str(cause).splitlines()[0][:300] if str(cause) else "",
                                  len(chunk))
                    if self._stop.wait(1.0):
                        raise
            self.delivered += len(chunk)

    def _save(self, stream: _Stream) -> None:
        path = self.directory / f"{stream.name}.state"
        tmp = path.with_suffix(".state.tmp")
        with open(tmp, "w") as f:
            json.dump(stream.state(), f, separators=(",", ":"))
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)

    def _remove_stream(self, stream: _Stream) -> None:
        for path in self.directory.glob(f"{stream.name}.*.spool"):
            _unlink(path)
        _unlink(self.directory / f"{stream.name}.state")
        self._streams.pop(stream.name, None)

    # -- thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gateway-drainer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """Drain until stopped. With ``idle_priority`` the thread runs SCHED_IDLE (only on CPU
        nobody else wants: the relay never waits for it, the spool holds the records) and goes
        back to normal scheduling while the backlog exceeds ``backlog_limit`` bytes, so a busy
        host cannot grow the spool without bound."""
        tid = threading.get_native_id()
        if self.nice:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid, self.nice)
        idle = False
        while not self._stop.is_set():
            if self.idle_priority:
                want_idle = self.backlog() < self.backlog_limit
                if want_idle != idle:
                    with contextlib.suppress(OSError, AttributeError):
                        os.sched_setscheduler(tid, os.SCHED_IDLE if want_idle else os.SCHED_OTHER,
                                              os.sched_param(0))
                        idle = want_idle
            try:
                n = self.run_once()
            except Exception:  # noqa: BLE001
                if self._stop.is_set():
                    break
                log.exception("drain pass failed")
                n = 0
            if not n:
                self._stop.wait(self.interval)

    def backlog(self) -> int:
        """Bytes written to the spool and not yet delivered."""
        total = 0
        for stream in self._streams.values():
            for path in self.directory.glob(f"{stream.name}.*.spool"):
                with contextlib.suppress(FileNotFoundError):
                    size = path.stat().st_size
                    total += size - stream.offset if path.name == stream.segment else size
        return total

    def stop(self, *, final_pass: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if final_pass:
            self._stop.clear()
            try:
                self.run_once()
            finally:
                self._stop.set()
        os.close(self.lock_fd)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _connect_record(conn: str, connection: dict[str, Any]) -> dict[str, Any]:
    record = dict(connection.get("record") or {})
    record.update({k: v for k, v in connection.items() if k not in ("record", "clock_offset_ns")})
    record.update({"type": "connect", "line_key": f"gw:{conn}:connect", "source": "gateway",
                   "connection_id": conn})
    return record


def _disconnect_record(conn: str, connection: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    record = dict(connection.get("record") or {})
    record.update({"type": "disconnect", "line_key": f"gw:{conn}:disconnect", "source": "gateway",
                   "connection_id": conn, "credential_id": connection.get("credential_id"),
                   "database": connection.get("database"),
                   "client_addr": connection.get("client_addr"), "target": connection.get("target")})
    record.update(info)
    return record


def _attribute_cancel(record: dict[str, Any], tables: list[dict[str, dict[str, Any]]]) -> None:
    """A cancel that reached another worker than its session: find the session by the upstream
    backend it was mapped to (every worker's connections are in the drainer's tables)."""
    pid = record.get("upstream_backend_pid")
    for connections in tables:
        for conn, connection in connections.items():
            if connection.get("upstream_backend_pid") == pid and \
                    connection.get("upstream") == record.get("upstream"):
                record["connection_id"] = conn
                record["credential_id"] = connection.get("credential_id")
                return
