"""The vocabulary policy documents are declared in: keys, their types and validators, as data.

A schema is a :class:`Block` of :class:`Key` s; each key has a spec (:class:`Text`,
:class:`Integer`, :class:`Duration`, :class:`Strings`, :class:`Block`, :class:`MapOf`, …)
that says which values are acceptable and what to say about the others. The specs only
*describe*; :mod:`broker.policy.walk` is the one walker that reads a YAML document against a
schema and reports every problem with its ``file:line``.

This module lives beside the target kinds, not in :mod:`broker.policy`, because the kinds
declare their policy keys in it (:class:`TargetSchema`) and the policy loader imports the kinds:
the vocabulary must import neither (it imports nothing of the broker at all).

Messages are ``str.format`` templates. The fields a template may use: ``{label}`` (the key's
name as messages spell it, e.g. ``connect.port`` or ``approval: required``), ``{got}`` (the
value's type: ``a list``, ``an empty string``…), ``{shown}`` (an integer or string value as
written, else its type), ``{value!r}`` (the value) and ``{problem}`` (what a predicate said).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


class _Absent:
    """No default: an absent optional key stays absent."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


@dataclass(frozen=True)
class Key:
    """One key of a :class:`Block`: how its value is read, and whether it must be there."""
    spec: Spec
    required: bool = False
    default: Any = ABSENT            # filled in when the key is absent (never when it is bad)
    missing: str | None = None       # the message when a required key is absent


@dataclass(frozen=True)
class Anything:
    """Any value, kept as written (a validator looks at it later)."""


@dataclass(frozen=True)
class Text:
    """A non-empty string; optionally it must ``fullmatch`` ``pattern`` or pass ``check``
    (a predicate returning a problem, or None when the value is fine)."""
    pattern: re.Pattern[str] | None = None
    check: Callable[[str], str | None] | None = None
    message: str = "{label} must be a non-empty string, got {got}"
    mismatch: str | None = None      # when the pattern or the check refuses it (default: message)


@dataclass(frozen=True)
class Integer:
    """A whole number (never a boolean) from ``min`` to ``max``."""
    min: int | None = None
    max: int | None = None
    message: str = "{label} must be a whole number, got {shown}"


@dataclass(frozen=True)
class Boolean:
    message: str = "{label} must be true or false, got {got}"


@dataclass(frozen=True)
class Duration:
    """``90s``, ``15m``, ``1h``, ``2d`` or whole seconds (> 0), optionally within bounds."""
    min: int | None = None
    max: int | None = None
    message: str = "{label}: {problem}"
    out_of_range: str = "{label} is out of range"


@dataclass(frozen=True)
class Choice:
    """One of ``values`` (strings)."""
    values: tuple[str, ...]
    message: str = "{label} must be one of {choices}"


@dataclass(frozen=True)
class Value:
    """Any value accepted by ``check`` (a predicate returning a problem, or None)."""
    check: Callable[[Any], str | None]
    message: str = "{label} {problem}"


@dataclass(frozen=True)
class FilePath:
    """A file path, relative to the policy file's folder; stored absolute. Not read at load."""
    message: str = "{label} must be a file path"


@dataclass(frozen=True)
class Strings:
    """A list of distinct non-empty strings; each may also have to pass ``item``."""
    allow_empty: bool = False
    item: Text | Choice | None = None
    not_list: str = "{label} must be a list of strings, got {got}"
    empty: str = "{label} must not be empty"
    bad_item: str = "{label} must be a list of non-empty strings, got {got}"
    twice: str = "{label} lists {value!r} twice"


@dataclass(frozen=True)
class ListOf:
    """A list whose elements are read with ``item``; a problem of one is reported at its line."""
    item: Spec
    allow_empty: bool = True
    unique: bool = False
    not_list: str = "{label} must be a list, got {got}"
    empty: str = "{label} must not be empty"
    twice: str = "{label} lists {value!r} twice"


@dataclass(frozen=True)
class MapOf:
    """A mapping of free keys (each accepted by ``key``, a predicate returning a problem) to
    values read with ``value``. ``value_label`` names a value in messages (``{key}``)."""
    value: Spec
    key: Callable[[str], str | None] | None = None
    bad_key: str = "{label}: {value!r} {problem}"
    value_label: str = "{label}.{key}"
    allow_empty: bool = True
    not_mapping: str = "{label} must be a mapping, got {got}"
    empty: str = "{label} must not be empty"


@dataclass(frozen=True)
class Block:
    """A mapping of known keys: unknown keys and missing required keys are problems.

    ``name`` prefixes the block's own messages (``approval: unknown key …``); a key's label is
    ``name + join + key`` (``connect.port``, ``approval: required``). ``check`` runs after
    every key was read, for rules that span keys (it gets the walker, the mapping and the values
    read; it may add problems and fill in values). ``build`` turns the values into the result.
    """
    keys: Mapping[str, Key]
    name: str = ""
    join: str = "."
    not_mapping: str = "{label} must be a mapping, got {got}"
    check: Callable[[Any, Any, dict[str, Any]], None] | None = None
    build: Callable[[dict[str, Any]], Any] | None = None

    @property
    def allowed(self) -> frozenset[str]:
        return frozenset(self.keys)

    @property
    def required(self) -> frozenset[str]:
        return frozenset(k for k, key in self.keys.items() if key.required)

    def label(self, key: str) -> str:
        return f"{self.name}{self.join}{key}" if self.name else key


@dataclass(frozen=True)
class Custom:
    """A reader written as code, for the few values no spec describes (claim patterns, the
    ``derive`` entries…): ``read(walker, node, label)`` returns the value or ``INVALID``."""
    read: Callable[[Any, Any, str], Any]


Spec = Anything | Text | Integer | Boolean | Duration | Choice | Value | FilePath | Strings | \
    ListOf | MapOf | Block | Custom


# ---------------------------------------------------------------------------- target kinds

#: Keys every ``kind: target`` document has, whatever its type.
COMMON_TARGET_KEYS = frozenset({"kind", "name", "type", "audience", "max_ttl"})


@dataclass(frozen=True)
class TargetSchema:
    """What a target kind adds to a ``kind: target`` document.

    ``keys`` are the kind's own keys (besides :data:`COMMON_TARGET_KEYS`), each read by its
    spec; ``validate`` then sees them together (a ``TargetContext`` of the policy loader: the
    values in ``ctx.options``, ``ctx.problem(key, message)`` for problems) for rules that span
    keys, and may fill in defaults. What is left in ``ctx.options`` becomes ``Target.options``.

    ``ttl_check`` judges a lifetime in seconds (a problem, or None when the backend can grant
    it): the loader applies it to the target's ``max_ttl`` and to the lifetime every policy
    (and ``derive`` rule) naming the target can grant (the least of its ``max_ttl`` and the
    target's), so e.g. an AWS session shorter than STS allows fails at load, with ``file:line``.
    """
    name: str
    keys: Mapping[str, Key] = field(default_factory=dict)
    validate: Callable[[Any], Iterable[Any]] | None = None
    ttl_check: Callable[[int], str | None] | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError("a target type needs a non-empty name")
        clash = self.allowed_keys & COMMON_TARGET_KEYS
        if clash:
            raise ValueError(f"target type {self.name!r} redefines common keys: {sorted(clash)}")

    @property
    def allowed_keys(self) -> frozenset[str]:
        return frozenset(self.keys)

    @property
    def required_keys(self) -> frozenset[str]:
        return frozenset(k for k, key in self.keys.items() if key.required)


def schema_of_keys(name: str, allowed_keys: Iterable[str], validate: Callable[[Any], Iterable[Any]] | None,
                   *, required_keys: Iterable[str] = ()) -> TargetSchema:
    """A schema whose keys take any value (its ``validate`` judges them): the shape of
    :func:`broker.policy.targets.register_target_type`."""
    allowed = frozenset(allowed_keys)
    required = frozenset(required_keys)
    if not required <= allowed:
        raise ValueError(f"target type {name!r}: required keys {sorted(required - allowed)} "
                         f"are not allowed keys")
    return TargetSchema(name=name, validate=validate,
                        keys={k: Key(Anything(), required=k in required) for k in sorted(allowed)})
