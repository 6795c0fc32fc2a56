"""The client of nhi-broker for agents, services and CI steps: standard library only.

::

    from broker.sdk import Broker
    b = Broker("https://broker.internal", subject_token=Broker.detect_attestation())
    with b.credential("payments-db", scope="read", ttl="5m") as cred:   # revoked on exit
        with cred.connect() as conn:                                     # psycopg connection
            conn.execute("select 1")
        child = cred.derive("reports-api", scope="reports:read")         # linked child credential

Importing this module needs nothing beyond the standard library (no Flask, no PyJWT): HTTP
goes through :mod:`urllib.request` (redirects refused, so a token is never re-sent elsewhere);
:meth:`Credential.connect` imports ``psycopg`` only when called.

Attestation
    ``subject_token`` is the workload's attestation: a string (used once — the broker refuses
    a replayed attestation) or a callable returning a fresh one each time (needed for
    ``auto_renew``). :meth:`Broker.detect_attestation` finds one: an explicit file, else
    GitHub Actions (requests an ID token for the broker's audience), else GitLab CI (the
    ``id_tokens`` variable, default ``BROKER_ID_TOKEN``), else a Kubernetes projected token file
    (default ``/var/run/secrets/tokens/nhi-broker``). :meth:`Broker.attestation_provider`
    returns the callable form.

Credentials
    :meth:`Broker.credential` mints one; the :class:`Credential` is a context manager that
    revokes it on exit. Revocation is self-authenticated: the SDK sends the credential's own
    token to ``POST /revoke`` without client credentials (RFC 7009 lets the holder revoke), and
    the broker revokes every credential derived from it too. :meth:`Credential.derive` exchanges
    the credential itself for a narrower, linked child. ``auto_renew=True`` replaces the
    credential before it expires (a fresh attestation for a root, a fresh derivation for a
    child) from a background thread; reads are thread-safe; every credential it held is revoked
    on exit. ``repr`` never shows a token or a password, and nothing here logs one.

Downstream propagation
    :meth:`Credential.headers` gives ``Authorization: Bearer <token>`` and
    ``X-Credential-Id: <credential id>`` for calls to services, so they can log the credential
    id without parsing the token; the SDK sends ``X-Credential-Id`` on its own calls too.

Errors
    :class:`BrokerError` carries the broker's RFC 6749 ``error`` code, its
    ``error_description`` (``.description``) and the HTTP ``.status``. When the broker answers
    ``authorization_pending`` or ``slow_down`` with an ``approval_id`` (a human approval is
    required), the SDK polls by re-sending the request with ``approval_id`` every ``interval``
    seconds (``slow_down`` adds 5 s, as RFC 8628 §3.5) until ``approval_timeout``. Each poll
    carries a fresh attestation from the ``subject_token`` callable (or from detection): the
    broker's replay guard refuses an attestation used before. A fixed string is re-sent as is,
    which the broker refuses — pass a callable (``Broker.attestation_provider()``) when a
    target may need an approval. The ``approval_url`` is logged (warning) for the person.

Retries
    A token request (an exchange, a derivation, ``act_for``, a renewal, each approval poll) is
    retried, **with the same subject token**, when the answer says nothing was issued and the
    token is still usable: ``503 temporarily_unavailable``, ``429 slow_down`` (the broker's rate
    limit — not the approval poll's ``slow_down``, which carries an ``approval_id``), no answer
    because the connection failed (refused, reset, DNS), and a timeout after the request was
    sent (single use makes a duplicate at most a refusal, never a second credential). Nothing
    else is retried: no other ``4xx`` (``invalid_grant``, ``invalid_target``, ``access_denied``…),
    no ``500``, no TLS failure. The wait is the larger of ``Retry-After`` (at most 30 s) and an
    exponential backoff with full jitter (0.25 s doubling, at most 5 s); ``retries`` (default 4)
    bounds the attempts after the first and ``retry_deadline`` (default 30 s) the time all
    attempts of one request take together (a retry whose wait would end past it is not
    started; a retry's timeout is cut to what is left, but not below 1 s). ``retries=0`` turns
    it off. Each retry is logged at INFO (attempt, status, error code; never a token) and
    passed to ``on_retry``; the error that ends the request carries ``.attempts``.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from broker.sdk.retry import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_DEADLINE,
    MIN_ATTEMPT_SECONDS,
    parse_retry_after,
    retry_delay,
)

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "AttestationProvider", "AttestationUnavailable", "Broker", "BrokerError", "BrokerUnreachable",
    "Credential", "DetectedAttestation", "CREDENTIAL_ID_HEADER", "RetryAttempt", "detect_attestation",
]

log = logging.getLogger("broker.sdk")

GRANT_TYPE_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
#: The header that carries a credential's id to downstream services (and to the broker).
CREDENTIAL_ID_HEADER = "X-Credential-Id"
DEFAULT_K8S_TOKEN_FILE = "/var/run/secrets/tokens/nhi-broker"
DEFAULT_GITLAB_TOKEN_VAR = "BROKER_ID_TOKEN"
USER_AGENT = "nhi-broker-sdk/0.1"
_PENDING = ("authorization_pending", "slow_down")

SubjectToken = str | Callable[[], str]


# ---------------------------------------------------------------------------- errors

class BrokerError(Exception):
    """A refusal or failure, with the broker's RFC 6749 ``error`` code.

    ``description`` is the broker's ``error_description`` (or the SDK's own reason),
    ``status`` the HTTP status (None when no HTTP answer came), ``body`` the other members of
    the error answer (e.g. ``approval_id``), ``retry_after`` the answer's ``Retry-After`` in
    seconds, ``attempts`` how many attempts the request made when it was one the SDK retries
    (None otherwise). Never contains a token or a password.
    """

    def __init__(self, error: str, description: str | None = None, status: int | None = None, *,
                 body: Mapping[str, Any] | None = None, retry_after: float | None = None) -> None:
        self.error = error
        self.description = description
        self.status = status
        self.body: dict[str, Any] = dict(body or {})
        self.retry_after = retry_after
        self.attempts: int | None = None
        super().__init__(str(self))

    @property
    def reason(self) -> str | None:
        """The broker's stable, non-secret reason code (``replayed``, ``no_matching_policy``…)."""
        value = self.body.get("reason")
        return value if isinstance(value, str) else None

    @property
    def event_id(self) -> int | None:
        """The ledger event that recorded this refusal: quote it to the broker's operator."""
        value = self.body.get("event_id")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def __str__(self) -> str:
        text = self.error if not self.description else f"{self.error}: {self.description}"
        facts = [f"HTTP {self.status}"] if self.status is not None else []
        if self.reason:
            facts.append(f"reason {self.reason}")
        if self.event_id is not None:
            facts.append(f"ledger event {self.event_id}")
        if self.status == 429 and self.retry_after is not None:
            facts.append(f"retry after {self.retry_after:.0f}s")
        if self.attempts is not None:
            facts.append(_attempts_text(self.attempts))
        return f"{text} ({'; '.join(facts)})" if facts else text


def _attempts_text(attempts: int) -> str:
    return f"{attempts} attempt" if attempts == 1 else f"{attempts} attempts"


class BrokerUnreachable(BrokerError):
    """No HTTP answer from the broker (connection refused, timeout, TLS failure).

    ``sent`` says the request had been sent when the answer failed (a read timeout, a reset
    connection); ``retry_safe`` whether retrying can help (not for a TLS certificate or
    handshake failure, nor a malformed URL)."""

    def __init__(self, description: str, *, retry_safe: bool = True, sent: bool = False) -> None:
        super().__init__("temporarily_unavailable", description)
        self.retry_safe = retry_safe
        self.sent = sent


class AttestationUnavailable(BrokerError):
    """No attestation could be found or fetched in this environment."""

    def __init__(self, description: str) -> None:
        super().__init__("attestation_unavailable", description)


# ---------------------------------------------------------------------------- HTTP

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A token is never re-sent to wherever a redirect points."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: http.client.HTTPMessage, newurl: str) -> urllib.request.Request | None:
        return None


def _opener(context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_NoRedirect(), urllib.request.HTTPSHandler(context=context))


@dataclass(frozen=True)
class _Answer:
    status: int
    raw: bytes
    retry_after: float | None


def _http(opener: urllib.request.OpenerDirector, request: urllib.request.Request, *,
          timeout: float, what: str) -> _Answer:
    """Any HTTP answer; BrokerUnreachable when there is none.

    urllib wraps what fails while connecting and sending in ``URLError``; what fails after the
    request was sent (waiting for or reading the answer) comes unwrapped."""
    try:
        try:
            with opener.open(request, timeout=timeout) as response:
                return _Answer(response.status, response.read(),
                               parse_retry_after(response.headers.get("Retry-After")))
        except urllib.error.HTTPError as exc:    # an answer (its body may still fail to arrive)
            try:
                return _Answer(exc.code, exc.read(), parse_retry_after(exc.headers.get("Retry-After")))
            finally:
                exc.close()
    except urllib.error.URLError as exc:
        reason = exc.reason
        # refused, reset, DNS, a connect timeout: worth another try; a TLS failure (certificate,
        # handshake) or a URL urllib cannot open is not
        retry_safe = isinstance(reason, OSError) and not isinstance(reason, ssl.SSLError)
        raise BrokerUnreachable(f"cannot reach {what}: {reason}", retry_safe=retry_safe) from None
    except (OSError, http.client.HTTPException) as exc:
        reason = str(exc) or type(exc).__name__
        # sent, then no answer or a broken one (a read timeout, a reset, a truncated answer);
        # anything else http.client raises (an invalid URL) happened before anything was sent
        sent = isinstance(exc, (OSError, http.client.IncompleteRead, http.client.BadStatusLine))
        raise BrokerUnreachable(f"no answer from {what}: {reason}" if sent else
                                f"cannot reach {what}: {reason}", retry_safe=sent, sent=sent) from None


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------------------- attestation

@dataclass(frozen=True)
class DetectedAttestation:
    """An attestation and where it came from (``github-actions``, ``gitlab-ci``,
    ``kubernetes`` or ``file``)."""
    source: str
    token: str = field(repr=False)


def detect_attestation(audience: str | None = None, *,
                       subject_token_file: str | os.PathLike[str] | None = None,
                       gitlab_token_var: str | None = None,
                       k8s_token_file: str | os.PathLike[str] | None = None,
                       environ: Mapping[str, str] | None = None,
                       timeout: float = 10.0) -> DetectedAttestation:
    """Find this workload's attestation; raise :class:`AttestationUnavailable`.

    In order: ``subject_token_file``; GitHub Actions (``ACTIONS_ID_TOKEN_REQUEST_URL`` and
    ``ACTIONS_ID_TOKEN_REQUEST_TOKEN``, asking for ``audience`` — default ``$BROKER_AUDIENCE``,
    else ``$BROKER_URL``); GitLab CI (the variable ``gitlab_token_var``, default
    ``$BROKER_GITLAB_TOKEN_VAR`` or ``BROKER_ID_TOKEN``, declared under ``id_tokens``); the
    Kubernetes projected token ``k8s_token_file`` (default ``$BROKER_K8S_TOKEN_FILE`` or
    ``/var/run/secrets/tokens/nhi-broker``).
    """
    env = os.environ if environ is None else environ
    if subject_token_file is not None:
        return DetectedAttestation("file", _read_token_file(subject_token_file, "--subject-token-file"))

    request_url = env.get("ACTIONS_ID_TOKEN_REQUEST_URL")
    if request_url:
        request_token = env.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
        if not request_token:
            raise AttestationUnavailable("ACTIONS_ID_TOKEN_REQUEST_URL is set but "
                                         "ACTIONS_ID_TOKEN_REQUEST_TOKEN is not")
        aud = audience or env.get("BROKER_AUDIENCE") or env.get("BROKER_URL")
        return DetectedAttestation("github-actions",
                                   _github_id_token(request_url, request_token, aud, timeout=timeout))
    if env.get("GITHUB_ACTIONS") == "true":
        raise AttestationUnavailable("GitHub Actions did not provide an ID token: give the job "
                                     "`permissions: id-token: write`")

    var = gitlab_token_var or env.get("BROKER_GITLAB_TOKEN_VAR") or DEFAULT_GITLAB_TOKEN_VAR
    if env.get(var):
        return DetectedAttestation("gitlab-ci", env[var].strip())
    if env.get("GITLAB_CI") == "true":
        raise AttestationUnavailable(f"GitLab CI: the variable {var} is empty; declare it under "
                                     f"`id_tokens:` with the broker's audience")

    path = k8s_token_file or env.get("BROKER_K8S_TOKEN_FILE") or DEFAULT_K8S_TOKEN_FILE
    if Path(path).is_file():
        return DetectedAttestation("kubernetes", _read_token_file(path, "the Kubernetes token file"))
    raise AttestationUnavailable("no attestation found: not GitHub Actions (no "
                                 "ACTIONS_ID_TOKEN_REQUEST_URL), not GitLab CI (no "
                                 f"{var}), no Kubernetes token at {path}; "
                                 "pass a subject token file")


def _read_token_file(path: str | os.PathLike[str], what: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise AttestationUnavailable(f"cannot read {what} {os.fspath(path)}: "
                                     f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    if not token:
        raise AttestationUnavailable(f"{what} {os.fspath(path)} is empty")
    return token


def _github_id_token(request_url: str, request_token: str, audience: str | None, *,
                     timeout: float) -> str:
    url = request_url
    if audience:
        url += ("&" if urllib.parse.urlsplit(request_url).query else "?") + \
            urllib.parse.urlencode({"audience": audience})
    request = urllib.request.Request(url, headers={
        "Authorization": f"Bearer {request_token}", "Accept": "application/json",
        "User-Agent": USER_AGENT})
    answer = _http(_opener(None), request, timeout=timeout, what="the GitHub ID-token endpoint")
    status, body = answer.status, _json_object(answer.raw)
    if status != 200 or body is None or not isinstance(body.get("value"), str) or not body["value"]:
        raise AttestationUnavailable(f"the GitHub ID-token endpoint answered HTTP {status} "
                                     "without a token")
    token: str = body["value"]
    return token


class AttestationProvider:
    """A callable that detects a fresh attestation for ``audience`` on every call. With no
    audience, :class:`Broker` binds it to its own (:meth:`for_audience`)."""

    def __init__(self, audience: str | None, options: Mapping[str, Any]) -> None:
        self.audience = audience
        self._options = dict(options)

    def for_audience(self, audience: str) -> AttestationProvider:
        return AttestationProvider(audience, self._options)

    def __call__(self) -> str:
        return detect_attestation(self.audience, **self._options).token

    def __repr__(self) -> str:
        return f"AttestationProvider(audience={self.audience!r})"


# ---------------------------------------------------------------------------- credentials

@dataclass(frozen=True)
class _Issued:
    """One answer of ``POST /token``. Holds secrets: never printed (``repr`` hides them)."""
    credential_id: str
    access_token: str = field(repr=False)
    issued_at: float
    expires_at: float
    scope: tuple[str, ...]
    parent_id: str | None
    secret: dict[str, Any] | None = field(repr=False)

    @classmethod
    def from_response(cls, body: Mapping[str, Any]) -> _Issued:
        try:
            now = time.time()
            secret = body.get("credential")
            return cls(credential_id=str(body["credential_id"]), access_token=str(body["access_token"]),
                       issued_at=now, expires_at=now + float(body["expires_in"]),
                       scope=tuple(str(body.get("scope") or "").split()),
                       parent_id=body.get("parent_id"),
                       secret=dict(secret) if isinstance(secret, dict) else None)
        except (KeyError, TypeError, ValueError):
            raise BrokerError("invalid_response", "the broker's token answer is incomplete") from None


def _scope_text(scope: str | Iterable[str] | None) -> str | None:
    if scope is None:
        return None
    if isinstance(scope, str):
        return " ".join(scope.split()) or None
    return " ".join(scope) or None


@dataclass(frozen=True)
class RetryAttempt:
    """A failed attempt of a token request that is about to be retried (``Broker(on_retry=…)``):
    ``attempt`` (from 1) of at most ``max_attempts``, the ``error`` it ended with (its
    ``status``, ``error`` code and ``reason``; never a token) and the ``delay`` in seconds
    before the next attempt."""
    attempt: int
    max_attempts: int
    error: BrokerError
    delay: float


def _retry_safe(error: BrokerError) -> bool:
    """Nothing was issued and the subject token is still usable (docs/operations.md)."""
    if isinstance(error, BrokerUnreachable):
        return error.retry_safe
    if error.status == 503:
        return error.error == "temporarily_unavailable"
    if error.status == 429:      # the rate limit, not an approval poll (which has an approval_id)
        return error.error == "slow_down" and "approval_id" not in error.body
    return False


class Broker:
    """A client of one broker. Thread-safe: it holds configuration only.

    ``url`` defaults to ``$BROKER_URL``. ``subject_token`` is the attestation (a string, or a
    callable returning a fresh one). ``ssl_context`` verifies the broker's TLS certificate
    (default: the system's trust store). ``timeout`` is per HTTP request. ``retries`` (attempts
    after the first, default 4; 0 = off) and ``retry_deadline`` (seconds for all attempts of
    one token request, default 30) bound the retries of what is safe to retry (the module
    docstring, "Retries"); ``on_retry`` is called with a :class:`RetryAttempt` before each.
    """

    def __init__(self, url: str | None = None, *, subject_token: SubjectToken | None = None,
                 audience: str | None = None, timeout: float = 10.0, approval_timeout: float = 600.0,
                 ssl_context: ssl.SSLContext | None = None,
                 on_approval_pending: Callable[[dict[str, Any]], None] | None = None,
                 retries: int = DEFAULT_RETRIES, retry_deadline: float = DEFAULT_RETRY_DEADLINE,
                 on_retry: Callable[[RetryAttempt], None] | None = None) -> None:
        url = url or os.environ.get("BROKER_URL")
        if not url:
            raise ValueError("the broker URL is required (argument or BROKER_URL)")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.username or parts.password:
            raise ValueError("the broker URL must be http(s)://host[:port][/path] without credentials")
        self.url = url.rstrip("/")
        #: the audience attestations are requested for (GitHub Actions): the broker's own
        self.audience = audience or os.environ.get("BROKER_AUDIENCE") or self.url
        if isinstance(subject_token, AttestationProvider) and subject_token.audience is None:
            subject_token = subject_token.for_audience(self.audience)
        self.subject_token = subject_token
        self.timeout = float(timeout)
        self.approval_timeout = float(approval_timeout)
        self.on_approval_pending = on_approval_pending   # called with each pending answer's body
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError("retries must be a whole number of attempts, 0 or more")
        if not retry_deadline >= 0:
            raise ValueError("retry_deadline must be 0 or more seconds")
        self.retries = retries
        self.retry_deadline = float(retry_deadline)
        self.on_retry = on_retry
        self._opener = _opener(ssl_context)

    def __repr__(self) -> str:
        return f"Broker({self.url!r})"

    # -- attestation -----------------------------------------------------------------------
    @staticmethod
    def detect_attestation(audience: str | None = None, **options: Any) -> AttestationProvider:
        """This workload's attestation, detected when the broker needs it (see
        :func:`detect_attestation` for the order). Without ``audience`` the :class:`Broker` it
        is given to asks for its own (``$BROKER_AUDIENCE``, else the broker's URL), so
        ``Broker(url, subject_token=Broker.detect_attestation())`` requests a GitHub ID token
        the broker accepts. It is a callable: every exchange (a renewal, an approval poll) gets
        a fresh attestation."""
        return AttestationProvider(audience, options)

    @staticmethod
    def attestation_provider(audience: str | None = None, **options: Any) -> AttestationProvider:
        """A callable that detects a fresh attestation on every call (for ``auto_renew``)."""
        return AttestationProvider(audience, options)

    def _attestation(self) -> str:
        source = self.subject_token
        if source is None:
            return AttestationProvider(self.audience, {})()
        token = source() if callable(source) else source
        if not isinstance(token, str) or not token:
            raise AttestationUnavailable("the subject_token provider returned no token")
        return token

    # -- credentials -----------------------------------------------------------------------
    def credential(self, target: str, *, scope: str | Iterable[str] | None = None,
                   ttl: str | int | None = None, auto_renew: bool = False,
                   renew_margin: float | None = None) -> Credential:
        """Mint a credential for ``target`` from this workload's attestation.

        Use it as a context manager (revoked on exit) or call :meth:`Credential.close`.
        ``auto_renew`` needs a callable ``subject_token``: attestations are single-use.
        """
        if auto_renew and self.subject_token is not None and not callable(self.subject_token):
            raise ValueError("auto_renew needs a fresh attestation for every renewal: pass a "
                             "callable subject_token, e.g. Broker.attestation_provider()")
        scope_text = _scope_text(scope)

        def mint() -> _Issued:
            return self._exchange(self._attestation(), target, scope_text, ttl,
                                  fresh_attestation=self._fresh_attestation())

        return Credential(self, mint(), target=target, reissue=mint, auto_renew=auto_renew,
                          renew_margin=renew_margin)

    def act_for(self, delegation_token: str, target: str, *, scope: str | Iterable[str] | None = None,
                ttl: str | int | None = None, subject_token_type: str = TOKEN_TYPE_JWT,
                auto_renew: bool = False, renew_margin: float | None = None) -> Credential:
        """Mint a credential for ``target`` acting for a person (RFC 8693 ``actor_token``):
        ``delegation_token`` is the person's delegation token (or their ID token, with
        ``subject_token_type=urn:ietf:params:oauth:token-type:id_token``, where a policy allows
        it); this workload's attestation is the actor token (fresh for every mint and renewal).
        The credential names the person (``sub``) and this workload (``act``)."""
        if not isinstance(delegation_token, str) or not delegation_token:
            raise ValueError("act_for needs the person's delegation token")
        if auto_renew and self.subject_token is not None and not callable(self.subject_token):
            raise ValueError("auto_renew needs a fresh attestation for every renewal: pass a "
                             "callable subject_token, e.g. Broker.attestation_provider()")
        scope_text = _scope_text(scope)

        def mint() -> _Issued:
            form = {"grant_type": GRANT_TYPE_TOKEN_EXCHANGE, "subject_token": delegation_token,
                    "subject_token_type": subject_token_type, "actor_token": self._attestation(),
                    "actor_token_type": TOKEN_TYPE_JWT, "audience": target}
            if scope_text:
                form["scope"] = scope_text
            if ttl is not None:
                form["ttl"] = str(ttl)
            return _Issued.from_response(self._post_retrying("/token", form, {}))

        return Credential(self, mint(), target=target, reissue=mint, auto_renew=auto_renew,
                          renew_margin=renew_margin)

    def _fresh_attestation(self) -> Callable[[], str] | None:
        """Where each approval poll gets its attestation: a fresh one from the provider (the
        broker refuses a replayed attestation), or None for a fixed string, which is re-sent."""
        source = self.subject_token
        return self._attestation if source is None or callable(source) else None

    def _exchange(self, subject_token: str, target: str, scope: str | None,
                  ttl: str | int | None, *, credential_id: str | None = None,
                  fresh_attestation: Callable[[], str] | None = None) -> _Issued:
        form = {"grant_type": GRANT_TYPE_TOKEN_EXCHANGE, "subject_token": subject_token,
                "subject_token_type": TOKEN_TYPE_JWT, "audience": target}
        if scope:
            form["scope"] = scope
        if ttl is not None:
            form["ttl"] = str(ttl)
        headers = {CREDENTIAL_ID_HEADER: credential_id} if credential_id else {}
        return _Issued.from_response(self._post_token(form, headers, fresh_attestation=fresh_attestation))

    def _post_token(self, form: dict[str, str], headers: dict[str, str], *,
                    fresh_attestation: Callable[[], str] | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + self.approval_timeout
        interval = 5.0
        while True:
            try:
                return self._post_retrying("/token", form, headers)   # each poll: its own budget
            except BrokerError as exc:
                approval_id = exc.body.get("approval_id")
                if exc.error not in _PENDING or not isinstance(approval_id, str):
                    raise
                try:
                    interval = float(exc.body.get("interval", interval))
                except (TypeError, ValueError):
                    pass
                if exc.error == "slow_down":
                    interval += 5.0
                if time.monotonic() + interval > deadline:
                    raise
                if self.on_approval_pending is not None:
                    self.on_approval_pending({"error": exc.error, **exc.body})
                if exc.body.get("approval_url"):
                    log.warning("approval needed: %s (waiting; next check in %.0fs)",
                                exc.body["approval_url"], interval)
                else:
                    log.info("waiting for approval %s (next check in %.0fs)", approval_id, interval)
                form = {**form, "approval_id": approval_id}
                time.sleep(interval)
                if fresh_attestation is not None:
                    form["subject_token"] = fresh_attestation()   # each poll: a fresh attestation

    def _post_retrying(self, path: str, form: Mapping[str, str],
                       headers: Mapping[str, str]) -> dict[str, Any]:
        """:meth:`_post`, retried with the same form (the same subject token) while the answer
        is safe to retry (:func:`_retry_safe`) and the budget (``retries``, ``retry_deadline``)
        lasts. The error that ends it carries ``attempts``."""
        max_attempts = self.retries + 1
        deadline = time.monotonic() + self.retry_deadline
        timeout = self.timeout
        unanswered = False          # an earlier attempt was sent and got no answer
        attempt = 1
        while True:
            try:
                return self._post(path, form, headers, timeout=timeout)
            except BrokerError as exc:
                if not _retry_safe(exc):
                    if attempt > 1:
                        exc.attempts = attempt
                        if unanswered and exc.reason == "replayed":
                            log.warning("the subject token was used by an earlier attempt that got "
                                        "no answer: the broker may have issued a credential for it "
                                        "(ledger event %s)", exc.event_id)
                    raise
                delay = retry_delay(attempt, exc.retry_after)
                if attempt >= max_attempts or time.monotonic() + delay >= deadline:
                    exc.attempts = attempt
                    raise
                unanswered = unanswered or (isinstance(exc, BrokerUnreachable) and exc.sent)
                notice = RetryAttempt(attempt=attempt, max_attempts=max_attempts, error=exc,
                                      delay=delay)
                log.info("POST %s: attempt %d/%d failed: %s; retrying in %.1fs", path, attempt,
                         max_attempts, exc, delay)
                if self.on_retry is not None:
                    self.on_retry(notice)
                time.sleep(delay)
                attempt += 1
                # a retry's timeout is cut to what is left of the deadline, but no shorter than
                # MIN_ATTEMPT_SECONDS: cut off at once, it would only hide the broker's answer
                timeout = min(self.timeout, max(deadline - time.monotonic(), MIN_ATTEMPT_SECONDS))

    def _post(self, path: str, form: Mapping[str, str], headers: Mapping[str, str], *,
              timeout: float | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url + path, data=urllib.parse.urlencode(form).encode("ascii"), method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded",
                     "Accept": "application/json", "User-Agent": USER_AGENT, **headers})
        answer = _http(self._opener, request, timeout=self.timeout if timeout is None else timeout,
                       what=f"the broker at {self.url}")
        status, body = answer.status, _json_object(answer.raw)
        if 200 <= status < 300:
            return body or {}
        if body is not None and isinstance(body.get("error"), str):
            description = body.get("error_description")
            extra = {k: v for k, v in body.items() if k not in ("error", "error_description")}
            raise BrokerError(body["error"], description if isinstance(description, str) else None,
                              status, body=extra, retry_after=answer.retry_after)
        raise BrokerError("server_error", f"the broker answered HTTP {status}", status,
                          retry_after=answer.retry_after)

    def revoke_token(self, access_token: str, *, credential_id: str | None = None) -> None:
        """Revoke a credential (and everything derived from it) with its own token."""
        headers = {CREDENTIAL_ID_HEADER: credential_id} if credential_id else {}
        self._post("/revoke", {"token": access_token}, headers)


class Credential:
    """A minted credential. Context manager: revoked (with its descendants) on exit.

    Reads are thread-safe; with ``auto_renew`` a background thread replaces the credential
    before it expires, so read :attr:`access_token` (or :meth:`headers`) when you use it
    rather than keeping a copy.
    """

    def __init__(self, broker: Broker, issued: _Issued, *, target: str,
                 reissue: Callable[[], _Issued], auto_renew: bool = False,
                 renew_margin: float | None = None, parent: Credential | None = None) -> None:
        self._broker = broker
        self._issued = issued
        self._previous: list[_Issued] = []
        self._target = target
        self._reissue = reissue
        self._renew_margin = renew_margin
        self._parent = parent
        self._children: list[Credential] = []
        self._lock = threading.RLock()
        self._closed = False
        self._stop = threading.Event()
        self.last_renewal_error: BrokerError | None = None
        self._thread: threading.Thread | None = None
        if auto_renew:
            self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                            name=f"nhi-broker-renew-{issued.credential_id}")
            self._thread.start()

    # -- what it is ------------------------------------------------------------------------
    @property
    def target(self) -> str:
        return self._target

    @property
    def credential_id(self) -> str:
        with self._lock:
            return self._issued.credential_id

    @property
    def access_token(self) -> str:
        """The broker-signed JWT (a secret: send it, never log it)."""
        with self._lock:
            self._check_open()
            return self._issued.access_token

    @property
    def expires_at(self) -> float:
        with self._lock:
            return self._issued.expires_at

    @property
    def expires_in(self) -> float:
        return max(0.0, self.expires_at - time.time())

    @property
    def scope(self) -> tuple[str, ...]:
        with self._lock:
            return self._issued.scope

    @property
    def parent_id(self) -> str | None:
        with self._lock:
            return self._issued.parent_id

    @property
    def parent(self) -> Credential | None:
        return self._parent

    @property
    def secret(self) -> dict[str, Any] | None:
        """The secret part for secret-bearing targets (e.g. a database user and password)."""
        with self._lock:
            self._check_open()
            return None if self._issued.secret is None else dict(self._issued.secret)

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        with self._lock:
            issued = self._issued
        state = "closed" if self._closed else f"expires_in={max(0, int(issued.expires_at - time.time()))}s"
        parent = f", parent_id={issued.parent_id!r}" if issued.parent_id else ""
        return (f"Credential(target={self._target!r}, credential_id={issued.credential_id!r}, "
                f"scope={' '.join(issued.scope)!r}{parent}, {state})")

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerError("invalid_grant", "this credential was revoked")

    # -- using it --------------------------------------------------------------------------
    def headers(self) -> dict[str, str]:
        """Headers for a call to a service: the bearer token and ``X-Credential-Id``."""
        with self._lock:
            self._check_open()
            return {"Authorization": f"Bearer {self._issued.access_token}",
                    CREDENTIAL_ID_HEADER: self._issued.credential_id}

    def connection_params(self) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect`` (includes the password: a secret)."""
        secret = self.secret
        if not secret or "password" not in secret:
            raise BrokerError("invalid_target", f"the credential for {self._target!r} carries no "
                                                "database login")
        params: dict[str, Any] = {
            "host": secret.get("host"), "port": secret.get("port"), "dbname": secret.get("dbname"),
            "user": secret.get("username") or secret.get("user"), "password": secret["password"],
            "application_name": f"nhi-broker:{self.credential_id}",
        }
        if secret.get("sslmode"):
            params["sslmode"] = secret["sslmode"]
        return {k: v for k, v in params.items() if v is not None}

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new ``psycopg`` connection with this credential (psycopg is imported here)."""
        try:
            import psycopg
        except ImportError:
            raise ImportError("Credential.connect() needs psycopg: pip install 'psycopg[binary]'") from None
        return psycopg.connect(**{**self.connection_params(), **kwargs})

    def derive(self, target: str, *, scope: str | Iterable[str] | None = None,
               ttl: str | int | None = None, auto_renew: bool = False,
               renew_margin: float | None = None) -> Credential:
        """Exchange this credential for a narrower child credential for ``target``, linked to it.

        The child is revoked when this credential is (the broker cascades); use it as a
        context manager to revoke it earlier. With ``auto_renew`` the child is re-derived from
        this credential's current token before it expires.
        """
        scope_text = _scope_text(scope)

        def mint() -> _Issued:
            with self._lock:
                self._check_open()
                token, parent_id = self._issued.access_token, self._issued.credential_id
            return self._broker._exchange(token, target, scope_text, ttl, credential_id=parent_id)

        child = Credential(self._broker, mint(), target=target, reissue=mint,
                           auto_renew=auto_renew, renew_margin=renew_margin, parent=self)
        with self._lock:
            self._children.append(child)
        return child

    # -- renewal ---------------------------------------------------------------------------
    def renew(self) -> None:
        """Replace the credential now with a fresh one (same target, scope and ttl request).
        The replaced one stays valid until it expires or this credential is closed."""
        issued = self._reissue()
        with self._lock:
            if self._closed:
                stale = issued
            else:
                self._previous.append(self._issued)
                self._issued, stale = issued, None
        if stale is not None:       # closed while renewing: do not leave it live
            self._revoke_quietly(stale)
        else:
            log.info("renewed credential for %s: %s", self._target, issued.credential_id)

    def _margin(self, issued: _Issued) -> float:
        if self._renew_margin is not None:
            return float(self._renew_margin)
        lifetime = issued.expires_at - issued.issued_at
        return max(1.0, min(60.0, lifetime * 0.25))

    def _renew_loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            with self._lock:
                issued = self._issued
            if failures:
                wait = min(30.0, 2.0 ** failures)
            else:
                wait = issued.expires_at - self._margin(issued) - time.time()
            if self._stop.wait(max(0.0, wait)):
                return
            try:
                self.renew()
                failures, self.last_renewal_error = 0, None
            except BrokerError as exc:
                failures += 1
                self.last_renewal_error = exc
                log.warning("renewing the credential for %s failed: %s", self._target, exc)
            except Exception as exc:  # noqa: BLE001 - keep the thread alive; report it
                failures += 1
                self.last_renewal_error = BrokerError("renewal_failed", type(exc).__name__)
                log.warning("renewing the credential for %s failed: %s", self._target,
                            type(exc).__name__)

    # -- ending it -------------------------------------------------------------------------
    def _revoke_quietly(self, issued: _Issued) -> BrokerError | None:
        try:
            self._broker.revoke_token(issued.access_token, credential_id=issued.credential_id)
        except BrokerError as exc:
            log.warning("revoking credential %s failed: %s", issued.credential_id, exc)
            return exc
        return None

    def revoke(self) -> None:
        """Revoke this credential, every one it replaced, and (at the broker) all descendants.
        Idempotent. Raises :class:`BrokerError` if the broker could not be told."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            held = [*self._previous, self._issued]
            children = list(self._children)
        self._stop.set()
        errors = [e for e in (self._revoke_quietly(i) for i in reversed(held)) if e is not None]
        for child in children:          # already revoked by the broker's cascade
            child._mark_closed()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if errors:
            raise errors[0]

    def _mark_closed(self) -> None:
        with self._lock:
            self._closed = True
            children = list(self._children)
        self._stop.set()
        for child in children:
            child._mark_closed()

    close = revoke

    def __enter__(self) -> Credential:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.revoke()
            return
        try:
            self.revoke()
        except BrokerError:
            pass                         # the original exception matters more; logged above
