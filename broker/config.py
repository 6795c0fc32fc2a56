"""Configuration: defaults, then ``BROKER_*`` environment variables, then explicit overrides.

Every setting the broker reads is one row of :data:`SETTINGS`: its name (without ``BROKER_``),
its type, its default and what it means. The environment is parsed by that table and nothing
else (Flask's JSON-guessing prefixed-env loader is not used): ``BROKER_SECRET_KEY=12345`` stays
the text ``"12345"`` (and is refused: too short), numbers must be numbers, and a ``BROKER_*``
name that is not in the table is reported, never loaded — so no undocumented Flask key
(``TESTING``, ``DEBUG``, … with the prefix) can be switched on from the environment.

A bad value is a :class:`ConfigError` whose message is one line naming the variable (never its
value when it is a secret). The typed getters below are the only way the rest of the code reads
configuration.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("broker.config")

PREFIX = "BROKER_"
#: The shortest ``BROKER_SECRET_KEY`` accepted (characters): it signs people's session cookies.
MIN_SECRET_LENGTH = 32


class ConfigError(ValueError):
    """A setting with a value of the wrong type or out of range; the message is one line."""


@dataclass(frozen=True)
class Setting:
    name: str                      # without the BROKER_ prefix
    kind: str                      # text | secret | int | float | bool | log_level
    default: Any
    doc: str
    minimum: float | None = None

    def parse(self, raw: str) -> Any:
        """The typed value of the environment text ``raw``; :class:`ConfigError` if it is not."""
        variable = PREFIX + self.name
        text = raw.strip()
        if self.kind == "secret":
            if len(raw) < MIN_SECRET_LENGTH:
                raise ConfigError(f"{variable} must be at least {MIN_SECRET_LENGTH} characters")
            return raw
        if self.kind == "text":
            return text
        if self.kind == "log_level":
            level = text.upper()
            if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
                raise ConfigError(f"{variable} must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
            return level
        if self.kind == "bool":
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{variable} must be true or false (1/0)")
        try:
            value: float = int(text) if self.kind == "int" else float(text)
        except ValueError:
            what = "an integer" if self.kind == "int" else "a number"
            raise ConfigError(f"{variable} must be {what}, not {text[:40]!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{variable} must be a finite number")
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{variable} must be at least {self.minimum:g}")
        return value


def _s(name: str, kind: str, default: Any, doc: str, minimum: float | None = None) -> Setting:
    return Setting(name, kind, default, doc, minimum)


#: Every server setting, in the order docs list them.
SETTINGS: dict[str, Setting] = {s.name: s for s in (
    _s("ISSUER", "text", "http://127.0.0.1:8080", "the broker's own public URL: its `iss`"),
    _s("POLICY_DIR", "text", "./policies", "folder of *.yaml policy documents"),
    _s("DATABASE_URL", "text", None, "ledger: sqlite:///path or postgresql://…; unset: "
       "sqlite:///$BROKER_STATE_DIR/ledger.db"),
    _s("REDIS_URL", "text", None, "replay cache and rate limits; unset: embedded store in the state dir"),
    _s("REDIS_TIMEOUT", "float", 0.5, "seconds before a slow Redis counts as down", 0.01),
    _s("STATE_DIR", "text", "./.broker", "signing keys and local state"),
    _s("SIGNER", "text", "file", "file | vault-transit:<key>"),
    _s("LOG_LEVEL", "log_level", "INFO", "log level"),
    _s("JWKS_TIMEOUT", "float", 5.0, "seconds per attestation-issuer key fetch", 0.1),
    _s("JWKS_CACHE_TTL", "float", 300, "seconds a fetched key set is trusted", 1),
    _s("JWKS_MIN_REFETCH_INTERVAL", "float", 10.0,
       "at most one refetch per issuer per this many seconds", 0),
    _s("MAX_CONTENT_LENGTH", "int", 64 * 1024, "bytes of request body accepted", 1024),
    _s("CHECKPOINT_INTERVAL", "float", None,
       "seconds between signed ledger checkpoints; 0 = off; unset: 300 in `broker serve`", 0),
    _s("CHECKPOINT_WITNESS", "text", None,
       "comma-separated URLs (POST JSON) or files (JSON lines) that receive every checkpoint"),
    _s("RATE_LIMIT", "text", None, "N/period (e.g. 600/60s): POST /token per client address"),
    _s("PROXY_FIX_X_FOR", "int", 0, "reverse proxies whose X-Forwarded-For is trusted", 0),
    _s("REAPER_INTERVAL", "float", 15, "seconds between expiry sweeps in `broker serve`; 0 = off", 0),
    _s("REAPER_ORPHAN_GRACE", "float", 300,
       "seconds before an nhb_ role unknown to the ledger is an orphan", 0),
    _s("POSTGRES_POOL_SIZE", "int", 4, "admin connections per postgres target, per process", 1),
    _s("POSTGRES_TIMEOUT", "float", 1.0, "seconds to get an admin connection to a postgres "
       "target (once; a target that is down is refused within it)", 0.1),
    _s("LEDGER_TIMEOUT", "float", 1.0, "seconds to get a PostgreSQL ledger connection (once; "
       "a ledger that is down is refused within it)", 0.1),
    _s("SECRET_KEY", "secret", None,
       "signs people's session cookies (≥ 32 characters); unset: a key generated in the state dir"),
    _s("APPROVAL_POLL_INTERVAL", "int", 5, "seconds between approval polls (RFC 8628 interval)", 1),
    _s("CLIENT_AUTH_FAILURE_LIMIT", "text", None,
       "N/period: refused client authentications per address; off disables; unset: 10/60s"),
    _s("KEY_ACTIVATION_DELAY", "int", None,
       "seconds between a rotated key's publication in the JWKS and its first signature; unset: 90", 0),
    _s("GATEWAY_SECRET", "secret", None,
       "the secret broker and gateways derive minted roles' gateway passwords from (>= 32 "
       "characters); unset: a key generated once in the state dir"),
    _s("GATEWAY_HEALTH", "text", None, "host:port of `broker gateway`'s health check (GET /healthz)"),
    _s("GATEWAY_WORKERS", "int", 2, "`broker gateway` worker processes per host", 1),
    _s("CHECKPOINT_WITNESS_KEYS", "text", None,
       "comma-separated vkeys of trusted witnesses (C2SP cosignatures)"),
    # The broker's own Vault/OpenBao (Transit signer; targets without a `vault:` block).
    _s("VAULT_ADDR", "text", None, "Vault/OpenBao address for the Transit signer and KV"),
    _s("VAULT_TOKEN", "text", None, "a Vault token (prefer VAULT_TOKEN_FILE)"),
    _s("VAULT_TOKEN_FILE", "text", None, "file holding a Vault token"),
    _s("VAULT_AUTH_METHOD", "text", None, "token | approle | kubernetes | jwt"),
    _s("VAULT_AUTH_MOUNT", "text", None, "auth mount path (default: the method's name)"),
    _s("VAULT_AUTH_ROLE", "text", None, "role for kubernetes/jwt login"),
    _s("VAULT_ROLE_ID", "text", None, "AppRole role id"),
    _s("VAULT_ROLE_ID_FILE", "text", None, "file holding the AppRole role id"),
    _s("VAULT_SECRET_ID_FILE", "text", None, "file holding the AppRole secret id"),
    _s("VAULT_JWT_FILE", "text", None, "JWT for kubernetes/jwt login"),
    _s("VAULT_NAMESPACE", "text", None, "Vault Enterprise / OpenBao namespace"),
    _s("VAULT_CACERT", "text", None, "CA bundle for Vault's TLS"),
    _s("VAULT_TIMEOUT", "float", None, "seconds per Vault request", 0.1),
    _s("VAULT_TRANSIT_MOUNT", "text", None, "Transit mount path (default transit)"),
)}

#: ``BROKER_*`` variables that are not server settings: the client side (CLI, SDK, the GitHub
#: Action) and the dev-only switch. Known, so never reported as unknown.
CLIENT_VARIABLES = frozenset({
    "URL", "AUDIENCE", "TARGET", "SCOPE", "ID_TOKEN", "GITLAB_TOKEN_VAR",
    "K8S_TOKEN_FILE", "HUMAN_ID_TOKEN", "HUMAN_ID_TOKEN_FILE", "CLIENT_ID", "CLIENT_SECRET",
    "INSECURE_DEV_ISSUER", "EXCHANGE_RETRIES", "EXCHANGE_RETRY_DEADLINE",
    # what `broker exchange --format env` exports for later steps
    "ACCESS_TOKEN", "CREDENTIAL_ID", "PARENT_ID", "EXPIRES_AT", "DSN",
})

DEFAULTS: dict[str, Any] = {name: s.default for name, s in SETTINGS.items()}


def from_environ(environ: Mapping[str, str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """The typed settings found in ``environ`` and the ``BROKER_*`` names it has that are
    neither settings nor client variables (to report). Empty values count as unset."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    unknown: list[str] = []
    for variable, raw in environ.items():
        if not variable.startswith(PREFIX) or raw == "":
            continue
        name = variable[len(PREFIX):]
        setting = SETTINGS.get(name)
        if setting is None:
            if name not in CLIENT_VARIABLES and not name.startswith("TEST_"):
                unknown.append(variable)
            continue
        values[name] = setting.parse(raw)
    return values, sorted(unknown)


def env_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``BROKER_*`` settings as a typed config dict (for code outside a Flask app: the CLI)."""
    values, _ = from_environ(environ)
    return values


def report_unknown(unknown: list[str]) -> None:
    for variable in unknown:
        log.warning("unknown setting %s ignored (see the configuration table in README.md)",
                    variable)


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


def documented_names() -> list[str]:
    """Every ``BROKER_*`` name the broker reads, for the docs check."""
    return sorted(PREFIX + n for n in (*SETTINGS, *CLIENT_VARIABLES))

