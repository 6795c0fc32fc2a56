"""Approval and delegation state (schema version 6), kept beside the hash chain.

Rows here are projections, like ``credentials``: every change a person makes is written in the
same transaction as its ledger event (``approval_requested``, ``approved``/``denied``,
``delegate``, ``revoke``), under the chain's head lock, so the state and the chain never
disagree. Two writes are not events: the poll clock of an approval (``last_poll_ms``, for
``slow_down``) and a delegation's use counter, which only guard other writes.

``approvals``
    One row per approval request. ``status`` is ``pending`` → ``approved`` | ``denied``, and
    ``approved`` → ``consumed`` when the mint that used it is recorded (the consume is the
    mint's guard: one approval, one credential). Expiry is not stored: a ``pending`` row past
    ``expires_at``, or an ``approved`` row not collected within the pickup window, is expired
    (:meth:`ApprovalRecord.effective_status`). ``version`` makes each decision a
    compare-and-set, so two approvers deciding at once cannot lose a vote.
``delegations`` / ``delegation_credentials``
    A person's grant to an agent, and every credential minted under it (inserted with the
    mint), so revoking the grant can revoke them.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from broker.common.canonical import canonical_json
from broker.ledger.events import CredentialRecord, Event, EventDraft
from broker.ledger.rows import CREDENTIAL_COLUMNS, Statement, credential_from_row

if TYPE_CHECKING:
    from broker.ledger.store import Ledger

APPROVAL_STATUSES = ("pending", "approved", "denied", "consumed", "expired")

APPROVAL_COLUMNS = (
    "approval_id, status, version, created_at, expires_at, principal, run, issuer, target,"
    " requested_scope, requested_ttl, scope, ttl, policy_name, policy_digest, required, votes,"
    " decided_at, decided_by, reason, credential_id, consumed_at, last_poll_ms, details")
DELEGATION_COLUMNS = (
    "delegation_id, granted_by, agent, targets, scopes, created_at, expires_at, revoked_at,"
    " revoked_by, uses, details")


def _json(value: Any) -> str:
    return canonical_json(value).decode("utf-8")


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class ApprovalRecord:
    """One approval request (see the module docstring). Times are epoch seconds."""
    approval_id: str
    status: str                        # stored: pending | approved | denied | consumed
    version: int
    created_at: int
    expires_at: int                    # a decision must come before this
    principal: str
    run: dict[str, Any]
    issuer: str                        # the attestation issuer's config name
    target: str
    requested_scope: str | None        # the request's `scope` as normalised (None: not sent)
    requested_ttl: int | None          # the request's `ttl` (None: not sent)
    scope: str                         # what the policy granted
    ttl: int
    policy_name: str
    policy_digest: str
    required: int
    votes: list[dict[str, Any]] = field(default_factory=list)   # [{"email", "username", "at", "reason"}]
    decided_at: int | None = None
    decided_by: str | None = None      # the approver who completed it, or the denier
    reason: str | None = None          # the denial's reason
    credential_id: str | None = None   # the credential it was used for
    consumed_at: int | None = None
    last_poll_ms: int = 0
    details: dict[str, Any] = field(default_factory=dict)      # what the page shows (non-secret)

    def effective_status(self, now: float, *, pickup_window: int) -> str:
        """The stored status, with expiry applied (see the module docstring)."""
        if self.status == "pending" and self.expires_at <= now:
            return "expired"
        if self.status == "approved" and (self.decided_at or 0) + pickup_window <= now:
            return "expired"
        return self.status

    @property
    def approvers(self) -> list[str]:
        return [str(v.get("email")) for v in self.votes]

    def params(self) -> tuple[Any, ...]:
        return (self.approval_id, self.status, self.version, self.created_at, self.expires_at,
                self.principal, _json(self.run), self.issuer, self.target, self.requested_scope,
                self.requested_ttl, self.scope, self.ttl, self.policy_name, self.policy_digest,
                self.required, _json(self.votes), self.decided_at, self.decided_by, self.reason,
                self.credential_id, self.consumed_at, self.last_poll_ms, _json(self.details))

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> ApprovalRecord:
        (approval_id, status, version, created_at, expires_at, principal, run, issuer, target,
         requested_scope, requested_ttl, scope, ttl, policy_name, policy_digest, required, votes,
         decided_at, decided_by, reason, credential_id, consumed_at, last_poll_ms, details) = row
        return cls(approval_id=approval_id, status=status, version=int(version),
                   created_at=int(created_at), expires_at=int(expires_at), principal=principal,
                   run=json.loads(run), issuer=issuer, target=target,
                   requested_scope=requested_scope, requested_ttl=_int(requested_ttl),
                   scope=scope, ttl=int(ttl), policy_name=policy_name,
                   policy_digest=policy_digest, required=int(required), votes=json.loads(votes),
                   decided_at=_int(decided_at), decided_by=decided_by, reason=reason,
                   credential_id=credential_id, consumed_at=_int(consumed_at),
                   last_poll_ms=int(last_poll_ms), details=json.loads(details))


@dataclass(frozen=True)
class DelegationRecord:
    """A person's grant to an agent: which agent principal, which targets and scopes, until when."""
    delegation_id: str
    granted_by: str                    # the person (their email, lower-case)
    agent: str                         # the agent's principal, exactly
    targets: list[str]
    scopes: list[str]
    created_at: int
    expires_at: int
    revoked_at: int | None = None
    revoked_by: str | None = None
    uses: int = 0
    details: dict[str, Any] = field(default_factory=dict)   # the person's claims, token sha256

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at <= now else "active"

    def params(self) -> tuple[Any, ...]:
        return (self.delegation_id, self.granted_by, self.agent, _json(self.targets),
                _json(self.scopes), self.created_at, self.expires_at, self.revoked_at,
                self.revoked_by, self.uses, _json(self.details))

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> DelegationRecord:
        (delegation_id, granted_by, agent, targets, scopes, created_at, expires_at, revoked_at,
         revoked_by, uses, details) = row
        return cls(delegation_id=delegation_id, granted_by=granted_by, agent=agent,
                   targets=json.loads(targets), scopes=json.loads(scopes),
                   created_at=int(created_at), expires_at=int(expires_at),
                   revoked_at=_int(revoked_at), revoked_by=revoked_by, uses=int(uses),
                   details=json.loads(details))


SQL_INSERT_APPROVAL = (f"INSERT INTO approvals ({APPROVAL_COLUMNS}) VALUES ("
                       + ", ".join(["%s"] * 24) + ")")
SQL_GET_APPROVAL = f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE approval_id = %s"
SQL_DECIDE_APPROVAL = (
    "UPDATE approvals SET status = %s, version = version + 1, votes = %s, decided_at = %s,"
    " decided_by = %s, reason = %s"
    " WHERE approval_id = %s AND version = %s AND status = 'pending' AND expires_at > %s"
    " RETURNING approval_id")
SQL_CONSUME_APPROVAL = (
    "UPDATE approvals SET status = 'consumed', version = version + 1, credential_id = %s,"
    " consumed_at = %s WHERE approval_id = %s AND status = 'approved' AND decided_at > %s"
    " RETURNING approval_id")
SQL_TOUCH_APPROVAL = (
    "UPDATE approvals SET last_poll_ms = %s WHERE approval_id = %s AND last_poll_ms <= %s"
    " RETURNING approval_id")
SQL_INSERT_DELEGATION = (f"INSERT INTO delegations ({DELEGATION_COLUMNS}) VALUES ("
                         + ", ".join(["%s"] * 11) + ")")
SQL_GET_DELEGATION = f"SELECT {DELEGATION_COLUMNS} FROM delegations WHERE delegation_id = %s"
SQL_REVOKE_DELEGATION = (
    "UPDATE delegations SET revoked_at = %s, revoked_by = %s"
    " WHERE delegation_id = %s AND revoked_at IS NULL RETURNING delegation_id")
SQL_USE_DELEGATION = (
    "UPDATE delegations SET uses = uses + 1"
    " WHERE delegation_id = %s AND revoked_at IS NULL AND expires_at > %s RETURNING delegation_id")
SQL_LINK_DELEGATION = "INSERT INTO delegation_credentials (delegation_id, credential_id) VALUES (%s, %s)"


class PeopleStore:
    """Approval and delegation state, in the ledger's database, through its public protocol:
    every change that is an event is one :meth:`Ledger.append` with the row as its guard or
    extra statement."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    # -- approvals -------------------------------------------------------------------------
    def record_approval_request(self, draft: EventDraft, approval: ApprovalRecord) -> Event:
        """Append ``approval_requested`` and insert the approval row, in one transaction."""
        event = self.ledger.append(draft, extra=[(SQL_INSERT_APPROVAL, approval.params())])
        assert event is not None
        return event

    def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        with self.ledger.unavailable_on_error("get_approval"):
            rows = self.ledger.read(SQL_GET_APPROVAL, (approval_id,))
        return ApprovalRecord.from_row(rows[0]) if rows else None

    def list_approvals(self, *, status: str | None, now: int, pickup_window: int,
                       limit: int = 100) -> list[ApprovalRecord]:
        """Approvals in ``status`` (effective, see :meth:`ApprovalRecord.effective_status`;
        None: all), newest first."""
        cutoff = int(now) - int(pickup_window)
        where, params = {
            None: ("1 = 1", []),
            "pending": ("status = 'pending' AND expires_at > %s", [int(now)]),
            "approved": ("status = 'approved' AND decided_at > %s", [cutoff]),
            "denied": ("status = 'denied'", []),
            "consumed": ("status = 'consumed'", []),
            "expired": ("((status = 'pending' AND expires_at <= %s)"
                        " OR (status = 'approved' AND decided_at <= %s))", [int(now), cutoff]),
        }[status]
        with self.ledger.unavailable_on_error("list_approvals"):
            rows = self.ledger.read(f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE {where}"
                              " ORDER BY created_at DESC, approval_id DESC LIMIT %s",
                              [*params, int(limit)])
        return [ApprovalRecord.from_row(r) for r in rows]

    def record_approval_decision(self, approval: ApprovalRecord, draft: EventDraft, *,
                                 status: str, votes: list[dict[str, Any]],
                                 decided_at: int | None, decided_by: str | None,
                                 reason: str | None, now: int) -> Event | None:
        """Record one approver's decision: the new state and its event (``approved`` or
        ``denied``), atomically, only if ``approval`` is still the stored version, pending and
        not expired. None (nothing written) otherwise: re-read and decide again."""
        guard = (SQL_DECIDE_APPROVAL, (status, _json(votes), decided_at, decided_by, reason,
                                       approval.approval_id, approval.version, int(now)))
        return self.ledger.append(draft, guard=guard)

    def touch_approval_poll(self, approval_id: str, *, now_ms: int, min_gap_ms: int) -> bool:
        """Note a poll of ``approval_id`` at ``now_ms``; False (nothing changed) when the last
        poll was less than ``min_gap_ms`` ago — the caller answers ``slow_down``. Not an
        event: the poll's own exchange event records it."""
        with self.ledger.unavailable_on_error("touch_approval_poll"):
            with self.ledger.transaction() as tx:
                rows = tx.execute(SQL_TOUCH_APPROVAL, (int(now_ms), approval_id,
                                                       int(now_ms) - int(min_gap_ms)))
        return bool(rows)

    @staticmethod
    def approval_consume_guard(approval_id: str, *, credential_id: str, now: int,
                               pickup_window: int) -> Statement:
        """The guard of a mint under an approval: it succeeds once (approved → consumed)."""
        return (SQL_CONSUME_APPROVAL, (credential_id, int(now), approval_id,
                                       int(now) - int(pickup_window)))

    # -- delegations -----------------------------------------------------------------------
    def record_delegation(self, draft: EventDraft, delegation: DelegationRecord) -> Event:
        """Append ``delegate`` and insert the delegation row, in one transaction."""
        event = self.ledger.append(draft, extra=[(SQL_INSERT_DELEGATION, delegation.params())])
        assert event is not None
        return event

    def get_delegation(self, delegation_id: str) -> DelegationRecord | None:
        with self.ledger.unavailable_on_error("get_delegation"):
            rows = self.ledger.read(SQL_GET_DELEGATION, (delegation_id,))
        return DelegationRecord.from_row(rows[0]) if rows else None

    def list_delegations(self, *, granted_by: str | None = None,
                         limit: int = 100) -> list[DelegationRecord]:
        where, params = ("granted_by = %s", [granted_by]) if granted_by else ("1 = 1", [])
        with self.ledger.unavailable_on_error("list_delegations"):
            rows = self.ledger.read(f"SELECT {DELEGATION_COLUMNS} FROM delegations WHERE {where}"
                              " ORDER BY created_at DESC, delegation_id DESC LIMIT %s",
                              [*params, int(limit)])
        return [DelegationRecord.from_row(r) for r in rows]

    def record_delegation_revoke(self, delegation_id: str, draft: EventDraft, *,
                                 revoked_at: int, revoked_by: str) -> Event | None:
        """Mark the delegation revoked and append ``draft`` (a ``revoke``), atomically. None
        when it is unknown or already revoked."""
        return self.ledger.append(draft, guard=(SQL_REVOKE_DELEGATION,
                                              (int(revoked_at), revoked_by, delegation_id)))

    @staticmethod
    def delegation_use_guard(delegation_id: str, *, now: int) -> Statement:
        """The guard of a mint under a delegation: live (not revoked, not expired) at commit."""
        return (SQL_USE_DELEGATION, (delegation_id, int(now)))

    @staticmethod
    def delegation_link(delegation_id: str, credential_id: str) -> Statement:
        return (SQL_LINK_DELEGATION, (delegation_id, credential_id))

    def credentials_under_delegation(self, delegation_id: str, *, unrevoked_only: bool = True,
                                     limit: int = 10_000) -> list[CredentialRecord]:
        """Credentials minted under the delegation (not their children), oldest first."""
        columns = ", ".join(f"c.{c.strip()}" for c in CREDENTIAL_COLUMNS.split(","))
        sql = (f"SELECT {columns} FROM delegation_credentials d JOIN credentials c"
               " ON c.credential_id = d.credential_id WHERE d.delegation_id = %s")
        if unrevoked_only:
            sql += " AND c.revoked_at IS NULL"
        sql += " ORDER BY c.issued_at, c.credential_id LIMIT %s"
        with self.ledger.unavailable_on_error("credentials_under_delegation"):
            rows = self.ledger.read(sql, (delegation_id, int(limit)))
        return [credential_from_row(r) for r in rows]
