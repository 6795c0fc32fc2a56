"""Fixtures of the fuzz tests; the hypothesis profile and the hostile strategies live in
tests/support/fuzz.py (imported here so the profile is registered before any test runs).

Hypothesis runs a test's examples inside one call of the test function, so what the examples
share (an app, a dev issuer) is module-scoped: one app per test module, not one per example."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.support.fuzz  # noqa: F401 - registers the profile
from broker.devtools.dev_issuer import DevIssuer
from tests.support.apps import app_factory
from tests.support.policies import write_policies


@pytest.fixture(scope="module")
def token_app(tmp_path_factory: pytest.TempPathFactory, dev_issuer: DevIssuer) -> Iterator[Any]:
    """The broker on the standard policy set, a SQLite ledger and the dev issuer: the app
    ``POST /token`` is fuzzed against."""
    root: Path = tmp_path_factory.mktemp("fuzz-token")
    policies = write_policies(root / "policies", dev_issuer.issuer)
    with app_factory(POLICY_DIR=str(policies), STATE_DIR=str(root / "state"), ISSUER="http://broker.test",
                     DATABASE_URL=f"sqlite:///{root / 'ledger.db'}") as factory:
        yield factory()
