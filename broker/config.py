"""Configuration: defaults, then ``BROKER_*`` environment variables, then explicit overrides.

Flask's ``from_prefixed_env("BROKER")`` turns ``BROKER_POLICY_DIR`` into ``POLICY_DIR``. The
typed getters below are the only way the rest of the code reads configuration.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

DEFAULTS: dict[str, Any] = {
    "ISSUER": "http://127.0.0.1:8080",      # the broker's own public URL: its `iss`
    "POLICY_DIR": "./policies",             # folder of *.yaml policy documents
    "DATABASE_URL": None,                   # None: sqlite:///$STATE_DIR/ledger.db
    "REDIS_URL": None,                      # None: embedded replay store in $STATE_DIR
    "STATE_DIR": "./.broker",               # signing keys and local state
    "SIGNER": "file",                       # file | vault-transit:<key> (later)
    "LOG_LEVEL": "INFO",
    "JWKS_TIMEOUT": 5.0,                    # seconds, per attestation-issuer fetch
    "JWKS_CACHE_TTL": 300,                  # seconds a fetched key set is trusted
    "JWKS_MIN_REFETCH_INTERVAL": 10.0,      # at most one refetch per issuer per this many seconds
    "REDIS_TIMEOUT": 0.5,                   # seconds; Redis slower than this fails closed (503)
    "MAX_CONTENT_LENGTH": 64 * 1024,        # bytes of request body accepted
    "CHECKPOINT_INTERVAL": None,            # seconds between signed ledger checkpoints; 0 = off;
                                            # None: 300 in `broker serve`, off when TESTING
    "RATE_LIMIT": None,                     # "600/60s": POST /token per client address; None = off
    "PROXY_FIX_X_FOR": 0,                   # reverse proxies whose X-Forwarded-For is trusted
    "CHECKPOINT_WITNESS": None,             # comma-separated URLs (POST JSON) / files (JSON lines)
    "REAPER_INTERVAL": 15,                  # seconds between expiry sweeps in `broker serve`; 0 = off
    "REAPER_ORPHAN_GRACE": 300,             # seconds before an nhb_ role unknown to the ledger is an orphan
    "POSTGRES_POOL_SIZE": 4,                # admin connections per postgres target, per process
    "POSTGRES_TIMEOUT": 5.0,                # seconds to get an admin connection to a postgres target
    "SECRET_KEY": None,                     # signs people's session cookies; None: $STATE_DIR/session.key
    "APPROVAL_POLL_INTERVAL": 5,            # seconds between approval polls (RFC 8628 `interval`)
}


def _get(config: Mapping[str, Any], key: str) -> Any:
    value = config.get(key)
    return DEFAULTS.get(key) if value is None else value


def state_dir(config: Mapping[str, Any]) -> str:
    return os.path.abspath(str(_get(config, "STATE_DIR")))


def database_url(config: Mapping[str, Any]) -> str:
    url = config.get("DATABASE_URL")
    if url:
        return str(url)
    return f"sqlite:///{os.path.join(state_dir(config), 'ledger.db')}"


def redis_url(config: Mapping[str, Any]) -> str | None:
    url = config.get("REDIS_URL")
    return str(url) if url else None


def policy_dir(config: Mapping[str, Any]) -> str:
    return str(_get(config, "POLICY_DIR"))


def issuer(config: Mapping[str, Any]) -> str:
    return str(_get(config, "ISSUER")).rstrip("/")


def number(config: Mapping[str, Any], key: str) -> float:
    return float(_get(config, key))


def text(config: Mapping[str, Any], key: str) -> str:
    return str(_get(config, key))


def redact_url(url: str) -> str:
    """A URL safe to log: the password part of ``scheme://user:password@host`` becomes ``***``."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def env_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``BROKER_*`` variables as a config dict (for code that runs outside a Flask app: the CLI)."""
    environ = os.environ if environ is None else environ
    return {k[len("BROKER_"):]: v for k, v in environ.items() if k.startswith("BROKER_") and v != ""}
