"""The reaper: ends credentials whose resource outlives them, and removes orphans.

``VALID UNTIL`` only stops new PostgreSQL logins; sessions already open go on. The reaper
closes that gap for every target kind that declares it (``capabilities`` of
:class:`broker.targets.base.TargetKind`): ``reap`` for step 1, ``remove_orphans`` for step 2,
``reconcile`` for step 3:

1. **Expired or revoked, not yet ended** — :meth:`Ledger.credentials_to_end` (so it catches
   up from the ledger after any downtime): the issuer ends each at the resource (terminate
   sessions, drop the role), then :meth:`Ledger.record_end` sets ``ended_at`` and appends an
   ``expire`` event (``revoke`` when the credential was revoked and only its ending was left).
2. **Orphans** — resources the broker minted (``nhb_<credential id>`` roles) that the ledger
   does not know (a mint whose ledger write failed and whose undo failed too; older than a
   grace period so a mint in flight is never touched) or whose credential has ended: removed,
   and an unknown one is recorded as an ``expire`` event with ``cause: orphan``.
3. **Ended elsewhere** — credentials whose resource the backend ended on its own (a Vault lease
   revoked in Vault): the kind records their end.

Several reapers may run at once (every gunicorn worker of every host, plus ``broker reap`` from
cron): per target, a PostgreSQL advisory lock lets one of them sweep while the others skip;
per role, another advisory lock orders a reaper and a ``POST /revoke``; and ``record_end`` is
idempotent (its guard appends nothing for a credential already ended).

``broker serve`` runs :class:`ReaperThread` in each worker when ``BROKER_REAPER_INTERVAL`` > 0
and the policy set has a target of such a kind; ``broker reap`` runs one pass.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from broker import errors
from broker.common.ids import credential_id_time
from broker.ledger import LedgerUnavailable
from broker.ledger.events import CredentialRecord, EventDraft, utc_timestamp
from broker.lifecycle.pending import orphan_expire, sweep_pending

if TYPE_CHECKING:
    from collections.abc import Callable

    from broker.app import BrokerContext
    from broker.targets.base import Capabilities, Ended, TargetKind

log = logging.getLogger("broker.lifecycle.reaper")

#: Credentials read from the ledger per round; a pass runs rounds until nothing is left.
BATCH = 200
MAX_ROUNDS = 50


@dataclass
class ReapReport:
    """What one pass did (``broker reap --json`` prints it)."""
    ended: list[str] = field(default_factory=list)            # credential ids
    already_ended: int = 0                                    # another reaper recorded them first
    busy_targets: list[str] = field(default_factory=list)     # another reaper was sweeping them
    failed: list[dict[str, str]] = field(default_factory=list)
    orphans_removed: list[dict[str, str]] = field(default_factory=list)
    sessions_terminated: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"ended": self.ended, "already_ended": self.already_ended,
                "busy_targets": sorted(set(self.busy_targets)), "failed": self.failed,
                "orphans_removed": self.orphans_removed,
                "sessions_terminated": self.sessions_terminated}


def kinds_that(ctx: BrokerContext, declares: Callable[[Capabilities], bool]) -> dict[str, TargetKind]:
    """The context's target kinds whose declared capabilities satisfy ``declares``."""
    return {name: kind for name, kind in ctx.issuers.items() if declares(kind.capabilities)}


def _reaps(c: Capabilities) -> bool:
    return c.reap


def _reconciles(c: Capabilities) -> bool:
    return c.reconcile


def _removes_orphans(c: Capabilities) -> bool:
    return c.remove_orphans


def reaper_wanted(ctx: BrokerContext) -> bool:
    """Whether the policy set has a target of a kind the reaper has work for."""
    kinds = kinds_that(ctx, lambda c: c.reap or c.reconcile or c.remove_orphans)
    return any(t.type in kinds for t in ctx.policy_set.targets.values())


def _end_event(record: CredentialRecord, result: Ended, *, now: int) -> EventDraft:
    details: dict[str, Any]
    if record.revoked_at is not None and record.expires_at > now:
        type_, details = "revoke", {"result": "ended", "cause": "revocation completed by the reaper"}
    else:
        type_, details = "expire", {"cause": "expired", "expired_at": utc_timestamp(record.expires_at)}
    details.update({"by": "reaper", "role": result.role, "role_existed": result.existed,
                    "sessions_terminated": result.sessions_terminated})
    return EventDraft(type=type_, credential_id=record.credential_id, parent_id=record.parent_id,
                      principal=record.principal, run=record.run, authorizer=record.authorizer,
                      target=record.target, details=details)


_warned: set[tuple[str, str]] = set()


def _warn_once(target: str, what: str, reason: str) -> None:
    """A target that cannot be reached is reported once per process and reason (then at
    debug level), not on every pass."""
    key = (target, reason)
    level = logging.DEBUG if key in _warned else logging.WARNING
    _warned.add(key)
    log.log(level, "reaper: %s of target %s failed: %s", what, target, reason)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, errors.BrokerError):
        return exc.detail
    return type(exc).__name__          # never str(): a driver message is not ours to repeat


def reap_once(ctx: Any, *, now: float | None = None, orphans: bool = True,
              orphan_grace: float = 300.0) -> ReapReport:
    """One pass: end what expired or was revoked, then (``orphans``) remove orphans."""
    report = ReapReport()
    # mints a dead process of this host left unrecorded (their markers): removed at once
    _sweep_pending(ctx, report)
    reapers = kinds_that(ctx, _reaps)
    attempted: set[str] = set()
    for _ in range(MAX_ROUNDS if reapers else 0):
        moment = int(time.time() if now is None else now)
        records = [r for r in ctx.ledger.credentials_to_end(
            now=moment, limit=BATCH + len(attempted), target_types=sorted(reapers))
            if r.credential_id not in attempted]
        if not records:
            break
        groups: dict[tuple[str, str], list[CredentialRecord]] = defaultdict(list)
        for record in records[:BATCH]:
            groups[(record.target_type, record.target)].append(record)
            attempted.add(record.credential_id)
        for (kind_name, target), batch in groups.items():
            _end_group(ctx, reapers[kind_name], target, batch, report, now=moment)
        if len(records) < BATCH:
            break
    if orphans:
        for kind in kinds_that(ctx, _removes_orphans).values():
            for target in kind.targets():
                _remove_orphans(ctx, kind, target, report, now=now, grace=orphan_grace)
    # Kinds whose resource can end outside the broker (a Vault lease revoked in Vault, or by
    # its token's expiry) reconcile what the ledger thinks alive with the backend.
    for name, kind in kinds_that(ctx, _reconciles).items():
        try:
            reconciled = kind.reconcile(ctx.ledger, now=now)
        except (errors.BrokerError, LedgerUnavailable) as exc:
            log.warning("reaper: reconciling %s credentials failed: %s", name, _reason(exc))
            continue
        report.ended.extend(reconciled.ended)
        report.failed.extend(reconciled.failed)
    return report


def _sweep_pending(ctx: Any, report: ReapReport) -> None:
    try:
        swept = sweep_pending(ctx)
    except (errors.BrokerError, LedgerUnavailable) as exc:
        log.warning("reaper: the pending-mint sweep failed: %s", _reason(exc))
        return
    for removed in swept:
        report.orphans_removed.append({"role": removed["role"], "target": removed["target"],
                                       "why": "mint never recorded (pending marker)"})


def _end_group(ctx: BrokerContext, kind: TargetKind, target: str, records: list[CredentialRecord],
               report: ReapReport, *, now: int) -> None:
    try:
        results = list(kind.end_many(target, records))
    except (errors.BrokerError, LedgerUnavailable) as exc:
        for record in records:
            report.failed.append({"credential_id": record.credential_id, "reason": _reason(exc)})
        _warn_once(target, "ending credentials", _reason(exc))
        return
    if not results:
        report.busy_targets.append(target)
        return
    for record, result in results:
        if isinstance(result, BaseException):
            report.failed.append({"credential_id": record.credential_id, "reason": _reason(result)})
            log.warning("reaper: could not end credential_id=%s: %s", record.credential_id,
                        _reason(result))
            continue
        if result.busy:
            continue
        report.sessions_terminated += result.sessions_terminated
        event = ctx.ledger.record_end(record.credential_id, _end_event(record, result, now=now),
                                      ended_at=now)
        if event is None:
            report.already_ended += 1
        else:
            report.ended.append(record.credential_id)
            log.info("%s credential_id=%s role=%s sessions_terminated=%d", event.type,
                     record.credential_id, result.role, result.sessions_terminated)


def orphan_candidates(resources: list[str], credential_id_of: Callable[[str], str | None],
                      lookup: Callable[[str], CredentialRecord | None], *, now: float,
                      grace: float) -> list[tuple[str, str]]:
    """Which minted resources to remove: ``(resource, why)`` for those the ledger does not know
    (and that are older than ``grace``: a mint may be in flight) or whose credential has ended or
    been revoked."""
    out = []
    for resource in resources:
        cid = credential_id_of(resource)
        if cid is None:
            continue
        record = lookup(cid)
        if record is None:
            if now - credential_id_time(cid) > grace:
                out.append((resource, "unknown to the ledger"))
        elif record.ended_at is not None:
            out.append((resource, "credential already ended"))
        elif record.revoked_at is not None:
            out.append((resource, "credential revoked"))
    return out


def _remove_orphans(ctx: BrokerContext, kind: TargetKind, target: str, report: ReapReport, *,
                    now: float | None, grace: float) -> None:
    moment = time.time() if now is None else now
    try:
        roles = kind.minted_resources(target)
        ids = [cid for cid in (kind.credential_id_of_resource(r) for r in roles) if cid]
        known = ctx.ledger.credentials_by_id(ids)
        candidates = orphan_candidates(roles, kind.credential_id_of_resource, known.get,
                                       now=moment, grace=grace)
        if not candidates:
            return
        why = dict(candidates)
        results: list[tuple[str, Ended | Exception]] = kind.end_orphans(target, [r for r, _ in candidates])
    except (errors.BrokerError, LedgerUnavailable) as exc:
        _warn_once(target, "the orphan sweep", _reason(exc))
        return
    for role, result in results:
        if isinstance(result, BaseException):
            report.failed.append({"role": role, "reason": _reason(result)})
            continue
        if result.busy or not result.existed:
            continue
        report.sessions_terminated += result.sessions_terminated
        report.orphans_removed.append({"role": role, "target": target, "why": why[role]})
        log.warning("reaper: removed orphan role %s of target %s (%s)", role, target, why[role])
        if why[role] == "unknown to the ledger":
            ctx.ledger.append(orphan_expire(kind.credential_id_of_resource(role), target, role,
                                            by="reaper", why=why[role],
                                            sessions_terminated=result.sessions_terminated))


class ReaperThread:
    """Runs :func:`reap_once` every ``interval`` seconds in a daemon thread (one per broker
    process). The first pass comes soon after start, so a broker catches up after downtime."""

    def __init__(self, ctx: Any, *, interval: float, orphan_grace: float = 300.0) -> None:
        self.ctx = ctx
        self.interval = float(interval)
        self.orphan_grace = float(orphan_grace)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nhb-reaper", daemon=True)

    def start(self) -> ReaperThread:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        delay = random.uniform(0.1, min(self.interval, 2.0))     # workers do not all start at once
        while not self._stop.wait(delay):
            started = time.monotonic()
            try:
                report = reap_once(self.ctx, orphan_grace=self.orphan_grace)
                if report.failed:
                    log.warning("reaper: %d credential(s) could not be ended yet; next try in %gs",
                                len(report.failed), self.interval)
            except (errors.BrokerError, LedgerUnavailable) as exc:
                log.warning("reaper pass failed: %s", _reason(exc))
            except Exception:  # noqa: BLE001 - a bug must not kill the thread
                log.exception("reaper pass failed unexpectedly")
            delay = max(0.0, self.interval - (time.monotonic() - started))


def start_reaper(ctx: Any, config: Any) -> ReaperThread | None:
    """Start the background reaper when configured and useful; None otherwise."""
    from broker import config as cfg

    interval = cfg.number(config, "REAPER_INTERVAL")
    if interval <= 0 or not reaper_wanted(ctx):
        return None
    return ReaperThread(ctx, interval=interval,
                        orphan_grace=cfg.number(config, "REAPER_ORPHAN_GRACE")).start()
