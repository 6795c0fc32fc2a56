"""Apps built the way the broker builds them, closed when the test is done."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def app_factory(**defaults: Any) -> Iterator[Callable[..., Any]]:
    """``factory(**overrides)`` builds ``create_app({"TESTING": True, **defaults, **overrides})``;
    every app it built is closed (pools, background threads) on exit."""
    from broker import create_app

    apps: list[Any] = []

    def factory(**overrides: Any) -> Any:
        app = create_app({"TESTING": True, **defaults, **overrides})
        apps.append(app)
        return app

    try:
        yield factory
    finally:
        for app in apps:
            app.extensions["broker"].close()
