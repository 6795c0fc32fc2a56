"""Revocation and its cascade: revoking a credential revokes every credential derived from it.

One credential is revoked by :func:`revoke_one`: first at its resource (the target kind's
``revoke``: drop the database role, end its sessions, revoke the lease), then in the ledger
(``revoked_at`` set and one ``revoke`` event, atomically). A resource that cannot be reached
leaves the ledger untouched and raises ``temporarily_unavailable``, so the ledger never
claims a revocation that did not happen and a retry finishes the job.

:func:`revoke_descendants` then walks the tree below a revoked credential iteratively: each
pass asks the ledger (one recursive query) for the descendants not yet revoked, parents before
children, and revokes them one by one, each with its own ``revoke`` event whose details name
the cause (``"cause": "parent revoked"``, ``"root"``: the credential whose revocation started
the cascade, ``"parent"``: the direct parent). Passes repeat until a pass finds nothing (which
also catches a child minted while the cascade ran). One call is bounded — :data:`MAX_CASCADE`
credentials, :data:`CASCADE_BUDGET` seconds (well inside the server's request timeout) and
:data:`MAX_PASSES` passes — and reports ``complete=False`` when a bound stopped it; it is
idempotent, so calling it again (``POST /revoke`` again) finishes what is left.

A derivation re-checks its ancestors after its mint is recorded (see
:mod:`broker.exchange.pipeline`), so a child minted concurrently with its ancestor's revocation is
revoked either by the cascade's next pass or by that check.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from broker import errors
from broker.ledger.events import CredentialRecord, EventDraft

if TYPE_CHECKING:
    from broker.app import BrokerContext

log = logging.getLogger("broker.lifecycle.revocation")

#: Credentials one call revokes at most, and the seconds it may spend (a retry continues).
MAX_CASCADE = 20_000
CASCADE_BUDGET = 20.0
#: Descendants fetched per pass.
PAGE = 1000
#: Deepest level a cascade looks at (well beyond any policy's max_depth).
CASCADE_DEPTH = 32
MAX_PASSES = MAX_CASCADE // PAGE + 3


class BackendUnavailable(errors.BackendUnavailable):
    """The credential's resource could not be reached to revoke it (nothing was recorded)."""


@dataclass
class CascadeResult:
    revoked: list[str] = field(default_factory=list)     # credential ids revoked by this call
    failed: list[str] = field(default_factory=list)      # resource unreachable: still live
    complete: bool = True                                # False when a bound stopped the walk


def revoke_event(record: CredentialRecord, details: dict[str, Any]) -> EventDraft:
    return EventDraft(type="revoke", credential_id=record.credential_id, parent_id=record.parent_id,
                      principal=record.principal, run=record.run, authorizer=record.authorizer,
                      target=record.target, details=details)


def revoke_one(ctx: BrokerContext, record: CredentialRecord, *, details: dict[str, Any],
               now: float | None = None) -> bool:
    """End ``record`` at its resource, then record ``revoke`` with ``details`` (which should
    name the cause). False when it was already revoked (nothing appended)."""
    kind = ctx.issuers.get(record.target_type)
    if kind is not None:
        try:
            kind.revoke(record)
        except errors.BrokerError:
            raise
        except Exception as exc:
            log.exception("revocation at the resource failed (credential_id=%s)", record.credential_id)
            raise BackendUnavailable(
                "the credential's backend is unavailable; try again",
                detail=f"revoke failed at backend: {type(exc).__name__}") from exc
    event = revoke_event(record, {"result": "revoked", **details})
    at = int(time.time() if now is None else now)
    # kind.revoke() returned: access at the resource has ended (a postgres role is
    # dropped), so the credential is ended too and the reaper has nothing left to do.
    recorded = ctx.ledger.record_revoke(record.credential_id, event, revoked_at=at, ended_at=at)
    return recorded is not None


def revoke_descendants(ctx: BrokerContext, root: CredentialRecord, *,
                       requested_by: dict[str, Any] | None = None,
                       budget: float = CASCADE_BUDGET) -> CascadeResult:
    """Revoke every descendant of ``root`` not yet revoked (see the module docstring).

    ``requested_by`` (e.g. ``{"client": "auditor"}``) is copied into each event's details.
    Resource failures are collected in ``failed`` (those credentials stay live in the ledger
    and are retried by the next call); ledger failures raise ``temporarily_unavailable``.
    """
    result = CascadeResult()
    deadline = time.monotonic() + budget
    skipped: set[str] = set()
    cause = {"cause": "parent revoked", "root": root.credential_id, **(requested_by or {})}
    for _ in range(MAX_PASSES):
        pending = ctx.ledger.descendants_of(root.credential_id, unrevoked_only=True,
                                            max_depth=CASCADE_DEPTH, limit=PAGE + len(skipped))
        pending = [(r, d) for r, d in pending if r.credential_id not in skipped]
        if not pending:
            return result
        for record, _depth in pending:
            if len(result.revoked) + len(result.failed) >= MAX_CASCADE or time.monotonic() > deadline:
                result.complete = False
                log.warning("revocation cascade below %s paused after %d credentials; a retry "
                            "continues it", root.credential_id, len(result.revoked))
                return result
            try:
                if revoke_one(ctx, record, details={**cause, "parent": record.parent_id}):
                    result.revoked.append(record.credential_id)
            except BackendUnavailable:
                skipped.add(record.credential_id)
                result.failed.append(record.credential_id)
    result.complete = False
    log.error("revocation cascade below %s did not settle in %d passes", root.credential_id, MAX_PASSES)
    return result
