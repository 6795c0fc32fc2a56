"""Property: the gateway's PostgreSQL wire-protocol parsers (broker/gateway/protocol.py) answer
any bytes with a value or :class:`ProtocolViolation` — never ValueError, IndexError,
struct.error or UnicodeDecodeError (the session turns a ProtocolViolation into PostgreSQL's
FATAL ``08P01``; tests/gateway/test_gw_malformed.py checks that on the wire) — and a message
built as the PostgreSQL documentation lays it out (chapter 55.7, "Message Formats") parses back
to the values it was built from.

The encoders below are written from the documentation, not from the module under test."""
from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from broker.gateway import protocol as p
from tests.support.fuzz import EDGE_INTEGERS, fuzz, hostile_bytes, no_hang

# ------------------------------------------------------------------ encoders, from the docs

NAMES = st.binary(max_size=12).map(lambda b: b.replace(b"\x00", b""))
VALUES = st.lists(st.one_of(st.none(), st.binary(max_size=20)), max_size=6)


def int16(n: int) -> bytes:
    return struct.pack("!h", n)


def int32(n: int) -> bytes:
    return struct.pack("!i", n)


def encode_values(formats: list[int], values: list[bytes | None]) -> bytes:
    out = int16(len(formats)) + b"".join(int16(f) for f in formats) + int16(len(values))
    for value in values:
        out += int32(-1) if value is None else int32(len(value)) + value
    return out


def bind_body(portal: bytes, statement: bytes, formats: list[int], values: list[bytes | None],
              results: list[int]) -> bytes:
    return (portal + b"\x00" + statement + b"\x00" + encode_values(formats, values)
            + int16(len(results)) + b"".join(int16(r) for r in results))


@st.composite
def binds(draw: st.DrawFn) -> tuple[bytes, bytes, list[bytes | None], bytes]:
    portal, statement, values = draw(NAMES), draw(NAMES), draw(VALUES)
    nformats = draw(st.sampled_from([0, 1, len(values)]))
    formats = draw(st.lists(st.sampled_from([0, 1]), min_size=nformats, max_size=nformats))
    results = draw(st.lists(st.sampled_from([0, 1]), max_size=4))
    return portal, statement, values, bind_body(portal, statement, formats, values, results)


# ------------------------------------------------------------------ the parsers, any bytes

BODY_PARSERS: dict[str, Callable[[bytes], Any]] = {
    "Bind": p.parse_bind, "Parse": p.parse_parse, "Execute": p.parse_execute, "Close": p.parse_close,
    "FunctionCall": p.parse_function_call, "Query": p.parse_query,
    "ParameterStatus": p.parse_parameter_status, "PasswordMessage": p.parse_password_message,
    "ErrorResponse": p.parse_error_fields, "StartupPacket": p.parse_startup_packet,
}


def parses_or_violates(parse: Callable[[bytes], Any], data: bytes) -> Any:
    """The parser's value, or None for a ProtocolViolation; any other exception fails the test."""
    with no_hang():
        try:
            return parse(data)
        except p.ProtocolViolation:
            return None


@pytest.mark.parametrize("name", sorted(BODY_PARSERS))
@fuzz(150)
@given(data=hostile_bytes(96))
def test_any_bytes_parse_or_are_a_protocol_violation(name, data):
    parses_or_violates(BODY_PARSERS[name], data)


def _mutations(body: bytes) -> st.SearchStrategy[bytes]:
    """``body`` truncated, with a byte changed, with bytes inserted, or with a count/length
    field overwritten by an edge value (negative, huge)."""
    n = len(body)
    cut = st.integers(0, max(n - 1, 0)).map(lambda i: body[:i])
    flip = st.tuples(st.integers(0, max(n - 1, 0)), st.integers(0, 255)).map(
        lambda t: body[:t[0]] + bytes([t[1]]) + body[t[0] + 1:] if n else body)
    insert = st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=4)).map(
        lambda t: body[:t[0]] + t[1] + body[t[0]:])
    field = st.tuples(st.integers(0, max(n - 2, 0)), st.sampled_from(["!h", "!i"]), EDGE_INTEGERS).map(
        lambda t: _overwrite(body, *t))
    return st.one_of(cut, flip, insert, field)


def _overwrite(body: bytes, pos: int, fmt: str, value: int) -> bytes:
    size = struct.calcsize(fmt)
    bits = 8 * size
    packed = struct.pack(fmt, (value + 2 ** (bits - 1)) % 2 ** bits - 2 ** (bits - 1))
    return body[:pos] + packed + body[pos + size:]


@fuzz(200)
@given(data=st.data())
def test_mutated_binds_parse_or_are_a_protocol_violation(data):
    *_, body = data.draw(binds())
    mutated = data.draw(_mutations(body))
    parsed = parses_or_violates(p.parse_bind, mutated)
    if parsed is not None:                    # what was read lies inside the message
        portal, statement, values = parsed
        assert len(portal) + len(statement) + sum(len(v or b"") for v in values) <= len(mutated)


@fuzz(150)
@given(data=st.data(), kind=st.sampled_from(["Parse", "Execute", "Close", "FunctionCall", "StartupPacket"]))
def test_mutated_messages_of_every_kind_parse_or_are_a_protocol_violation(data, kind):
    valid = {
        "Parse": b"stmt\x00select $1, $2\x00" + int16(2) + int32(23) + int32(25),
        "Execute": b"portal\x00" + int32(10),
        "Close": b"Sstmt\x00",
        "FunctionCall": int32(1234) + encode_values([0], [b"abc", None]) + int16(0),
        "StartupPacket": p.startup_message({"user": "u", "database": "d"}),
    }[kind]
    parses_or_violates(BODY_PARSERS[kind], data.draw(_mutations(valid)))


# ------------------------------------------------------------------ negative counts and lengths

@fuzz(100)
@given(count=st.integers(-2**15, -1), which=st.sampled_from(["formats", "values", "results"]))
def test_a_negative_count_is_a_protocol_violation(count, which):
    counts = {"formats": 0, "values": 0, "results": 0, which: count}
    body = (b"\x00\x00" + int16(counts["formats"]) + int16(counts["values"]) + int16(counts["results"]))
    with pytest.raises(p.ProtocolViolation):
        p.parse_bind(body)
    if which != "results":
        with pytest.raises(p.ProtocolViolation):
            p.parse_function_call(int32(1) + int16(counts["formats"]) + int16(counts["values"]) + int16(0))


@fuzz(100)
@given(length=st.one_of(st.integers(-2**31, -2), st.integers(1, 2**31 - 1)), present=st.binary(max_size=8))
def test_a_value_length_past_the_end_or_below_null_is_a_protocol_violation(length, present):
    assume(length < 0 or length > len(present))
    body = b"\x00\x00" + int16(0) + int16(1) + int32(length) + present + int16(0)
    with pytest.raises(p.ProtocolViolation):
        p.parse_bind(body)


# ------------------------------------------------------------------ round trips

@fuzz(200)
@given(binds())
def test_a_well_formed_bind_parses_back(case):
    portal, statement, values, body = case
    assert p.parse_bind(body) == (portal, statement, values)


@fuzz(100)
@given(name=NAMES, text=NAMES, types=st.lists(st.integers(0, 2**31 - 1), max_size=5))
def test_a_well_formed_parse_parses_back(name, text, types):
    body = name + b"\x00" + text + b"\x00" + int16(len(types)) + b"".join(int32(t) for t in types)
    assert p.parse_parse(body) == (name, text)


@fuzz(100)
@given(portal=NAMES, limit=st.integers(-2**31, 2**31 - 1))
def test_a_well_formed_execute_parses_back(portal, limit):
    assert p.parse_execute(portal + b"\x00" + int32(limit)) == (portal, limit)


@fuzz(50)
@given(kind=st.sampled_from(b"SP"), name=NAMES)
def test_a_well_formed_close_parses_back(kind, name):
    assert p.parse_close(bytes([kind]) + name + b"\x00") == (kind, name)


@fuzz(100)
@given(oid=st.integers(0, 2**32 - 1), values=VALUES, result=st.sampled_from([0, 1]))
def test_a_well_formed_function_call_parses_back(oid, values, result):
    body = struct.pack("!I", oid) + encode_values([], values) + int16(result)
    assert p.parse_function_call(body) == (oid, values)


@fuzz(100)
@given(text=NAMES)
def test_a_well_formed_query_parses_back(text):
    assert p.parse_query(text + b"\x00") == text
    assert p.parse_query(p.query(text.decode("latin-1"))[5:]) == text.decode("latin-1").encode()


NO_NUL = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")


@fuzz(100)
@given(st.dictionaries(st.text(NO_NUL, min_size=1, max_size=12), st.text(NO_NUL, max_size=12), max_size=5))
def test_a_startup_message_parses_back(parameters):
    parsed = p.parse_startup_packet(p.startup_message(parameters))
    assert isinstance(parsed, p.Startup) and parsed.version == p.PROTOCOL_3_0
    assert parsed.parameters == parameters


@fuzz(100)
@given(st.lists(st.tuples(st.sampled_from(b"QPBESCDHXdcfFp"), st.binary(max_size=30)), max_size=6),
       st.binary(max_size=8))
def test_split_messages_finds_the_messages_it_was_given(messages, tail):
    buf = b"".join(p.message(kind, body) for kind, body in messages)
    found, end = p.split_messages(buf + tail[:4])         # under 5 bytes: never a whole message
    assert end == len(buf)
    assert [(t, buf[s:e]) for t, s, e in found] == messages


@fuzz(200)
@given(hostile_bytes(64), st.integers(0, 8))
def test_split_messages_stays_inside_the_buffer(buf, start):
    try:
        found, end = p.split_messages(buf, start)
    except p.ProtocolViolation:
        return
    pos = start
    for _, body_start, body_end in found:                 # contiguous, in order, inside
        assert body_start == pos + 5 and body_start <= body_end <= len(buf)
        pos = body_end
    assert end == pos
