"""Fixtures of the lifecycle tests (liveness, the revocation cascade): an app with the fan-out
policies, on SQLite and on PostgreSQL."""
from __future__ import annotations

from tests.support.fanout import app, policy_dir  # noqa: F401  (fixtures)
