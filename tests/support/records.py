"""What the ledger holds for a refusal: a ``deny``, or — for a ``503`` because a dependency is
down — the ``outage`` event that counts it (written in the background: flushed first)."""
from __future__ import annotations

from typing import Any


def last_refusal(app: Any) -> Any:
    """The last event, once the app's outage writer has written what it queued; it must be a
    ``deny`` or an ``outage``."""
    ctx = app.extensions["broker"]
    assert ctx.outages.flush()
    events = list(ctx.ledger.iter_events())
    assert events and events[-1].type in ("deny", "outage"), [e.type for e in events[-3:]]
    return events[-1]
