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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from broker import errors
from broker.targets.base import IssuedCredential, IssueRequest
from broker.targets.postgres import CONNECT_KEYS, SSLMODES, database_credential
from broker.ledger.events import CredentialRecord, EventDraft, utc_timestamp
from broker.policy.problems import Problem
from broker.policy.targets import TargetContext, register_target_type
from broker.vault.client import (
    VaultClient, VaultNotFound, VaultRefused, VaultSettings, is_vault_path, settings_from_block,
    settings_from_config, validate_vault_block, vault_client,
)

log = logging.getLogger("broker.targets.vault_database")

KIND = "vault-database"
DEFAULT_MOUNT = "database"
DEFAULT_PORT = 5432
#: A lease Vault could not shorten may outlive the policy by this much before the broker
#: counts it as "not shortened" (Vault rounds to whole seconds).
SHORTEN_SLACK = 2
#: At most one reconciliation per target per process this often (the reaper runs more often).
RECONCILE_INTERVAL = 60.0
RECONCILE_LIMIT = 5000

VAULT_DATABASE_KEYS = frozenset({"vault", "mount", "role", "connect"})
_ROLE = re.compile(r"[A-Za-z0-9_.-]+")


# ---------------------------------------------------------------------------- YAML keys

def validate_vault_database_target(ctx: TargetContext) -> Iterator[Problem]:
    """Check a ``type: vault-database`` target's keys at load; fill in defaults."""
    options = ctx.options
    if "vault" in options:
        yield from validate_vault_block(ctx, "vault")
    mount = options.get("mount", DEFAULT_MOUNT)
    if not isinstance(mount, str) or not is_vault_path(mount):
        yield ctx.problem("mount", "mount must be a Vault mount path like 'database'")
    else:
        options["mount"] = mount
    role = options.get("role")
    if not isinstance(role, str) or not _ROLE.fullmatch(role):
        yield ctx.problem("role", "role must be the database secrets engine's role name "
                                  "(letters, digits, _ . -)")
    connect = options.get("connect")
    if not isinstance(connect, dict):
        yield ctx.problem("connect", "connect must be a mapping with host, dbname (port, sslmode): "
                                     "what clients are told, since Vault returns only a username "
                                     "and a password")
        return
    for key in connect:
        if key not in CONNECT_KEYS:
            yield ctx.problem("connect", f"connect: unknown key {key!r} "
                                         f"(allowed: {', '.join(sorted(CONNECT_KEYS))})")
    for key in ("host", "dbname"):
        if not isinstance(connect.get(key), str) or not connect.get(key):
            yield ctx.problem("connect", f"connect.{key} must be a non-empty string")
    port = connect.get("port", DEFAULT_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        yield ctx.problem("connect", "connect.port must be an integer from 1 to 65535")
    else:
        connect["port"] = port
    if "sslmode" in connect and connect["sslmode"] not in SSLMODES:
        yield ctx.problem("connect", f"connect.sslmode must be one of {', '.join(sorted(SSLMODES))}")


register_target_type(KIND, VAULT_DATABASE_KEYS, validate_vault_database_target,
                     required_keys={"role", "connect"})


# ---------------------------------------------------------------------------- helpers

def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


@dataclass
class ReconcileReport:
    ended: list[str] = field(default_factory=list)     # credential ids whose end was recorded
    unknown_leases: int = 0                            # leases Vault holds the ledger does not know
    failed: list[dict[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------- the issuer

class VaultDatabaseIssuer:
    """Reads database credentials from Vault, revokes and reconciles their leases. Built once
    per process by ``create_app``; :meth:`attach_policy_set` tells it the targets."""

    kind = KIND
    needs_reaper = True

    def __init__(self, *, default_settings: VaultSettings | None = None) -> None:
        self.default_settings = default_settings
        self._targets: dict[str, Any] = {}
        self._reconciled_at: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- wiring ----------------------------------------------------------------------------
    def attach_policy_set(self, policy_set: Any) -> None:
        self._targets = {name: t for name, t in policy_set.targets.items() if t.type == KIND}

    def targets(self) -> list[str]:
        return sorted(self._targets)

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
        connect = dict(options["connect"])
        connect.setdefault("port", DEFAULT_PORT)
        secret = database_credential(username, password, connect, expires_at=request.expires_at)
        details = {
            "role": username, "username": username,
            "lease_id": lease_id, "lease_duration": duration,
            "lease_expires_at": _rfc3339(now + duration),
            "lease_shortened": shortened,
            "vault_mount": mount, "vault_role": role,
            "database": connect["dbname"], "host": connect["host"], "port": int(connect["port"]),
        }
        return IssuedCredential(secret=secret, details=details, undo=revoke_lease)

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

    # The reaper's orphan pass is about nhb_ roles; leases are Vault's to expire.
    def minted_roles(self, target_name: str) -> list[str]:
        return []

    def end_orphans(self, target_name: str, roles: Any) -> list[Any]:
        return []

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
    record = ledger.credential_by_backend_user(username, at=at, slack=slack)
    if record is None or record.target_type != KIND:
        return None
    return record.credential_id


def build_vault_database_issuer(config: Any) -> VaultDatabaseIssuer:
    return VaultDatabaseIssuer(default_settings=settings_from_config(config))
