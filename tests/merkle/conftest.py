"""Fixtures for the Merkle tests: ledgers and apps on SQLite and on the real PostgreSQL."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from shared import app_factory

from broker.ledger import Ledger, open_ledger
from merkle_support import POLICY_YAML


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("pg_database")


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    store = open_ledger(database_url)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "broker.yaml").write_text(POLICY_YAML)
    return directory


@pytest.fixture
def make_app(tmp_path: Path, policy_dir: Path):
    with app_factory(POLICY_DIR=str(policy_dir), STATE_DIR=str(tmp_path / "state"),
                     ISSUER="http://broker.test") as factory:
        yield factory


@pytest.fixture
def app(make_app, database_url: str):
    return make_app(DATABASE_URL=database_url)
