"""``utc_timestamp`` formats the date-and-time once per second: it must still equal
``datetime``'s own formatting for every instant, from any number of threads at once."""
from __future__ import annotations

import random
import threading
from datetime import UTC, datetime

from broker.ledger.events import utc_timestamp


def _reference(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_equal_to_datetime_formatting() -> None:
    rng = random.Random(7)
    for t in [0.0, 1.5, 1_772_359_800.999999, *(rng.uniform(0, 4e9) for _ in range(20_000))]:
        assert utc_timestamp(t) == _reference(t)


def test_threads_alternating_seconds_never_mix_them() -> None:
    wrong: list[tuple[float, str]] = []

    def work(base: float) -> None:
        for i in range(20_000):
            t = base + (i % 7) + 0.25
            if utc_timestamp(t) != _reference(t):
                wrong.append((t, utc_timestamp(t)))

    threads = [threading.Thread(target=work, args=(b,)) for b in (1e9, 2e9, 3e9, 3.5e9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
