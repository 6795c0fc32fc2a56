"""Target kind ``postgres``: one PostgreSQL login role per mint, that dies on time.

::

    kind: target
    name: payments-db
    type: postgres
    admin_dsn_env: PAYMENTS_DB_ADMIN_DSN     # or admin_dsn_file: exactly one; never a password here
    connect: {host: db.internal, port: 5432, dbname: payments}   # what clients are told
    grants: [app_readonly]                    # existing roles every minted login joins
    scope_grants: {payments:write: [app_writer]}   # more roles when the scope is granted
    connection_limit: 5
    reassign_owned_to: app_owner             # optional: objects the login created survive
    max_ttl: 15m

A mint creates ``nhb_<credential id>`` (30 bytes, within PostgreSQL's 63) with ``LOGIN``, a
fresh 256-bit random password, ``VALID UNTIL`` the expiry, ``CONNECTION LIMIT``, ``IN ROLE`` the
grants, and a ``COMMENT`` holding ``{credential_id, principal, run, authorizer, …}`` as JSON. The
``CREATE ROLE`` and the ``COMMENT`` go in one simple-protocol message, which PostgreSQL runs as
one implicit transaction: a failure half way (a grant role that does not exist, a permission
the admin lacks) leaves no role behind.

The password is handed to PostgreSQL as a SCRAM-SHA-256 verifier the broker computes, with a
low iteration count (:data:`DEFAULT_SCRAM_ITERATIONS`; docs/postgres.md explains why that is
sound for a 256-bit random password). So the plaintext never reaches the server, its log or
``pg_stat_activity``; it exists only in the token response.

Ending a credential (revocation, expiry, or undoing a mint the ledger could not record):
``ALTER ROLE … NOLOGIN`` (no new sessions), ``pg_terminate_backend`` on every session of the
role (waiting for them to go), then in one transaction ``REASSIGN OWNED BY … TO
reassign_owned_to`` (only when configured), ``DROP OWNED BY …`` and ``DROP ROLE``. All of it
under a PostgreSQL advisory lock keyed by the role name, so a revocation and several reapers
can run at once without tripping over each other.

Every statement is composed with :mod:`psycopg.sql` (``Identifier``/``Literal``); nothing is
built by string formatting. The admin DSN is read from the environment or a file when the
target is first used; it, and its password, never appear in a log line, an error or the
ledger (driver messages are reduced to SQLSTATE and primary message, and the pool's own log
records are scrubbed).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from broker import errors
from broker.common.ids import is_credential_id
from broker.gateway.config import ConfigError as GatewayConfigError
from broker.gateway.config import ListenerConfig
from broker.gateway.login import minted_role_password
from broker.targets.base import Capabilities, Ended, IssuedCredential, IssueRequest, TargetKind
from broker.targets.keys import (
    Anything,
    Block,
    Choice,
    Custom,
    FilePath,
    Integer,
    Key,
    ListOf,
    MapOf,
    TargetSchema,
    Text,
    Value,
)
from broker.vault.client import validate_kv_secret

if TYPE_CHECKING:
    from broker.ledger.events import CredentialRecord

log = logging.getLogger("broker.targets.postgres")

T = TypeVar("T")

KIND = "postgres"
ROLE_PREFIX = "nhb_"
DEFAULT_CONNECTION_LIMIT = 5
MAX_CONNECTION_LIMIT = 10_000
#: PBKDF2 rounds of the broker-computed SCRAM verifier. The password is 256 random bits, so
#: the iteration count adds nothing against guessing; it only costs every login. See
#: docs/postgres.md ("Why a low SCRAM iteration count").
DEFAULT_SCRAM_ITERATIONS = 64
MAX_SCRAM_ITERATIONS = 1_000_000
PASSWORD_BYTES = 32                   # 256 bits, URL-safe base64: 43 characters
TERMINATE_WAIT_MS = 5000              # pg_terminate_backend(pid, timeout): wait for each session
DEFAULT_PORT = 5432
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


# ---------------------------------------------------------------------------- YAML keys

def _role_name_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be a non-empty string (a role name)"
    if len(value.encode("utf-8")) > 63:
        return "is longer than PostgreSQL's 63-byte limit for names"
    if "\x00" in value:
        return "contains a NUL byte"
    if value.startswith(ROLE_PREFIX):
        return f"uses the prefix {ROLE_PREFIX!r}, which belongs to roles the broker mints and drops"
    return None


def _scope_problem(value: str) -> str | None:
    return None if _SCOPE.fullmatch(value) else "is not a scope token"


def connect_block(*, required: tuple[str, ...] = (), port_default: Any = None,
                  not_mapping: str) -> Block:
    """``connect``: what clients are told (``host``, ``port``, ``dbname``, ``sslmode``); the
    ``postgres`` and ``vault-database`` kinds share it."""
    def text(key: str) -> Key:
        return Key(Text(message="{label} must be a non-empty string"), required=key in required,
                   missing=f"connect.{key} must be a non-empty string")
    port = Key(Integer(1, 65535, "{label} must be an integer from 1 to 65535"))
    if port_default is not None:
        port = Key(port.spec, default=port_default)
    return Block({"host": text("host"), "port": port, "dbname": text("dbname"),
                  "sslmode": Key(Choice(SSLMODES, "{label} must be one of {choices}"))},
                 name="connect", join=".", not_mapping=not_mapping)


CONNECT_KEYS = frozenset(connect_block(not_mapping="").keys)
ROLE_LIST = ListOf(Value(_role_name_problem, "{label}: {value!r} {problem}"), unique=True,
                   not_list="{label} must be a list of role names", twice="{label} lists a role twice")


def _check_postgres_target(ctx: Any) -> Iterator[Any]:
    """Rules across keys of a ``type: postgres`` target (``ctx``: a policy TargetContext)."""
    options = ctx.options
    has_file, has_vault = "admin_dsn_file" in options, "admin_dsn_vault" in options
    if ("admin_dsn_env" in options) + has_file + has_vault != 1:
        yield ctx.problem("admin_dsn_file" if has_file else "admin_dsn_vault" if has_vault else None,
                          "exactly one of admin_dsn_env, admin_dsn_file or admin_dsn_vault is required")
    if has_vault or "vault" in options:
        yield from validate_kv_secret(ctx, "admin_dsn_vault")


def _read_gateway(w: Any, node: Any, label: str) -> Any:
    """``gateway:``: clients connect through ``broker gateway`` (docs/gateway.md). Judged as the
    gateway judges it at start (unknown keys, TLS unless loopback, login mode…), except that the
    TLS files are looked for only by the gateway itself."""
    try:
        ListenerConfig.from_mapping(node.data, check_files=False)
    except (GatewayConfigError, TypeError, ValueError) as exc:
        return w.say(node, "{label}: {problem}", label, problem=str(exc))
    return node.data


POLICY_KEYS = TargetSchema(KIND, validate=_check_postgres_target, keys={
    "gateway": Key(Custom(_read_gateway)),
    "admin_dsn_env": Key(Text(pattern=_ENV_NAME, message="{label} must be an environment variable name")),
    "admin_dsn_file": Key(FilePath()),      # read when the target is first used
    "admin_dsn_vault": Key(Anything()),      # the admin DSN from Vault KV (broker.vault.client)
    "vault": Key(Anything()),
    "connect": Key(connect_block(not_mapping="connect must be a mapping with host, port, dbname (sslmode)")),
    "grants": Key(ROLE_LIST, required=True,
                  missing="missing required key 'grants' (a list of roles, [] for none)"),
    "scope_grants": Key(MapOf(ROLE_LIST, key=_scope_problem, value_label="{label}[{key}]",
                              not_mapping="{label} must map a scope to a list of roles")),
    "connection_limit": Key(Integer(1, MAX_CONNECTION_LIMIT, f"{{label}} must be an integer from 1 to "
                                                             f"{MAX_CONNECTION_LIMIT}"),
                            default=DEFAULT_CONNECTION_LIMIT),
    "reassign_owned_to": Key(Value(_role_name_problem)),
    "scram_iterations": Key(Integer(1, MAX_SCRAM_ITERATIONS, f"{{label}} must be an integer from 1 to "
                                                             f"{MAX_SCRAM_ITERATIONS}"),
                            default=DEFAULT_SCRAM_ITERATIONS),
})
POSTGRES_TARGET_KEYS = POLICY_KEYS.allowed_keys


# ---------------------------------------------------------------------------- helpers

def role_name(credential_id: str) -> str:
    """The PostgreSQL role of a credential: ``nhb_<credential id>`` (30 bytes)."""
    return ROLE_PREFIX + credential_id


def credential_id_of_role(name: str | None) -> str | None:
    """The credential id inside a minted role's name, or None for any other role."""
    if not name or not name.startswith(ROLE_PREFIX):
        return None
    cid = name[len(ROLE_PREFIX):]
    return cid if is_credential_id(cid) else None


def scram_sha256_verifier(password: str, *, iterations: int, salt: bytes | None = None) -> str:
    """The ``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`` string PostgreSQL stores
    (RFC 5802 / RFC 7677). ``password`` must already be SASLprep-normal (ASCII here)."""
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
            f"${b64(stored_key).decode()}:{b64(server_key).decode()}")


def _lock_key(text: str) -> int:
    """A signed 64-bit advisory-lock key for ``text`` (pg_advisory_lock(bigint))."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big", signed=True)


def _rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Scrubber(logging.Filter):
    """Removes known secrets (admin DSNs and their passwords) from driver/pool log records."""

    def __init__(self) -> None:
        super().__init__("nhb-secret-scrubber")
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, *values: str | None) -> None:
        with self._lock:
            self._secrets.update(v for v in values if v and len(v) >= 4)

    def scrub(self, text: str) -> str:
        for value in sorted(self._secrets, key=len, reverse=True):
            if value in text:
                text = text.replace(value, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record: let logging report it
            return True
        cleaned = self.scrub(message)
        exc_text = None
        if record.exc_info and record.exc_info[1] is not None:
            exc_text = self.scrub(str(record.exc_info[1]))
        if cleaned != message or exc_text is not None:
            record.msg, record.args = cleaned, None
            if exc_text is not None:
                # Keep the exception's type and scrubbed text; drop the traceback's raw frames.
                record.msg = f"{cleaned} ({type(record.exc_info[1]).__name__}: {exc_text})"  # type: ignore[index]
                record.exc_info, record.exc_text = None, None
        return True


SCRUBBER = _Scrubber()
for _name in ("psycopg", "psycopg.pool"):
    logging.getLogger(_name).addFilter(SCRUBBER)


def _db_error_summary(exc: BaseException) -> str:
    """A driver error reduced to what is safe to log and record: SQLSTATE and the server's
    primary message (which never quotes our statement or the DSN); for client-side errors
    (connection failures), only the class name."""
    diag = getattr(exc, "diag", None)
    sqlstate = getattr(exc, "sqlstate", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if sqlstate and primary:
        return SCRUBBER.scrub(f"{primary} (SQLSTATE {sqlstate})")
    return type(exc).__name__


# ---------------------------------------------------------------------------- target runtime

@dataclass(frozen=True)
class EndResult:
    """What ending one role did."""
    role: str
    existed: bool
    dropped: bool
    sessions_terminated: int = 0
    busy: bool = False                 # another process held the role's lock (try-lock only)


class _TargetDB:
    """One target's admin connection pool, opened on first use."""

    def __init__(self, name: str, options: dict[str, Any], *, pool_size: int, timeout: float) -> None:
        self.name = name
        self.options = options
        self.pool_size = max(2, int(pool_size))
        self.timeout = float(timeout)
        self._pool: Any = None
        self._conninfo: dict[str, Any] | None = None
        self._lock = threading.Lock()

    # -- configuration errors are the target's, not the client's: invalid_target ----------
    def _admin_dsn(self) -> str:
        if self.options.get("admin_dsn_vault"):
            from broker.vault.client import read_target_secret

            return read_target_secret(self.options, "admin_dsn_vault", target=self.name).strip()
        env = self.options.get("admin_dsn_env")
        if env:
            dsn = os.environ.get(env, "").strip()
            if not dsn:
                raise errors.BackendMisconfigured(
                    "target is not usable",
                    detail=f"postgres target {self.name!r}: environment variable {env} "
                           "(admin DSN) is not set")
            return dsn
        path = self.options.get("admin_dsn_file", "")
        try:
            dsn = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise errors.BackendMisconfigured(
                "target is not usable",
                detail=f"postgres target {self.name!r}: cannot read admin_dsn_file {path}: "
                       f"{type(exc).__name__}") from None
        if not dsn:
            raise errors.BackendMisconfigured("target is not usable",
                                       detail=f"postgres target {self.name!r}: admin_dsn_file is empty")
        return dsn

    def pool(self) -> Any:
        with self._lock:
            if self._pool is not None:
                return self._pool
            dsn = self._admin_dsn()
            try:
                import psycopg
                from psycopg.conninfo import conninfo_to_dict

                from broker.common.pgpool import GuardedPool
            except ImportError:
                raise errors.BackendMisconfigured(
                    "target is not usable",
                    detail="postgres targets need psycopg and psycopg-pool:"
                           " pip install 'nhi-broker[postgres]'") from None
            try:
                conninfo = conninfo_to_dict(dsn)
            except psycopg.Error:
                # libpq's message quotes the DSN, password included: say nothing of it.
                raise errors.BackendMisconfigured(
                    "target is not usable",
                    detail=f"postgres target {self.name!r}: the admin DSN is malformed") from None
            password = conninfo.get("password")
            SCRUBBER.add(dsn, str(password) if password is not None else None)
            self._conninfo = conninfo
            # One bounded wait, fast refusals while the target is down, a fresh pool (and
            # validated connections) once it is back: broker/common/pgpool.py.
            self._pool = GuardedPool(
                dsn, min_size=1, max_size=self.pool_size, timeout=self.timeout,
                name=f"nhb-target-{self.name}", configure=self._configure,
                kwargs={"autocommit": True, "connect_timeout": max(2, int(self.timeout)),
                        "application_name": "nhi-broker"})
            self._pool.open(wait=False)
            return self._pool

    @staticmethod
    def _configure(conn: Any) -> None:
        import psycopg

        conn.execute("SET statement_timeout = '15s'")
        try:
            # The statements of this session carry SCRAM verifiers: keep them out of the
            # server log when the admin may say so (superuser, or SET privilege on PG15+).
            conn.execute("SET log_statement = 'none'")
            conn.execute("SET log_min_duration_statement = -1")
        except psycopg.errors.InsufficientPrivilege:
            pass

    def client_defaults(self) -> dict[str, Any]:
        """host/port/dbname of the admin DSN: what clients are told unless ``connect`` says."""
        if self._conninfo is None:
            self.pool()
        info = self._conninfo or {}
        host = info.get("host") or info.get("hostaddr") or "localhost"
        try:
            port = int(str(info.get("port") or 5432).split(",")[0])
        except ValueError:
            port = 5432
        dbname = info.get("dbname") or info.get("user") or "postgres"
        return {"host": host, "port": port, "dbname": dbname}

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=2)

    # -- running statements --------------------------------------------------------------
    def run(self, work: Callable[[Any], T], *, action: str) -> T:
        """Run ``work(conn)`` on a pooled connection; retry once on a connection the server
        dropped; map driver errors to refusals a client may see (details are safe)."""
        import psycopg
        from psycopg_pool import PoolTimeout

        pool = self.pool()
        for attempt in (1, 2):
            try:
                with pool.connection() as conn:
                    return work(conn)
            except errors.BrokerError:
                raise
            except PoolTimeout:
                raise errors.BackendUnavailable(
                    "the target database is unavailable",
                    detail=f"postgres target {self.name!r}: no admin connection within "
                           f"{self.timeout:g}s during {action}") from None
            except psycopg.OperationalError as exc:
                if attempt == 1 and getattr(exc, "sqlstate", None) is None:
                    continue               # a connection the server dropped: one fresh try
                raise errors.BackendUnavailable(
                    "the target database is unavailable",
                    detail=f"postgres target {self.name!r}: {action} failed: "
                           f"{_db_error_summary(exc)}") from None
            except (psycopg.errors.UndefinedObject, psycopg.errors.InsufficientPrivilege,
                    psycopg.errors.InvalidParameterValue) as exc:
                raise errors.BackendMisconfigured(
                    "target is not usable",
                    detail=f"postgres target {self.name!r}: {action} failed: "
                           f"{_db_error_summary(exc)}") from None
            except psycopg.Error as exc:
                raise errors.BackendUnavailable(
                    "the target database is unavailable",
                    detail=f"postgres target {self.name!r}: {action} failed: "
                           f"{_db_error_summary(exc)}") from None
        raise AssertionError("unreachable")


# ---------------------------------------------------------------------------- the issuer

class PostgresKind(TargetKind):
    """Mints, revokes and reaps ``nhb_…`` roles. Built once per process by ``create_app``;
    :meth:`attach` tells it the targets (for revocation and reaping)."""

    name = KIND
    policy_keys = POLICY_KEYS
    #: A role outlives ``VALID UNTIL`` (open sessions go on): the reaper ends expired and revoked
    #: credentials' roles, and removes ``nhb_`` roles the ledger does not know.
    capabilities = Capabilities(reap=True, remove_orphans=True)

    def __init__(self, *, pool_size: int = 4, timeout: float = 1.0,
                 gateway_secret: Callable[[], bytes] | None = None) -> None:
        super().__init__()
        self.pool_size = pool_size
        self.timeout = timeout
        self._dbs: dict[str, _TargetDB] = {}
        self._lock = threading.Lock()
        self._gateway_secret = gateway_secret

    @classmethod
    def from_config(cls, config: Any) -> PostgresKind:
        from broker import config as cfg
        from broker.keys.shared import gateway_secret

        return cls(pool_size=int(cfg.number(config, "POSTGRES_POOL_SIZE")),
                   timeout=cfg.number(config, "POSTGRES_TIMEOUT"),
                   gateway_secret=lambda: gateway_secret(config))

    def gateway_password(self, credential_id: str) -> str:
        """The password of ``nhb_<credential_id>`` for a gateway target: derived from the secret
        the broker shares with its gateways, so the gateway can log in as the role and the
        workload, which holds only its access token, never can."""
        if self._gateway_secret is None:
            raise errors.BackendMisconfigured(
                "target is not usable", detail="postgres gateway target without a gateway secret")
        return minted_role_password(self._gateway_secret(), credential_id)

    def _db(self, target: Any) -> _TargetDB:
        with self._lock:
            db = self._dbs.get(target.name)
            if db is None or db.options != target.options:
                db = _TargetDB(target.name, dict(target.options), pool_size=self.pool_size,
                               timeout=self.timeout)
                self._dbs[target.name] = db
            return db

    def _db_for_record(self, record: CredentialRecord) -> _TargetDB:
        target = self._targets.get(record.target)
        if target is None:
            raise errors.BackendUnavailable(
                "the credential's backend is not configured",
                detail=f"postgres target {record.target!r} is no longer in the policy set; "
                       f"role {role_name(record.credential_id)} cannot be ended")
        return self._db(target)

    def close(self) -> None:
        with self._lock:
            dbs, self._dbs = list(self._dbs.values()), {}
        for db in dbs:
            db.close()

    # -- issue -----------------------------------------------------------------------------
    def issue(self, request: IssueRequest) -> IssuedCredential:
        from psycopg import sql

        target = request.target
        options = target.options
        gateway = gateway_of(target)
        role = role_name(request.credential_id)
        if gateway is not None and gateway.login == "service-role":
            return self._issue_service_role(request, gateway)
        db = self._db(target)
        grants = list(dict.fromkeys([
            *options.get("grants", []),
            *(g for scope in request.scopes for g in options.get("scope_grants", {}).get(scope, [])),
        ]))
        # Through a gateway the role's password is derived (the gateway logs in with it); the
        # workload gets its access token as the password for the gateway instead.
        password = (self.gateway_password(request.credential_id) if gateway is not None
                    else secrets.token_urlsafe(PASSWORD_BYTES))
        verifier = scram_sha256_verifier(
            password, iterations=int(options.get("scram_iterations", DEFAULT_SCRAM_ITERATIONS)))
        comment = {"credential_id": request.credential_id, "principal": request.principal,
                   "run": request.run, "authorizer": request.authorizer, "target": target.name,
                   "expires_at": _rfc3339(request.expires_at)}
        if request.parent_id:
            comment["parent_id"] = request.parent_id
        create = sql.SQL(
            "CREATE ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
            " NOBYPASSRLS INHERIT CONNECTION LIMIT {limit} VALID UNTIL {until} PASSWORD {verifier}"
        ).format(role=sql.Identifier(role),
                 limit=sql.Literal(int(options.get("connection_limit", DEFAULT_CONNECTION_LIMIT))),
                 until=sql.Literal(_rfc3339(request.expires_at)),
                 verifier=sql.Literal(verifier))
        if grants:
            create = sql.SQL("{} IN ROLE {}").format(
                create, sql.SQL(", ").join(sql.Identifier(g) for g in grants))
        # Asynchronous commit for the mint alone: should the server crash before the WAL is
        # flushed, the role is lost and the credential simply does not work (fails closed).
        # Ending a role (revocation, expiry) always commits synchronously.
        statement = sql.SQL("SET LOCAL synchronous_commit = off; {create};"
                            " COMMENT ON ROLE {role} IS {comment}").format(
            create=create, role=sql.Identifier(role),
            comment=sql.Literal(json.dumps(comment, sort_keys=True, separators=(",", ":"))))

        def create_role(conn: Any) -> None:
            # No parameters: one simple-protocol message, one implicit transaction.
            conn.execute(statement)

        db.run(create_role, action="create role")
        record = _RoleRef(target=target.name, credential_id=request.credential_id)

        def undo() -> None:
            self._end_role(db, record.role, options, try_lock=False)

        if gateway is not None:
            connect = gateway_connect(gateway, options, fallback=db.client_defaults)
            details = {"role": role, "database": connect["dbname"], "host": connect["host"],
                       "port": int(connect["port"]), "grants": grants,
                       "gateway": {"listen": gateway.listen, "login": gateway.login}}
            return IssuedCredential(details=details, undo=undo, secret_for_token=lambda token:
                                    database_credential(role, token, connect,
                                                        expires_at=request.expires_at))
        connect = {**db.client_defaults(), **options.get("connect", {})}
        secret = database_credential(role, password, connect, expires_at=request.expires_at)
        details = {"role": role, "database": connect["dbname"], "host": connect["host"],
                   "port": int(connect["port"]), "grants": grants}
        return IssuedCredential(secret=secret, details=details, undo=undo)

    def _issue_service_role(self, request: IssueRequest, gateway: ListenerConfig) -> IssuedCredential:
        """``login: service-role``: nothing is created at the database (the gateway logs in with
        one shared service login, its own record is the attribution, and ``application_name``
        upstream is the credential id). The client's login name is ``nhb_<credential id>``."""
        options = request.target.options
        login = role_name(request.credential_id)

        def no_admin_defaults() -> dict[str, Any]:
            return {}

        connect = gateway_connect(gateway, options, fallback=no_admin_defaults)
        details = {"role": login, "database": connect["dbname"], "host": connect["host"],
                   "port": int(connect["port"]), "grants": [],
                   "gateway": {"listen": gateway.listen, "login": gateway.login}}
        return IssuedCredential(details=details, secret_for_token=lambda token:
                                database_credential(login, token, connect,
                                                    expires_at=request.expires_at))

    # -- revoke / end ----------------------------------------------------------------------
    def revoke(self, record: CredentialRecord) -> None:
        """Terminate the role's sessions and drop it (idempotent)."""
        self.end(record)

    def end(self, record: CredentialRecord, *, try_lock: bool = False) -> EndResult:
        db = self._db_for_record(record)
        role = record.details.get("role") or role_name(record.credential_id)
        return self._end_role(db, role, db.options, try_lock=try_lock)

    def _end_role(self, db: _TargetDB, role: str, options: dict[str, Any], *,
                  try_lock: bool) -> EndResult:
        def work(conn: Any) -> EndResult:
            return end_role(conn, role, reassign_to=options.get("reassign_owned_to"),
                            try_lock=try_lock)
        return db.run(work, action="end role")

    # -- reaper support --------------------------------------------------------------------
    def end_many(self, target_name: str, records: list[CredentialRecord]
                 ) -> Iterator[tuple[CredentialRecord, EndResult | Exception]]:
        """End several credentials of one target on one connection, under the target's sweep
        lock (skipped, yielding nothing, when another reaper holds it)."""
        target = self._targets.get(target_name)
        if target is None:
            for record in records:
                yield record, errors.BackendUnavailable(
                    "target not configured",
                    detail=f"postgres target {target_name!r} is not in the policy set")
            return
        db = self._db(target)
        results: list[tuple[CredentialRecord, EndResult | Exception]] = []

        def work(conn: Any) -> None:
            with _session_lock(conn, _lock_key(f"nhb-reaper:{target_name}"), wait=False) as got:
                if not got:
                    return
                for record in records:
                    role = record.details.get("role") or role_name(record.credential_id)
                    try:
                        results.append((record, end_role(conn, role,
                                                         reassign_to=db.options.get("reassign_owned_to"),
                                                         try_lock=False)))
                    except Exception as exc:  # noqa: BLE001 - reported per credential
                        import psycopg

                        if isinstance(exc, psycopg.OperationalError):
                            raise
                        results.append((record, exc))

        db.run(work, action="reap")
        yield from results

    def minted_resources(self, target_name: str) -> list[str]:
        """Names of every ``nhb_<credential id>`` role in the target's cluster."""
        target = self._targets[target_name]
        db = self._db(target)

        def work(conn: Any) -> list[str]:
            rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s",
                                (ROLE_PREFIX.replace("_", "\\_") + "%",)).fetchall()
            return [r[0] for r in rows if credential_id_of_role(r[0])]

        return db.run(work, action="list roles")

    def credential_id_of_resource(self, resource: str) -> str | None:
        return credential_id_of_role(resource)

    def end_orphans(self, target_name: str, roles: Iterable[str]
                    ) -> list[tuple[str, Ended | Exception]]:
        target = self._targets[target_name]
        db = self._db(target)
        out: list[tuple[str, Ended | Exception]] = []

        def work(conn: Any) -> None:
            with _session_lock(conn, _lock_key(f"nhb-reaper:{target_name}"), wait=False) as got:
                if not got:
                    return
                for role in roles:
                    try:
                        out.append((role, end_role(conn, role,
                                                   reassign_to=db.options.get("reassign_owned_to"),
                                                   try_lock=False)))
                    except Exception as exc:  # noqa: BLE001
                        import psycopg

                        if isinstance(exc, psycopg.OperationalError):
                            raise
                        out.append((role, exc))

        db.run(work, action="remove orphans")
        return out


@dataclass(frozen=True)
class _RoleRef:
    target: str
    credential_id: str

    @property
    def role(self) -> str:
        return role_name(self.credential_id)


_GATEWAYS: dict[tuple[str, str], ListenerConfig] = {}


def gateway_of(target: Any) -> ListenerConfig | None:
    """The target's ``gateway:`` block as the gateway reads it, or None (parsed once)."""
    block = target.options.get("gateway")
    if not block:
        return None
    key = (target.name, json.dumps(block, sort_keys=True, default=str))
    config = _GATEWAYS.get(key)
    if config is None:
        config = ListenerConfig.from_mapping(block, target=target.name, check_files=False)
        _GATEWAYS[key] = config
    return config


def gateway_connect(gateway: ListenerConfig, options: dict[str, Any], *,
                    fallback: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """What clients of a gateway target are told: ``advertise`` (else the listen address), the
    database (``upstream.dbname``, else ``connect.dbname``, else the admin DSN's), and
    ``sslmode: require`` unless the gateway listens on loopback only."""
    host, port = gateway.address
    advertised = gateway.advertise or {"host": host, "port": port}
    dbname = gateway.upstream.dbname or options.get("connect", {}).get("dbname")
    if not dbname:
        dbname = fallback().get("dbname") or "postgres"
    connect: dict[str, Any] = {"host": advertised["host"], "port": int(advertised["port"]),
                               "dbname": dbname}
    if not gateway.loopback:
        connect["sslmode"] = "require"
    return connect


def database_credential(username: str, password: str, connect: dict[str, Any], *,
                        expires_at: int) -> dict[str, Any]:
    """The ``credential`` object of the token response for a PostgreSQL login (postgres and
    vault-database kinds alike). Secret: only ever returned to the client."""
    secret: dict[str, Any] = {
        "type": KIND,
        "username": username,
        "password": password,
        "host": connect["host"],
        "port": int(connect["port"]),
        "dbname": connect["dbname"],
        "dsn": _client_dsn(username, password, connect),
        "expires_at": _rfc3339(expires_at),
    }
    if connect.get("sslmode"):
        secret["sslmode"] = connect["sslmode"]
    return secret


def _client_dsn(role: str, password: str, connect: dict[str, Any]) -> str:
    host = str(connect["host"])
    query: dict[str, str] = {}
    if host.startswith("/"):
        query["host"], netloc_host = host, ""
    elif ":" in host:                      # an IPv6 address
        netloc_host = f"[{host}]"
    else:
        netloc_host = quote(host, safe="")
    if connect.get("sslmode"):
        query["sslmode"] = str(connect["sslmode"])
    dsn = (f"postgresql://{quote(role, safe='')}:{quote(password, safe='')}@{netloc_host}"
           f":{int(connect['port'])}/{quote(str(connect['dbname']), safe='')}")
    if query:
        dsn += "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    return dsn


class _session_lock:
    """A session-level advisory lock held for a ``with`` block (released even on error; a
    broken connection releases it at the server)."""

    def __init__(self, conn: Any, key: int, *, wait: bool) -> None:
        self.conn, self.key, self.wait = conn, key, wait
        self.held = False

    def __enter__(self) -> bool:
        if self.wait:
            self.conn.execute("SELECT pg_advisory_lock(%s)", (self.key,))
            self.held = True
        else:
            row = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
            self.held = bool(row and row[0])
        return self.held

    def __exit__(self, *exc_info: object) -> None:
        if self.held and not self.conn.broken:
            try:
                self.conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            except Exception:  # noqa: BLE001 - the pool discards a connection in a bad state
                log.debug("advisory unlock failed", exc_info=True)


def end_role(conn: Any, role: str, *, reassign_to: str | None, try_lock: bool) -> EndResult:
    """Stop every way ``role`` has into the cluster, then drop it (idempotent).

    1. ``ALTER ROLE … NOLOGIN`` (committed: no new session from here on)
    2. ``pg_terminate_backend(pid, 5000)`` for each of its sessions, waiting for them to end
    3. one transaction: ``REASSIGN OWNED`` (when configured), ``DROP OWNED``, ``DROP ROLE``

    Runs under an advisory lock keyed by the role name (``try_lock``: give up when another
    process holds it, reporting ``busy``).
    """
    from psycopg import sql

    if credential_id_of_role(role) is None:
        raise ValueError("refusing to drop a role the broker did not mint")
    ident = sql.Identifier(role)
    with _session_lock(conn, _lock_key(f"nhb-role:{role}"), wait=not try_lock) as got:
        if not got:
            return EndResult(role=role, existed=True, dropped=False, busy=True)
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
            return EndResult(role=role, existed=False, dropped=False)
        conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN CONNECTION LIMIT 0").format(ident))
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, %s)) FROM pg_stat_activity"
            " WHERE usename = %s AND pid <> pg_backend_pid()", (TERMINATE_WAIT_MS, role)).fetchone()
        terminated = int(row[0]) if row else 0
        parts = []
        if reassign_to:
            parts.append(sql.SQL("REASSIGN OWNED BY {} TO {}").format(ident, sql.Identifier(reassign_to)))
        parts.append(sql.SQL("DROP OWNED BY {}").format(ident))
        parts.append(sql.SQL("DROP ROLE {}").format(ident))
        conn.execute(sql.SQL("; ").join(parts))      # one message: one implicit transaction
        return EndResult(role=role, existed=True, dropped=True, sessions_terminated=terminated)


PostgresIssuer = PostgresKind          # the old name


def build_postgres_issuer(config: Any) -> PostgresKind:
    return PostgresKind.from_config(config)
