"""Fixtures of the postgres target tests: a target database per test in the session's
throwaway cluster (real scram-sha-256 authentication, jsonlog + csvlog logging), the policy set
around it and the dev issuer, apps on it (tests.support.postgres)."""
from __future__ import annotations

from tests.support.postgres import app, make_app, policy_dir, target_db  # noqa: F401  (fixtures)
