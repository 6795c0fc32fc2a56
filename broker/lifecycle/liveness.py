"""The one rule for "is this credential live": the only place that judges it.

A credential is live at ``now`` when it is in the ledger and, for **it and every ancestor up to
its root**:

* it is not revoked (``revoked_at``) and not ended (``ended_at``: its resource was removed);
* it has not expired (``expires_at > now``);
* when it was minted under a person's delegation (``authz.type: delegation``), that grant is
  neither revoked nor expired.

Introspection, derivation (a parent must be live), the exchange's re-check after minting a
child, and the gateway's login and session checks all call :func:`judge` or
:func:`credential_liveness`; none of them re-implements a part of the rule.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.ledger.events import CredentialRecord
from broker.people.store import PeopleStore

if TYPE_CHECKING:
    from broker.ledger.store import Ledger

#: How far up a lineage is walked; deeper than any policy's ``max_depth`` may go.
MAX_LINEAGE = 32

#: States, in the order they are checked for each credential of the lineage.
REVOKED, ENDED, EXPIRED = "revoked", "ended", "expired"
DELEGATION_REVOKED, DELEGATION_EXPIRED = "delegation revoked", "delegation expired"
UNKNOWN, TOO_DEEP = "unknown", "lineage too deep"


@dataclass(frozen=True)
class Liveness:
    """The verdict. ``state`` is None when live; otherwise why not, and ``culprit`` the
    credential (the one asked about, or an ancestor at ``depth`` ≥ 1) whose state it is."""
    state: str | None
    lineage: tuple[CredentialRecord, ...] = ()   # the credential first, its root last
    culprit: str | None = None
    depth: int = 0

    @property
    def live(self) -> bool:
        return self.state is None

    @property
    def record(self) -> CredentialRecord | None:
        return self.lineage[0] if self.lineage else None

    def describe(self) -> str:
        """``"revoked"``, ``"ancestor expired"``, … for logs, ledger details and clients."""
        if self.state is None:
            return "live"
        if self.state == UNKNOWN:
            return "credential not in the ledger"
        return self.state if self.depth == 0 else f"ancestor {self.state}"


#: ``delegation_id -> (revoked_at, expires_at)`` or None when unknown.
DelegationLookup = Callable[[str], "tuple[int | None, int] | None"]


def judge(lineage: Sequence[CredentialRecord], *, now: float,
          delegation: DelegationLookup | None = None) -> Liveness:
    """Apply the rule to a lineage already read (the credential first, then each ancestor)."""
    chain = tuple(lineage)
    if not chain:
        return Liveness(UNKNOWN)
    moment = int(now)
    for depth, record in enumerate(chain):
        state = _state_of(record, moment, delegation)
        if state is not None:
            return Liveness(state, chain, record.credential_id, depth)
    if chain[-1].parent_id is not None:       # the walk stopped before reaching the root
        return Liveness(TOO_DEEP, chain, chain[-1].credential_id, len(chain) - 1)
    return Liveness(None, chain)


def credential_liveness(ledger: Ledger, credential_id: str, *, now: float,
                        max_lineage: int = MAX_LINEAGE) -> Liveness:
    """Read the credential's lineage (one query) and :func:`judge` it, delegation grants
    included. Raises :class:`~broker.errors.LedgerUnavailable` when the ledger is down."""
    lineage = ledger.ancestors_of(credential_id, max_depth=max_lineage)
    return judge(lineage, now=now, delegation=_delegations_of(ledger))


def state_of(record: CredentialRecord, *, now: float) -> str | None:
    """The rule applied to one credential alone (its ancestors not read): what a view shows
    beside each node of a lineage it already displays whole."""
    return _state_of(record, int(now), None)


def _state_of(record: CredentialRecord, moment: int,
              delegation: DelegationLookup | None) -> str | None:
    if record.revoked_at is not None:
        return REVOKED
    if record.ended_at is not None:
        return ENDED
    if record.expires_at <= moment:
        return EXPIRED
    grant_id = _delegation_of(record.authorizer)
    if grant_id is not None and delegation is not None:
        grant = delegation(grant_id)
        if grant is None or grant[0] is not None:
            return DELEGATION_REVOKED
        if grant[1] <= moment:
            return DELEGATION_EXPIRED
    return None


def _delegation_of(authorizer: dict[str, Any] | None) -> str | None:
    if isinstance(authorizer, dict) and authorizer.get("type") == "delegation":
        grant_id = authorizer.get("grant_id")
        return grant_id if isinstance(grant_id, str) and grant_id else None
    return None


def _delegations_of(ledger: Ledger) -> DelegationLookup:
    store = PeopleStore(ledger)

    def lookup(delegation_id: str) -> tuple[int | None, int] | None:
        record = store.get_delegation(delegation_id)
        return None if record is None else (record.revoked_at, record.expires_at)
    return lookup
