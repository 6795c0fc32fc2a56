"""Secrets a broker's processes share on one host (or, set explicitly, across hosts): a
configured text, else random bytes created once in the state directory.

Used for people's session cookies (``BROKER_SECRET_KEY`` / ``session.key``) and for the secret
the broker and its gateways derive minted roles' passwords from (``BROKER_GATEWAY_SECRET`` /
``gateway.key``): the workload never holds that password, only its access token.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from typing import Any

from broker import config as cfg
from broker.config import ConfigError

#: bytes of a secret created in the state directory
CREATED_BYTES = 64


def shared_secret(config: Mapping[str, Any], *, setting: str, filename: str) -> bytes:
    """``config[setting]`` (text of at least :data:`~broker.config.MIN_SECRET_LENGTH`
    characters, refused otherwise), else ``$STATE_DIR/<filename>``, created once with
    :data:`CREATED_BYTES` random bytes (mode 0600; the first writer among concurrent processes
    wins, the others read its key)."""
    configured = config.get(setting)
    if configured is not None:
        # Always text (broker.config types it); a key too short to resist guessing is refused
        # rather than padded or reinterpreted (an int once became that many zero bytes).
        if not isinstance(configured, str) or len(configured) < cfg.MIN_SECRET_LENGTH:
            raise ConfigError(f"BROKER_{setting} must be text of at least "
                              f"{cfg.MIN_SECRET_LENGTH} characters")
        return configured.encode("utf-8")
    state_dir = cfg.state_dir(config)
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    path = os.path.join(state_dir, filename)
    try:
        with open(path, "rb") as fh:
            key = fh.read()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(CREATED_BYTES))
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)              # atomic: fails if another process got there first
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    with open(path, "rb") as fh:
        return fh.read()


def gateway_secret(config: Mapping[str, Any]) -> bytes:
    """The broker/gateway shared secret (``BROKER_GATEWAY_SECRET``, else ``gateway.key``)."""
    return shared_secret(config, setting="GATEWAY_SECRET", filename="gateway.key")
