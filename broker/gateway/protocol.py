"""The PostgreSQL v3 frontend/backend wire protocol: framing, builders and parsers.

Pure functions over ``bytes``; nothing here knows about sockets, asyncio or sessions, so the
codec is importable (and testable) alone. Message layout follows the PostgreSQL documentation,
chapter "Frontend/Backend Protocol" (55.7, Message Formats): every message after the startup
packet is a one-byte type, a big-endian int32 length that counts itself but not the type byte,
and the body.
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
    end = buf.index(0, pos)
    return bytes(buf[pos:end]), end + 1


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
    code = unpack_i32_from(packet, 4)[0]
    if code == SSL_REQUEST_CODE:
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        if len(packet) != 16:
            raise ProtocolViolation("malformed CancelRequest")
        pid, key = struct.unpack_from("!II", packet, 8)
        return CancelRequest(pid, key)
    if code >> 16 != 3:
        raise ProtocolViolation("unsupported frontend protocol")
    params: dict[str, str] = {}
    parts = packet[8:].split(b"\x00")
    # name, value, name, value, ..., "" (terminator), "" (after the last NUL)
    it = iter(parts)
    for raw_name in it:
        if not raw_name:
            break
        raw_value = next(it, None)
        if raw_value is None:
            raise ProtocolViolation("startup parameter without a value")
        params[raw_name.decode("utf-8", "replace")] = raw_value.decode("utf-8", "replace")
    return Startup(code, params)


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


def parse_parse(body: bytes | bytearray) -> tuple[bytes, bytes]:
    """Parse message → ``(statement name, query text bytes)`` (parameter types are not needed)."""
    i = body.index(0)
    j = body.index(0, i + 1)
    return bytes(body[:i]), bytes(body[i + 1:j])


def _formats_then_values(body: bytes | bytearray, pos: int) -> list[bytes | None]:
    """The tail Bind and FunctionCall share: Int16 format codes (skipped), then Int16 n and n
    values, each an Int32 length (-1 is NULL) and that many bytes."""
    nformats = _I16.unpack_from(body, pos)[0]
    pos += 2 + 2 * nformats
    count = _I16.unpack_from(body, pos)[0]
    pos += 2
    values: list[bytes | None] = []
    for _ in range(count):
        length = unpack_i32_from(body, pos)[0]
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(bytes(body[pos:pos + length]))
            pos += length
    return values


def parse_bind(body: bytes | bytearray) -> tuple[bytes, bytes, list[bytes | None]]:
    """Bind message → ``(portal name, statement name, parameter values)`` (``None`` is NULL)."""
    i = body.index(0)
    j = body.index(0, i + 1)
    portal, statement = bytes(body[:i]), bytes(body[i + 1:j])
    return portal, statement, _formats_then_values(body, j + 1)


def parse_execute(body: bytes | bytearray) -> tuple[bytes, int]:
    i = body.index(0)
    return bytes(body[:i]), unpack_i32_from(body, i + 1)[0]


def parse_close(body: bytes | bytearray) -> tuple[int, bytes]:
    """Close/Describe body → ``(b'S' or b'P' as int, name)``."""
    return body[0], bytes(body[1:body.index(0, 1)])


def parse_function_call(body: bytes | bytearray) -> tuple[int, list[bytes | None]]:
    """FunctionCall → ``(function oid, argument values)``."""
    return unpack_u32_from(body, 0)[0], _formats_then_values(body, 4)


def parse_parameter_status(body: bytes | bytearray) -> tuple[str, str]:
    i = body.index(0)
    j = body.index(0, i + 1)
    return bytes(body[:i]).decode("utf-8", "replace"), bytes(body[i + 1:j]).decode("utf-8", "replace")


def rows_from_tag(tag: str) -> int | None:
    """Rows affected/returned as the CommandComplete tag says (``INSERT 0 5`` → 5, ``SELECT 3`` → 3,
    ``CREATE TABLE`` → None)."""
    i = tag.rfind(" ")
    if i > 0:
        tail = tag[i + 1:]
        if tail.isdigit():
            return int(tail)
    return None
