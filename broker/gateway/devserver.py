"""STANDALONE HARNESS: run the gateway alone, without the broker, for tests and benchmarks.

    python -m broker.gateway.devserver CONFIG.json

CONFIG.json::

    {"spool_dir": "...", "workers": 2, "health": "127.0.0.1:PORT",
     "listeners": [{"target": "db", "gateway": {<the target's gateway: block>}}],
     "authenticator": "package.module:factory",   # factory(listener_config, options) → Authenticator
     "authenticator_options": {...},
     "sink": {"kind": "jsonl" | "sqlite", "path": "..."},
     "cancel_secret_hex": "...", "drain_priority": "low" | "idle"}

Prints ``ready`` on stdout once every worker listens. Reads JSON lines on stdin:
``{"end_credential": "<id>", "reason": "revoked"}``. SIGTERM shuts down gracefully.
The authenticator is whatever the caller names (the tests' maps a test token to a SCRAM role):
this harness never verifies a broker token itself, which is why it is not ``broker gateway``.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import threading
from typing import Any

from broker.gateway.config import GatewayConfig, ListenerConfig
from broker.gateway.server import Supervisor, serve
from broker.gateway.sinks import JsonlFileSink, SqliteSink


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def load_config(data: dict[str, Any]) -> GatewayConfig:
    listeners = tuple(ListenerConfig.from_mapping(item["gateway"], target=item.get("target", ""))
                      for item in data["listeners"])
    return GatewayConfig(listeners=listeners, spool_dir=data["spool_dir"],
                         workers=int(data.get("workers", 1)), health=data.get("health"),
                         shutdown_grace=float(data.get("shutdown_grace", 10.0)),
                         drain_priority=data.get("drain_priority", "low"))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with open(args[0]) as f:
        data = json.load(f)
    config = load_config(data)
    factory = _load(data["authenticator"])
    options = data.get("authenticator_options", {})
    sink_spec = data.get("sink", {"kind": "jsonl", "path": "records.jsonl"})
    sink = (SqliteSink(sink_spec["path"]) if sink_spec["kind"] == "sqlite"
            else JsonlFileSink(sink_spec["path"]))
    secret = bytes.fromhex(data["cancel_secret_hex"]) if data.get("cancel_secret_hex") else None

    def on_started(supervisor: Supervisor) -> None:
        print("ready", flush=True)

        # The control thread reads its own duplicate of stdin: a worker forked later closes
        # sys.stdin (multiprocessing does), which would block on the lock this thread holds.
        control_in = os.fdopen(os.dup(0), "r")
        sys.stdin = open(os.devnull)

        def control() -> None:
            for line in control_in:
                if line.strip():
                    command = json.loads(line)
                    if command.get("end_credential"):
                        supervisor.end_credential(command["end_credential"], command.get("reason", "ended"))

        threading.Thread(target=control, daemon=True).start()

    return serve(config, authenticators=lambda lc: factory(lc, options), sink=sink,
                 cancel_secret=secret, on_started=on_started)


if __name__ == "__main__":
    sys.exit(main())
