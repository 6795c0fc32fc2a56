"""Helpers shared by the test suite, imported as ``tests.support.<module>``.

Fixtures live in ``tests/conftest.py`` (the services, the dev issuers, ``database_url``, the
throwaway ``cluster``, an app on the standard policies) and in each folder's ``conftest.py``; a
group of fixtures that several folders need (``fanout``, ``postgres``, ``people``) is defined
once here and imported by name into those conftests. The code they and the tests call:

- ``apps``        ``app_factory``: apps built with ``create_app`` and closed afterwards
- ``browser``     one real headless Chromium (selenium)
- ``server``      one real server (``broker serve``, gunicorn) and the ``broker`` command
- ``oauth``       the wire: grant and token types, client credentials, forms, JWT payloads
- ``policies``    the standard policy set around a dev issuer
- ``pg_cluster``  a throwaway PostgreSQL cluster with SCRAM authentication and full logging
- ``postgres``    a ``postgres`` target in that cluster (and the fixtures of an app on it)
- ``vault``       a real OpenBao dev server and ``vault-database`` targets
- ``fanout``      derive rules, child credentials (and the fixtures of an app with them)
- ``people``      a human IdP (and its fixture), approvals, delegations, signing in
- ``audit``       ledgers built for the auditors' views
- ``merkle``      RFC 6962 references, known answers and a history rewriter
- ``attestation`` issuer configs and token surgery
"""
