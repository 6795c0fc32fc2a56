"""The one walker: reads a YAML document (:class:`Located`) against a declarative schema
(:mod:`broker.targets.keys`) and reports every problem with its line.

A value that cannot be used reads as :data:`INVALID` (and marks the document bad); a value
the YAML reader already reported (an alias, a refused tag) is :data:`INVALID` without a second
message. "Unknown key" and "missing required key" are judged here, once, for every block.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.common.durations import format_duration, parse_duration
from broker.policy.source import Located, type_name
from broker.targets.keys import (
    ABSENT,
    Anything,
    Block,
    Boolean,
    Choice,
    Custom,
    Duration,
    FilePath,
    Integer,
    ListOf,
    MapOf,
    Spec,
    Strings,
    Text,
    Value,
)


class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"

    def __bool__(self) -> bool:
        return False


INVALID: Any = _Invalid()

#: The longest duration any policy key accepts (a key may set a lower bound of its own): a
#: lifetime or age beyond a year is a typo, and every duration must stay far inside what
#: ``datetime.timedelta`` and a JWT's ``exp`` can hold.
MAX_DURATION = 365 * 86400


def got(value: Any) -> str:
    """How messages name what was written instead: its type, or "an empty string"/"list"."""
    if value == "" and isinstance(value, str):
        return "an empty string"
    if isinstance(value, list) and not value:
        return "an empty list"
    if isinstance(value, dict) and not value:
        return "an empty mapping"
    return type_name(value)


def shown(value: Any) -> str:
    """A string as written, anything else by its type (an integer as written, for
    :class:`Integer`)."""
    return repr(value) if isinstance(value, str) else type_name(value)


class Walker:
    """Reads one document. ``report(line, message)`` receives each problem (the caller adds
    the document's label); :attr:`ok` is False once any value was unusable."""

    def __init__(self, report: Callable[[int, str], None], *, base_dir: Path) -> None:
        self._report = report
        self.base_dir = base_dir
        self.ok = True
        self.key_line = 0            # the line of the key whose value is being read
        #: ``(kind, node)``: names of other documents this one refers to, checked once every
        #: file is read (``kind`` is ``target``, ``issuer`` or ``policy-issuer``).
        self.references: list[tuple[str, Located]] = []

    # -- reporting ---------------------------------------------------------------------------
    def error(self, line: int, message: str) -> None:
        self.ok = False
        self._report(line, message)

    def say(self, node: Located, template: str, label: str, **fields: Any) -> Any:
        """Report ``template`` about ``node`` and return :data:`INVALID`."""
        value = node.data
        context = {"label": label, "got": got(value), "shown": shown(value), "value": value}
        context.update(fields)
        self.error(node.line, template.format(**context))
        return INVALID

    def quiet(self, node: Located) -> bool:
        """True when the YAML reader already reported ``node``: the document is bad, but a
        second message about the same value would be noise."""
        if node.reported:
            self.ok = False
        return node.reported

    # -- reading -----------------------------------------------------------------------------
    def read(self, spec: Spec, node: Located, label: str) -> Any:
        if self.quiet(node):
            return INVALID
        reader = _READERS[type(spec)]
        return reader(self, spec, node, label)

    def block(self, block: Block, node: Located, label: str = "", *,
              unknown_ok: bool = False) -> Any:
        """The values of a mapping with known keys (absent keys with a default get it);
        :data:`INVALID` when it is not a mapping. ``unknown_ok``: keys outside the schema are
        not judged (nor read)."""
        if self.quiet(node):
            return INVALID
        if not node.is_mapping:
            return self.say(node, block.not_mapping, label or block.name)
        assert node.items is not None
        prefix = f"{block.name}: " if block.name else ""
        allowed = block.allowed
        for key, (line, _) in node.items.items():
            if key not in allowed and not unknown_ok:
                self.error(line, f"{prefix}unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
        missing = sorted(block.required - set(node.items))
        for key in missing:
            self.error(node.line, block.keys[key].missing or f"{prefix}missing required key {key!r}")
        values: dict[str, Any] = {}
        for key, spec in block.keys.items():
            if key in node.items:
                self.key_line, value_node = node.items[key]
                values[key] = self.read(spec.spec, value_node, block.label(key))
            elif spec.default is not ABSENT:
                values[key] = spec.default
        if block.check is not None:
            block.check(self, node, values)
        if block.build is not None:
            if missing or any(v is INVALID for v in values.values()):
                return INVALID
            return block.build(values)
        return values


def valid(values: dict[str, Any], key: str) -> bool:
    """Whether ``key`` was given (or defaulted) and is usable."""
    return key in values and values[key] is not INVALID


# ---------------------------------------------------------------------------- readers

def _anything(w: Walker, spec: Anything, node: Located, label: str) -> Any:
    return node.data


def _text(w: Walker, spec: Text, node: Located, label: str) -> Any:
    value = node.data
    if not isinstance(value, str) or not value.strip():
        return w.say(node, spec.message, label)
    mismatch = spec.mismatch or spec.message
    if spec.pattern is not None and not spec.pattern.fullmatch(value):
        return w.say(node, mismatch, label)
    if spec.check is not None:
        problem = spec.check(value)
        if problem is not None:
            return w.say(node, mismatch, label, problem=problem)
    return value


def _integer(w: Walker, spec: Integer, node: Located, label: str) -> Any:
    value = node.data
    if (isinstance(value, bool) or not isinstance(value, int)
            or (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max)):
        number = repr(value) if isinstance(value, int) and not isinstance(value, bool) else type_name(value)
        return w.say(node, spec.message, label, shown=number)
    return value


def _boolean(w: Walker, spec: Boolean, node: Located, label: str) -> Any:
    if not isinstance(node.data, bool):
        return w.say(node, spec.message, label)
    return node.data


def _duration(w: Walker, spec: Duration, node: Located, label: str) -> Any:
    try:
        seconds = parse_duration(node.data)
    except ValueError as exc:
        return w.say(node, spec.message, label, problem=exc)
    if (spec.min is not None and seconds < spec.min) or (spec.max is not None and seconds > spec.max):
        return w.say(node, spec.out_of_range, label)
    if seconds > MAX_DURATION:
        return w.say(node, f"{{label}} must be at most {format_duration(MAX_DURATION)}, got {{shown}}",
                     label)
    return seconds


def _choice(w: Walker, spec: Choice, node: Located, label: str) -> Any:
    if not isinstance(node.data, str) or node.data not in spec.values:
        return w.say(node, spec.message, label, choices=", ".join(sorted(spec.values)))
    return node.data


def _value(w: Walker, spec: Value, node: Located, label: str) -> Any:
    problem = spec.check(node.data)
    if problem is not None:
        return w.say(node, spec.message, label, problem=problem)
    return node.data


def _file_path(w: Walker, spec: FilePath, node: Located, label: str) -> Any:
    if not isinstance(node.data, str) or not node.data:
        return w.say(node, spec.message, label)
    path = Path(node.data)
    return str((path if path.is_absolute() else w.base_dir / path).resolve())


def _strings(w: Walker, spec: Strings, node: Located, label: str) -> Any:
    if not node.is_list:
        return w.say(node, spec.not_list, label)
    assert node.elements is not None
    if not node.elements and not spec.allow_empty:
        return w.say(node, spec.empty, label)
    good: dict[str, None] = {}           # ordered, and membership stays O(1) in long lists
    for element in node.elements:
        if w.quiet(element):
            continue
        value = element.data
        if not isinstance(value, str) or not value.strip():
            w.say(element, spec.bad_item, label)
        elif value in good:
            w.say(element, spec.twice, label)
        else:
            good[value] = None
    if len(good) != len(node.elements):
        return INVALID
    if spec.item is not None:
        checked = [w.read(spec.item, element, label) for element in node.elements]
        if any(v is INVALID for v in checked):
            return INVALID
    return tuple(good)


def _list_of(w: Walker, spec: ListOf, node: Located, label: str) -> Any:
    if not node.is_list:
        return w.say(node, spec.not_list, label)
    assert node.elements is not None
    if not node.elements and not spec.allow_empty:
        return w.say(node, spec.empty, label)
    values = [w.read(spec.item, element, label) for element in node.elements]
    if any(v is INVALID for v in values):
        return INVALID
    if spec.unique:
        seen: list[Any] = []
        for element, value in zip(node.elements, values, strict=True):
            if value in seen:
                return w.say(element, spec.twice, label)
            seen.append(value)
    return values


def _map_of(w: Walker, spec: MapOf, node: Located, label: str) -> Any:
    if not node.is_mapping:
        return w.say(node, spec.not_mapping, label)
    assert node.items is not None
    if not node.items and not spec.allow_empty:
        return w.say(node, spec.empty, label)
    result: dict[str, Any] = {}
    ok = True
    for key, (line, value_node) in node.items.items():
        problem = spec.key(key) if spec.key is not None else None
        if problem is not None:
            w.error(line, spec.bad_key.format(label=label, value=key, problem=problem))
            ok = False
            continue
        w.key_line = line
        value = w.read(spec.value, value_node, spec.value_label.format(label=label, key=key))
        ok = ok and value is not INVALID
        result[key] = value
    return result if ok else INVALID


def _block(w: Walker, spec: Block, node: Located, label: str) -> Any:
    return w.block(spec, node, label)


def _custom(w: Walker, spec: Custom, node: Located, label: str) -> Any:
    return spec.read(w, node, label)


_READERS: dict[type, Callable[[Walker, Any, Located, str], Any]] = {
    Anything: _anything, Text: _text, Integer: _integer, Boolean: _boolean, Duration: _duration,
    Choice: _choice, Value: _value, FilePath: _file_path, Strings: _strings, ListOf: _list_of,
    MapOf: _map_of, Block: _block, Custom: _custom,
}
