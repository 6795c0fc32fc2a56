"""Fixtures of the postgres tests: one throwaway cluster per session (real scram-sha-256
authentication, jsonlog + csvlog logging), a target database per test, the dev issuer."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from shared import app_factory

import pg_cluster
from pg_support import ADMIN_ENV, TargetDB, down_target, policy_yaml


@pytest.fixture(scope="session")
def cluster():
    pytest.importorskip("psycopg")
    try:
        started = pg_cluster.start_cluster()
    except Exception as exc:  # noqa: BLE001 - a failure, never a skip
        pytest.fail(f"could not start a throwaway PostgreSQL cluster: {exc}")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def dev_issuer():
    os.environ["BROKER_INSECURE_DEV_ISSUER"] = "1"
    from broker.devtools.dev_issuer import DevIssuer

    with DevIssuer() as issuer:
        yield issuer


@pytest.fixture
def target_db(cluster) -> TargetDB:
    """A fresh database with ``accounts`` and two roles: a reader and a writer."""
    import psycopg
    from psycopg import sql

    tag = secrets.token_hex(4)
    dbname, reader, writer = f"payments_{tag}", f"app_reader_{tag}", f"app_writer_{tag}"
    with psycopg.connect(cluster.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(reader)))
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(writer)))
    with psycopg.connect(cluster.dsn(dbname), autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance bigint)")
        conn.execute("INSERT INTO accounts SELECT g, 'owner-' || g, 100 FROM generate_series(1, 10) g")
        conn.execute(sql.SQL("GRANT SELECT ON accounts TO {}").format(sql.Identifier(reader)))
        conn.execute(sql.SQL("GRANT SELECT, UPDATE ON accounts TO {}").format(sql.Identifier(writer)))
    return TargetDB(admin_dsn=cluster.dsn(dbname), dbname=dbname, writer=writer, reader=reader,
                    port=cluster.port)


@pytest.fixture
def policy_dir(tmp_path: Path, dev_issuer, target_db, monkeypatch) -> Path:
    monkeypatch.setenv(ADMIN_ENV, target_db.admin_dsn)
    # A target whose database is down: a closed port, and an admin password that must never
    # show up anywhere.
    monkeypatch.setenv("NHB_TEST_DOWN_DSN",
                       "postgresql://nhb_admin:hunter2-admin-secret@127.0.0.1:9/postgres")
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "broker.yaml").write_text(
        policy_yaml(dev_issuer.issuer, target_db, extra_target=down_target("NHB_TEST_DOWN_DSN")))
    return directory


@pytest.fixture
def make_app(tmp_path: Path, policy_dir: Path):
    with app_factory(POLICY_DIR=str(policy_dir), STATE_DIR=str(tmp_path / "state"),
                     ISSUER="http://broker.test", DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
                     REAPER_INTERVAL=0, POSTGRES_TIMEOUT=2.0) as factory:
        yield factory


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def ledger(app):
    return app.extensions["broker"].ledger
