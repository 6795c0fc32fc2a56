"""Fixtures for attestation tests: a real dev OIDC issuer over HTTP, issuer configs built
directly from the policy dataclasses, and fresh key caches and replay stores."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.attestation import JWKSCache, SQLiteReplayGuard
from broker.devtools.dev_issuer import DevIssuer


@pytest.fixture(scope="module")
def dev_issuer() -> Iterator[DevIssuer]:
    """One issuer for a whole module: tests that rotate or reconfigure it use fresh_issuer."""
    with DevIssuer() as dev:
        yield dev


@pytest.fixture
def fresh_issuer() -> Iterator[DevIssuer]:
    with DevIssuer() as dev:
        yield dev


@pytest.fixture
def jwks_cache() -> JWKSCache:
    return JWKSCache(timeout=2.0)


@pytest.fixture
def sqlite_replay(tmp_path) -> Iterator[SQLiteReplayGuard]:
    guard = SQLiteReplayGuard(tmp_path / "replay.sqlite3")
    yield guard
    guard.close()
