"""How long the SDK waits before it retries a token request (docs/operations.md "Retrying").

Pure and standard library only. Which answers are safe to retry is decided in
:mod:`broker.sdk` (it knows the errors); this module only says *when*: the larger of the
broker's ``Retry-After`` (capped at :data:`RETRY_AFTER_CAP`) and an exponential backoff with
full jitter (a uniform wait between 0 and ``min(RETRY_CAP, RETRY_BASE * 2 ** (retry - 1))``),
so that many clients refused together do not come back together, and a long outage is asked
less and less often.
"""
from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable
from datetime import UTC

__all__ = ["DEFAULT_RETRIES", "DEFAULT_RETRY_DEADLINE", "MIN_ATTEMPT_SECONDS", "RETRY_AFTER_CAP",
           "RETRY_BASE", "RETRY_CAP", "backoff", "parse_retry_after", "retry_delay"]

#: Attempts after the first, and the seconds all attempts of one request may take together.
DEFAULT_RETRIES = 4
DEFAULT_RETRY_DEADLINE = 30.0
#: Exponential backoff: the first retry waits up to RETRY_BASE, each next one up to twice as
#: long, never more than RETRY_CAP.
RETRY_BASE = 0.25
RETRY_CAP = 5.0
#: A ``Retry-After`` longer than this is waited for only this long.
RETRY_AFTER_CAP = 30.0
#: A retry's timeout is cut to what is left of the deadline, but not below this (or the
#: request timeout, if shorter): one cut off at once would only hide the broker's answer.
MIN_ATTEMPT_SECONDS = 1.0


def backoff(retry: int, *, rng: Callable[[], float] = random.random) -> float:
    """Seconds before retry number ``retry`` (1 for the first): full jitter."""
    return rng() * min(RETRY_CAP, RETRY_BASE * 2.0 ** (max(1, retry) - 1))


def retry_delay(retry: int, retry_after: float | None, *,
                rng: Callable[[], float] = random.random) -> float:
    """Seconds before retry number ``retry``: at least the (capped) ``Retry-After``."""
    wait = backoff(retry, rng=rng)
    if retry_after is None:
        return wait
    return max(min(retry_after, RETRY_AFTER_CAP), wait)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """A ``Retry-After`` header (RFC 9110 §10.2.3: delta-seconds or an HTTP date) in seconds
    from ``now``; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
