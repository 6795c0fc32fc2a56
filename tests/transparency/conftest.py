"""Fixtures for the Merkle tests: ledgers and apps on SQLite and on the real PostgreSQL (the
root's ``database_url`` and ``app``, on these policies)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.ledger import Ledger, open_ledger
from tests.support.merkle import POLICY_YAML


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    """A ledger store of its own on ``database_url`` (no app)."""
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
