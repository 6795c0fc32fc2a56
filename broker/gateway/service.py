"""``broker gateway``: the gateway as the broker runs it — the credential is the login, every
statement goes to the ledger, and credentials that end, end at the connection.

Three pieces plug the broker into the gateway's seams (:mod:`broker.gateway.login`,
:mod:`broker.gateway.recording`, :class:`broker.gateway.server.Supervisor`):

* :class:`CredentialAuthenticator` (one per listener, in each worker) — the client's password is
  its access token. It must verify with the broker's keys (signature, expiry), name this
  target, come with the login name ``nhb_<credential id>``, and be **live** by the one liveness
  rule (:mod:`broker.lifecycle.liveness`: not revoked or ended, ancestors live, its delegation
  still granted). Upstream it logs in as the credential's own role with the password derived
  from the secret the broker shares with its gateways (``minted-role``), or with the target's one
  service login (``service-role``, ``application_name`` = the credential id). Anything else is
  a ``FATAL`` 28000/28P01 with a short reason, recorded as a refused ``connect``.
* :class:`LedgerSink` (in the supervisor's drainer) — the gateway's records become ledger events
  (``usage`` per statement, ``connect``, ``disconnect``, ``gateway``), in batches, each keyed by
  its ``line_key`` so a spool drained twice after a crash records nothing twice.
* :class:`RevocationWatcher` (a thread in the supervisor) — polls the ledger for ``revoke`` and
  ``expire`` events (a cascade writes one per descendant) and ends those credentials' sessions
  in every worker within a second. Expiry itself is enforced by each session's own timer.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from broker import config as cfg
from broker import errors
from broker.gateway.config import GatewayConfig, ListenerConfig
from broker.gateway.login import (
    INVALID_AUTHORIZATION,
    INVALID_PASSWORD,
    Authorized,
    LoginRefused,
    minted_role_password,
)
from broker.keys import Signer, TokenNotOurs, open_signer
from broker.keys.shared import gateway_secret
from broker.ledger import Ledger, open_ledger
from broker.ledger.events import EventDraft, utc_timestamp
from broker.lifecycle import liveness
from broker.policy import PolicySet
from broker.targets.postgres import ROLE_PREFIX, role_name

log = logging.getLogger("broker.gateway")

#: how often the watcher asks the ledger for ended credentials (seconds)
WATCH_INTERVAL = 0.4
#: fields of a gateway record that are the event's own columns, not its details
_STAMPED = ("type", "credential_id", "principal", "run", "authorizer", "target", "line_key", "ts")
_MAX_TEXT = 512


def gateway_listeners(policy_set: PolicySet, *, only: Sequence[str] = ()) -> list[ListenerConfig]:
    """Every target with a ``gateway:`` block (or just those named in ``only``)."""
    listeners = []
    for target in policy_set.targets.values():
        block = target.options.get("gateway")
        if not block or (only and target.name not in only):
            continue
        listeners.append(ListenerConfig.from_mapping(block, target=target.name))
    missing = sorted(set(only) - {lc.target for lc in listeners})
    if missing:
        raise ValueError(f"no gateway: block for target(s) {', '.join(missing)}")
    return listeners


def gateway_config(policy_set: PolicySet, config: Mapping[str, Any], *, workers: int | None = None,
                   health: str | None = None, only: Sequence[str] = ()) -> GatewayConfig:
    listeners = gateway_listeners(policy_set, only=only)
    if not listeners:
        raise ValueError("no target has a gateway: block (docs/gateway.md)")
    # One spool folder per set of targets served: several `broker gateway` processes of one
    # host (each for other targets) each drain their own, and a restart finds what it left.
    served = "+".join(sorted(lc.target for lc in listeners))
    name = served if len(served) <= 80 else hashlib.sha256(served.encode()).hexdigest()[:32]
    spool_dir = os.path.join(cfg.state_dir(config), "gateway-spool", name)
    os.makedirs(spool_dir, mode=0o700, exist_ok=True)
    return GatewayConfig(listeners=tuple(listeners), spool_dir=spool_dir,
                         workers=int(workers or cfg.number(config, "GATEWAY_WORKERS")),
                         health=health or config.get("GATEWAY_HEALTH") or None)


# ---------------------------------------------------------------------------- login

class CredentialAuthenticator:
    """Decides a login for one listener (see the module docstring). Blocking (ledger reads,
    maybe Vault for Transit keys): the gateway runs it in its executor."""

    def __init__(self, listener: ListenerConfig, *, signer: Signer, ledger: Ledger,
                 secret: bytes | None, service_login: tuple[str, str] | None) -> None:
        self.listener = listener
        self.signer = signer
        self.ledger = ledger
        self.secret = secret
        self.service_login = service_login

    def authenticate(self, username: str, password: str, database: str,
                     client_addr: str) -> Authorized:
        try:
            claims = self.signer.verify(password)
        except TokenNotOurs as exc:
            raise LoginRefused(INVALID_PASSWORD, "password authentication failed: the password is "
                               "not a valid credential of this broker",
                               reason=f"token does not verify ({exc})"[:_MAX_TEXT]) from None
        credential_id = str(claims.get("jti") or "")
        if claims.get("target") != self.listener.target:
            raise LoginRefused(INVALID_AUTHORIZATION, "the credential was not issued for this "
                               "database", credential_id=credential_id,
                               reason=f"credential for target {str(claims.get('target'))[:120]!r}")
        if username != role_name(credential_id):
            raise LoginRefused(INVALID_AUTHORIZATION, "the user name does not match the credential "
                               f"(use {ROLE_PREFIX}<credential id>)", credential_id=credential_id,
                               reason="user name does not match the credential")
        try:
            verdict = liveness.credential_liveness(self.ledger, credential_id, now=time.time())
        except errors.LedgerUnavailable:
            raise LoginRefused(INVALID_AUTHORIZATION, "the broker's ledger is unavailable; try again",
                               credential_id=credential_id, reason="ledger unavailable") from None
        record = verdict.record
        if record is None or not verdict.live:
            state = verdict.describe()
            raise LoginRefused(INVALID_AUTHORIZATION, f"the credential is not live ({state})",
                               credential_id=credential_id, reason=f"credential {state}")
        if self.listener.login == "service-role":
            if self.service_login is None:
                raise LoginRefused(INVALID_AUTHORIZATION, "the gateway has no service login",
                                   credential_id=credential_id,
                                   reason=f"{self.listener.service_dsn_env} is not set")
            upstream_user, upstream_password = self.service_login
        else:
            if self.secret is None:
                raise LoginRefused(INVALID_AUTHORIZATION, "the gateway is misconfigured",
                                   credential_id=credential_id, reason="no gateway secret")
            upstream_user = role_name(credential_id)
            upstream_password = minted_role_password(self.secret, credential_id)
        stamp: dict[str, Any] = {"principal": record.principal, "run": record.run,
                                 "authorizer": record.authorizer,
                                 "upstream_user": upstream_user, "login": self.listener.login}
        return Authorized(credential_id=credential_id, upstream_user=upstream_user,
                          upstream_password=upstream_password,
                          upstream_dbname=self.listener.upstream.dbname or database,
                          expires_at=float(min(record.expires_at, int(claims.get("exp") or 0))),
                          record=stamp)


def service_login(listener: ListenerConfig) -> tuple[str, str] | None:
    """``service_dsn_env``'s user and password (a libpq URL or ``key=value`` string)."""
    if listener.login != "service-role" or not listener.service_dsn_env:
        return None
    dsn = os.environ.get(listener.service_dsn_env, "").strip()
    if not dsn:
        return None
    if "://" in dsn:
        parts = urlsplit(dsn)
        if parts.username:
            return unquote(parts.username), unquote(parts.password or "")
        return None
    fields = dict(item.split("=", 1) for item in dsn.split() if "=" in item)
    user = fields.get("user")
    return (user, fields.get("password", "").strip("'")) if user else None


def authenticator_factory(config: Mapping[str, Any], *, retention: int) -> Any:
    """What the gateway's workers call (after fork) to build one authenticator per listener:
    each worker opens its own ledger connections and signer (``retention``: how long a rotated
    key still verifies, as in ``broker serve``)."""
    resources: dict[str, Any] = {}

    def build(listener: ListenerConfig) -> CredentialAuthenticator:
        if "ledger" not in resources:
            resources["ledger"] = open_ledger(cfg.database_url(config), pool_size=2)
            resources["signer"] = open_signer(cfg.text(config, "SIGNER"),
                                              state_dir=cfg.state_dir(config),
                                              issuer=cfg.issuer(config), retention=retention,
                                              config=config)
        secret = gateway_secret(config) if listener.login == "minted-role" else None
        return CredentialAuthenticator(listener, signer=resources["signer"],
                                       ledger=resources["ledger"], secret=secret,
                                       service_login=service_login(listener))
    return build


# ---------------------------------------------------------------------------- records

def _at(record: Mapping[str, Any]) -> str:
    ts = record.get("ts")
    if isinstance(ts, (int, float)):
        return utc_timestamp(float(ts))
    return utc_timestamp()


class LedgerSink:
    """The gateway's records → ledger events, one transaction per batch (``record_usage``:
    COPY into the one hash chain, deduplicated on ``line_key``)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def write_batch(self, records: list[dict[str, Any]]) -> None:
        items = [self.item(r) for r in records]
        self.ledger.record_usage(items)

    @staticmethod
    def item(record: dict[str, Any]) -> tuple[EventDraft, str, str, str | None]:
        kind = record.get("type")
        details = {k: v for k, v in record.items() if k not in _STAMPED}
        details["line_key"] = record["line_key"]
        statement: str | None = None
        if kind == "usage":
            event_type, statement = "usage", record.get("statement")
        elif kind == "cancel":
            event_type = "usage"
            details["kind"] = "cancel"
        elif kind == "connect":
            event_type = "connect"
            details["result"] = "accepted"
        elif kind == "login_refused":
            event_type = "connect"
            details["result"] = "refused"
        elif kind == "disconnect":
            event_type = "disconnect"
        else:
            event_type = "gateway"
            details["kind"] = str(kind)[:64]
        draft = EventDraft(type=event_type, credential_id=record.get("credential_id") or None,
                           principal=record.get("principal"), run=record.get("run"),
                           authorizer=record.get("authorizer"), target=record.get("target"),
                           details=details)
        return draft, str(record["line_key"]), _at(record), statement


# ---------------------------------------------------------------------------- revocation

class RevocationWatcher:
    """Ends the gateway sessions of credentials the ledger says were revoked or ended."""

    def __init__(self, ledger: Ledger, end: Any, *, interval: float = WATCH_INTERVAL) -> None:
        self.ledger = ledger
        self.end = end                      # end(credential_id, reason)
        self.interval = interval
        self._stop = threading.Event()
        self._after = ledger.head()[0]
        self._thread = threading.Thread(target=self._run, name="nhb-gateway-revocations",
                                        daemon=True)

    def start(self) -> RevocationWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def poll(self) -> int:
        """One look at the ledger; returns how many credentials were ended."""
        ended = 0
        newest = self._after
        for event_type, reason in (("revoke", "revoked"), ("expire", "expired")):
            for event in self.ledger.search_events(type=event_type, after_seq=self._after,
                                                   limit=1000):
                newest = max(newest, event.seq)
                if event.credential_id:
                    self.end(event.credential_id, reason)
                    ended += 1
        self._after = newest
        return ended

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except errors.LedgerUnavailable:
                log.warning("gateway: the ledger is unavailable; revocations are not being "
                            "watched until it is back")
            except Exception:  # noqa: BLE001 - the watcher must not die
                log.exception("gateway: revocation watcher failed")

