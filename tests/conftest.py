"""Fixtures every folder shares: the real PostgreSQL and Redis on this machine, the dev issuer,
the ledger's database URL on both backends, the throwaway PostgreSQL cluster, and an app on the
standard policy set (folders with policies of their own override ``policy_dir``/``make_app``/
``app`` in their conftest, or import a group from ``tests.support.fanout``/``.postgres``).

Tests never mock these. When a service or an extra (psycopg, redis, hvac, selenium) is missing
the run fails with a clear message; nothing is ever skipped for it. Helpers live in
``tests/support/`` and are imported as ``tests.support.<module>``.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

# The dev-only issuers refuse to run without this explicit switch (never implied by pytest).
os.environ["BROKER_INSECURE_DEV_ISSUER"] = "1"

import pytest

# Before anything imports them: the helpers' asserts report like the tests' own.
pytest.register_assert_rewrite("tests.support")

import psycopg  # noqa: E402
import redis  # noqa: E402
from psycopg import sql  # noqa: E402

from broker.devtools.dev_issuer import DevIssuer  # noqa: E402
from tests.support.apps import app_factory  # noqa: E402
from tests.support.pg_cluster import Cluster, throwaway_cluster  # noqa: E402
from tests.support.policies import write_policies  # noqa: E402

PG_ADMIN_DSN = os.environ.get("BROKER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BROKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

#: The ledger's two backends; tests that take ``database_url`` run once on each.
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


def _pg_dsn_for(dbname: str) -> str:
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    return f"{base}/{dbname}"


# -- the machine's services ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def pg_admin_dsn() -> str:
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=5) as conn:
            conn.execute("select 1")
    except Exception as exc:  # noqa: BLE001 - reported as a failure, never a skip
        pytest.fail(f"PostgreSQL is required at {PG_ADMIN_DSN}: {exc}")
    return PG_ADMIN_DSN


@pytest.fixture
def pg_database(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards. Yields its DSN."""
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
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Redis is required at {REDIS_URL}: {exc}")
    return REDIS_URL


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix unique to one test, so parallel runs never share replay keys."""
    return f"nhb-test-{secrets.token_hex(6)}:"


# -- what the broker is tested with ---------------------------------------------------------------

@pytest.fixture(scope="module")
def dev_issuer() -> Iterator[DevIssuer]:
    """The dev OIDC issuer over real HTTP, one per test module (tests that rotate or reconfigure
    it take a fresh one of their own)."""
    with DevIssuer() as issuer:
        yield issuer


@pytest.fixture
def fresh_issuer() -> Iterator[DevIssuer]:
    """A dev issuer of the test's own, for tests that rotate or reconfigure it."""
    with DevIssuer() as issuer:
        yield issuer


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The ledger's database: a fresh SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("pg_database")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL cluster for the session (SCRAM for every login but the
    superuser's; stderr, jsonlog and csvlog logging): what ``postgres`` targets mint in."""
    with throwaway_cluster() as started:
        yield started


# -- an app on the standard policy set (tests/support/policies.py), on both backends --------------

@pytest.fixture
def policy_dir(tmp_path: Path, dev_issuer: DevIssuer) -> Path:
    return write_policies(tmp_path / "policies", dev_issuer.issuer)


@pytest.fixture
def make_app(tmp_path: Path, policy_dir: Path):
    """``make_app(**overrides)``: apps on ``policy_dir`` and a state directory of their own."""
    with app_factory(POLICY_DIR=str(policy_dir), STATE_DIR=str(tmp_path / "state"),
                     ISSUER="http://broker.test") as factory:
        yield factory


@pytest.fixture
def app(make_app, database_url: str):
    return make_app(DATABASE_URL=database_url)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def ledger(app):
    return app.extensions["broker"].ledger
