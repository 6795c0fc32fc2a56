"""Fixtures of the dev-tools tests: the dev human IdP (the dev issuers come from the root)."""
from __future__ import annotations

from tests.support.people import human_idp  # noqa: F401  (a fixture)
