"""The one ledger event of one exchange attempt, filled in as the attempt goes.

Every attempt that reaches subject verification leaves exactly one event. Either a step
records the attempt's own event and says so (:meth:`Attempt.recorded_as` — a ``mint``, or an
``approval_requested``), or the attempt ends in a refusal and :class:`Attempt`, used as a
context manager, records one ``deny`` on the way out with everything learnt so far. No flag
travels on the exception: what has been recorded is the attempt's state, not the error's.

An exception that is not a :class:`~broker.errors.BrokerError` is a bug: it is logged with its
traceback, recorded as a ``deny`` with a generic reason and answered as ``server_error``.

A refusal because a dependency is down (:class:`~broker.errors.BackendUnavailable`) is the
exception to "one ``deny`` each": it is counted into its outage
(:class:`~broker.exchange.outage.OutageRecorder`), whose ``outage`` events stand for every
attempt it refused.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from broker import errors
from broker.attestation.replay import ReplayStoreUnavailable
from broker.common.untrusted import RECORD_VALUE_LIMIT, clip, install_log_sanitizer
from broker.ledger.events import Event, EventDraft, utc_timestamp

if TYPE_CHECKING:
    from broker.exchange.outage import OutageRecorder
    from broker.ledger import Ledger

log = logging.getLogger("broker.exchange")
install_log_sanitizer()

#: What a ``deny`` keeps of the request's own text: every client-provided value is bounded, so
#: one refused request adds at most a small, fixed number of bytes to the ledger.
MAX_SCOPE_RECORDED = 1024
MAX_DETAIL_RECORDED = 512


def bounded(value: Any, *, limit: int = MAX_DETAIL_RECORDED, depth: int = 0) -> Any:
    """``value`` with every string clipped and containers cut to 32 members (a ``deny``'s
    details are built from what a refused, possibly unauthenticated request said)."""
    if isinstance(value, str):
        return clip(value, limit)
    if depth >= 4:
        return None if isinstance(value, (dict, list, tuple)) else value
    if isinstance(value, dict):
        return {clip(str(k), 64): bounded(v, limit=limit, depth=depth + 1)
                for k, v in list(value.items())[:32]}
    if isinstance(value, (list, tuple)):
        return [bounded(v, limit=limit, depth=depth + 1) for v in list(value)[:32]]
    return value


@dataclass
class Attempt:
    """The ``deny`` event under construction (used only if no step records the attempt)."""
    ledger: Ledger
    token_sha256: str
    target: str
    requested_scope: str | None
    principal: str | None = None
    run: dict[str, Any] | None = None
    authorizer: dict[str, Any] | None = None
    parent_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    event: Event | None = None          # set once the attempt's one event is in the ledger
    #: the attestation this attempt used up, ``(single-use key, until)``, once verified: the
    #: mint anchors it in the ledger; a refusal that issued nothing releases it
    single_use: tuple[str, int] | None = None
    #: where the attempt is: ``verify`` (the attestation, its issuer's keys), ``authorize``
    #: (policies, people), ``issue`` (the target), ``record`` (signing, the ledger)
    stage: str = "verify"
    outages: OutageRecorder | None = None

    def outage_cause(self, refusal: errors.BackendUnavailable) -> str:
        """Which dependency a ``503`` refusal stands for (one outage per cause)."""
        if isinstance(refusal, errors.LedgerUnavailable):
            return "ledger"
        if isinstance(refusal, ReplayStoreUnavailable):
            return "replay_store"
        if isinstance(refusal, errors.SigningUnavailable):
            return "signer"
        if self.stage == "issue":
            return f"target:{clip(self.target, RECORD_VALUE_LIMIT)}"
        if self.stage == "verify":
            return "attestation_keys"
        return self.stage

    def recorded_as(self, event: Event) -> None:
        """The attempt's one event was written by a step (a mint, an approval request)."""
        self.event = event

    def deny_draft(self, refusal: errors.BrokerError) -> EventDraft:
        target = clip(self.target, RECORD_VALUE_LIMIT)
        details = {**self.details, "error": refusal.error, "reason": refusal.detail,
                   "attestation_sha256": self.token_sha256, "requested_target": target}
        if refusal.reason is not None:
            details["reason_code"] = refusal.reason
        details = bounded(details)
        if self.requested_scope is not None:
            details["requested_scope"] = clip(self.requested_scope, MAX_SCOPE_RECORDED)
        return EventDraft(type="deny", principal=bounded(self.principal), run=bounded(self.run),
                          authorizer=self.authorizer, target=target,
                          parent_id=self.parent_id, details=details)

    # -- the context manager: one deny for a refused attempt not yet recorded ----------------
    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None or not isinstance(exc, Exception):
            return
        if isinstance(exc, errors.BrokerError):
            if self.event is None:
                self._record_deny(exc)
            return
        log.exception("exchange failed unexpectedly", exc_info=(type(exc), exc, tb))
        refusal = errors.InternalError("internal error", detail=f"internal error: {type(exc).__name__}")
        if self.event is None:
            self._record_deny(refusal)
        raise refusal from exc

    def _record_deny(self, refusal: errors.BrokerError) -> None:
        log.info("deny target=%s principal=%s error=%s detail=%s", self.target, self.principal,
                 refusal.error, refusal.detail)
        if isinstance(refusal, errors.BackendUnavailable) and self.outages is not None:
            # counted into its outage, written in the background (no event id to quote)
            self.outages.refused(self.outage_cause(refusal), refusal, {
                "at": utc_timestamp(), "target": clip(self.target, RECORD_VALUE_LIMIT),
                "principal": bounded(self.principal), "attestation_sha256": self.token_sha256})
        else:
            try:
                self.event = self.ledger.append(self.deny_draft(refusal))
            except errors.LedgerUnavailable:
                log.error("ledger unavailable: a deny could not be recorded (target=%s)",
                          self.target)
        # What a CI user can act on: the stable reason code and the event to quote to an
        # operator (both non-secret), beside the short description.
        if refusal.reason is not None:
            refusal.extra.setdefault("reason", refusal.reason)
        if self.event is not None:
            refusal.extra.setdefault("event_id", self.event.seq)
