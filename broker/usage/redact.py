"""Redaction of secrets in SQL text before anything is stored — the one implementation the
gateway (before its spool) and log ingestion (before the ledger) share.

Built on PostgreSQL's own lexer and parser (``pglast``):

- the literal after a ``PASSWORD`` keyword (``CREATE/ALTER ROLE|USER|GROUP … [ENCRYPTED] PASSWORD
  '…'``, ``CREATE/ALTER USER MAPPING|SERVER … OPTIONS ([ADD|SET] password '…')``, any option whose
  name ends in ``password``, e.g. ``sslpassword``);
- any string constant — plain, ``E'…'`` (backslash escapes), ``U&'…'`` (Unicode escapes, decoded
  first so ``U&'\\0070assword=…'`` is caught) or dollar-quoted — whose decoded value holds a
  connection string ``password=…`` or a URI ``scheme://user:secret@host`` (dblink,
  postgres_fdw, ``CREATE SUBSCRIPTION … CONNECTION``).

A literal after ``PASSWORD`` becomes ``'***'`` (``U&'***'`` for a Unicode literal); a plain
``'…'`` literal holding a connection string or URI keeps its text with only the secret replaced
(``'host=db password=*** user=u'``, ``'postgresql://app:***@db/x'``); any other literal holding one
(``E'…'``, ``U&'…'``, dollar-quoted: escapes could hide where the secret ends) becomes ``'***'``
whole. The rest stays, so the auditor still sees what was done. A statement that does not lex
or parse (an unterminated quoted password, ``PASSWORD secret`` unquoted) is redacted
conservatively: everything from the first
``password`` onwards becomes ``***`` (and, with no such word, everything from the first ``U&'``,
``E'`` or URI). The fast path — no ``password``, ``://``, ``U&`` or backslash anywhere — costs one
regular-expression search and no parsing.
"""
from __future__ import annotations

import re
from typing import Any

from pglast import parser as _pg

REDACTED = "***"
_MAYBE_SECRET = re.compile(r"password|://|u&|\\", re.IGNORECASE)
_SECRET_IN_VALUE = re.compile(r"password\s*=|://[^\s/@]*:[^\s@]*@", re.IGNORECASE)
# The fallback's word holding "password" starts at a word boundary (the leftmost match of
# \w*password always does; without the \b a long word costs time quadratic in its length).
_FALLBACK_PASSWORD = re.compile(r"\b\w*password", re.IGNORECASE)
_FALLBACK_QUOTE = re.compile(r"u&'|e'", re.IGNORECASE)
_SCHEME_CHAR = re.compile(r"[a-z0-9+.-]", re.IGNORECASE)
_SCHEME_FIRST = re.compile(r"[a-z]", re.IGNORECASE)
_LITERALS = {"SCONST", "USCONST"}
_SKIP_BEFORE_LITERAL = {"ENCRYPTED", "UNENCRYPTED", "ADD", "SET", "ASCII_61"}   # ASCII_61 is '='


def redact_statement(text: str) -> tuple[str, bool]:
    """``(text with secrets replaced, whether anything was replaced)``."""
    if _MAYBE_SECRET.search(text) is None:
        return text, False
    try:
        tokens = _pg.scan(text)
        _pg.parse_sql(text)
    except Exception:  # noqa: BLE001 - pglast.parser.ParseError and anything odd: be conservative
        return _fallback(text)
    spans: list[tuple[int, int, str]] = []
    for i, token in enumerate(tokens):
        if token.name not in _LITERALS:
            continue
        raw = text[token.start:token.end + 1]
        if _follows_password(text, tokens, i):
            replacement = f"U&'{REDACTED}'" if token.name == "USCONST" else f"'{REDACTED}'"
            spans.append((token.start, token.end + 1, replacement))
        elif _secret_in_literal(raw):
            inner = _redact_in_plain_literal(raw) if raw.startswith("'") else None
            spans.append((token.start, token.end + 1, inner or
                          (f"U&'{REDACTED}'" if token.name == "USCONST" else f"'{REDACTED}'")))
    if not spans:
        return text, False
    out, last = [], 0
    for start, end, replacement in spans:
        out.append(text[last:start])
        out.append(replacement)
        last = end
    out.append(text[last:])
    return "".join(out), True


def _follows_password(text: str, tokens: list[Any], i: int) -> bool:
    j = i - 1
    while j >= 0 and tokens[j].name in _SKIP_BEFORE_LITERAL:
        j -= 1
    if j < 0:
        return False
    word = text[tokens[j].start:tokens[j].end + 1].strip('"').lower()
    return word.endswith("password")


_PASSWORD_KV = re.compile(r"(\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s']+)", re.IGNORECASE)
_URI_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@']*:)[^\s@']+(@)", re.IGNORECASE)


def _redact_in_plain_literal(raw: str) -> str | None:
    """A plain ``'…'`` literal with the conninfo/URI secret inside replaced, or None when what
    is left would still match (then the whole literal goes)."""
    out = _PASSWORD_KV.sub(lambda m: f"{m.group(1)}{REDACTED}", raw)
    out = _URI_PASSWORD.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(2)}", out)
    value = decode_literal(out)
    if out == raw or value is None:
        return None
    leftover = _SECRET_IN_VALUE.search(value.replace(f"password={REDACTED}", "")
                                       .replace(f":{REDACTED}@", ""))
    return None if leftover else out


def _secret_in_literal(raw: str) -> bool:
    value = decode_literal(raw)
    return value is None or _SECRET_IN_VALUE.search(value) is not None


def decode_literal(raw: str) -> str | None:
    """The value of one SQL string-literal token, or ``None`` when it cannot be decoded (which
    callers treat as "may hide a secret")."""
    try:
        if raw[:2].upper() == "U&":
            return _decode_unicode_escapes(raw[3:-1].replace("''", "'"))
        if raw[:1] in "Ee" and raw[1:2] == "'":
            return raw[2:-1].replace("''", "'").encode("latin-1", "backslashreplace") \
                .decode("unicode_escape")
        if raw.startswith("$"):
            tag_end = raw.index("$", 1) + 1
            return raw[tag_end:-tag_end]
        if raw.startswith("'"):
            return raw[1:-1].replace("''", "'")
    except (ValueError, UnicodeDecodeError):
        return None
    return raw


def _decode_unicode_escapes(body: str, escape: str = "\\") -> str:
    out, i, n = [], 0, len(body)
    while i < n:
        ch = body[i]
        if ch != escape:
            out.append(ch)
            i += 1
        elif body[i + 1:i + 2] == escape:
            out.append(escape)
            i += 2
        elif body[i + 1:i + 2] == "+":
            out.append(chr(int(body[i + 2:i + 8], 16)))
            i += 8
        else:
            out.append(chr(int(body[i + 1:i + 5], 16)))
            i += 5
    return "".join(out)


def _first_uri(text: str) -> int | None:
    """Where the leftmost match of ``[a-z][a-z0-9+.-]*://`` (ignoring case) starts, in time
    linear in ``len(text)``: the first letter of the scheme characters before a ``://``."""
    colon = text.find("://")
    while colon >= 0:
        start = colon
        while start > 0 and _SCHEME_CHAR.match(text, start - 1):
            start -= 1
        for i in range(start, colon):
            if _SCHEME_FIRST.match(text, i):
                return i
        colon = text.find("://", colon + 3)
    return None


def _fallback(text: str) -> tuple[str, bool]:
    match = _FALLBACK_PASSWORD.search(text)
    if match is not None:
        word = match.group(0) if "password" in match.group(0).lower() else ""   # not "paſſword"
        return text[:match.start()] + word + f" {REDACTED}", True
    quote, uri = _FALLBACK_QUOTE.search(text), _first_uri(text)
    starts = [i for i in (quote.start() if quote else None, uri) if i is not None]
    if not starts:
        return text, False
    return text[:min(starts)] + f" {REDACTED}", True


def redact_sql(text: str | None) -> str | None:
    """``text`` with every secret-bearing literal replaced (see :func:`redact_statement`)."""
    if not text:
        return text
    return redact_statement(text)[0]
