"""Target types: which extra keys each ``kind: target`` ``type`` allows, and how they are checked.

Every target has ``kind``, ``name``, ``type``, ``max_ttl`` and optionally ``audience``. A type
adds its own keys by registering itself::

    register_target_type("postgres", {"admin_dsn_env", "connect", "grants", "connection_limit"},
                         validate_postgres, required_keys={"admin_dsn_env", "grants"})

The validator gets a :class:`TargetContext` and returns the problems it finds (an empty list
when the keys are fine). It may normalise values by assigning to ``ctx.options[key]``; what is
left in ``ctx.options`` becomes :attr:`broker.policy.model.Target.options`. Only keys the
document actually wrote are in ``ctx.options``; defaults are the validator's to fill in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from broker.policy.problems import Problem
from broker.policy.source import Located

# Keys every target document has, whatever its type.
COMMON_TARGET_KEYS = frozenset({"kind", "name", "type", "audience", "max_ttl"})


@dataclass
class TargetContext:
    """What a type's validator sees of one target document."""
    name: str
    type: str
    options: dict[str, Any]            # the type-specific keys as written (plain values)
    file: str
    line: int                          # line of the document
    base_dir: Path                     # the policy file's folder, for relative paths
    nodes: dict[str, Located] = field(default_factory=dict)   # the same keys with line numbers

    def line_of(self, key: str | None) -> int:
        node = self.nodes.get(key) if key is not None else None
        return node.line if node is not None else self.line

    def problem(self, key: str | None, message: str) -> Problem:
        """A problem at the value of ``key`` (or at the document when absent), naming the target."""
        return Problem(self.file, self.line_of(key), f"target {self.name!r}: {message}")


TargetValidator = Callable[[TargetContext], Iterable[Problem]]


@dataclass(frozen=True)
class TargetSchema:
    name: str
    allowed_keys: frozenset[str]       # type-specific keys, besides COMMON_TARGET_KEYS
    validate: TargetValidator
    required_keys: frozenset[str] = frozenset()


TARGET_TYPES: dict[str, TargetSchema] = {}


def _no_checks(ctx: TargetContext) -> list[Problem]:
    return []


def register_target_type(name: str, allowed_keys: Iterable[str] = (),
                         validate: TargetValidator | None = None, *,
                         required_keys: Iterable[str] = (), replace: bool = False) -> TargetSchema:
    """Make ``type: <name>`` valid in target documents, with its own extra keys."""
    allowed = frozenset(allowed_keys)
    required = frozenset(required_keys)
    if not name or not isinstance(name, str):
        raise ValueError("a target type needs a non-empty name")
    if name in TARGET_TYPES and not replace:
        raise ValueError(f"target type {name!r} is already registered")
    if allowed & COMMON_TARGET_KEYS:
        raise ValueError(f"target type {name!r} redefines common keys: {sorted(allowed & COMMON_TARGET_KEYS)}")
    if not required <= allowed:
        raise ValueError(f"target type {name!r}: required keys {sorted(required - allowed)} are not allowed keys")
    schema = TargetSchema(name=name, allowed_keys=allowed, validate=validate or _no_checks,
                          required_keys=required)
    TARGET_TYPES[name] = schema
    return schema


# A broker-signed JWT: nothing beyond the common keys.
register_target_type("jwt", (), _no_checks)
