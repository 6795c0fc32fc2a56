"""Strict YAML reading: PyYAML's node API (safe loading) turned into :class:`Located` trees.

Every value keeps the 1-based line it was written on, so each later check can say ``file:line``.
Refused outright, as problems (the rest of the file is still read):

- aliases (``*name``) and anchors (``&name``): no shared or exponentially expanding structures;
- merge keys (``<<``) and every tag that is not a plain string, integer, boolean, null, float,
  list or mapping (``!!python/...``, ``!!binary``, ``!!set``, ``!custom`` ...);
- strings holding a lone surrogate (a ``"\\ud83d"`` escape: YAML does not pair them as JSON does);
- unquoted dates and times (YAML 1.1 would turn ``2024-01-01`` into a date): quote them;
- infinite and not-a-number floats, and integers beyond :data:`MAX_INT_BITS` bits;
- nesting deeper than :data:`MAX_DEPTH` lists and mappings (it ends the file, like a syntax
  error: the reader is recursive, and no policy needs more than a handful of levels);
- characters YAML does not allow in a stream (NUL and other control characters): the file is
  not read at all.
- non-scalar or empty mapping keys, and duplicate keys in a mapping.

Mapping keys are taken as written (``on:`` is the string ``"on"``, not YAML 1.1's ``True``).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import yaml
from yaml.constructor import SafeConstructor
from yaml.error import Mark
from yaml.events import AliasEvent, Event, MappingStartEvent, ScalarEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _BOOL, _NULL, _FLOAT = (_TAG + t for t in ("str", "int", "bool", "null", "float"))
_TIMESTAMP, _MERGE, _SEQ, _MAP = _TAG + "timestamp", _TAG + "merge", _TAG + "seq", _TAG + "map"

_ALIAS = "!broker/refused-alias"     # stands in for an alias, already reported

#: Deepest nesting of lists and mappings a policy file may have (the deepest real document,
#: a target's ``vault: {auth: {...}}``, needs five).
MAX_DEPTH = 64
#: Largest integer a policy file may write, in bits (about 900 decimal digits): far beyond any
#: use, and well within what Python converts back to text (4300 digits) for a message or a
#: digest. Larger ones, in any base, are refused.
MAX_INT_BITS = 3000

_SCALARS = SafeConstructor()

ReportFn = Callable[[int, str], None]


@dataclass
class Located:
    """A YAML value with its line. ``data`` is the plain Python value (what digests cover).

    For a mapping, ``items`` maps each key to ``(key_line, value)``; for a list, ``elements``
    holds the located elements. Scalars have neither.
    """
    data: Any
    line: int
    items: dict[str, tuple[int, Located]] | None = None
    elements: list[Located] | None = None
    reported: bool = False      # the reader already reported this value; checks stay quiet

    @property
    def is_mapping(self) -> bool:
        return self.items is not None

    @property
    def is_list(self) -> bool:
        return self.elements is not None

    def key_line(self, key: str) -> int:
        assert self.items is not None
        return self.items[key][0] if key in self.items else self.line

    def get(self, key: str) -> Located | None:
        if self.items is None or key not in self.items:
            return None
        return self.items[key][1]


class _TooDeep(yaml.YAMLError):
    """Nesting beyond :data:`MAX_DEPTH`: the file is not read further."""

    def __init__(self, line: int) -> None:
        super().__init__(f"lists and mappings nested deeper than {MAX_DEPTH} levels")
        self.line = line


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that reports anchors and aliases instead of resolving them, and refuses
    nesting deeper than :data:`MAX_DEPTH`."""

    def __init__(self, stream: str, report: ReportFn) -> None:  # noqa: D107
        super().__init__(stream)
        self._report = report
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        # types-PyYAML leaves the pure-Python parser's event methods unannotated
        event: Event = self.peek_event()  # type: ignore[no-untyped-call]
        assert event.start_mark is not None       # the pure-Python parser marks every event
        line = event.start_mark.line + 1
        if isinstance(event, (SequenceStartEvent, MappingStartEvent)) and self._depth >= MAX_DEPTH:
            raise _TooDeep(line)
        if isinstance(event, ScalarEvent) and not event.value.isascii() and _lone_surrogate(event.value):
            self._report(line, "a \\uD800-\\uDFFF escape (half of a UTF-16 pair) is not a character: "
                               "write the character itself, or \\U and its 8 hex digits")
            event.value = event.value.encode("utf-8", "replace").decode("utf-8")
        if isinstance(event, AliasEvent):
            self.get_event()  # type: ignore[no-untyped-call]
            self._report(line, f"YAML aliases (*{event.anchor}) are not allowed in policy files")
            # the stubs allow libyaml's Mark too; SafeLoader's marks are yaml.error.Mark
            return ScalarNode(_ALIAS, "", cast("Mark", event.start_mark),
                              cast("Mark | None", event.end_mark))
        if isinstance(event, (ScalarEvent, SequenceStartEvent, MappingStartEvent)) and event.anchor:
            self._report(line, f"YAML anchors (&{event.anchor}) are not allowed in policy files")
            event.anchor = None
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a surrogate code point (YAML's ``"\\ud83d"`` escape makes one):
    it is not encodable, so no digest, log line or token could carry it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def read_documents(text: str, report: ReportFn) -> Iterator[Located]:
    """Yield each non-empty document of ``text``; report problems as ``(line, message)``.

    A YAML syntax error ends the file (the parser cannot resume); it is reported, and the
    documents before it have already been yielded. So does nesting deeper than
    :data:`MAX_DEPTH`; a character YAML refuses in any stream (NUL…) means nothing is read.
    """
    try:
        loader = _StrictLoader(text, report)
    except ReaderError as exc:         # the reader checks the whole text before parsing
        character = exc.character if isinstance(exc.character, str) else chr(exc.character)
        report(text.count("\n", 0, exc.position) + 1,
               f"character U+{ord(character):04X} is not allowed in a YAML file")
        return
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            if isinstance(node, ScalarNode) and node.tag == _NULL and node.value in ("", "~", "null"):
                continue   # an empty document, e.g. after a trailing '---'
            yield _locate(node, report)
    except _TooDeep as exc:
        report(exc.line, f"{exc}: not read further")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{context}: {problem}" if context else problem
        report(line, f"YAML syntax error: {detail}")
    finally:
        loader.dispose()


def _locate(node: Node, report: ReportFn) -> Located:
    line = node.start_mark.line + 1
    if isinstance(node, ScalarNode) and node.tag == _ALIAS:
        return Located(None, line, reported=True)
    if isinstance(node, ScalarNode):
        problems: list[str] = []
        value = _scalar(node, lambda _line, message: problems.append(message))
        for message in problems:
            report(line, message)
        return Located(value, line, reported=bool(problems))
    if isinstance(node, SequenceNode):
        if node.tag != _SEQ:
            report(line, f"YAML tag {node.tag} is not allowed in policy files")
        elements = [_locate(child, report) for child in node.value]
        return Located([e.data for e in elements], line, elements=elements,
                       reported=node.tag != _SEQ)
    if isinstance(node, MappingNode):
        return _locate_mapping(node, line, report)
    raise TypeError(f"unexpected YAML node {node!r}")  # pragma: no cover - PyYAML has no others


def _locate_mapping(node: MappingNode, line: int, report: ReportFn) -> Located:
    if node.tag != _MAP:
        report(line, f"YAML tag {node.tag} is not allowed in policy files")
    items: dict[str, tuple[int, Located]] = {}
    for key_node, value_node in node.value:
        key_line = key_node.start_mark.line + 1
        key = _mapping_key(key_node, key_line, items, report)
        if key is not None:
            items[key] = (key_line, _locate(value_node, report))
    return Located({k: v.data for k, (_, v) in items.items()}, line, items=items,
                   reported=node.tag != _MAP)


def _mapping_key(key_node: Node, key_line: int, items: dict[str, tuple[int, Located]],
                 report: ReportFn) -> str | None:
    """The key of a mapping entry, or None (reported, unless an alias already was) when the
    entry is dropped."""
    if not isinstance(key_node, ScalarNode):
        report(key_line, "mapping keys must be plain strings")
        return None
    if key_node.tag == _ALIAS:
        return None        # already reported
    if key_node.tag == _MERGE:
        report(key_line, "YAML merge keys (<<) are not allowed in policy files")
        return None
    if key_node.tag not in (_STR, _INT, _BOOL, _NULL, _FLOAT, _TIMESTAMP):
        report(key_line, f"YAML tag {key_node.tag} is not allowed in policy files")
        return None
    key: str = key_node.value
    if key == "":
        report(key_line, "empty mapping key")
        return None
    if key in items:
        report(key_line, f"duplicate key {key!r} (first at line {items[key][0]})")
        return None
    return key


def _scalar(node: ScalarNode, report: ReportFn) -> Any:
    line = node.start_mark.line + 1
    tag = node.tag
    if tag == _STR:
        return node.value
    if tag == _NULL:
        return None
    if tag == _BOOL:
        return _SCALARS.construct_yaml_bool(node)
    if tag == _INT:
        try:
            number: int = _SCALARS.construct_yaml_int(node)
        except ValueError:     # more digits than int() converts (sys.get_int_max_str_digits)
            number = 1 << MAX_INT_BITS
        if number.bit_length() > MAX_INT_BITS:
            report(line, f"integer too large ({len(node.value)} characters): quote it to use "
                         f"it as text")
            return None
        return number
    if tag == _FLOAT:
        value = _SCALARS.construct_yaml_float(node)
        if math.isinf(value) or math.isnan(value):
            report(line, f"{node.value!r} is not a finite number")
            return None
        return value
    if tag == _TIMESTAMP:
        report(line, f"unquoted date/time {node.value!r}: quote it to use it as a string")
        return node.value
    report(line, f"YAML tag {tag} is not allowed in policy files")
    return None


def type_name(value: Any) -> str:
    """How a YAML value's type is called in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
