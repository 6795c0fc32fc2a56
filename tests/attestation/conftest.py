"""Fixtures for attestation tests: fresh key caches and replay stores (the dev issuers, a real
OIDC issuer over HTTP, come from the root conftest; issuer configs are built directly from the
policy dataclasses by tests.support.attestation)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.attestation import JWKSCache, SQLiteReplayGuard


@pytest.fixture
def jwks_cache() -> JWKSCache:
    return JWKSCache(timeout=2.0)


@pytest.fixture
def sqlite_replay(tmp_path) -> Iterator[SQLiteReplayGuard]:
    guard = SQLiteReplayGuard(tmp_path / "replay.sqlite3")
    yield guard
    guard.close()
