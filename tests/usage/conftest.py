"""Fixtures of the usage tests: an app with a ``postgres`` target in the session's throwaway
cluster, whose logs (stderr, jsonlog, csvlog) the ingestion reads (tests.support.postgres)."""
from __future__ import annotations

from tests.support.postgres import app, make_app, policy_dir, target_db  # noqa: F401  (fixtures)
