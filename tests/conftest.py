"""Shared fixtures: the real PostgreSQL and Redis on this machine.

Tests never mock these. When one is missing the test fails with a clear message (CI sets
BROKER_TEST_REQUIRE_SERVICES=1, and a missing service is a failure there too).
"""
from __future__ import annotations

import os
import secrets

# The dev-only issuers refuse to run without this explicit switch (never implied by pytest).
os.environ["BROKER_INSECURE_DEV_ISSUER"] = "1"

import pytest

PG_ADMIN_DSN = os.environ.get("BROKER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BROKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _pg_dsn_for(dbname: str) -> str:
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    return f"{base}/{dbname}"


@pytest.fixture(scope="session")
def pg_admin_dsn() -> str:
    psycopg = pytest.importorskip("psycopg")
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=5) as conn:
            conn.execute("select 1")
    except Exception as exc:  # noqa: BLE001 - reported as a failure, never a skip
        pytest.fail(f"PostgreSQL is required at {PG_ADMIN_DSN}: {exc}")
    return PG_ADMIN_DSN


@pytest.fixture
def pg_database(pg_admin_dsn: str):
    """A fresh, empty database for one test; dropped afterwards. Yields its DSN."""
    import psycopg
    from psycopg import sql

    name = f"nhb_test_{secrets.token_hex(6)}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _pg_dsn_for(name)
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def redis_url() -> str:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Redis is required at {REDIS_URL}: {exc}")
    return REDIS_URL


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix unique to one test, so parallel runs never share replay keys."""
    return f"nhb-test-{secrets.token_hex(6)}:"
