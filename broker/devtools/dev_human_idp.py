"""INSECURE, DEV-ONLY OpenID Connect provider for people, for the demo and the test suite.

:class:`DevHumanIdP` plays the company's identity provider (the ``kind: human-idp`` the broker's
approvers sign in with). It holds a freshly generated RSA key, serves a real discovery document
and JWKS over HTTP on 127.0.0.1, and runs a real authorization-code flow:

* ``GET /authorize`` — ``response_type=code``, a registered ``client_id`` and ``redirect_uri``
  (exact match), ``state``, ``nonce``, and PKCE (``code_challenge`` with
  ``code_challenge_method=S256``; plain is refused). With ``login_hint=<email>`` of a known user
  it signs that user in at once; otherwise it shows a tiny form to pick a user (``POST
  /authorize``). It redirects back with a single-use ``code`` (60 s).
* ``POST /token`` — ``grant_type=authorization_code`` with client authentication
  (``client_secret_basic`` or ``client_secret_post``), the same ``redirect_uri``, and a
  ``code_verifier`` whose S256 must equal the challenge. Answers an ID token (``email``,
  ``email_verified``, ``groups``, ``preferred_username``, ``name``, ``nonce``) and an access
  token.

:meth:`DevHumanIdP.mint_id_token` signs ID tokens directly for API/CLI tests, including expired
ones (``ttl`` ≤ 0) and forged ones (``forge=True``: signed with a key the JWKS does not hold,
under the real ``kid``).

It is never a trust anchor: it refuses to start unless ``BROKER_INSECURE_DEV_ISSUER=1`` is set,
listens on loopback only, and keeps its keys in memory.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from broker.devtools.dev_issuer import ENV_FLAG, DevIssuer, DevKey, _dev_issuer_allowed, _QuietHandler

CODE_TTL = 60


@dataclass(frozen=True)
class DevUser:
    email: str
    username: str
    groups: tuple[str, ...] = ()
    name: str = ""
    sub: str = field(default_factory=lambda: secrets.token_hex(8))


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    user: DevUser
    scope: str
    expires_at: float


DEFAULT_USERS = (
    DevUser("alice@acme.example", "alice", ("dba", "staff"), "Alice Admin"),
    DevUser("bob@acme.example", "bob", ("staff",), "Bob Builder"),
    DevUser("octocat@acme.example", "octocat", ("dba", "staff"), "Octo Cat"),
    DevUser("mallory@elsewhere.example", "mallory", (), "Mallory"),
)


class DevHumanIdP:
    """INSECURE, DEV-ONLY OIDC provider for people over real HTTP on 127.0.0.1.

    ``clients``: client id -> {"secret", "redirect_uris"}; add one with :meth:`add_client`.
    ``users``: email -> :class:`DevUser`. ``token_requests`` counts ``/token`` calls;
    ``last_token_request`` keeps the last form (for PKCE assertions; no secrets are kept).
    """

    def __init__(self, *, port: int = 0, users: tuple[DevUser, ...] = DEFAULT_USERS) -> None:
        if not _dev_issuer_allowed():
            raise RuntimeError(
                "DevHumanIdP is an insecure, dev-only OIDC provider: it runs only when "
                f"{ENV_FLAG}=1 is set (the demo and the tests set it). Never use it in production.")
        self._port = port
        self._lock = threading.Lock()
        self.key = DevKey.generate("RS256")
        self.users: dict[str, DevUser] = {u.email: u for u in users}
        self.clients: dict[str, dict[str, Any]] = {}
        self._codes: dict[str, _Code] = {}
        self.token_requests = 0
        self.last_token_request: dict[str, str] = {}
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> DevHumanIdP:
        if self._server is None:
            self._server = make_server("127.0.0.1", self._port, self._wsgi, threaded=True,
                                       request_handler=_QuietHandler)
            self._port = self._server.server_port
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            kwargs={"poll_interval": 0.05}, daemon=True,
                                            name=f"dev-human-idp-{self._port}")
            self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> DevHumanIdP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def issuer(self) -> str:
        if self._server is None:
            raise RuntimeError("DevHumanIdP is not started")
        return f"http://127.0.0.1:{self._port}"

    def add_client(self, client_id: str, secret: str, redirect_uris: list[str]) -> None:
        with self._lock:
            self.clients[client_id] = {"secret": secret, "redirect_uris": list(redirect_uris)}

    def add_user(self, user: DevUser) -> DevUser:
        with self._lock:
            self.users[user.email] = user
        return user

    def discovery(self) -> dict[str, Any]:
        base = self.issuer
        return {
            "issuer": base, "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token", "jwks_uri": f"{base}/jwks",
            "response_types_supported": ["code"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": ["openid", "email", "profile", "groups"],
            "claims_supported": ["sub", "email", "email_verified", "groups", "preferred_username", "name"],
        }

    # -- tokens ------------------------------------------------------------------------------
    def id_claims(self, user: DevUser | str, *, audience: str, ttl: int = 3600,
                  nonce: str | None = None, now: float | None = None, **overrides: Any) -> dict[str, Any]:
        if isinstance(user, str):
            user = self.users[user]
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": user.sub, "aud": audience, "iat": issued,
            "exp": issued + ttl, "auth_time": issued, "email": user.email, "email_verified": True,
            "groups": list(user.groups), "preferred_username": user.username,
            "name": user.name or user.username,
        }
        if nonce is not None:
            claims["nonce"] = nonce
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def mint_id_token(self, user: DevUser | str, *, audience: str, ttl: int = 3600,
                      forge: bool = False, alg: str | None = None, now: float | None = None,
                      **overrides: Any) -> str:
        """An ID token for ``user`` (an email or a :class:`DevUser`). ``ttl`` ≤ 0 gives an
        expired token; ``forge=True`` signs with a fresh key under the real ``kid``."""
        if ttl <= 0 and now is None:
            now = time.time() + ttl - 120          # expired well past any leeway
            ttl = 60
        claims = self.id_claims(user, audience=audience, ttl=ttl, now=now, **overrides)
        key = DevKey.generate("RS256", kid=self.key.kid) if forge else self.key
        header = {"alg": alg or "RS256", "typ": "JWT", "kid": self.key.kid}
        return DevIssuer._sign(header, claims, key, alg or "RS256")

    # -- HTTP --------------------------------------------------------------------------------
    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        response = self._dispatch(request)
        return response(environ, start_response)

    def _dispatch(self, request: Request) -> Response:
        path = request.path
        if path == "/.well-known/openid-configuration" and request.method == "GET":
            return _json(self.discovery())
        if path == "/jwks" and request.method == "GET":
            return _json({"keys": [self.key.public_jwk()]})
        if path == "/authorize" and request.method in ("GET", "POST"):
            return self._authorize(request)
        if path == "/token" and request.method == "POST":
            return self._token(request)
        return _json({"error": "not_found"}, 404)

    def _authorize(self, request: Request) -> Response:
        params = request.values
        client = self.clients.get(params.get("client_id", ""))
        redirect_uri = params.get("redirect_uri", "")
        if client is None or redirect_uri not in client["redirect_uris"]:
            return Response("unknown client or redirect_uri", status=400, content_type="text/plain")
        if params.get("response_type") != "code":
            return self._redirect_error(redirect_uri, params, "unsupported_response_type")
        challenge = params.get("code_challenge", "")
        if params.get("code_challenge_method") != "S256" or not (43 <= len(challenge) <= 128):
            return self._redirect_error(redirect_uri, params, "invalid_request")
        email = params.get("login_hint") or params.get("user")
        if not email:
            return self._login_form(params)
        user = self.users.get(email)
        if user is None:
            return self._redirect_error(redirect_uri, params, "access_denied")
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = _Code(client_id=params["client_id"], redirect_uri=redirect_uri,
                                      challenge=challenge, nonce=params.get("nonce"), user=user,
                                      scope=params.get("scope", "openid"),
                                      expires_at=time.time() + CODE_TTL)
        query = {"code": code}
        if params.get("state"):
            query["state"] = params["state"]
        return _redirect(redirect_uri, query)

    def _login_form(self, params: Any) -> Response:
        hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                         for k, v in params.items(multi=True) if k not in ("user", "login_hint"))
        options = "".join(f'<option value="{html.escape(u.email)}">{html.escape(u.name or u.email)} '
                          f'&lt;{html.escape(u.email)}&gt;</option>' for u in self.users.values())
        body = ("<!doctype html><html><head><title>Dev IdP sign-in</title></head><body>"
                "<h1>Dev IdP (INSECURE, dev only)</h1><form method='post' action='/authorize'>"
                f"{hidden}<label for='user'>Sign in as</label> <select name='user' id='user'>{options}"
                "</select> <button type='submit' id='sign-in'>Sign in</button></form></body></html>")
        return Response(body, content_type="text/html; charset=utf-8")

    @staticmethod
    def _redirect_error(redirect_uri: str, params: Any, error: str) -> Response:
        query = {"error": error}
        if params.get("state"):
            query["state"] = params["state"]
        return _redirect(redirect_uri, query)

    def _client(self, request: Request) -> str | None:
        """The authenticated client id (basic or post), or None."""
        client_id = secret = None
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("basic "):
            try:
                raw = base64.b64decode(header[6:].strip()).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return None
            from urllib.parse import unquote
            client_id, _, secret = (unquote(p) for p in raw.partition(":"))
        else:
            client_id, secret = request.form.get("client_id"), request.form.get("client_secret")
        client = self.clients.get(client_id or "")
        if client is None or secret is None or not hmac.compare_digest(
                secret.encode(), str(client["secret"]).encode()):
            return None
        return client_id

    def _token(self, request: Request) -> Response:
        with self._lock:
            self.token_requests += 1
            self.last_token_request = {k: v for k, v in request.form.items()
                                       if k not in ("client_secret",)}
        client_id = self._client(request)
        if client_id is None:
            return _json({"error": "invalid_client"}, 401)
        if request.form.get("grant_type") != "authorization_code":
            return _json({"error": "unsupported_grant_type"}, 400)
        with self._lock:
            code = self._codes.pop(request.form.get("code", ""), None)       # single use
        if code is None or code.expires_at < time.time() or code.client_id != client_id \
                or code.redirect_uri != request.form.get("redirect_uri"):
            return _json({"error": "invalid_grant"}, 400)
        verifier = request.form.get("code_verifier", "")
        computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii", "replace")).digest()
                                            ).rstrip(b"=").decode("ascii")
        if not verifier or not hmac.compare_digest(computed, code.challenge):
            return _json({"error": "invalid_grant", "error_description": "PKCE verification failed"}, 400)
        id_token = self.mint_id_token(code.user, audience=client_id, nonce=code.nonce)
        return _json({"access_token": secrets.token_urlsafe(24), "token_type": "Bearer",
                      "expires_in": 3600, "id_token": id_token, "scope": code.scope})


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json",
                    headers={"Cache-Control": "no-store"})


def _redirect(uri: str, query: dict[str, str]) -> Response:
    sep = "&" if urlsplit(uri).query else "?"
    return Response(status=302, headers={"Location": f"{uri}{sep}{urlencode(query)}"})
