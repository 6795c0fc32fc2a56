"""The ledger's verification status for the pages: the last chain verification of this
process (recomputed when stale and the ledger is small, or on demand), plus the latest signed
Merkle checkpoint when the ledger keeps them."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from broker.ledger import Ledger, LedgerUnavailable, VerifyReport

log = logging.getLogger("broker.http.web")

#: A verification older than this is "stale"; pages re-run it inline below AUTO_VERIFY_MAX.
FRESH_SECONDS = 300
#: Ledgers up to this many events are verified inline by any page (a few hundred ms at most).
AUTO_VERIFY_MAX = 20_000


@dataclass(frozen=True)
class LedgerStatus:
    head_seq: int | None                 # None: the ledger is unreachable
    report: VerifyReport | None          # None: not verified by this process yet
    verified_at: float | None
    duration_ms: float | None
    checkpoint: dict[str, Any] | None

    @property
    def age_seconds(self) -> int | None:
        return None if self.verified_at is None else int(time.time() - self.verified_at)

    @property
    def stale(self) -> bool:
        return self.verified_at is None or time.time() - self.verified_at > FRESH_SECONDS

    @property
    def state(self) -> str:
        """``ok`` | ``tampered`` | ``unverified`` | ``unreachable`` (a CSS class, too)."""
        if self.head_seq is None:
            return "unreachable"
        if self.report is None:
            return "unverified"
        return "ok" if self.report.ok else "tampered"


_lock = threading.Lock()
_last: dict[int, tuple[VerifyReport, float, float]] = {}


def ledger_status(ledger: Ledger, *, force: bool = False) -> LedgerStatus:
    try:
        head_seq, _ = ledger.head()
    except LedgerUnavailable:
        return LedgerStatus(None, None, None, None, None)
    with _lock:
        last = _last.get(id(ledger))
    stale = last is None or time.time() - last[1] > FRESH_SECONDS
    if force or (stale and head_seq <= AUTO_VERIFY_MAX):
        started = time.perf_counter()
        try:
            report = ledger.verify()
        except LedgerUnavailable:
            return LedgerStatus(None, None, None, None, None)
        last = (report, time.time(), (time.perf_counter() - started) * 1000)
        with _lock:
            _last[id(ledger)] = last
    if last is None:
        return LedgerStatus(head_seq, None, None, None, _checkpoint(ledger))
    report, verified_at, duration = last
    return LedgerStatus(head_seq, report, verified_at, duration, _checkpoint(ledger))


def _checkpoint(ledger: Ledger) -> dict[str, Any] | None:
    """The latest signed Merkle checkpoint (broker/transparency/checkpoints.py), if any is stored."""
    try:
        from broker.transparency.checkpoints import latest_checkpoint
    except ImportError:                      # a ledger without checkpoints
        return None
    try:
        checkpoint = latest_checkpoint(ledger)
    except Exception:  # noqa: BLE001 - the page still shows the chain status
        log.warning("could not read the latest checkpoint", exc_info=True)
        return None
    if checkpoint is None:
        return None
    body = checkpoint.to_dict()
    body.pop("signature", None)              # long; GET /v1/ledger/checkpoint has it
    return body
