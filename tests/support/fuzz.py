"""Hypothesis helpers the fuzz tests share: settings that write nothing into the repository, and
strategies for hostile input (text with NULs and controls, bytes that are not UTF-8, numbers
far outside any sane range).

The profile (tests/fuzz/conftest.py) is derandomized, so a run is reproducible and CI does not
flake; ``BROKER_FUZZ=deep`` switches to random search with ten times the examples, for a
longer hunt by hand. ``database=None`` in both: no example database; and Hypothesis's other
caches (``constants``, ``unicode_data``) go to the system's temporary folder, not a
``.hypothesis`` directory in the working tree (``HYPOTHESIS_STORAGE_DIRECTORY`` still wins).
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "nhi-broker-hypothesis")

PROFILE = "broker-fuzz"
DEEP = os.environ.get("BROKER_FUZZ") == "deep"

settings.register_profile(
    PROFILE, database=None, deadline=None, derandomize=not DEEP, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture])

#: Longest a single parse may take before the property calls it a hang (far above a normal
#: parse, far below "never returns"; generous for a shared, loaded machine).
HANG = 5.0


def fuzz(max_examples: int) -> Callable[[Any], Any]:
    """``@fuzz(n)``: the shared profile with ``n`` examples (``10 n`` when deep)."""
    return settings(settings.get_profile(PROFILE), max_examples=max_examples * (10 if DEEP else 1))


@contextmanager
def no_hang(what: str = "parse") -> Iterator[None]:
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    assert elapsed < HANG, f"{what} took {elapsed:.1f}s"


#: Characters parsers trip over: NUL and other controls, quotes, separators, a lone surrogate
#: is impossible in UTF-8 so it stays out; non-ASCII digits and letters are in.
AWKWARD = "\x00\x01\x07\x08\t\n\r\x0b\x0c\x1b\x7f\x85\xa0\u2028\u2029\ufeff\ufffd\u0663\u00e9\u202e" \
          " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def hostile_text(max_size: int = 40) -> st.SearchStrategy[str]:
    """Text biased towards the characters above, mixed with anything Unicode has."""
    return st.text(alphabet=st.one_of(st.sampled_from(AWKWARD), st.characters(exclude_categories=["Cs"])),
                   max_size=max_size)


def hostile_bytes(max_size: int = 64) -> st.SearchStrategy[bytes]:
    """Bytes, often not UTF-8."""
    return st.one_of(st.binary(max_size=max_size),
                     hostile_text(max_size // 2).map(lambda t: t.encode("utf-8")),
                     st.lists(st.sampled_from([b"\x00", b"\xff", b"\xc3", b"\xe2\x82", b"%", b"%zz",
                                               b"%ff", b"+", b"&", b"=", b";", b"a"]),
                              max_size=max_size // 2).map(b"".join))


#: Integers at and past the edges parsers care about (int16, int32, 64 bits, int()'s digits).
EDGE_INTEGERS = st.one_of(
    st.integers(-2, 2),
    st.sampled_from([2**15 - 1, 2**15, 2**16, 2**31 - 1, 2**31, 2**32, 2**63, 2**64, -2**63 - 1,
                     10**20, 10**100, 10**4299, -10**4299]),
    st.integers())
