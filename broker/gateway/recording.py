"""What the gateway records, and the two halves of building it.

Hot half (in the session, per statement, cheap): :class:`Statements` turns the text a client sent
into :class:`StatementInfo` — split into statements with pglast when there is more than one,
redacted (:mod:`broker.usage.redact`), capped at ``max_statement_bytes`` and already encoded
for the spool line — caching what needed the parser; :func:`parameters_fragment` hashes (or keeps)
the bound values. Nothing on this half builds a dict or calls ``json.dumps`` per message.

Cold half (in the drainer, per record): :func:`usage_record` joins a spooled start line, its
outcome line and its connection into the ``usage`` dict the :class:`RecordSink` receives.

A record's ``line_key`` is ``gw:<connection_id>:<seq>`` (``…:connect``, ``…:disconnect``), stable
across re-delivery, so the ledger's dedupe on ``line_key`` makes a replayed spool harmless.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from json import encoder as _json_encoder
from typing import Any, Protocol

import pglast

from broker.gateway import protocol
from broker.usage.redact import redact_statement

encode_json_string: Any = _json_encoder.encode_basestring_ascii   # C accelerated: str → "…"


class RecordSink(Protocol):
    """Where joined records go (the broker wires it to ``ledger.record_usage``).

    ``write_batch`` returns only once every record of the batch is durable; it may raise, and the
    drainer then retries the same batch later. Records are plain JSON-able dicts with a ``type``
    (``usage``, ``connect``, ``disconnect``, ``login_refused``, ``cancel``, ``records_dropped``) and a
    ``line_key`` that is the same however often the record is delivered.
    """

    def write_batch(self, records: list[dict[str, Any]]) -> None:
        ...


# ---------------------------------------------------------------- hot half

class StatementInfo:
    """One statement as it goes into the spool.

    ``spool_text`` is the redacted, capped text already JSON-encoded; ``extra`` is a ready JSON
    fragment (``"truncated":true,"statement_sha256":…,"statement_bytes":…``) or ``""``;
    ``redacted`` says a secret was removed (server error messages are then not kept: they may echo
    the statement).
    """
    __slots__ = ("spool_text", "extra", "redacted")

    def __init__(self, spool_text: str, extra: str, redacted: bool) -> None:
        self.spool_text = spool_text
        self.extra = extra
        self.redacted = redacted


def _statement_info(text: str, max_bytes: int, redacted_already: bool = False) -> StatementInfo:
    redacted_text, redacted = redact_statement(text)
    redacted = redacted or redacted_already
    raw = redacted_text.encode("utf-8", "surrogatepass")
    if len(raw) <= max_bytes:
        return StatementInfo(encode_json_string(redacted_text), "", redacted)
    capped = raw[:max_bytes].decode("utf-8", "ignore")
    extra = (f'"truncated":true,"statement_sha256":"{hashlib.sha256(raw).hexdigest()}",'
             f'"statement_bytes":{len(raw)}')
    return StatementInfo(encode_json_string(capped), extra, redacted)


class Statements:
    """Text → statements, with a bounded cache for what needed the parser.

    A text with no ``;`` before its end is one statement and needs no splitting; one that might hold
    a secret needs redaction. Only those that needed pglast are cached (by text): a workload that
    repeats a statement pays the parser once.
    """

    def __init__(self, max_statement_bytes: int, *, cache_size: int = 4096) -> None:
        self.max_bytes = max_statement_bytes
        self._cache: OrderedDict[str, tuple[StatementInfo, ...]] = OrderedDict()
        self._cache_size = cache_size

    def one(self, text: str) -> StatementInfo:
        """The whole text as one statement (a Parse message's query)."""
        cached = self._cache.get(text)
        if cached is not None and len(cached) == 1:
            return cached[0]
        info = _statement_info(text, self.max_bytes)
        if info.redacted or "\\" in text:
            self._remember(text, (info,))
        return info

    def split_raw(self, raw: bytes, codec: str) -> tuple[StatementInfo, ...]:
        """:meth:`split` for a Query message's bytes, with the common case decided on the bytes:
        one statement (no ``;`` before the end) that cannot hold a secret (none of ``password``,
        ``://``, ``u&`` or a backslash, compared ASCII-case-insensitively as the server's lexer does)
        and fits the cap is encoded without regular expressions or the parser."""
        low = raw.lower()
        if (b"password" in low or b"://" in low or b"u&" in low or b"\\" in raw
                or len(raw) > self.max_bytes):
            return self.split(raw.decode(codec, "replace"))
        semicolon = raw.find(b";")
        if semicolon >= 0 and raw[semicolon + 1:].strip():
            return self.split(raw.decode(codec, "replace"))
        if not raw.strip():
            return ()
        return (StatementInfo(encode_json_string(raw.decode(codec, "replace")), "", False),)

    def split(self, text: str) -> tuple[StatementInfo, ...]:
        """A simple Query's text → one entry per statement the server will run, in order.

        The server parses the whole string before running any of it; when pglast cannot parse it
        either, the server will refuse it whole, so it is one (failing) statement here too. An empty
        or comment-only text gives ``()`` or one entry that the server answers with
        EmptyQueryResponse (which records nothing).
        """
        semicolon = text.find(";")
        if semicolon < 0 or not text[semicolon + 1:].strip():
            if not text.strip():
                return ()
            return (self.one(text),)
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        try:
            slices = pglast.split(text, with_parser=True, only_slices=True)
            parts: tuple[str, ...] = tuple(text[s] for s in slices)
        except Exception:  # noqa: BLE001 - does not parse: the server will reject it whole
            parts = (text,)
        # a secret in one statement may be echoed by an error of another: mark them all
        infos = tuple(_statement_info(part, self.max_bytes) for part in parts)
        if any(i.redacted for i in infos):
            infos = tuple(StatementInfo(i.spool_text, i.extra, True) for i in infos)
        self._remember(text, infos)
        return infos

    def _remember(self, text: str, infos: tuple[StatementInfo, ...]) -> None:
        if len(text) > 16384:
            return
        self._cache[text] = infos
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def parameters_fragment(values: list[bytes | None], mode: str) -> str:
    """The ``"parameters":[…]`` JSON fragment for a spool start line (``""`` for ``none``).

    ``hashed``: SHA-256 hex of each value's bytes as sent (text or binary format), ``null`` for
    NULL. ``full``: the values (text as UTF-8 where it decodes, else ``{"base64": …}``).
    """
    if mode == "none" or not values:
        return ""
    if mode == "hashed":
        sha = hashlib.sha256
        return '"parameters":[' + ",".join(
            "null" if v is None else '"' + sha(v).hexdigest() + '"' for v in values) + "]"
    parts = []
    for v in values:
        if v is None:
            parts.append("null")
            continue
        try:
            parts.append(encode_json_string(v.decode("utf-8")))
        except UnicodeDecodeError:
            import base64
            parts.append('{"base64":"' + base64.b64encode(v).decode() + '"}')
    return '"parameters":[' + ",".join(parts) + "]"


# ---------------------------------------------------------------- cold half

def statement_fields(text: str, extra: dict[str, Any]) -> dict[str, Any]:
    """``statement``, ``statement_sha256``, ``statement_bytes``, ``truncated`` for a record."""
    if extra.get("truncated"):
        return {"statement": text, "statement_sha256": extra["statement_sha256"],
                "statement_bytes": extra["statement_bytes"], "truncated": True}
    raw = text.encode("utf-8", "surrogatepass")
    return {"statement": text, "statement_sha256": hashlib.sha256(raw).hexdigest(),
            "statement_bytes": len(raw), "truncated": False}


def usage_record(connection_id: str, seq: int, connection: dict[str, Any], start_ns: int,
                 text: str, start_extra: dict[str, Any], *, outcome: str, end_ns: int | None,
                 command_tag: str | None, sqlstate: str | None,
                 outcome_extra: dict[str, Any] | None) -> dict[str, Any]:
    """The ``usage`` record of one statement.

    ``outcome`` is ``ok``, ``error``, ``suspended`` (an Execute that stopped at its row limit; a
    later Execute of the same portal is its own record with ``continues_seq``) or ``unknown`` (the
    gateway never saw the answer: it or the connection died first).
    """
    stamp = connection.get("record")
    record: dict[str, Any] = dict(stamp) if stamp else {}
    if start_extra.get("truncated"):
        digest, size, truncated = start_extra["statement_sha256"], start_extra["statement_bytes"], True
    else:
        raw = text.encode("utf-8", "surrogatepass")
        digest, size, truncated = hashlib.sha256(raw).hexdigest(), len(raw), False
    record.update(
        type="usage", line_key=f"gw:{connection_id}:{seq}", source="gateway",
        credential_id=connection.get("credential_id"), connection_id=connection_id, seq=seq,
        ts=(start_ns + connection.get("clock_offset_ns", 0)) / 1e9,
        database=connection.get("database"), client_addr=connection.get("client_addr"),
        target=connection.get("target"), statement=text, statement_sha256=digest,
        statement_bytes=size, truncated=truncated, outcome=outcome, command_tag=command_tag,
        rows=protocol.rows_from_tag(command_tag) if command_tag else None,
        duration_ms=round((end_ns - start_ns) / 1e6, 3) if end_ns is not None else None)
    if start_extra:
        for key in ("parameters", "kind", "continues_seq"):
            if key in start_extra:
                record[key] = start_extra[key]
    if sqlstate:
        record["sqlstate"] = sqlstate
    if outcome_extra:
        record.update(outcome_extra)
    return record
