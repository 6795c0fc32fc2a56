"""The auditor's side: views over the ledger (lineage, runs, principals, events, statements),
parameter parsing, the OCSF export mapping, and the client the CLI uses against a remote broker.

The HTTP API (``broker/http/api/lineage.py``), the CLI (``broker/cli/audit.py``) and the web pages
(``broker/http/web/``) all build on :mod:`broker.audit.views`, so they agree on what they show.
"""
