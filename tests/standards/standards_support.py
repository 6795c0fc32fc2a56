"""Constants shared by the standards tests (imported by name; pytest puts this folder on sys.path)."""
from __future__ import annotations

#: The broker's issuer in these tests: an https URL (Authlib's metadata models refuse others).
BROKER_ISSUER = "https://broker.test"
