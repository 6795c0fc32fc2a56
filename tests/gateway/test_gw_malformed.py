"""A logged-in client that sends malformed messages gets PostgreSQL's own answer — a FATAL
``08P01`` ErrorResponse and a closed session — never an exception in the gateway's event loop;
the gateway serves the next client as before."""
from __future__ import annotations

import socket
import struct

import psycopg
import pytest

from broker.gateway import protocol as p
from tests.gateway.gw_support import CREDENTIAL, TOKEN


def _logged_in(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(p.startup_message({"user": CREDENTIAL, "database": "gwdb"}))
    kind, _, code = struct.unpack("!cII", s.recv(9))
    assert kind == b"R" and code == p.AUTH_CLEARTEXT
    s.sendall(p.password_message(TOKEN.encode()))
    seen = b""
    while not seen.endswith(p.ready_for_query()):     # AuthenticationOk … ReadyForQuery(I)
        chunk = s.recv(65536)
        assert chunk, seen
        seen += chunk
    return s


def _answer(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return out


MALFORMED = {
    "a length below 4": b"Q\x00\x00\x00\x02",
    "a length past PostgreSQL's limit": b"Q\x7f\xff\xff\xff",
    "a Bind whose body is garbage": p.message(b"B", b"\xff\xfe"),
    "an Execute without its portal's NUL": p.message(b"E", b"portal"),
    "a Close without a kind": p.message(b"C", b""),
    "a Parse without its NULs": p.message(b"P", b"abc"),
    # found by tests/fuzz: these were read past their own message (or not checked at all)
    "an Execute whose portal's NUL is in the next message": p.message(b"E", b"portal") + p.message(b"S"),
    "a Bind with a negative format count": p.message(b"B", b"\x00\x00\xff\xff\x00\x00\x00\x00"),
    "a Bind whose value runs past the end": p.message(b"B", b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x09ab"),
    "a Query without its NUL": p.message(b"Q", b"select 1"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_message_is_a_fatal_protocol_violation(gateway, gw_dsn, case):
    with _logged_in(gateway.port) as s:
        s.sendall(MALFORMED[case])
        answer = _answer(s)
    assert answer[:1] == b"E"
    fields = p.parse_error_fields(answer[5:])
    assert fields["S"] == "FATAL" and fields["C"] == "08P01"
    with psycopg.connect(gw_dsn) as conn:               # and the gateway goes on serving
        assert conn.execute("select 1").fetchone() == (1,)
    assert "Traceback" not in gateway.log()


#: Login-phase packets that are not the protocol: once answered ``XX000`` ("the gateway failed")
#: with a stack trace in the log, now PostgreSQL's FATAL ``08P01``.
MALFORMED_STARTUP = {
    "a startup parameter without a value": struct.pack("!II", 13, p.PROTOCOL_3_0) + b"user\x00",
    "a startup packet without its terminator": struct.pack("!II", 17, p.PROTOCOL_3_0) + b"user\x00bob\x00",
    "a CancelRequest of the wrong size": struct.pack("!III", 12, p.CANCEL_REQUEST_CODE, 1),
}


@pytest.mark.parametrize("case", list(MALFORMED_STARTUP))
def test_a_malformed_startup_packet_is_a_fatal_protocol_violation(gateway, gw_dsn, case):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
        s.sendall(MALFORMED_STARTUP[case])
        answer = _answer(s)
    assert answer[:1] == b"E"
    fields = p.parse_error_fields(answer[5:])
    assert fields["S"] == "FATAL" and fields["C"] == "08P01", fields
    with psycopg.connect(gw_dsn) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert "Traceback" not in gateway.log()


def test_a_password_message_with_a_nul_inside_is_a_fatal_protocol_violation(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
        s.sendall(p.startup_message({"user": CREDENTIAL, "database": "gwdb"}))
        assert s.recv(9)[:1] == b"R"
        s.sendall(p.message(b"p", b"abc\x00def\x00"))
        answer = _answer(s)
    fields = p.parse_error_fields(answer[5:])
    assert answer[:1] == b"E" and fields["S"] == "FATAL" and fields["C"] == "08P01", fields
    assert "Traceback" not in gateway.log()
