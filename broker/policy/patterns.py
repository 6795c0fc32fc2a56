"""Claim patterns of a policy's ``match``, compiled once at load and matched with ``fullmatch``.

Spellings (each compiled to a :class:`re.Pattern` that must match the *whole* claim text):

``"acme/payments"``  exact string; ``42`` and ``true`` are exact too, compared with the claim's
    text (:func:`broker.policy.model.claim_text`: decimal integers, ``true``/``false``).
``{glob: "refs/heads/*"}``  shell-style path glob, anchored at both ends:
    ``*`` any run of characters except ``/``; ``**`` any run of characters including ``/``
    (anywhere, not only as a whole segment: ``a/**/b`` needs at least one segment between);
    ``?`` one character except ``/``; ``[abc]``, ``[a-z]``, ``[!abc]`` one character of (not of)
    the set, never ``/``. Everything else, backslash included, is literal. Case-sensitive.
``{regex: "acme/.*"}``  a Python regular expression, matched with ``fullmatch`` (so anchored
    whether or not it says ``^...$``).
``[a, {glob: b*}]``  any of the listed patterns.
"""
from __future__ import annotations

import re


def compile_exact(text: str) -> re.Pattern[str]:
    return re.compile(re.escape(text), re.DOTALL)


def compile_regex(expression: str) -> re.Pattern[str]:
    """Compile a user regex; raises :class:`re.error`. Callers use ``fullmatch``."""
    return re.compile(expression)


def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile a glob (semantics in the module docstring); raises ValueError when malformed."""
    return re.compile(glob_to_regex(pattern), re.DOTALL)


def glob_to_regex(pattern: str) -> str:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            out.append(".*" if j - i >= 2 else "[^/]*")
            i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = i + 1
            negate = j < n and pattern[j] == "!"
            if negate:
                j += 1
            start = j
            if j < n and pattern[j] == "]":      # a leading ']' is a member, as in fnmatch
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                raise ValueError(f"unclosed '[' at position {i} in glob {pattern!r}")
            members = _class_members(pattern[start:j])
            if not members:
                raise ValueError(f"empty character class at position {i} in glob {pattern!r}")
            out.append(f"[^/{members}]" if negate else f"(?!/)[{members}]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _class_members(body: str) -> str:
    """Regex character-class body for a glob class body: ranges kept, everything else literal."""
    parts: list[str] = []
    k = 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            low, high = body[k], body[k + 2]
            if low > high:
                raise ValueError(f"bad range {low}-{high} in character class")
            parts.append(f"{_class_escape(low)}-{_class_escape(high)}")
            k += 3
        else:
            parts.append(_class_escape(body[k]))
            k += 1
    return "".join(parts)


def _class_escape(ch: str) -> str:
    return "\\" + ch if ch in "\\]^-[" else ch
