"""Property-based tests of the PostgreSQL log parsers (issue 15): on any input they do not
raise, do not hang, and skip what they cannot read (``feed`` returns no entry); a well-formed
line of a minted role parses to its user and statement. Then one regression test per bug the
fuzzing found."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from broker.common.ids import new_credential_id
from broker.usage.pglog import (
    MAX_RECORD,
    CsvlogParser,
    JsonlogParser,
    LogEntry,
    StderrParser,
    activity_of,
    make_parser,
    parse_lines,
    utc_time,
)
from broker.usage.redact import redact_sql

# database=None keeps no examples; Hypothesis still caches constants and Unicode tables in its
# home folder (./.hypothesis by default): keep them out of the work tree.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "nhi-broker-hypothesis")
FUZZ = settings(deadline=None, database=None, max_examples=150,
                suppress_health_check=[HealthCheck.too_slow])
PREFIXES = ["%m [%p] %q%u@%d ", "%m [%p] %c %l %u@%d %r ", "%t %a%u%d ", "%n [%p] %-20u %e "]
RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")

# Lines that look enough like log lines to get past the prefilter and into the real parsing.
fragments = st.sampled_from([
    "nhb_", "v-", '"', '""', ",", "\n", "\t", "{", "}", "[", "]", ":", "\\u", "\\ud800", "²", "٣",
    "2026-03-01 10:00:00.123 UTC", "2026-02-30 25:61:61 +99:99", "LOG:  ", "ERROR:  ",
    "STATEMENT:  ", "statement: ", "duration: 1.5 ms  statement: ", "execute S_1: ", "AUDIT: ",
    "@", " ", "[", "(", "password", "://", "U&'", "E'", "\x00"])
noisy_text = st.lists(st.one_of(fragments, st.text(max_size=8)), max_size=40).map("".join)
users = st.builds(lambda cid: f"nhb_{cid}", st.builds(new_credential_id))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
    | st.sampled_from(["nhb_x", "v-token-app-x", "statement: select 1", "2026-03-01 10:00:00.000 UTC"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["user", "message", "timestamp", "session_id", "line_num", "pid", "dbname",
                         "remote_host", "remote_port", "error_severity", "statement", "ps", "x"]),
        inner, max_size=8),
    max_leaves=20)


def _check(entries: Any) -> list[LogEntry]:
    """What every parser promises of what it returns."""
    assert isinstance(entries, list)
    for entry in entries:
        assert isinstance(entry, LogEntry)
        assert isinstance(entry.user, str) and entry.user.startswith(("nhb_", "v-"))
        assert isinstance(entry.message, str)
        for name in ("time", "database", "severity", "session_id", "client", "command_tag",
                     "statement", "sqlstate", "application"):
            value = getattr(entry, name)
            assert value is None or isinstance(value, str), (name, value)
            if value is not None:
                value.encode("utf-8")                 # no lone surrogates
        assert entry.line_num is None or type(entry.line_num) is int
        assert entry.pid is None or type(entry.pid) is int
        activity_of(entry)                            # reading the entry does not raise either
        utc_time(entry.time, epoch=entry.epoch)
    return entries


def _feed_all(fmt: str, lines: list[str], prefix: str = PREFIXES[0]) -> list[LogEntry]:
    parser = make_parser(fmt, prefix=prefix)
    out: list[LogEntry] = []
    for line in lines:
        out += _check(parser.feed(line))
        out += _check(parser.flush(final=False))
    return out + _check(parser.flush())


# ---------------------------------------------------------------------------- no crash

@FUZZ
@given(lines=st.lists(noisy_text, max_size=8), fmt=st.sampled_from(["jsonlog", "csvlog"]))
def test_any_lines_give_well_typed_entries_or_none(lines, fmt):
    _feed_all(fmt, [line + "\n" for line in lines])


@FUZZ
@given(lines=st.lists(noisy_text, max_size=8), prefix=st.sampled_from(PREFIXES))
def test_any_stderr_lines_give_well_typed_entries_or_none(lines, prefix):
    _feed_all("stderr", [line + "\n" for line in lines], prefix)


@FUZZ
@given(value=json_values)
def test_any_json_value_is_an_entry_only_when_it_is_a_record_of_a_broker_role(value):
    entries = _check(JsonlogParser().feed(json.dumps(value) + "\n"))
    if entries:
        assert isinstance(value, dict) and isinstance(value["user"], str)
        assert entries[0].user == value["user"]
    else:
        assert not (isinstance(value, dict) and isinstance(value.get("user"), str)
                    and value["user"].startswith(("nhb_", "v-"))
                    and isinstance(value.get("message", ""), (str, type(None))))


@FUZZ
@given(text=noisy_text, epoch=st.none() | st.floats(allow_nan=True, allow_infinity=True))
def test_utc_time_is_none_or_a_real_rfc3339_moment(text, epoch):
    for result in (utc_time(text), utc_time(None, epoch=epoch)):
        assert result is None or RFC3339.fullmatch(result), result
        if result is not None:
            datetime.strptime(result, "%Y-%m-%dT%H:%M:%S.%fZ")


@FUZZ
@given(text=noisy_text)
def test_redaction_takes_any_text(text):
    out = redact_sql(text)
    assert isinstance(out, str)


# ---------------------------------------------------------------------------- round trip

statements = st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=60) \
    .map(str.strip).filter(bool)
csv_statements = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00\r"),
                         min_size=1, max_size=60).filter(lambda s: s.strip() == s and s)


def _csv_line(fields: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_MINIMAL).writerow(fields)
    return out.getvalue()


def _file_lines(text: str) -> list[str]:
    """``text`` cut into lines as the ingester reads a log file (only \\n, \\r, \\r\\n end
    one; str.splitlines would also cut at \\x1e, \\x85, …)."""
    return io.StringIO(text, newline="").readlines()


def _assert_statement(entries: list[LogEntry], user: str, statement: str) -> None:
    assert len(entries) == 1, entries
    assert entries[0].user == user
    activity = activity_of(entries[0])
    assert activity is not None and activity.kind == "statement"
    assert activity.statement == statement


@FUZZ
@given(user=users, statement=st.text(max_size=80).filter(lambda s: s.strip()), line_num=st.integers(1, 10**9))
def test_a_jsonlog_line_of_a_minted_role_parses_to_its_user_and_statement(user, statement, line_num):
    record = {"timestamp": "2026-03-01 10:00:00.123 UTC", "user": user, "dbname": "app",
              "pid": 4242, "session_id": "6b0c.1", "line_num": line_num, "error_severity": "LOG",
              "message": f"statement: {statement}", "remote_host": "10.0.0.7", "remote_port": 5000}
    entries = _check(JsonlogParser().feed(json.dumps(record, ensure_ascii=False) + "\n"))
    _assert_statement(entries, user, statement)
    assert (entries[0].session_id, entries[0].line_num, entries[0].client) == ("6b0c.1", line_num,
                                                                               "10.0.0.7:5000")
    assert utc_time(entries[0].time) == "2026-03-01T10:00:00.123000Z"


@FUZZ
@given(user=users, statement=csv_statements, line_num=st.integers(1, 10**9))
def test_a_csvlog_record_of_a_minted_role_parses_to_its_user_and_statement(user, statement, line_num):
    fields = ["2026-03-01 10:00:00.123 UTC", user, "app", "4242", "10.0.0.7:5000", "6b0c.1",
              str(line_num), "idle", "2026-03-01 10:00:00 UTC", "3/1", "0", "LOG", "00000",
              f"statement: {statement}"] + [""] * 8 + ["psql", "client backend", "", "0"]
    entries = _feed_all("csvlog", _file_lines(_csv_line(fields)))
    _assert_statement(entries, user, statement)
    assert entries[0].line_num == line_num and entries[0].pid == 4242


@FUZZ
@given(user=users, statement=statements)
def test_a_stderr_line_of_a_minted_role_parses_to_its_user_and_statement(user, statement):
    line = f"2026-03-01 10:00:00.123 UTC [4242] {user}@app LOG:  statement: {statement}\n"
    entries = _feed_all("stderr", [line])
    _assert_statement(entries, user, statement)
    assert entries[0].pid == 4242 and entries[0].database == "app"


@FUZZ
@given(user=users, statements=st.lists(csv_statements, min_size=1, max_size=5), garbage=noisy_text)
def test_a_garbage_line_between_records_loses_no_record(user, statements, garbage):
    """Garbage (with balanced quotes: a record cannot end inside a quoted field) is skipped and
    every real record around it still parses."""
    garbage = garbage.replace('"', "").replace("\n", " ").replace("\x00", "")
    lines = []
    for statement in statements:
        lines += _file_lines(_csv_line(["2026-03-01 10:00:00.123 UTC", user, "app", "1", "", "6b0c.1",
                                        "1", "", "", "", "", "LOG", "00000", f"statement: {statement}"]))
        lines.append(garbage + "\n")
    got = [activity_of(e).statement for e in _feed_all("csvlog", lines)]
    assert [s for s in got if s in statements] == statements


# ---------------------------------------------------------------------------- regressions

CID = new_credential_id()


@pytest.mark.parametrize("line", [
    '["nhb_"]', '"nhb_"', "3", "null", '{"user": "nhb_x"} trailing', "[" * 100_000 + '"nhb_"' + "]" * 100_000,
    '{"user":"nhb_x","message":' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"user":"nhb_x","message":5}', '{"user":5,"message":"nhb_"}', '{"user":["nhb_x"]}',
    '{"user":"nhb_x","message":"m","line_num":' + "9" * 5000 + "}",
], ids=["list", "string", "number", "null", "trailing-garbage", "deep-list", "deep-in-object",
        "message-not-a-string", "user-not-a-string", "user-a-list", "number-past-int-limit"])
def test_jsonlog_lines_that_are_not_records_are_skipped(line):
    assert JsonlogParser().feed(line + "\n") == []


def test_jsonlog_wrong_field_types_are_dropped_not_passed_on():
    entry, = JsonlogParser().feed(json.dumps({
        "user": f"nhb_{CID}", "message": "statement: select 1", "session_id": [1], "dbname": {},
        "pid": "a", "line_num": True, "remote_host": "h", "remote_port": [5]}))
    assert (entry.session_id, entry.database, entry.pid, entry.line_num, entry.client) == \
        (None, None, None, None, "h")


def test_jsonlog_lone_surrogates_become_replacement_characters():
    entry, = JsonlogParser().feed('{"user":"nhb_x","message":"statement: select \'\\ud800\'"}\n')
    assert entry.message == "statement: select '\ufffd'"
    entry.message.encode("utf-8")


@pytest.mark.parametrize("digit", ["²", "٣", "1" * 5000])
def test_csvlog_numbers_that_are_not_ascii_digits_are_none(digit):
    entry, = CsvlogParser().feed(f'2026-03-01 10:00:00.000 UTC,"nhb_x","db",{digit},"h",s.1,{digit},'
                                 f'"idle",,,,LOG,00000,"statement: select 1"\n')
    assert (entry.pid, entry.line_num, entry.message) == (None, None, "statement: select 1")


def test_csvlog_statement_longer_than_the_csv_field_limit_is_still_read():
    statement = "select '" + "x" * (csv.field_size_limit() + 10) + "'"
    line = _csv_line(["2026-03-01 10:00:00.000 UTC", "nhb_x", "db", "1", "", "s.1", "7", "", "", "", "",
                      "LOG", "00000", f"statement: {statement}"])
    entry, = CsvlogParser().feed(line)
    assert entry.message == f"statement: {statement}" and entry.line_num == 7


def test_csvlog_an_unbalanced_record_past_max_record_is_skipped_and_the_next_one_read():
    parser = CsvlogParser()
    assert parser.feed('2026-03-01 10:00:00.000 UTC,"nhb_x","db",1,,s.1,1,,,,,LOG,00000,"statement: ' + "\n") == []
    chunk = "y" * (1 << 20) + "\n"
    for _ in range(MAX_RECORD // len(chunk) + 2):
        assert parser.feed(chunk) == []
    assert parser._parts == []                          # memory stays bounded
    assert parser.feed('end"\n') == []                  # the oversized record ends: skipped
    entry, = parser.feed('2026-03-01 10:00:00.000 UTC,"nhb_y","db",1,,s.1,2,,,,,LOG,00000,"statement: select 2"\n')
    assert entry.user == "nhb_y"


@pytest.mark.parametrize("logged", [
    "2026-02-30 10:00:00 +02", "2026-02-30 10:00:00.000 UTC", "2026-13-45 99:99:99 UTC",
    "2026-02-01 10:00:00 +99", "2026-02-01 10:00:00 +23:99", "0000-01-01 00:00:00 UTC",
    "0001-01-01 00:00:00 +05", "9999-12-31 23:59:59 -05", "٢٠٢٦-٠٣-٠١ ١٠:٠٠:٠٠ UTC",
    "2026-03-01 10:00:00.12² UTC", "2026-03-01 10:00:00 " + "Z" * 10_000,
])
def test_timestamps_of_no_real_moment_are_none(logged):
    assert utc_time(logged) is None


@pytest.mark.parametrize("epoch", [1e20, -1e20, float("inf"), float("nan")])
def test_epochs_out_of_range_are_none(epoch):
    assert utc_time(None, epoch=epoch) is None


def test_stderr_pid_past_int_limit_and_huge_epoch_do_not_raise():
    parser = StderrParser("%n [%p] %u@%d ")
    assert parser.feed("1" * 400 + ".5 [12] nhb_x@db LOG:  statement: x\n") == []
    assert _check(parser.flush()) == []
    parser = StderrParser()
    parser.feed("2026-03-01 10:00:00.000 UTC [" + "9" * 5000 + "] nhb_x@db LOG:  statement: x\n")
    assert _check(parser.flush()) == []


LONG = 200_000


@pytest.mark.parametrize("prefix", PREFIXES + ["%a%u%d", "%a %u %d %i "])
@pytest.mark.parametrize("line", ["a(" * LONG, "a " * LONG, "nhb_x@" * LONG, " " * LONG + "LOG:  x",
                                  "2026-03-01 10:00:00.000 UTC [1] nhb_" + "x" * LONG + "@db LOG:  x"],
                         ids=["a(", "a-space", "user@", "spaces", "long-user"])
def test_stderr_long_lines_are_refused_in_linear_time(prefix, line):
    """Adjacent escapes (%a%u%d) once made a 4000-character line take minutes."""
    parser = StderrParser(prefix)
    start = time.perf_counter()
    _check(parser.feed(line + "\n"))
    _check(parser.flush())
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("statement", [
    "x" * LONG + " password 'unterminated", "select " + "e" * LONG + " from t where a = U&'\\0070",
    "a1" * LONG + " U&'x", "select 'abc://" + "b" * LONG + " where password"])
def test_redaction_of_long_statements_that_do_not_parse_is_linear(statement):
    """The fallback's \\w*password (and scheme://) searches were quadratic in a long word."""
    start = time.perf_counter()
    redacted = redact_sql(statement)
    assert time.perf_counter() - start < 1.0
    assert redacted is not None and redacted.endswith("***")


@pytest.mark.parametrize("fmt", ["jsonlog", "csvlog", "stderr"])
def test_long_lines_of_a_minted_role_parse_in_linear_time(fmt):
    statement = "select " + "x" * 2_000_000
    lines = {
        "jsonlog": json.dumps({"user": "nhb_x", "error_severity": "LOG",
                               "message": f"statement: {statement}"}) + "\n",
        "csvlog": _csv_line(["2026-03-01 10:00:00.000 UTC", "nhb_x", "db", "1", "", "s.1", "1", "", "",
                             "", "", "LOG", "00000", f"statement: {statement}"]),
        "stderr": f"2026-03-01 10:00:00.000 UTC [1] nhb_x@db LOG:  statement: {statement}\n"}
    start = time.perf_counter()
    entries = list(parse_lines([lines[fmt]], fmt))
    assert time.perf_counter() - start < 1.0
    _assert_statement(entries, "nhb_x", statement)
