"""``broker serve``: gunicorn (several workers) in production, Werkzeug with ``--dev``.

The master process checks the policy set, creates the ledger schema and the signing key before
forking, so a bad configuration stops the start instead of every worker; each worker then
builds its own app (its own database pools and Redis connections).
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, cast

from gunicorn.app.base import BaseApplication

if TYPE_CHECKING:
    from gunicorn._types import _WSGIAppType


class BrokerServer(BaseApplication):
    def __init__(self, options: dict[str, Any], app_config: dict[str, Any] | None = None) -> None:
        self.options = options
        self.app_config = app_config
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> _WSGIAppType:
        from broker import create_app

        # A Flask app is a WSGI app; gunicorn's stubs spell start_response more narrowly
        # than Flask's, so the two types do not meet.
        return cast("_WSGIAppType", create_app(self.app_config))


def default_workers() -> int:
    return max(2, min(8, (os.cpu_count() or 1) * 2))


def serve(*, host: str, port: int, workers: int | None, threads: int, dev: bool,
          app_config: dict[str, Any] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if dev:
        from broker import create_app

        create_app(app_config).run(host=host, port=port, threaded=True, use_reloader=False)
        return
    options = {
        "bind": f"{host}:{port}",
        "workers": workers or default_workers(),
        "worker_class": "gthread",
        "threads": threads,
        "keepalive": 30,
        "timeout": 30,
        "graceful_timeout": 10,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "preload_app": False,
        "proc_name": "nhi-broker",
        "limit_request_line": 8190,
    }
    BrokerServer(options, app_config).run()
