"""Durations as written in policies and requests: ``90s``, ``15m``, ``1h``, ``2d`` or integer seconds."""
from __future__ import annotations

import re

#: ASCII digits only (``\d`` would take any script's digits), at most 15 of them: no
#: lifetime needs more, and a longer run would reach ``int()``'s digit limit.
_DURATION_RE = re.compile(r"^\s*([0-9]{1,15})\s*([smhd]?)\s*$", re.ASCII)
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> int:
    """Return whole seconds (> 0); raise ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(f"not a duration: {value!r} (use 90s, 15m, 1h, 1d or integer seconds)")
        seconds = int(m.group(1)) * _UNIT[m.group(2)]
    else:
        raise ValueError(f"not a duration: {value!r}")
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {value!r}")
    return seconds


def format_duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
