"""The broker process: ``create_app()`` (defaults → ``BROKER_*`` environment → overrides) and the
:class:`BrokerContext` it builds once — the resources every stage uses.

Only the standard library is imported at module level: domain modules import
:class:`BrokerContext` from here without pulling in Flask or any backend.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from broker.attestation import JWKSCache
    from broker.exchange.outage import OutageRecorder
    from broker.keys import Signer
    from broker.ledger import Ledger
    from broker.lifecycle.pending import PendingMints
    from broker.people.store import PeopleStore
    from broker.policy import PolicySet
    from broker.targets import CredentialIssuer

log = logging.getLogger("broker")


@dataclass
class BrokerContext:
    issuer: str                       # the broker's own `iss`
    policy_set: PolicySet
    signer: Signer
    ledger: Ledger
    jwks: JWKSCache
    replay: Any                       # a ReplayGuard
    issuers: dict[str, CredentialIssuer]
    people: PeopleStore               # approvals and delegations, in the ledger's database
    extras: dict[str, Any] = field(default_factory=dict)
    outages: OutageRecorder | None = None   # dependency-down refusals, aggregated
    pending: PendingMints | None = None     # markers of mints in flight (crash sweep)

    def close(self) -> None:
        # Background work (the reaper) first, then the issuers' pools, then the stores.
        closers = [getattr(x, "close", None)
                   for x in (*self.extras.values(), *self.issuers.values(), self.outages)]
        for closer in (*closers, getattr(self.ledger, "close", None), getattr(self.replay, "close", None)):
            if closer is not None:
                try:
                    closer()
                except Exception:  # noqa: BLE001 - closing is best effort
                    log.debug("close failed", exc_info=True)


def build_context(config: dict[str, Any]) -> BrokerContext:
    """Build the resources of one broker process from a config mapping (also used by the CLI)."""
    from broker import config as cfg
    from broker.attestation import JWKSCache, open_replay_guard
    from broker.exchange.outage import OutageRecorder
    from broker.keys import open_signer
    from broker.ledger import open_ledger
    from broker.lifecycle.pending import PendingMints
    from broker.people.store import PeopleStore
    from broker.policy import load_policy_dir
    from broker.targets import build_kinds

    policy_set = load_policy_dir(cfg.policy_dir(config))
    state_dir = cfg.state_dir(config)
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    issuer = cfg.issuer(config)
    signer = open_signer(cfg.text(config, "SIGNER"), state_dir=state_dir, issuer=issuer,
                         retention=policy_set.max_target_ttl() + 120, config=config)
    ledger = open_ledger(cfg.database_url(config),
                         timeout=(cfg.number(config, "LEDGER_TIMEOUT")
                                  if cfg.database_url(config).startswith("postgres") else None))
    jwks = JWKSCache(timeout=cfg.number(config, "JWKS_TIMEOUT"),
                     cache_ttl=cfg.number(config, "JWKS_CACHE_TTL"),
                     min_refetch_interval=cfg.number(config, "JWKS_MIN_REFETCH_INTERVAL"))
    replay = open_replay_guard(cfg.redis_url(config), state_dir,
                               redis_timeout=cfg.number(config, "REDIS_TIMEOUT"))
    ctx = BrokerContext(issuer=issuer, policy_set=policy_set, signer=signer, ledger=ledger,
                        jwks=jwks, replay=replay, people=PeopleStore(ledger),
                        issuers=build_kinds(config, policy_set=policy_set, signer=signer),
                        outages=OutageRecorder(ledger), pending=PendingMints(state_dir))
    ctx.extras["approval_interval"] = int(cfg.number(config, "APPROVAL_POLL_INTERVAL"))
    return ctx


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Defaults → ``BROKER_*`` environment → ``test_config``; blueprints; one error handler."""
    from flask import Flask

    from broker import config as cfg
    from broker.http import web
    from broker.http.api import approvals, audit, lineage, oauth, token, usage, wellknown
    from broker.http.api import ledger as ledger_api
    from broker.http.errors import register_error_handlers
    from broker.http.jsonio import OrjsonProvider
    from broker.http.web.people import init_people
    from broker.lifecycle.reaper import start_reaper
    from broker.transparency.checkpoints import start_checkpointer

    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.config.from_mapping(cfg.DEFAULTS)
    environment, unknown = cfg.from_environ()      # typed by broker.config.SETTINGS, nothing else
    app.config.update(environment)
    if test_config:
        app.config.update(test_config)
    cfg.report_unknown(unknown)
    app.config["MAX_CONTENT_LENGTH"] = int(app.config["MAX_CONTENT_LENGTH"])
    app.json.sort_keys = False
    logging.getLogger("broker").setLevel(str(app.config.get("LOG_LEVEL", "INFO")).upper())

    ctx = build_context(app.config)
    app.extensions["broker"] = ctx

    for blueprint in (token.bp, oauth.bp, wellknown.bp, audit.bp, lineage.bp, usage.bp,
                      approvals.bp, ledger_api.bp, web.bp):
        app.register_blueprint(blueprint)
    init_people(app)          # people's pages: sign-in through the human IdP, approvals, delegations

    # Background work, stopped by ctx.close(): expiry of database credentials
    # (BROKER_REAPER_INTERVAL) and signed ledger checkpoints (BROKER_CHECKPOINT_INTERVAL).
    for name, starter in (("reaper", start_reaper), ("checkpointer", start_checkpointer)):
        worker = starter(ctx, app.config)
        if worker is not None:
            ctx.extras[name] = worker

    _install_rate_limit(app)
    register_error_handlers(app)
    return app


def _install_rate_limit(app: Flask) -> None:
    """``BROKER_RATE_LIMIT`` on ``POST /token`` per client address (off unless set);
    ``BROKER_PROXY_FIX_X_FOR`` trusts that many reverse proxies' X-Forwarded-For."""
    from flask import request
    from werkzeug.middleware.proxy_fix import ProxyFix

    from broker import config as cfg
    from broker.http.ratelimit import open_rate_limiter

    hops = int(app.config.get("PROXY_FIX_X_FOR") or 0)
    if hops > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops)  # type: ignore[method-assign]
    limiter = open_rate_limiter(app.config.get("RATE_LIMIT"), redis_url=cfg.redis_url(app.config),
                                state_dir=cfg.state_dir(app.config),
                                redis_timeout=cfg.number(app.config, "REDIS_TIMEOUT"))
    if limiter is None:
        return

    @app.before_request
    def _rate_limit() -> None:
        if request.endpoint == "token.token":
            limiter.check(request.remote_addr or "unknown")
