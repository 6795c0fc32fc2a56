"""The PostgreSQL v3 frontend/backend wire protocol: framing, builders and parsers.

Pure functions over ``bytes``; nothing here knows about sockets, asyncio or sessions, so the
codec is importable (and testable) alone. Message layout follows the PostgreSQL documentation,
chapter "Frontend/Backend Protocol" (55.7, Message Formats): every message after the startup
packet is a one-byte type, a big-endian int32 length that counts itself but not the type byte,
and the body.

Every parser raises :class:`ProtocolViolation` — and nothing else — for a body its message type
cannot have: too short, a string without its NUL, a negative count, a length past the end,
bytes left over. (The session answers that with a FATAL ``08P01``, as PostgreSQL does.)
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

PROTOCOL_3_0 = 196608                 # 3 << 16
SSL_REQUEST_CODE = 80877103           # 1234 << 16 | 5679
GSSENC_REQUEST_CODE = 80877104        # 1234 << 16 | 5680
CANCEL_REQUEST_CODE = 80877102        # 1234 << 16 | 5678
MAX_STARTUP_PACKET = 10_000           # what the server itself accepts (MAX_STARTUP_PACKET_LENGTH)

_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_HDR = struct.Struct("!cI")
_I16 = struct.Struct("!h")
unpack_u32_from = _U32.unpack_from
unpack_i32_from = _I32.unpack_from

# Frontend (client → server) message types.
F_QUERY = ord("Q")
F_PARSE = ord("P")
F_BIND = ord("B")
F_DESCRIBE = ord("D")
F_EXECUTE = ord("E")
F_SYNC = ord("S")
F_FLUSH = ord("H")
F_CLOSE = ord("C")
F_FUNCTION_CALL = ord("F")
F_COPY_DATA = ord("d")
F_COPY_DONE = ord("c")
F_COPY_FAIL = ord("f")
F_TERMINATE = ord("X")
F_PASSWORD = ord("p")                 # PasswordMessage, SASLInitialResponse, SASLResponse

# Backend (server → client) message types.
B_AUTH = ord("R")
B_PARAMETER_STATUS = ord("S")
B_BACKEND_KEY_DATA = ord("K")
B_READY_FOR_QUERY = ord("Z")
B_COMMAND_COMPLETE = ord("C")
B_EMPTY_QUERY = ord("I")
B_ERROR = ord("E")
B_NOTICE = ord("N")
B_PORTAL_SUSPENDED = ord("s")
B_FUNCTION_CALL_RESPONSE = ord("V")
B_COPY_IN = ord("G")
B_COPY_OUT = ord("H")
B_COPY_BOTH = ord("W")
B_DATA_ROW = ord("D")
B_NEGOTIATE_PROTOCOL = ord("v")

AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


class ProtocolViolation(Exception):
    """The peer sent something that is not the PostgreSQL protocol (or not what we accept)."""


# ---------------------------------------------------------------- framing

def message(kind: int | bytes, body: bytes = b"") -> bytes:
    """One typed message: type byte, int32 length (itself included), body."""
    t = bytes((kind,)) if isinstance(kind, int) else kind
    return t + _U32.pack(len(body) + 4) + body


def split_messages(buf: bytes | bytearray, start: int = 0) -> tuple[list[tuple[int, int, int]], int]:
    """Complete messages in ``buf[start:]`` as ``(type, body_start, body_end)`` and the offset
    of the first incomplete byte."""
    out: list[tuple[int, int, int]] = []
    pos, n = start, len(buf)
    while n - pos >= 5:
        length = unpack_u32_from(buf, pos + 1)[0]
        if length < 4:
            raise ProtocolViolation("message length below 4")
        end = pos + 1 + length
        if end > n:
            break
        out.append((buf[pos], pos + 5, end))
        pos = end
    return out, pos


def cstring(buf: bytes | bytearray, pos: int) -> tuple[bytes, int]:
    """The NUL-terminated string at ``pos`` and the offset after its NUL."""
    end = buf.find(0, pos)
    if end < 0:
        raise ProtocolViolation("string without its NUL terminator")
    return bytes(buf[pos:end]), end + 1


def _int16(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    if pos + 2 > len(buf):
        raise ProtocolViolation("message too short")
    return _I16.unpack_from(buf, pos)[0], pos + 2


def _int32(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    if pos + 4 > len(buf):
        raise ProtocolViolation("message too short")
    return unpack_i32_from(buf, pos)[0], pos + 4


def _count(buf: bytes | bytearray, pos: int, what: str) -> tuple[int, int]:
    count, pos = _int16(buf, pos)
    if count < 0:
        raise ProtocolViolation(f"negative {what} count")
    return count, pos


def _end(buf: bytes | bytearray, pos: int) -> None:
    if pos != len(buf):
        raise ProtocolViolation("unexpected data at the end of the message")


# ---------------------------------------------------------------- startup packets

@dataclass(frozen=True, slots=True)
class Startup:
    """A StartupMessage: protocol version and its ``name → value`` parameters."""
    version: int
    parameters: dict[str, str]


@dataclass(frozen=True, slots=True)
class CancelRequest:
    backend_pid: int
    secret_key: int


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


def parse_startup_packet(packet: bytes) -> Startup | CancelRequest | SSLRequest | GSSENCRequest:
    """Parse a whole untyped startup-phase packet (length included)."""
    if len(packet) < 8:
        raise ProtocolViolation("startup packet too short")
    if unpack_u32_from(packet, 0)[0] != len(packet):
        raise ProtocolViolation("startup packet length does not match its size")
    code = unpack_i32_from(packet, 4)[0]
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        if len(packet) != 8:
            raise ProtocolViolation("malformed SSLRequest/GSSENCRequest")
        return SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        if len(packet) != 16:
            raise ProtocolViolation("malformed CancelRequest")
        pid, key = struct.unpack_from("!II", packet, 8)
        return CancelRequest(pid, key)
    if code >> 16 != 3:
        raise ProtocolViolation("unsupported frontend protocol")
    return Startup(code, _startup_parameters(packet))


def _startup_parameters(packet: bytes) -> dict[str, str]:
    """``name NUL value NUL`` … then one NUL, the packet's last byte."""
    params: dict[str, str] = {}
    pos = 8
    while True:
        if pos >= len(packet):
            raise ProtocolViolation("startup packet without its terminator")
        if packet[pos] == 0:
            if pos + 1 != len(packet):
                raise ProtocolViolation("data after the startup packet's terminator")
            break
        raw_name, pos = cstring(packet, pos)
        if pos >= len(packet):
            raise ProtocolViolation("startup parameter without a value")
        raw_value, pos = cstring(packet, pos)
        params[raw_name.decode("utf-8", "replace")] = raw_value.decode("utf-8", "replace")
    return params


def startup_message(parameters: dict[str, str], *, version: int = PROTOCOL_3_0) -> bytes:
    body = _I32.pack(version) + b"".join(
        k.encode() + b"\x00" + v.encode() + b"\x00" for k, v in parameters.items()) + b"\x00"
    return _U32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    return struct.pack("!II", 8, SSL_REQUEST_CODE)


def cancel_request(backend_pid: int, secret_key: int) -> bytes:
    return struct.pack("!IIII", 16, CANCEL_REQUEST_CODE, backend_pid, secret_key)


# ---------------------------------------------------------------- backend builders

def authentication(code: int, extra: bytes = b"") -> bytes:
    return message(B_AUTH, _I32.pack(code) + extra)


def auth_ok() -> bytes:
    return authentication(AUTH_OK)


def auth_cleartext_password() -> bytes:
    return authentication(AUTH_CLEARTEXT)


def parameter_status(name: str, value: str) -> bytes:
    return message(B_PARAMETER_STATUS, name.encode() + b"\x00" + value.encode() + b"\x00")


def backend_key_data(pid: int, key: int) -> bytes:
    return message(B_BACKEND_KEY_DATA, struct.pack("!II", pid, key))


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(B_READY_FOR_QUERY, status)


def error_response(sqlstate: str, text: str, *, severity: str = "ERROR",
                   detail: str | None = None, hint: str | None = None) -> bytes:
    """An ErrorResponse (or, with severity NOTICE/WARNING, use :func:`notice_response`)."""
    return message(B_ERROR, _fields(severity, sqlstate, text, detail, hint))


def notice_response(sqlstate: str, text: str, *, severity: str = "NOTICE") -> bytes:
    return message(B_NOTICE, _fields(severity, sqlstate, text, None, None))


def _fields(severity: str, sqlstate: str, text: str, detail: str | None, hint: str | None) -> bytes:
    parts = [b"S" + severity.encode(), b"V" + severity.encode(), b"C" + sqlstate.encode(),
             b"M" + text.encode()]
    if detail:
        parts.append(b"D" + detail.encode())
    if hint:
        parts.append(b"H" + hint.encode())
    return b"\x00".join(parts) + b"\x00\x00"


# ---------------------------------------------------------------- frontend builders

def password_message(secret: bytes) -> bytes:
    return message(F_PASSWORD, secret + b"\x00")


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(F_PASSWORD, mechanism.encode() + b"\x00" + _I32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return message(F_PASSWORD, data)


def query(text: str) -> bytes:
    return message(F_QUERY, text.encode() + b"\x00")


def terminate() -> bytes:
    return message(F_TERMINATE)


# ---------------------------------------------------------------- parsers of bodies

def parse_error_fields(body: bytes | bytearray) -> dict[str, str]:
    """ErrorResponse / NoticeResponse body → ``{field code: value}`` (``C`` is the SQLSTATE)."""
    fields: dict[str, str] = {}
    for part in bytes(body).split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def parse_password_message(body: bytes | bytearray) -> str:
    raw = bytes(body)
    if raw.endswith(b"\x00"):
        raw = raw[:-1]
    if b"\x00" in raw:
        raise ProtocolViolation("malformed password message")
    return raw.decode("utf-8", "replace")


def parse_query(body: bytes | bytearray) -> bytes:
    """Query body → the query text bytes (one NUL-terminated string, nothing after it)."""
    text, pos = cstring(body, 0)
    _end(body, pos)
    return text


def parse_parse(body: bytes | bytearray) -> tuple[bytes, bytes]:
    """Parse message → ``(statement name, query text bytes)``; the parameter type OIDs that
    follow are checked for shape, not returned."""
    name, pos = cstring(body, 0)
    text, pos = cstring(body, pos)
    ntypes, pos = _count(body, pos, "parameter type")
    _end(body, pos + 4 * ntypes)
    return name, text


def _formats_then_values(body: bytes | bytearray, pos: int, what: str) -> tuple[list[bytes | None], int]:
    """The part Bind and FunctionCall share: Int16 n and n format codes (skipped; n is 0, 1
    or the number of values), then Int16 n and n values, each an Int32 length (-1 is NULL)
    and that many bytes. Returns the values and the offset after them."""
    nformats, pos = _count(body, pos, f"{what} format")
    pos += 2 * nformats
    count, pos = _count(body, pos, what)
    if nformats not in (0, 1, count):
        raise ProtocolViolation(f"{nformats} {what} formats for {count} {what}s")
    values: list[bytes | None] = []
    for _ in range(count):
        length, pos = _int32(body, pos)
        if length == -1:
            values.append(None)
            continue
        if length < 0 or pos + length > len(body):
            raise ProtocolViolation(f"invalid {what} length")
        values.append(bytes(body[pos:pos + length]))
        pos += length
    return values, pos


def parse_bind(body: bytes | bytearray) -> tuple[bytes, bytes, list[bytes | None]]:
    """Bind message → ``(portal name, statement name, parameter values)`` (``None`` is NULL);
    the result format codes that end it are checked for shape."""
    portal, pos = cstring(body, 0)
    statement, pos = cstring(body, pos)
    values, pos = _formats_then_values(body, pos, "parameter")
    nresults, pos = _count(body, pos, "result format")
    _end(body, pos + 2 * nresults)
    return portal, statement, values


def parse_execute(body: bytes | bytearray) -> tuple[bytes, int]:
    """Execute → ``(portal name, row limit)`` (0: no limit)."""
    portal, pos = cstring(body, 0)
    limit, pos = _int32(body, pos)
    _end(body, pos)
    return portal, limit


def parse_close(body: bytes | bytearray) -> tuple[int, bytes]:
    """Close/Describe body → ``(b'S' or b'P' as int, name)``."""
    if not body or body[0] not in (0x53, 0x50):
        raise ProtocolViolation("Close/Describe of neither a statement nor a portal")
    name, pos = cstring(body, 1)
    _end(body, pos)
    return body[0], name


def parse_function_call(body: bytes | bytearray) -> tuple[int, list[bytes | None]]:
    """FunctionCall → ``(function oid, argument values)``."""
    if len(body) < 4:
        raise ProtocolViolation("message too short")
    oid = unpack_u32_from(body, 0)[0]
    values, pos = _formats_then_values(body, 4, "argument")
    _, pos = _int16(body, pos)                     # the result's format code
    _end(body, pos)
    return oid, values


def parse_parameter_status(body: bytes | bytearray) -> tuple[str, str]:
    name, pos = cstring(body, 0)
    value, pos = cstring(body, pos)
    _end(body, pos)
    return name.decode("utf-8", "replace"), value.decode("utf-8", "replace")


def rows_from_tag(tag: str) -> int | None:
    """Rows affected/returned as the CommandComplete tag says (``INSERT 0 5`` → 5, ``SELECT 3`` → 3,
    ``CREATE TABLE`` → None)."""
    i = tag.rfind(" ")
    if i > 0:
        tail = tag[i + 1:]
        if tail.isdigit():
            return int(tail)
    return None
