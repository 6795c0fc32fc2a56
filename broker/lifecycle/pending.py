"""Pending-mint markers: closing the crash window between creating a resource and recording it.

A mint of a kind that creates a resource (a PostgreSQL role) runs ``CREATE ROLE`` first and
records the ``mint`` after. A process killed in between leaves a role the ledger does not know.
The reaper's orphan sweep would remove it after ``BROKER_REAPER_ORPHAN_GRACE`` (300 s) — a
safety net, too slow to be the mechanism. So before creating the resource the mint writes a
marker, one small file ``{state_dir}/pending-mints/<credential id>`` naming the target and the
writing process, and removes it once the mint is recorded or undone.

:func:`sweep_pending` handles the markers whose writer is gone (its process no longer runs) or
gave up on them (the mint failed and so did its undo: :meth:`PendingMints.abandon`):
a credential the ledger knows was recorded after all (the marker just goes); an unknown one is
removed at its target (the kind's ``end_orphans``) and recorded as ``expire`` with
``cause: orphan``, ``by: startup-sweep``. ``broker serve`` runs it before its workers start
(what a crash of the previous run on this host left) and the reaper on every pass (a worker
that died while the server lived on). A marker that cannot be handled yet (its target is down)
stays for the next pass.
"""
from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker import errors
from broker.ledger.events import EventDraft

if TYPE_CHECKING:
    from broker.app import BrokerContext

log = logging.getLogger("broker.lifecycle.pending")


@dataclass(frozen=True)
class Marker:
    credential_id: str
    target: str
    target_type: str
    pid: int


class PendingMints:
    """The marker directory of one host's state dir (shared by the processes of a server)."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "pending-mints")
        os.makedirs(self.path, mode=0o700, exist_ok=True)

    def _file(self, credential_id: str) -> str:
        if not credential_id or "/" in credential_id or credential_id.startswith("."):
            raise ValueError("not a credential id")
        return os.path.join(self.path, credential_id)

    def mark(self, credential_id: str, *, target: str, target_type: str) -> None:
        """Written before the resource is created (no fsync: the crash this covers is the
        process's, not the machine's; a mint's role is itself committed asynchronously)."""
        body = json.dumps({"target": target, "target_type": target_type, "pid": os.getpid()})
        fd = os.open(self._file(credential_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, body.encode("utf-8"))
        finally:
            os.close(fd)

    def abandon(self, credential_id: str) -> None:
        """The mint failed and its undo too (the target went away): hand the marker to the
        sweep now (its writer is alive, but nothing will come back for this resource)."""
        body = json.dumps({**self._read(credential_id), "pid": 0})
        with open(self._file(credential_id), "w", encoding="utf-8") as handle:
            handle.write(body)

    def _read(self, credential_id: str) -> dict[str, Any]:
        with open(self._file(credential_id), encoding="utf-8") as handle:
            body: dict[str, Any] = json.load(handle)
        return body

    def clear(self, credential_id: str) -> None:
        try:
            os.unlink(self._file(credential_id))
        except FileNotFoundError:
            pass

    def orphaned(self) -> list[Marker]:
        """Markers whose writing process is gone (unreadable ones are skipped)."""
        out = []
        for name in sorted(os.listdir(self.path)):
            try:
                body = self._read(name)
                marker = Marker(credential_id=name, target=str(body["target"]),
                                target_type=str(body["target_type"]), pid=int(body["pid"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue      # being written right now, or not ours
            if not _alive(marker.pid):
                out.append(marker)
        return out


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False                       # abandoned: see PendingMints.abandon
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_pending(ctx: BrokerContext) -> list[dict[str, str]]:
    """Handle the markers of dead writers (see the module docstring); returns what was removed
    at a target, as ``{"credential_id", "target", "role"}``."""
    pending: PendingMints | None = getattr(ctx, "pending", None)
    if pending is None:
        return []
    markers = pending.orphaned()
    if not markers:
        return []
    try:
        known = ctx.ledger.credentials_by_id([m.credential_id for m in markers])
    except errors.LedgerUnavailable:
        log.warning("pending-mint sweep: the ledger is unavailable; next pass tries again")
        return []
    unknown: dict[tuple[str, str], list[Marker]] = defaultdict(list)
    for marker in markers:
        if marker.credential_id in known:
            pending.clear(marker.credential_id)          # recorded after all
        else:
            unknown[(marker.target_type, marker.target)].append(marker)
    removed: list[dict[str, str]] = []
    for (kind_name, target), group in unknown.items():
        removed.extend(_remove(ctx, pending, kind_name, target, group))
    return removed


def _remove(ctx: BrokerContext, pending: PendingMints, kind_name: str, target: str,
            markers: list[Marker]) -> list[dict[str, str]]:
    kind = ctx.issuers.get(kind_name)
    if kind is None or not kind.capabilities.remove_orphans or target not in kind.targets():
        for marker in markers:             # nothing this broker can remove: the reaper's job
            pending.clear(marker.credential_id)
        return []
    ids = {m.credential_id for m in markers}
    try:
        roles = [r for r in kind.minted_resources(target) if kind.credential_id_of_resource(r) in ids]
        results = kind.end_orphans(target, roles) if roles else []
    except errors.BrokerError as exc:
        log.warning("pending-mint sweep of target %s failed: %s; next pass tries again",
                    target, exc.detail)
        return []
    if roles and not results:
        return []                          # another reaper holds the target's lock
    removed = []
    for role, result in results:
        cid = kind.credential_id_of_resource(role) or ""
        if isinstance(result, BaseException) or result.busy:
            ids.discard(cid)               # keep its marker: next pass
            continue
        if result.existed:
            removed.append({"credential_id": cid, "target": target, "role": role})
            log.warning("pending-mint sweep: removed role %s of target %s (a mint that was "
                        "never recorded)", role, target)
            ctx.ledger.append(orphan_expire(cid, target, role, by="startup-sweep",
                                            why="mint never recorded (pending marker)",
                                            sessions_terminated=result.sessions_terminated))
    for cid in ids:                        # removed, or never created (crash before CREATE ROLE)
        pending.clear(cid)
    return removed


def orphan_expire(credential_id: str | None, target: str, role: str, *, by: str, why: str,
                  sessions_terminated: int) -> EventDraft:
    """The ``expire`` event of a removed resource that the ledger did not know."""
    return EventDraft(type="expire", credential_id=credential_id, target=target,
                      details={"cause": "orphan", "by": by, "role": role, "why": why,
                               "sessions_terminated": sessions_terminated})
