"""Target kind ``vault-database``: Vault/OpenBao's database secrets engine mints, the broker
attributes.

::

    kind: target
    name: payments-db-vault
    type: vault-database
    vault: {addr_env: VAULT_ADDR, auth: {method: approle, role_id_env: NHB_ROLE_ID,
            secret_id_file: /run/secrets/nhb-secret-id}}   # optional: else BROKER_VAULT_*
    mount: database                 # the secrets engine's mount (default: database)
    role: payments-readonly         # the engine's role: GET <mount>/creds/<role>
    connect: {host: db.internal, port: 5432, dbname: payments}   # what clients are told
    max_ttl: 15m

A mint reads ``<mount>/creds/<role>`` with the broker's Vault token and returns the same
``credential`` object as the ``postgres`` kind (``type``, ``username``, ``password``,
``host``, ``port``, ``dbname``, ``dsn``, ``expires_at``). The ledger (mint event and
credential row) gets the lease id, the lease duration, when the lease ends and the generated
username — never the password. The username is what links PostgreSQL log lines to the
credential (:func:`credential_id_for_username`): Vault's username template only sees the
token's display name and the role, so it cannot carry the credential id itself.

**Lease length.** The creds endpoint takes no TTL: Vault grants the role's ``default_ttl``. When
that is longer than the policy allows, the broker immediately renews the lease with
``increment`` = the seconds left until the credential's expiry (``sys/leases/renew``), which
*shortens* it (Vault measures the increment from now) and makes the database plugin move the
role's ``VALID UNTIL`` too. If Vault will not shorten it (a non-renewable lease, a role whose
max is smaller), the lease stays as granted and the reaper revokes it at the policy's expiry
(``expires_at`` in the ledger is always the policy's). A Vault failure in between revokes
the fresh lease and refuses the exchange.

**Ending.** ``POST /revoke`` revokes the lease (``sys/leases/revoke``; Vault runs the role's
``revocation_statements`` — configure them to ``pg_terminate_backend`` the user's sessions and
``DROP ROLE``). The reaper (broker.lifecycle.reaper) ends credentials that expired or were revoked
(revoking the lease again is harmless: Vault answers 204 for a lease it no longer has) and
:meth:`VaultDatabaseIssuer.reconcile` records the end of credentials whose lease Vault no
longer has although the ledger thinks them alive (an operator revoked it, the token that read
it was revoked). Leases Vault holds that the ledger does not know (a mint whose ledger write
and undo both failed) are logged, not revoked: the role may be shared with other Vault users,
and such a lease was shortened to the policy's TTL before the ledger write.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from broker import errors
from broker.ledger.events import EventDraft, utc_timestamp
from broker.targets.base import Capabilities, IssuedCredential, IssueRequest, ReconcileReport, TargetKind
from broker.targets.keys import Anything, Key, TargetSchema, Text
from broker.targets.postgres import DEFAULT_PORT, connect_block, database_credential
from broker.vault.client import (
    VaultClient,
    VaultNotFound,
    VaultRefused,
    VaultSettings,
    is_vault_path,
    settings_from_block,
    settings_from_config,
    validate_vault_block,
    vault_client,
)

if TYPE_CHECKING:
    from broker.ledger.events import CredentialRecord

log = logging.getLogger("broker.targets.vault_database")

KIND = "vault-database"
DEFAULT_MOUNT = "database"
#: A lease Vault could not shorten may outlive the policy by this much before the broker
#: counts it as "not shortened" (Vault rounds to whole seconds).
SHORTEN_SLACK = 2
#: At most one reconciliation per target per process this often (the reaper runs more often).
RECONCILE_INTERVAL = 60.0
RECONCILE_LIMIT = 5000
#: How long what Vault says of a role's database connection is kept (targets without connect).
CONNECTION_INFO_TTL = 300.0
#: What a credential says when neither the target nor Vault says where the database is.
NO_CONNECT_NOTE = ("the target has no 'connect' and the broker may not read Vault's connection "
                   "configuration of the role's database: only a username and a password are "
                   "returned; connect with your own host, port and database name")
_ROLE = re.compile(r"[A-Za-z0-9_.-]+")


# ---------------------------------------------------------------------------- YAML keys

def _mount_problem(value: str) -> str | None:
    return None if is_vault_path(value) else "is not a mount path"


def _check_vault_database_target(ctx: Any) -> Iterator[Any]:
    """Rules across keys of a ``type: vault-database`` target (``ctx``: a policy TargetContext)."""
    if "vault" in ctx.options:
        yield from validate_vault_block(ctx, "vault")


POLICY_KEYS = TargetSchema(KIND, validate=_check_vault_database_target, keys={
    "vault": Key(Anything()),
    "mount": Key(Text(check=_mount_problem, message="{label} must be a Vault mount path like 'database'"),
                 default=DEFAULT_MOUNT),
    "role": Key(Text(pattern=_ROLE, message="{label} must be the database secrets engine's role name "
                                            "(letters, digits, _ . -)"), required=True),
    # Optional: without it, what Vault's connection configuration says (see connection_info).
    "connect": Key(connect_block(required=("host", "dbname"), port_default=DEFAULT_PORT, not_mapping=(
        "connect must be a mapping with host, dbname (port, sslmode): what clients are told "
        "(without it, what Vault's connection configuration of the role's database says)"))),
})
VAULT_DATABASE_KEYS = POLICY_KEYS.allowed_keys


# ---------------------------------------------------------------------------- helpers

def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class LeaseEnd:
    """What ending one credential's lease did (the reaper reads ``role``, ``existed``,
    ``sessions_terminated`` and ``busy`` as for the postgres kind)."""
    role: str | None                   # the generated username
    lease_id: str | None
    existed: bool                      # Vault still had the lease
    dropped: bool = True
    sessions_terminated: int = 0       # Vault's revocation statements end sessions; not counted
    busy: bool = False


# ---------------------------------------------------------------------------- the issuer

class VaultDatabaseKind(TargetKind):
    """Reads database credentials from Vault, revokes and reconciles their leases. Built once
    per process by ``create_app``; :meth:`attach` tells it the targets."""

    name = KIND
    policy_keys = POLICY_KEYS
    #: Leases are ended at expiry by the reaper (one Vault could not shorten outlives the
    #: policy) and can end in Vault on their own (reconciled). Leases the ledger does not know
    #: are Vault's to expire: no orphan removal. `broker policy check` asks Vault whether the
    #: role's revocation statements end sessions.
    capabilities = Capabilities(reap=True, reconcile=True, check_backend=True)

    def __init__(self, *, default_settings: VaultSettings | None = None) -> None:
        super().__init__()
        self.default_settings = default_settings
        self._reconciled_at: dict[str, float] = {}
        self._connections: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Any) -> VaultDatabaseKind:
        return cls(default_settings=settings_from_config(config))

    def client_for(self, target: Any) -> VaultClient:
        block = target.options.get("vault")
        if block is not None:
            settings = settings_from_block(block, source=f"target {target.name!r}")
        elif self.default_settings is not None:
            settings = self.default_settings
        else:
            raise VaultRefused("target is not usable",
                               detail=f"vault-database target {target.name!r}: no vault block and "
                                      f"BROKER_VAULT_ADDR is not set")
        return vault_client(settings)

    def _target_of(self, record: CredentialRecord) -> Any:
        target = self._targets.get(record.target)
        if target is None:
            raise errors.BackendUnavailable(
                "the credential's backend is not configured",
                detail=f"vault-database target {record.target!r} is no longer in the policy set; "
                       f"lease {record.details.get('lease_id')} cannot be revoked")
        return target

    def close(self) -> None:
        return None           # clients are per Vault identity, shared (broker.vault.client.close_clients)

    # -- issue -----------------------------------------------------------------------------
    def issue(self, request: IssueRequest) -> IssuedCredential:
        target = request.target
        options = target.options
        client = self.client_for(target)
        mount, role = options.get("mount", DEFAULT_MOUNT), options["role"]
        path = f"{mount}/creds/{role}"
        # Where clients connect: the target's `connect`, else Vault's configuration (read
        # before the lease, so that a failure here leaves nothing to revoke).
        connect = dict(options["connect"]) if "connect" in options else self.connection_info(target, client)
        wanted = max(1, request.expires_at - request.issued_at)
        response = client.call(f"read {path}", lambda c: c.read(path), need_ttl=wanted)
        response = response or {}
        lease_id = response.get("lease_id") or None
        data = response.get("data") or {}
        username, password = data.get("username"), data.get("password")

        def revoke_lease() -> None:
            client.call("revoke lease", lambda c: c.sys.revoke_lease(lease_id=lease_id))

        if not lease_id or not isinstance(username, str) or not isinstance(password, str):
            if lease_id:
                _best_effort(revoke_lease, lease_id)
            raise VaultRefused("target is not usable",
                               detail=f"vault-database target {target.name!r}: {path} returned no "
                                      f"lease with a username and password (not a database role?)")
        duration = int(response.get("lease_duration") or 0)
        shortened = False
        try:
            remaining = request.expires_at - int(time.time())
            if remaining < 1:
                raise errors.BackendUnavailable(
                    "the credential backend (Vault) is too slow",
                    detail=f"vault-database target {target.name!r}: the credential expired while "
                           f"Vault minted it")
            if duration > remaining:
                try:
                    renewed = client.call("shorten lease", lambda c: c.sys.renew_lease(
                        lease_id=lease_id, increment=remaining))
                    duration = int((renewed or {}).get("lease_duration") or duration)
                    shortened = True
                except VaultRefused as exc:
                    # Not renewable / capped: the reaper revokes it at the policy's expiry.
                    log.warning("vault lease not shortened; revoked by the reaper at expiry "
                                "(target=%s lease_id=%s): %s", target.name, lease_id, exc.detail)
        except BaseException:
            _best_effort(revoke_lease, lease_id)
            raise
        now = time.time()
        details = {
            "role": username, "username": username,
            "lease_id": lease_id, "lease_duration": duration,
            "lease_expires_at": _rfc3339(now + duration),
            "lease_shortened": shortened,
            "vault_mount": mount, "vault_role": role,
        }
        if connect is None:
            secret = {"type": "postgres", "username": username, "password": password,
                      "expires_at": _rfc3339(request.expires_at), "note": NO_CONNECT_NOTE}
            details["connect"] = "unknown"
        else:
            secret = database_credential(username, password, connect, expires_at=request.expires_at)
            details.update({"database": connect["dbname"], "host": connect["host"],
                            "port": int(connect["port"]),
                            "connect": "policy" if "connect" in options else "vault"})
        return IssuedCredential(secret=secret, details=details, undo=revoke_lease)

    # -- where the database is -----------------------------------------------------------
    def connection_info(self, target: Any, client: VaultClient | None = None) -> dict[str, Any] | None:
        """Host, port, database (and sslmode) of the role's database as Vault's connection
        configuration says (``<mount>/roles/<role>`` → ``db_name``, then
        ``<mount>/config/<db_name>`` → ``connection_details.connection_url``); None when the
        broker may not read it or it is not a PostgreSQL URL. Never the password. Kept for
        :data:`CONNECTION_INFO_TTL` seconds."""
        with self._lock:
            cached = self._connections.get(target.name)
        if cached is not None and time.monotonic() - cached[0] < CONNECTION_INFO_TTL:
            return cached[1]
        client = client or self.client_for(target)
        mount, role = target.options.get("mount", DEFAULT_MOUNT), target.options["role"]
        info = None
        try:
            role_config = _read_data(client, f"{mount}/roles/{role}")
            db_name = role_config.get("db_name")
            if isinstance(db_name, str) and db_name:
                connection = _read_data(client, f"{mount}/config/{db_name}").get("connection_details") or {}
                info = parse_connection_url(connection.get("connection_url"))
        except VaultRefused as exc:         # no permission (or no such role/config): say so
            log.info("vault-database target %s: cannot read Vault's connection configuration (%s); "
                     "credentials carry a username and a password only", target.name, exc.detail)
        with self._lock:
            self._connections[target.name] = (time.monotonic(), info)
        return info

    def backend_warnings(self, target: Any) -> list[str]:
        """What ``broker policy check`` says of the target's Vault role, when the broker may read
        it: revocation statements that do not end the user's sessions (no
        ``pg_terminate_backend``) leave a revoked credential's open connections working."""
        mount, role = target.options.get("mount", DEFAULT_MOUNT), target.options["role"]
        try:
            role_config = _read_data(self.client_for(target), f"{mount}/roles/{role}")
        except errors.BrokerError:
            return []
        statements = role_config.get("revocation_statements") or []
        if isinstance(statements, str):
            statements = [statements]
        if any("pg_terminate_backend" in str(statement).lower() for statement in statements):
            return []
        what = ("has no revocation statements, and Vault's default does" if not statements
                else "has revocation statements that do")
        return [f"vault-database target {target.name!r}: Vault role {mount}/roles/{role} {what} not "
                f"end the user's sessions (no pg_terminate_backend): a revoked credential's open "
                f"connections keep working until they close"]

    # -- revoke / end ----------------------------------------------------------------------
    def revoke(self, record: CredentialRecord) -> None:
        """Revoke the credential's lease (idempotent: Vault answers 204 for a lease it no
        longer has). Vault's revocation statements end the user's sessions and drop it."""
        self.end(record)

    def end(self, record: CredentialRecord, *, try_lock: bool = False) -> LeaseEnd:
        lease_id = record.details.get("lease_id")
        username = record.details.get("username")
        if not lease_id:
            return LeaseEnd(role=username, lease_id=None, existed=False, dropped=False)
        client = self.client_for(self._target_of(record))
        existed = lease_state(client, lease_id) is not None
        if existed:
            client.call("revoke lease", lambda c: c.sys.revoke_lease(lease_id=lease_id))
        return LeaseEnd(role=username, lease_id=lease_id, existed=existed)

    def end_many(self, target_name: str, records: list[CredentialRecord]
                 ) -> Iterator[tuple[CredentialRecord, LeaseEnd | Exception]]:
        """For the reaper: end each credential's lease; a Vault outage stops the batch."""
        results: list[tuple[CredentialRecord, LeaseEnd | Exception]] = []
        for record in records:
            try:
                results.append((record, self.end(record)))
            except VaultRefused as exc:
                results.append((record, exc))
        yield from results

    # -- reconciliation --------------------------------------------------------------------
    def reconcile(self, ledger: Any, *, now: float | None = None, force: bool = False) -> ReconcileReport:
        """Record the end of credentials the ledger thinks alive whose lease Vault no longer
        has (an ``expire`` event, ``cause: lease ended in Vault``). Per target at most every
        :data:`RECONCILE_INTERVAL` seconds unless ``force``."""
        moment = time.time() if now is None else now
        report = ReconcileReport()
        for name, target in sorted(self._targets.items()):
            with self._lock:
                if not force and moment - self._reconciled_at.get(name, 0.0) < RECONCILE_INTERVAL:
                    continue
                self._reconciled_at[name] = moment
            alive = [r for r in ledger.find_credentials(target=name, active_at=int(moment),
                                                        limit=RECONCILE_LIMIT)
                     if r.target_type == KIND and r.details.get("lease_id")]
            if not alive:
                continue
            try:
                client = self.client_for(target)
                prefix = f"{target.options.get('mount', DEFAULT_MOUNT)}/creds/{target.options['role']}"
                listed = list_leases(client, prefix)
                if listed is not None:
                    known = {r.details["lease_id"] for r in alive}
                    report.unknown_leases += len(listed - known)
                    gone = [r for r in alive if r.details["lease_id"] not in listed]
                else:                    # no permission to list: look each one up
                    gone = [r for r in alive if lease_state(client, r.details["lease_id"]) is None]
            except errors.BrokerError as exc:
                report.failed.append({"target": name, "reason": exc.detail})
                log.warning("vault lease reconciliation of target %s failed: %s", name, exc.detail)
                continue
            for record in gone:
                event = EventDraft(
                    type="expire", credential_id=record.credential_id, parent_id=record.parent_id,
                    principal=record.principal, run=record.run, authorizer=record.authorizer,
                    target=record.target,
                    details={"cause": "lease ended in Vault", "by": "reaper",
                             "lease_id": record.details["lease_id"],
                             "role": record.details.get("username"),
                             "expires_at": utc_timestamp(record.expires_at)})
                if ledger.record_end(record.credential_id, event, ended_at=int(moment)) is not None:
                    report.ended.append(record.credential_id)
                    log.warning("vault lease of credential_id=%s ended before its expiry "
                                "(lease_id=%s)", record.credential_id, record.details["lease_id"])
        return report


def lease_state(client: VaultClient, lease_id: str) -> dict[str, Any] | None:
    """Vault's view of a lease (``sys/leases/lookup``: ttl, expire_time…), None when gone."""
    try:
        response = client.call("look up lease", lambda c: c.sys.read_lease(lease_id=lease_id))
    except VaultNotFound:
        return None
    return (response or {}).get("data") or {}


def list_leases(client: VaultClient, prefix: str) -> set[str] | None:
    """Lease ids Vault holds under ``prefix`` (``LIST sys/leases/lookup/<prefix>/``, which
    needs ``sudo`` on that path); None when the broker may not list them."""
    try:
        response = client.call("list leases", lambda c: c.sys.list_leases(prefix=prefix + "/"))
    except VaultNotFound:
        return set()
    except VaultRefused:
        return None
    keys = ((response or {}).get("data") or {}).get("keys") or []
    return {f"{prefix}/{key}" for key in keys if not key.endswith("/")}


def _read_data(client: VaultClient, path: str) -> dict[str, Any]:
    """The ``data`` of a Vault read; VaultNotFound when there is nothing at ``path``."""
    response = client.call(f"read {path}", lambda c: c.read(path))
    if not response:
        raise VaultNotFound("target is not usable", detail=f"vault: nothing at {path}")
    data = response.get("data") if isinstance(response, dict) else None
    return data if isinstance(data, dict) else {}


def parse_connection_url(url: Any) -> dict[str, Any] | None:
    """``host``, ``port``, ``dbname`` (and ``sslmode``) of a PostgreSQL connection URL as Vault's
    database secrets engine stores it (``postgresql://{{username}}:{{password}}@host:5432/db``);
    None when it is not one. The user and password parts are ignored."""
    if not isinstance(url, str):
        return None
    url = url.replace("{{username}}", "user").replace("{{password}}", "password")
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORT
    except ValueError:
        return None
    if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
        return None
    dbname = unquote(parts.path.lstrip("/")) or "postgres"
    info: dict[str, Any] = {"host": parts.hostname, "port": port, "dbname": dbname}
    sslmode = parse_qs(parts.query).get("sslmode")
    if sslmode:
        info["sslmode"] = sslmode[0]
    return info


def _best_effort(revoke: Any, lease_id: str) -> None:
    try:
        revoke()
    except Exception as exc:  # noqa: BLE001 - the original failure is what the client sees
        log.error("could not revoke vault lease %s after a failed mint: %s (it ends at its TTL)",
                  lease_id, getattr(exc, "detail", type(exc).__name__))


# ---------------------------------------------------------------------------- usage linking

def credential_id_for_username(ledger: Any, username: str, *, at: float | None = None,
                               slack: int = 300) -> str | None:
    """The credential whose Vault-generated database user is ``username`` (recorded at mint
    in the credential's indexed ``backend_user``), or None. ``at`` (epoch seconds, e.g. when
    the database logged the line) narrows the search to credentials alive then, ± ``slack``."""
    record: CredentialRecord | None = ledger.credential_by_backend_user(username, at=at, slack=slack)
    if record is None or record.target_type != KIND:
        return None
    return record.credential_id


VaultDatabaseIssuer = VaultDatabaseKind          # the old name


def build_vault_database_issuer(config: Any) -> VaultDatabaseKind:
    return VaultDatabaseKind.from_config(config)
