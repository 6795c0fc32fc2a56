"""Fixtures for the ledger tests: every test runs against both backends, for real.

``database_url`` (the root's) is a fresh SQLite file or a fresh PostgreSQL database;
``ledger`` is a store of its own on it; ``raw_sql`` runs statements on it behind the ledger's
back, the way a tamperer would.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from broker.ledger import Ledger, open_ledger

RawSQL = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    store = open_ledger(database_url)
    try:
        yield store
    finally:
        store.close()


def run_raw_sql(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement directly on the database (``%s`` placeholders), autocommit."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
        try:
            cur = conn.execute(sql.replace("%s", "?"), params)
            return cur.fetchall()
        finally:
            conn.close()
    with psycopg.connect(url, autocommit=True) as pg:
        result = pg.execute(sql, params or None)
        return result.fetchall() if result.description else []


@pytest.fixture
def raw_sql(database_url: str) -> RawSQL:
    def run(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return run_raw_sql(database_url, sql, tuple(params))
    return run
