"""Choosing the ledger backend from its URL: SQLite (embedded default) or PostgreSQL."""
from __future__ import annotations

import os

from broker.ledger.store import Ledger


def open_ledger(url: str, *, pool_size: int = 4, timeout: float | None = None) -> Ledger:
    """Open (creating or upgrading the schema if needed) the ledger at ``url``.

    ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (parent directories are
    created), or ``postgresql://…`` / ``postgres://…``. ``pool_size`` bounds the PostgreSQL
    connections of this process; ``timeout`` (seconds) bounds waiting for a connection
    (PostgreSQL, default 1: a ledger that is down is answered within it, see
    broker/common/pgpool.py) or for the write lock (SQLite, default 5).
    """
    if url.startswith("sqlite:///"):
        from broker.ledger.sqlite import SQLiteLedger

        path = url[len("sqlite:///"):]
        if not path or path == ":memory:" or path.startswith("file:"):
            raise ValueError("a SQLite ledger needs a file path: sqlite:///path/to/ledger.db")
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        return SQLiteLedger(path, busy_timeout=5.0 if timeout is None else timeout)
    if url.startswith(("postgresql://", "postgres://")):
        from broker.ledger.postgres import PostgresLedger

        return PostgresLedger(url, pool_size=pool_size, timeout=1.0 if timeout is None else timeout)
    raise ValueError("unsupported ledger URL: expected sqlite:///… or postgresql://…")
