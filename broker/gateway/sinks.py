"""Record sinks for the standalone harness and the benchmark (the broker brings its own: the ledger).

- :class:`JsonlFileSink` appends one JSON object per line and ``fsync``s each batch.
- :class:`SqliteSink` inserts each batch in one transaction into a SQLite table keyed by
  ``line_key`` (``INSERT OR IGNORE``: re-delivery is harmless), like the ledger's dedupe.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from typing import Any


class JsonlFileSink:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write_batch(self, records: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" for r in records)
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


class SqliteSink:
    """One row per record: the fields an auditor queries as columns, the rest as JSON."""

    COLUMNS = ("line_key", "type", "credential_id", "connection_id", "seq", "statement",
               "statement_sha256", "command_tag", "rows", "sqlstate", "outcome", "duration_ms", "ts")

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS gateway_records (line_key TEXT PRIMARY KEY,"
                             " type TEXT, credential_id TEXT, connection_id TEXT, seq INTEGER,"
                             " statement TEXT, statement_sha256 TEXT, command_tag TEXT, rows INTEGER,"
                             " sqlstate TEXT, outcome TEXT, duration_ms REAL, ts REAL, other TEXT)")
        return self._db

    def write_batch(self, records: list[dict[str, Any]]) -> None:
        db = self._conn()
        columns = self.COLUMNS
        known = set(columns) | {"source", "database", "client_addr", "target", "statement_bytes",
                                "truncated"}
        rows = []
        for r in records:
            other = {k: v for k, v in r.items() if k not in known}
            rows.append((*(r.get(c) for c in columns),
                         json.dumps(other, separators=(",", ":"), default=str) if other else None))
        db.execute("BEGIN")
        db.executemany("INSERT OR IGNORE INTO gateway_records VALUES "
                       "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")
