"""Helpers shared by the test suite, imported as ``tests.support.<module>``.

Fixtures live in ``tests/conftest.py`` (the services, the dev issuer, ``database_url``, the
throwaway cluster, the app plumbing) and in each folder's ``conftest.py``; the code they and the
tests call lives here:

- ``apps``        ``app_factory``: apps built with ``create_app`` and closed afterwards
- ``browser``     one real headless Chromium (selenium)
- ``server``      one real server (``broker serve``, gunicorn) and the ``broker`` command
- ``oauth``       the wire: grant and token types, client credentials, forms, JWT payloads
- ``policies``    the standard policy set around a dev issuer
- ``pg_cluster``  a throwaway PostgreSQL cluster with SCRAM authentication and full logging
- ``postgres``    a ``postgres`` target in that cluster (and the fixtures of an app on it)
- ``vault``       a real OpenBao dev server and ``vault-database`` targets
- ``fanout``      derive rules, child credentials (and the fixtures of an app with them)
- ``people``      a human IdP, approvals, delegations, signing in
- ``audit``       ledgers built for the auditors' views
- ``merkle``      RFC 6962 references, known answers and a history rewriter
- ``attestation`` issuer configs and token surgery
"""
