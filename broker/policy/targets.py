"""Target types as the policy loader sees them: which extra keys each ``kind: target`` ``type``
allows, and how they are checked.

Every target has ``kind``, ``name``, ``type``, ``max_ttl`` and optionally ``audience``. The
other keys come from the target kind: each kind of :data:`broker.targets.registry.KINDS`
declares them as data (its ``policy_keys``, a :class:`broker.targets.keys.TargetSchema`), and
:data:`TARGET_TYPES` is built from that one registry — so loading a policy never depends on
which modules happened to be imported first.

A kind's ``validate`` gets a :class:`TargetContext` and returns the problems it finds (an empty
list when the keys are fine). It may normalise values by assigning to ``ctx.options[key]``;
what is left in ``ctx.options`` becomes :attr:`broker.policy.model.Target.options`. Only keys
the document wrote (or that have a declared default) are in ``ctx.options``.

:func:`register_target_type` adds a type that has only a schema (a test's made-up type, a
plugin's): the broker's own kinds are never registered that way.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.policy.problems import Problem
from broker.policy.source import Located
from broker.targets.keys import COMMON_TARGET_KEYS, TargetSchema, schema_of_keys
from broker.targets.registry import KINDS

__all__ = ["COMMON_TARGET_KEYS", "TARGET_TYPES", "TargetContext", "TargetSchema", "TargetValidator",
           "register_target_type"]


@dataclass
class TargetContext:
    """What a type's validator sees of one target document."""
    name: str
    type: str
    options: dict[str, Any]            # the type-specific keys (as read by their specs)
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

#: ``type`` -> the keys it takes: the broker's target kinds, from the one registry.
TARGET_TYPES: dict[str, TargetSchema] = {name: kind.policy_keys for name, kind in KINDS.items()}


def register_target_type(name: str, allowed_keys: Iterable[str] = (),
                         validate: TargetValidator | None = None, *,
                         required_keys: Iterable[str] = (), replace: bool = False) -> TargetSchema:
    """Make ``type: <name>`` valid in target documents, with its own extra keys (any value;
    ``validate`` judges them)."""
    if name in TARGET_TYPES and not replace:
        raise ValueError(f"target type {name!r} is already registered")
    schema = schema_of_keys(name, allowed_keys, validate, required_keys=required_keys)
    TARGET_TYPES[name] = schema
    return schema
