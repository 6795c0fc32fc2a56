"""Linking downstream usage to credential ids: PostgreSQL log ingestion.

The database records what each minted role ran in its own log (a record outside the actor);
:func:`ingest_postgres_log` reads it (``jsonlog``, ``csvlog``, ``stderr``) and appends one
``usage`` event per statement, connection or error of a role ``nhb_<credential id>``.
"""
from __future__ import annotations

from broker.usage.ingest import IngestStats, UsageIngester, detect_format, ingest_postgres_log
from broker.usage.pglog import DEFAULT_PREFIX, FORMATS, LogEntry, activity_of, parse_lines
from broker.usage.redact import redact_sql

__all__ = ["DEFAULT_PREFIX", "FORMATS", "IngestStats", "LogEntry", "UsageIngester",
           "activity_of", "detect_format", "ingest_postgres_log", "parse_lines", "redact_sql"]
