"""The base every credential kind is built on: what it is called, which policy keys it takes,
how it issues and revokes, and which optional capabilities it has — all declared.

The exchange always mints the broker-signed JWT (the credential's identity, ``jti`` = credential
id). A target kind adds whatever the resource itself needs: nothing for ``jwt``; a database role
and its password for ``postgres``; a Vault lease for ``vault-database``.

A kind is a subclass of :class:`TargetKind` that sets

* :attr:`~TargetKind.name` — the ``type:`` of its target documents;
* :attr:`~TargetKind.policy_keys` — its keys of a ``kind: target`` document, as data
  (:class:`broker.targets.keys.TargetSchema`): the policy loader reads them from the registry
  (:mod:`broker.targets.registry`), so loading a policy never depends on import order;
* :meth:`~TargetKind.issue` and :meth:`~TargetKind.revoke`;
* :attr:`~TargetKind.capabilities` — which of the optional operations it implements:
  ``reap`` (:meth:`~TargetKind.end_many`: its credentials hold a resource that outlives their
  expiry), ``reconcile`` (:meth:`~TargetKind.reconcile`: the backend can end a credential on
  its own), ``remove_orphans`` (:meth:`~TargetKind.minted_resources`,
  :meth:`~TargetKind.credential_id_of_resource`, :meth:`~TargetKind.end_orphans`: resources
  minted by the broker that the ledger may not know), ``check_backend``
  (:meth:`~TargetKind.backend_warnings`: ``broker policy check`` asks the backend whether a
  target is set up safely), ``signs`` (:meth:`~TargetKind.use_signer`: the kind signs tokens of
  its own with the broker's key, e.g. the web-identity JWT an ``aws`` target sends to STS;
  :func:`~broker.targets.registry.build_kinds` hands it ``ctx.signer``). The reaper and the CLI
  read this declaration; nobody probes a kind with ``getattr``.

Kinds import nothing of :mod:`broker.policy` at run time (the loader imports them).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from broker.targets.keys import TargetSchema

if TYPE_CHECKING:
    from broker.keys import Signer
    from broker.ledger.events import CredentialRecord
    from broker.policy.model import PolicySet, Target


@dataclass(frozen=True)
class IssueRequest:
    credential_id: str
    target: Target
    principal: str
    run: dict[str, Any]
    authorizer: dict[str, Any]
    scopes: tuple[str, ...]
    issued_at: int
    expires_at: int
    parent_id: str | None = None


@dataclass
class IssuedCredential:
    """What a kind minted.

    ``secret`` goes to the client only (never the ledger, a log or an error). ``details`` are
    non-secret facts recorded in the ledger (role name, lease id). ``undo`` removes what was made
    if the mint cannot be recorded: no credential exists without its ledger event.
    ``secret_for_token``, when set, builds ``secret`` from the broker's access token once it is
    signed (a gateway target: the token itself is the database password).
    """
    secret: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    undo: Callable[[], None] | None = None
    secret_for_token: Callable[[str], dict[str, Any]] | None = None


@dataclass(frozen=True)
class Capabilities:
    """What a kind can do besides issue and revoke."""
    reap: bool = False              # end_many(): end expired/revoked credentials at the resource
    reconcile: bool = False         # reconcile(): record ends the backend decided on its own
    remove_orphans: bool = False    # minted_resources(), credential_id_of_resource(), end_orphans()
    check_backend: bool = False     # backend_warnings(): `broker policy check` asks the backend
    signs: bool = False             # use_signer(): it signs tokens of its own with the broker's key


class Ended(Protocol):
    """What ending one credential's resource did (the reaper records it); read-only, so a
    frozen dataclass is one."""

    @property
    def role(self) -> str | None: ...            # the resource's name (a database role, a generated user)
    @property
    def existed(self) -> bool: ...
    @property
    def sessions_terminated(self) -> int: ...
    @property
    def busy(self) -> bool: ...                  # another process was ending it: try again later


@dataclass
class ReconcileReport:
    ended: list[str] = field(default_factory=list)     # credential ids whose end was recorded
    unknown_leases: int = 0                            # resources the backend holds the ledger does not know
    failed: list[dict[str, str]] = field(default_factory=list)


class TargetKind:
    """A credential kind. Built once per process (:meth:`from_config`), told the policy set's
    targets of its type (:meth:`attach`)."""

    name: ClassVar[str]
    policy_keys: ClassVar[TargetSchema]
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self) -> None:
        self._targets: dict[str, Target] = {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TargetKind:
        """The kind as the broker's configuration (``BROKER_*``) sets it up."""
        return cls()

    @property
    def kind(self) -> str:
        return self.name

    # -- wiring ----------------------------------------------------------------------------
    def attach(self, policy_set: PolicySet) -> None:
        """The targets of this kind (a kind that reaches a resource needs them to revoke and
        reap credentials)."""
        self._targets = {n: t for n, t in policy_set.targets.items() if t.type == self.name}

    def targets(self) -> list[str]:
        return sorted(self._targets)

    def close(self) -> None:
        """Release pools and connections (``BrokerContext.close``)."""

    # -- every kind --------------------------------------------------------------------------
    def issue(self, request: IssueRequest) -> IssuedCredential:
        raise NotImplementedError

    def revoke(self, record: CredentialRecord) -> None:
        """End the credential's access at the resource (idempotent)."""
        raise NotImplementedError

    # -- capabilities.reap -------------------------------------------------------------------
    def end_many(self, target: str, records: list[CredentialRecord]
                 ) -> Iterable[tuple[CredentialRecord, Ended | Exception]]:
        """End several credentials of one target; nothing when another reaper is at it."""
        raise NotImplementedError(f"target kind {self.name!r} does not reap")

    # -- capabilities.reconcile --------------------------------------------------------------
    def reconcile(self, ledger: Any, *, now: float | None = None, force: bool = False) -> ReconcileReport:
        """Record the end of credentials the ledger thinks alive but the backend has ended."""
        raise NotImplementedError(f"target kind {self.name!r} does not reconcile")

    # -- capabilities.remove_orphans ---------------------------------------------------------
    def minted_resources(self, target: str) -> list[str]:
        """Names of every resource of ``target`` the broker minted (e.g. ``nhb_…`` roles)."""
        raise NotImplementedError(f"target kind {self.name!r} does not remove orphans")

    def credential_id_of_resource(self, resource: str) -> str | None:
        """The credential id a minted resource's name carries, or None."""
        raise NotImplementedError(f"target kind {self.name!r} does not remove orphans")

    def end_orphans(self, target: str, resources: list[str]) -> list[tuple[str, Ended | Exception]]:
        """Remove these resources of ``target``; nothing when another reaper is at it."""
        raise NotImplementedError(f"target kind {self.name!r} does not remove orphans")

    # -- capabilities.signs ------------------------------------------------------------------
    def use_signer(self, signer: Signer) -> None:
        """The broker's signer (``ctx.signer``), for the tokens the kind signs itself."""
        raise NotImplementedError(f"target kind {self.name!r} does not sign")

    # -- capabilities.check_backend ----------------------------------------------------------
    def backend_warnings(self, target: Target) -> list[str]:
        """Warnings about how the backend is set up for ``target`` (none when it cannot tell)."""
        raise NotImplementedError(f"target kind {self.name!r} does not check its backend")


#: The old name of the protocol, for code written against it.
CredentialIssuer = TargetKind
