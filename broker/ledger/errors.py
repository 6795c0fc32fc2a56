"""Errors raised by the ledger store."""
from __future__ import annotations


class LedgerUnavailable(Exception):
    """The ledger database could not be read or written; callers answer HTTP 503.

    The message is generic on purpose (it never contains a DSN or a password); the database
    driver's exception is chained as ``__cause__`` for the server log.
    """
