"""Outages are recorded, not flooded: refusals because a dependency is down, aggregated.

While a dependency (the ledger, the replay store, a credential target, the signer, an issuer's
keys) is down, every exchange that needs it is refused fast with ``503`` — hundreds a second.
One ``deny`` event each would flood the ledger with copies of one fact. Instead, per process
and per *cause*, the :class:`OutageRecorder` writes:

- ``outage`` ``phase: start`` at the first refusal (it names that attempt: target, principal
  when known, the SHA-256 of its subject token);
- ``outage`` ``phase: ongoing`` once per ``window`` seconds while refusals continue, with the
  count in that window;
- ``outage`` ``phase: end`` when the cause is over — an exchange that needed the dependency
  succeeded, or no refusal came for ``quiet`` seconds — with the total count, the first and
  the last attempt, and how long it lasted.

So the chain shows each outage's start and end, and the count of what was refused in between.
When the ledger itself is the cause, nothing can be written while it is down: the recorder
keeps the counts in memory (and every refusal still gets its log line) and writes one
``outage`` ``phase: end`` with ``recorded_late: true`` once the ledger answers again. What a
process that dies during a ledger outage counted is lost with it (its log lines remain).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from broker import errors
from broker.common.untrusted import clip
from broker.ledger.events import EventDraft, utc_timestamp

if TYPE_CHECKING:
    from broker.ledger import Ledger

log = logging.getLogger("broker.exchange")

#: Seconds between ``ongoing`` events of one outage.
WINDOW = 60.0
#: Seconds without a refusal after which an outage is over.
QUIET = 5.0
#: The causes every exchange depends on: any success ends their outage.
SHARED_CAUSES = ("ledger", "replay_store", "signer")


@dataclass
class _Open:
    """One outage in progress (per process, per cause)."""
    cause: str
    error: str
    reason_code: str | None
    reason: str                       # the first refusal's detail (non-secret, as in a deny)
    first_at: float
    first_attempt: dict[str, Any]
    last_at: float = 0.0
    last_attempt: dict[str, Any] = field(default_factory=dict)
    count: int = 0
    window_start: float = 0.0
    window_count: int = 0
    start_seq: int | None = None      # the start event, once written
    start_writing: bool = False       # a thread is writing (or wrote) the start event

    def summary(self) -> dict[str, Any]:
        return {"cause": self.cause, "error": self.error, "reason_code": self.reason_code,
                "reason": self.reason, "count": self.count, "first_at": utc_timestamp(self.first_at),
                "last_at": utc_timestamp(self.last_at), "first_attempt": self.first_attempt,
                "last_attempt": self.last_attempt}


class OutageRecorder:
    """Aggregates dependency-down refusals into ``outage`` events (see the module docstring).
    Thread-safe; one per broker process (``BrokerContext.outages``).

    The events are written by one background thread, never by the refused request: a request
    refused because its target is down must not then also wait on a ledger that may be down
    with it (one bounded wait per request). :meth:`flush` waits for what is queued."""

    def __init__(self, ledger: Ledger, *, window: float = WINDOW, quiet: float = QUIET) -> None:
        self._ledger = ledger
        self.window = window
        self.quiet = quiet
        self._open: dict[str, _Open] = {}
        self._lock = threading.Lock()
        self._writes: queue.Queue[tuple[str, dict[str, Any], _Open]] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._stopped = threading.Event()

    # -- what the exchange calls --------------------------------------------------------------
    def refused(self, cause: str, refusal: errors.BrokerError, attempt: dict[str, Any], *,
                now: float | None = None) -> None:
        """Count one refusal for ``cause``; queue the outage's start (first refusal) or a
        window's ``ongoing`` when one is due."""
        moment = time.time() if now is None else now
        with self._lock:
            state = self._open.get(cause)
            if state is None:
                state = self._open[cause] = _Open(
                    cause=cause, error=refusal.error, reason_code=refusal.reason,
                    reason=clip(refusal.detail, 512), first_at=moment, first_attempt=attempt,
                    window_start=moment)
            state.count += 1
            state.window_count += 1
            state.last_at, state.last_attempt = moment, attempt
            if cause == "ledger":
                pass                   # nothing can be written: the end event tells it all
            elif not state.start_writing:
                # the first refusal, or the start could not be written yet (the ledger too)
                state.start_writing = True
                self._writes.put(("start", {
                    "cause": cause, "error": state.error, "reason_code": state.reason_code,
                    "reason": state.reason, "first_attempt": state.first_attempt}, state))
            elif state.start_seq is not None and moment - state.window_start >= self.window:
                self._writes.put(("ongoing", {
                    "cause": cause, "count": state.window_count,
                    "window_start": utc_timestamp(state.window_start),
                    "window_end": utc_timestamp(moment), "total": state.count}, state))
                state.window_start, state.window_count = moment, 0
        self._ensure_writer()

    def succeeded(self, *causes: str, now: float | None = None) -> None:
        """An exchange that needed ``causes`` (and every shared one) succeeded: their outages
        are over."""
        if not self._open:
            return                     # the common case: nothing open, no lock
        self._end([*SHARED_CAUSES, *causes], now=now)

    def end_idle(self, *, now: float | None = None) -> None:
        """End every outage with no refusal for ``quiet`` seconds."""
        moment = time.time() if now is None else now
        with self._lock:
            idle = [c for c, s in self._open.items() if moment - s.last_at >= self.quiet]
        if idle:
            self._end(idle, now=moment)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued event is written (or could not be); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._writes.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        """Record the end of what is still open (a clean shutdown), then stop the writer."""
        if self._open:
            self._end(list(self._open), now=None)
        self.flush(timeout=2.0)
        self._stopped.set()

    # -- ending and writing ----------------------------------------------------------------------
    def _end(self, causes: list[str], *, now: float | None) -> None:
        moment = time.time() if now is None else now
        with self._lock:
            ending = [self._open.pop(c) for c in causes if c in self._open]
            for state in ending:
                details = {**state.summary(),
                           "duration_seconds": round(moment - state.first_at, 3)}
                if state.start_seq is None:
                    details["recorded_late"] = True    # no start event: the ledger was down too
                else:
                    details["start_event_id"] = state.start_seq
                self._writes.put(("end", details, state))
        if ending:
            self._ensure_writer()

    def _write_one(self, phase: str, details: dict[str, Any], state: _Open) -> None:
        try:
            target = state.first_attempt.get("target") if state.cause.startswith("target:") else None
            event = self._ledger.append(EventDraft(type="outage", target=target,
                                                   details={"phase": phase, **details}))
        except errors.LedgerUnavailable:
            log.error("ledger unavailable: outage %s (cause=%s) not recorded yet", phase,
                      state.cause)
            event = None
        with self._lock:
            if phase == "start":
                state.start_seq = None if event is None else event.seq
                state.start_writing = event is not None     # else: the next refusal retries
            elif phase == "end" and event is None:
                self._open.setdefault(state.cause, state)   # still unrecordable: keep counting

    def _ensure_writer(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            return
        with self._lock:
            if self._writer is not None and self._writer.is_alive():
                return
            self._writer = threading.Thread(target=self._run, name="outage-writer", daemon=True)
            self._writer.start()

    def _run(self) -> None:
        """Write what is queued; every half ``quiet`` (at most 1 s), end idle outages."""
        tick = min(1.0, self.quiet / 2)
        next_idle_check = time.monotonic() + tick
        while not self._stopped.is_set():
            try:
                phase, details, state = self._writes.get(timeout=tick)
            except queue.Empty:
                pass
            else:
                try:
                    self._write_one(phase, details, state)
                finally:
                    self._writes.task_done()
            if time.monotonic() >= next_idle_check:
                next_idle_check = time.monotonic() + tick
                self.end_idle()
