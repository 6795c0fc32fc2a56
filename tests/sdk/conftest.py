"""Fixtures of the SDK tests: a real server with the fan-out policies."""
from __future__ import annotations

from tests.support.fanout import http_broker  # noqa: F401  (a fixture)
from tests.support.retries import outage_broker, redis_down  # noqa: F401  (fixtures)
