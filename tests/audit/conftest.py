"""Fixtures for the audit tests: the app on SQLite and on PostgreSQL (the root's ``app`` on
these policies), a populated ledger."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.audit import build_story, write_audit_policies
from tests.support.oauth import AUDITOR, basic


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    return write_audit_policies(tmp_path / "policies")


@pytest.fixture
def story(ledger):
    return build_story(ledger)


@pytest.fixture
def auth() -> dict[str, str]:
    return basic(*AUDITOR)
