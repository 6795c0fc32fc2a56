"""The pure parts, alone: codec, SCRAM (RFC 7677 vector), cancel keys, redaction, config, the
spool and its drainer (a crashed writer is simulated by closing its file without the close line)."""
from __future__ import annotations

import hashlib
import os
import struct

import pytest

from broker.gateway import protocol as p
from broker.gateway.config import ConfigError, ListenerConfig
from broker.gateway.login import LoginRefused, minted_role_password
from broker.gateway.recording import Statements, parameters_fragment
from broker.gateway.scram import ScramClient, ScramError, md5_password
from broker.gateway.server import CancelKeys
from broker.gateway.spool import Drainer, SpoolWriter
from broker.usage.redact import redact_statement


def test_startup_roundtrip_and_special_requests():
    packet = p.startup_message({"user": "u", "database": "d", "application_name": "x"})
    parsed = p.parse_startup_packet(packet)
    assert isinstance(parsed, p.Startup) and parsed.parameters == {"user": "u", "database": "d",
                                                                   "application_name": "x"}
    assert isinstance(p.parse_startup_packet(p.ssl_request()), p.SSLRequest)
    cancel = p.parse_startup_packet(p.cancel_request(1234, 99))
    assert cancel == p.CancelRequest(1234, 99)
    with pytest.raises(p.ProtocolViolation):
        p.parse_startup_packet(b"\x00\x00\x00\x08\x00\x02\x00\x00")


def test_error_response_fields_and_framing():
    msg = p.error_response("28P01", "invalid credential", severity="FATAL")
    messages, end = p.split_messages(msg + b"Z\x00")
    assert end == len(msg) and messages[0][0] == ord("E")
    fields = p.parse_error_fields(msg[5:])
    assert fields["S"] == "FATAL" and fields["C"] == "28P01" and fields["M"] == "invalid credential"


def test_bind_parse_and_tags():
    body = b"portal\x00stmt\x00\x00\x01\x00\x01\x00\x02\x00\x00\x00\x03abc\xff\xff\xff\xff\x00\x00"
    assert p.parse_bind(body) == (b"portal", b"stmt", [b"abc", None])
    assert p.rows_from_tag("INSERT 0 5") == 5 and p.rows_from_tag("SELECT 3") == 3
    assert p.rows_from_tag("CREATE TABLE") is None and p.rows_from_tag("COPY 500000") == 500000


#: Bodies each parser once answered with ValueError, IndexError or struct.error, or read as
#: wrong values (a negative count walking backwards, a length past the end, bytes of the next
#: message) — found by tests/fuzz. Now each is a ProtocolViolation.
MALFORMED_BODIES = [
    ("bind negative format count", p.parse_bind, b"\x00\x00\xff\xff\x00\x00\x00\x00"),
    ("bind negative value count", p.parse_bind, b"\x00\x00\x00\x00\xff\xff\x00\x00"),
    ("bind value past the end", p.parse_bind, b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x09ab\x00\x00"),
    ("bind length below -1", p.parse_bind, b"\x00\x00\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00"),
    ("bind truncated", p.parse_bind, b"portal\x00stmt\x00\x00"),
    ("bind without NULs", p.parse_bind, b"portal"),
    ("bind 2 formats for 1 value", p.parse_bind, b"\x00\x00\x00\x02\x00\x00\x00\x00\x00\x01\xff\xff\xff\xff\x00\x00"),
    ("bind bytes left over", p.parse_bind, b"\x00\x00\x00\x00\x00\x00\x00\x00!"),
    ("parse without the type count", p.parse_parse, b"s\x00select 1\x00"),
    ("parse negative type count", p.parse_parse, b"s\x00select 1\x00\xff\xff"),
    ("parse types past the end", p.parse_parse, b"s\x00select 1\x00\x00\x02\x00\x00\x00\x17"),
    ("execute without NUL", p.parse_execute, b"portal"),
    ("execute without row limit", p.parse_execute, b"portal\x00\x00"),
    ("close empty", p.parse_close, b""),
    ("close of neither S nor P", p.parse_close, b"Xname\x00"),
    ("close without NUL", p.parse_close, b"Sname"),
    ("function call too short", p.parse_function_call, b"\x00\x01"),
    ("function call negative argument count", p.parse_function_call,
     b"\x00\x00\x00\x01\x00\x00\xff\xff\x00\x00"),
    ("function call without result format", p.parse_function_call, b"\x00\x00\x00\x01\x00\x00\x00\x00"),
    ("query without NUL", p.parse_query, b"select 1"),
    ("query with two strings", p.parse_query, b"select 1\x00x\x00"),
    ("parameter status without NULs", p.parse_parameter_status, b"client_encoding"),
    ("startup length not its size", p.parse_startup_packet, p.startup_message({"user": "u"}) + b"x"),
    ("startup parameter without value", p.parse_startup_packet, struct.pack("!II", 13, p.PROTOCOL_3_0) + b"user\x00"),
    ("startup value without NUL", p.parse_startup_packet, struct.pack("!II", 16, p.PROTOCOL_3_0) + b"user\x00bob"),
    ("startup without terminator", p.parse_startup_packet, struct.pack("!II", 17, p.PROTOCOL_3_0) + b"user\x00bob\x00"),
    ("startup data after terminator", p.parse_startup_packet, struct.pack("!II", 11, p.PROTOCOL_3_0) + b"\x00xy"),
    ("ssl request too long", p.parse_startup_packet, struct.pack("!III", 12, p.SSL_REQUEST_CODE, 0)),
    ("password with a NUL inside", p.parse_password_message, b"a\x00b\x00"),
]


@pytest.mark.parametrize("parse, body", [c[1:] for c in MALFORMED_BODIES], ids=[c[0] for c in MALFORMED_BODIES])
def test_a_malformed_body_is_a_protocol_violation(parse, body):
    with pytest.raises(p.ProtocolViolation):
        parse(body)


def test_well_formed_bodies_parse():
    assert p.parse_parse(b"s\x00select $1\x00\x00\x01\x00\x00\x00\x17") == (b"s", b"select $1")
    assert p.parse_execute(b"portal\x00\x00\x00\x00\x05") == (b"portal", 5)
    assert p.parse_close(b"Sname\x00") == (ord("S"), b"name")
    assert p.parse_function_call(b"\x00\x00\x04\xd2\x00\x00\x00\x01\x00\x00\x00\x01x\x00\x00") == (1234, [b"x"])
    assert p.parse_query(b"select 1\x00") == b"select 1"
    assert p.parse_parameter_status(b"client_encoding\x00UTF8\x00") == ("client_encoding", "UTF8")


def test_scram_rfc7677_vector():
    client = ScramClient("pencil", nonce="rOprNGfwEbeRWgbNEkqO", username="user")
    assert client.first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    final = client.final(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                         b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    assert final == (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    with pytest.raises(ScramError):
        client.verify(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


def test_scram_refuses_a_nonce_that_does_not_extend_ours():
    client = ScramClient("pencil", nonce="abc")
    with pytest.raises(ScramError):
        client.final(b"r=xyz123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")


def test_md5_answer():
    inner = hashlib.md5(b"secretuser").hexdigest().encode()
    assert md5_password("user", "secret", b"salt") == b"md5" + hashlib.md5(inner + b"salt").hexdigest().encode()


def test_cancel_keys_are_a_keyed_permutation():
    keys = CancelKeys(b"k" * 32)
    sealed = keys.seal(4242, 0xDEADBEEF)
    assert sealed != (4242, 0xDEADBEEF)
    assert keys.open(*sealed) == (4242, 0xDEADBEEF)
    assert CancelKeys(b"j" * 32).open(*sealed) != (4242, 0xDEADBEEF)


def test_minted_role_password_is_stable_and_keyed():
    secret = b"s" * 32
    a = minted_role_password(secret, "cid-1")
    assert a == minted_role_password(secret, "cid-1") and len(a) == 43 and a.isascii()
    assert a != minted_role_password(secret, "cid-2") != minted_role_password(b"t" * 32, "cid-1")
    with pytest.raises(ValueError):
        minted_role_password(b"short", "cid-1")


def test_login_refused_only_for_28_states():
    assert LoginRefused("28P01", "x").sqlstate == "28P01"
    with pytest.raises(ValueError):
        LoginRefused("42000", "x")


@pytest.mark.parametrize("statement, secret", [
    ("ALTER ROLE app PASSWORD 'hunter2-quoted'", "hunter2-quoted"),
    ("CREATE ROLE app LOGIN ENCRYPTED PASSWORD 'hunter2-enc' VALID UNTIL 'infinity'", "hunter2-enc"),
    ("ALTER ROLE app PASSWORD 'hunter2-unterminated", "hunter2-unterminated"),
    ("ALTER ROLE app PASSWORD hunter2unquoted", "hunter2unquoted"),
    ("ALTER ROLE app PASSWORD U&'hunter\\0032-uni'", "hunter"),
    ("CREATE USER MAPPING FOR app SERVER s OPTIONS (user 'u', password 'hunter2-fdw')", "hunter2-fdw"),
    ("ALTER USER MAPPING FOR app SERVER s OPTIONS (SET password 'hunter2-set')", "hunter2-set"),
    ("SELECT dblink_connect('host=db password=hunter2-conn dbname=x')", "hunter2-conn"),
    ("SELECT dblink_connect(U&'host=db \\0070assword=hunter2-u')", "hunter2-u"),
    ("SELECT dblink_connect(E'host=db \\x70assword=hunter2-e')", "hunter2-e"),
    ("SELECT 'postgresql://app:hunter2-uri@db/x'", "hunter2-uri"),
    ("CREATE SUBSCRIPTION s CONNECTION 'host=db password=hunter2-sub' PUBLICATION p", "hunter2-sub"),
])
def test_redaction(statement, secret):
    redacted, changed = redact_statement(statement)
    assert changed and secret not in redacted


def test_redaction_leaves_ordinary_statements_alone():
    for text in ("SELECT 1", "UPDATE accounts SET balance = balance - 1 WHERE id = $1",
                 "SELECT 'a;b'; SELECT 2"):
        assert redact_statement(text) == (text, False)


def test_statements_split_and_cap():
    st = Statements(64)
    infos = st.split_raw(b"select 1; select 'a;b'; -- trailing comment", "utf-8")
    assert [i.spool_text for i in infos] == ['"select 1"', '"select \'a;b\'"']
    assert st.split_raw(b"select 1;", "utf-8")[0].spool_text == '"select 1;"'
    assert st.split_raw(b"   ", "utf-8") == ()
    long = ("select '" + "x" * 200 + "'").encode()
    (info,) = st.split_raw(long, "utf-8")
    assert '"truncated":true' in info.extra and hashlib.sha256(long).hexdigest() in info.extra
    # a text that does not parse is one (failing) statement, redacted conservatively
    (bad,) = st.split_raw(b"select 1; alter role x password 'oops", "utf-8")
    assert "oops" not in bad.spool_text and bad.redacted


def test_parameters_fragment_modes():
    assert parameters_fragment([b"v", None], "none") == ""
    hashed = parameters_fragment([b"v", None], "hashed")
    assert hashlib.sha256(b"v").hexdigest() in hashed and "null" in hashed and '"v"' not in hashed
    assert parameters_fragment([b"v", b"\xff"], "full") == '"parameters":["v",{"base64":"/w=="}]'


def test_config_refuses_plaintext_off_loopback_and_unknown_keys(tmp_path):
    up = {"host": "db", "port": 5432}
    ListenerConfig.from_mapping({"listen": "127.0.0.1:6432", "upstream": up})
    with pytest.raises(ConfigError, match="tls"):
        ListenerConfig.from_mapping({"listen": "0.0.0.0:6432", "upstream": up})
    with pytest.raises(ConfigError, match="unknown"):
        ListenerConfig.from_mapping({"listen": "127.0.0.1:6432", "upstream": up, "bogus": 1})
    with pytest.raises(ConfigError, match="service_dsn_env"):
        ListenerConfig.from_mapping({"listen": "127.0.0.1:6432", "upstream": up, "login": "service-role"})
    with pytest.raises(ConfigError, match="does not exist"):
        ListenerConfig.from_mapping({"listen": "0.0.0.0:6432", "upstream": up,
                                     "tls": {"cert_file": str(tmp_path / "no.crt"), "key_file": "k"}})


class ListSink:
    def __init__(self):
        self.records = []

    def write_batch(self, records):
        self.records.extend(records)


def test_drainer_joins_and_recovers_a_crashed_writer(tmp_path):
    writer = SpoolWriter(tmp_path)
    writer.add('C\tc1\t{"credential_id":"cid","database":"db","record":{"principal":"p"}}\n')
    writer.add('S\tc1\t1\t1000\t"select 1"\t{}\n')
    writer.add("O\tc1\t1\t3000000\tok\tSELECT 1\t\t{}\n")
    writer.add('S\tc1\t2\t4000000\t"select 2"\t{}\n')            # never answered
    writer.add('S\tc1\t3\t4000000\t"select 3"\t{}\n')
    writer.add("O\tc1\t3\t5000000\tskipped\t\t\t{}\n")           # skipped after an error: no record
    writer.flush()
    sink = ListSink()
    drainer = Drainer(tmp_path, sink)
    drainer.run_once()
    assert [r["type"] for r in sink.records] == ["connect", "usage"]
    first = sink.records[1]
    assert first["line_key"] == "gw:c1:1" and first["rows"] == 1 and first["principal"] == "p"
    assert first["duration_ms"] == 2.999 and first["statement_sha256"] == hashlib.sha256(b"select 1").hexdigest()
    os.close(writer._fd)                     # the process "dies": lock gone, no close line
    drainer.run_once()
    unknown, disconnect = sink.records[2:]
    assert unknown["line_key"] == "gw:c1:2" and unknown["outcome"] == "unknown"
    assert disconnect["type"] == "disconnect" and disconnect["unclean"] is True
    assert not list(tmp_path.glob("*.spool")) and not list(tmp_path.glob("*.state"))
    drainer.stop(final_pass=False)


def test_drainer_resumes_from_its_durable_offset(tmp_path):
    writer = SpoolWriter(tmp_path)
    writer.add('C\tc1\t{"credential_id":"cid"}\n')
    writer.add('S\tc1\t1\t1\t"select 1"\t{}\n')
    writer.flush()
    sink = ListSink()
    first = Drainer(tmp_path, sink)
    first.run_once()
    first.stop(final_pass=False)             # the supervisor restarts: a new drainer
    writer.add("O\tc1\t1\t2\tok\tSELECT 1\t\t{}\n")
    writer.add('D\tc1\t{"reason":"client terminated the session"}\n')
    writer.close()
    second = Drainer(tmp_path, sink)
    second.run_once()
    assert [r["type"] for r in sink.records] == ["connect", "usage", "disconnect"]
    assert sink.records[1]["credential_id"] == "cid"     # the connection came from the state file
    second.stop(final_pass=False)


def test_spool_rotation_keeps_pairs_across_segments(tmp_path):
    writer = SpoolWriter(tmp_path, segment_bytes=200)
    sink = ListSink()
    drainer = Drainer(tmp_path, sink)
    writer.add('C\tc1\t{"credential_id":"cid"}\n')
    for seq in range(1, 21):
        writer.add(f'S\tc1\t{seq}\t1\t"select {seq}"\t{{}}\n')
        writer.flush()
        writer.add(f"O\tc1\t{seq}\t2\tok\tSELECT 1\t\t{{}}\n")
        writer.flush()
        if seq % 7 == 0:
            drainer.run_once()
    writer.close()
    drainer.run_once()
    usage = [r for r in sink.records if r["type"] == "usage"]
    assert [r["seq"] for r in usage] == list(range(1, 21))
    assert not list(tmp_path.glob("*.spool"))
    drainer.stop(final_pass=False)
