"""The PostgreSQL wire-protocol gateway: authenticate a credential, log in upstream, record every
statement with its credential id, end sessions when credentials end.

Seams for the broker: :class:`~broker.gateway.login.Authenticator` (returns
:class:`~broker.gateway.login.Authorized` or raises :class:`~broker.gateway.login.LoginRefused`),
:class:`~broker.gateway.recording.RecordSink`, :class:`~broker.gateway.server.Supervisor`
(``end_credential``) and :func:`~broker.gateway.login.minted_role_password`.
"""
