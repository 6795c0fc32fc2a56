"""nhi-broker: exchange a workload's attestation for a short-lived, attributed credential.

The process is built in :mod:`broker.app`; these wrappers keep ``from broker import create_app``
working without importing Flask when only the SDK is used.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from broker.app import BrokerContext

__version__ = "0.1.0"


def build_context(config: dict[str, Any]) -> BrokerContext:
    """Build the resources of one broker process (see :func:`broker.app.build_context`)."""
    from broker.app import build_context as build

    return build(config)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """The Flask app (see :func:`broker.app.create_app`)."""
    from broker.app import create_app as create

    return create(test_config)
