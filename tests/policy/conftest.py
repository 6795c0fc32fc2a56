"""Fixtures of the policy tests; the helpers live in policy_support.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.policy.policy_support import PolicyFiles


@pytest.fixture
def files(tmp_path: Path) -> PolicyFiles:
    """``base.yaml`` (issuer gha, target reports-api) plus case files, in ``tmp_path``."""
    return PolicyFiles(tmp_path)
