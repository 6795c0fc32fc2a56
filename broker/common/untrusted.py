"""Client-provided values on their way into a log line or a ledger record: bounded and inert.

* :func:`clip` caps a value's length (what a ledger record keeps of it);
* :func:`log_safe` escapes every control, format and line-separator character (CR, LF, NEL,
  U+2028, ESC, bidi overrides…) so that a value can neither end a log line nor forge the next
  one, and caps it;
* :func:`install_log_sanitizer` makes every record of a ``broker`` logger pass its arguments
  (and a message that is not a plain format string) through :func:`log_safe` — one sanitiser
  for every log call, wherever the value came from. Idempotent; installed when the HTTP API or
  the exchange is imported.
"""
from __future__ import annotations

import logging
import threading
import unicodedata
from collections.abc import Mapping
from typing import Any

#: Longest client-provided value a log line shows (the rest is replaced by "...").
LOG_VALUE_LIMIT = 200
#: Longest client-provided text a ledger record keeps.
RECORD_VALUE_LIMIT = 256

_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def clip(text: str, limit: int = RECORD_VALUE_LIMIT) -> str:
    """``text`` cut to at most ``limit`` characters (``...`` marks a cut)."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 3)] + "..."


def _escape(char: str) -> str:
    if char in "\t ":
        return char if char == " " else "\\t"
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    if unicodedata.category(char) in _UNSAFE_CATEGORIES:
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 \
            else f"\\U{code:08x}"
    return char


def log_safe(value: object, limit: int = LOG_VALUE_LIMIT) -> str:
    """One line of printable text for a log: controls escaped, at most ``limit`` characters
    (measured before escaping, so a value of controls is at most 10 times as long)."""
    text = value if isinstance(value, str) else str(value)
    text = clip(text, limit)
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(c) for c in text)


def _safe_arg(arg: Any) -> Any:
    if arg is None or isinstance(arg, (bool, int, float)):
        return arg                      # numbers keep their %d / %.1f formatting
    return log_safe(arg)


_installed = False
_install_lock = threading.Lock()


def install_log_sanitizer() -> None:
    """Sanitise the arguments of every log record of the ``broker`` loggers (idempotent)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if record.name == "broker" or record.name.startswith("broker."):
                _sanitise(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


def _sanitise(record: logging.LogRecord) -> None:
    if record.args:
        if isinstance(record.args, Mapping):
            record.args = {k: _safe_arg(v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(_safe_arg(a) for a in record.args)
    if isinstance(record.msg, str):
        if not record.args:
            record.msg = log_safe(record.msg, limit=4 * LOG_VALUE_LIMIT)
        elif not record.msg.isprintable():
            record.msg = "".join(_escape(c) for c in record.msg)
    elif record.msg is not None:
        record.msg = log_safe(record.msg, limit=4 * LOG_VALUE_LIMIT)
