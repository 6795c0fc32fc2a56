"""Fixtures for the ledger tests: every test runs against both backends, for real.

``ledger_url`` is a fresh SQLite file or a fresh PostgreSQL database (from ``pg_database``);
``raw_sql`` runs statements on it behind the ledger's back, the way a tamperer would.
"""
from __future__ import annotations

import sqlite3
from typing import Any, Callable, Iterator

import pytest

from broker.ledger import Ledger, open_ledger

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]

RawSQL = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def ledger_url(backend: str, request: pytest.FixtureRequest, tmp_path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/state/ledger.db"
    return request.getfixturevalue("pg_database")


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    store = open_ledger(ledger_url)
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
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params or None)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def raw_sql(ledger_url: str) -> RawSQL:
    def run(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return run_raw_sql(ledger_url, sql, tuple(params))
    return run
