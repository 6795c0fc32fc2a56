"""Helpers shared by the CLI command modules."""
from __future__ import annotations

from typing import Any

from rich.console import Console

from broker import config as cfg

console = Console(stderr=False, highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def env_config() -> dict[str, Any]:
    """Defaults overlaid with the BROKER_* environment, as the server sees them (typed; a bad
    value is a one-line :class:`~broker.config.ConfigError`); unknown names are reported."""
    values, unknown = cfg.from_environ()
    for variable in unknown:
        err_console.print(f"warning: unknown setting {variable} ignored", markup=False,
                          highlight=False)
    return {**cfg.DEFAULTS, **values}
