"""Redaction of secrets in SQL text before it is recorded.

A usage event keeps the statement a minted role ran. Some statements carry a secret:
``ALTER ROLE … PASSWORD '…'`` and ``CREATE USER … PASSWORD '…'`` (including the SCRAM verifier
that psql's ``\\password`` sends), user mappings and ``dblink``/``postgres_fdw`` options
(``password 'x'``, ``password=x`` inside a connection string), and URIs with a password
(``postgresql://user:secret@host``). Each is replaced by ``***``; the rest of the statement
stays, so the auditor still sees what was done.
"""
from __future__ import annotations

import re

# A SQL string literal: '…' with '' escapes, E'…' with backslash escapes, or $tag$…$tag$.
_LITERAL = (r"(?:[Ee]'(?:[^'\\]|\\.|'')*'"
            r"|'(?:[^']|'')*'"
            r"|\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)?\$.*?\$(?P=tag)?\$)")
# PASSWORD <literal> (ALTER/CREATE ROLE|USER|GROUP, ENCRYPTED PASSWORD, user mapping OPTIONS).
_PASSWORD_LITERAL = re.compile(r"(\bpassword\b\s*(?:=\s*)?)" + _LITERAL, re.IGNORECASE | re.DOTALL)
# password=value inside a connection string (dblink, postgres_fdw, libpq keyword/value).
_PASSWORD_KV = re.compile(r"(\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s'\"]+)", re.IGNORECASE)
# scheme://user:secret@host
_URI_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@'\"]*:)[^\s@'\"]+(@)", re.IGNORECASE)

REDACTED = "***"
_MAYBE_SECRET = re.compile(r"password|://", re.IGNORECASE)


def redact_sql(text: str | None) -> str | None:
    """``text`` with every password-bearing literal replaced by ``'***'``."""
    if not text:
        return text
    if _MAYBE_SECRET.search(text) is None:
        return text                                  # the common case: nothing to do
    text = _PASSWORD_LITERAL.sub(lambda m: f"{m.group(1)}'{REDACTED}'", text)
    text = _PASSWORD_KV.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _URI_PASSWORD.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(2)}", text)
    return text
