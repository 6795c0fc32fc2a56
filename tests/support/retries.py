"""What the client-retry tests need: a real broker whose Redis is not there yet (its refusals are
real `503 temporarily_unavailable`), a redis-server of the test's own that the test starts when
it chooses (only after the client was refused), and a broker with a real rate limit.

Fixtures for the conftests that need them (they import them by name): ``outage_broker`` (one per
module) and ``redis_down`` (each test starts, and leaves, with Redis stopped)."""
from __future__ import annotations

import contextlib
import hashlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from broker.devtools.dev_issuer import DevIssuer
from broker.ledger.events import Event
from tests.support.fanout import HttpBroker, running_fanout_broker
from tests.support.server import free_port

REDIS_SERVER = "/usr/bin/redis-server"


class RedisProcess:
    """A redis-server on ``port`` without persistence, started and stopped by the test."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None

    def start(self, *, timeout: float = 10.0) -> None:
        if self._process is not None:
            return
        self._process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()


@dataclass
class OutageBroker:
    """A real broker (one worker, so one outage record) whose ``BROKER_REDIS_URL`` names
    ``redis``, which is not running until a test starts it."""
    broker: HttpBroker
    redis: RedisProcess


@pytest.fixture(scope="module")
def outage_broker(tmp_path_factory, dev_issuer: DevIssuer) -> Iterator[OutageBroker]:
    redis = RedisProcess(free_port())
    root = tmp_path_factory.mktemp("outage-broker")
    try:
        with running_fanout_broker(root, dev_issuer, env={"BROKER_REDIS_URL": redis.url},
                                   workers=1) as broker:
            yield OutageBroker(broker=broker, redis=redis)
    finally:
        redis.stop()


@pytest.fixture
def redis_down(outage_broker: OutageBroker) -> Iterator[OutageBroker]:
    outage_broker.redis.stop()
    try:
        yield outage_broker
    finally:
        outage_broker.redis.stop()


@contextlib.contextmanager
def rate_limited_broker(root: Path, dev_issuer: DevIssuer, limit: str) -> Iterator[HttpBroker]:
    """A real broker with ``BROKER_RATE_LIMIT=limit`` (counted in its state dir)."""
    with running_fanout_broker(root, dev_issuer, env={"BROKER_RATE_LIMIT": limit}) as broker:
        yield broker


def use_up_the_window(broker: HttpBroker, period: int, *, room: float) -> None:
    """Spend this address's one request of the current rate-limit window, at least ``room``
    seconds before the window ends (waiting for the next window when too close), so the next
    request is refused with ``429`` and ``Retry-After`` > ``room - 1``."""
    left = period - time.time() % period
    if left < room:
        time.sleep(left + 0.05)
    answer = requests.post(f"{broker.url}/token", data={"grant_type": "nothing"}, timeout=10)
    # counted, then refused as malformed (or refused at once: this window was used already)
    assert answer.status_code in (400, 429), answer.text


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def events_for_token(broker: HttpBroker, token: str) -> list[Event]:
    """Every ledger event that names this attestation (by its SHA-256): mints and denies."""
    digest = sha(token)
    return [e for e in broker.ledger.iter_events()
            if e.details.get("attestation_sha256") == digest]


def outage_end_after(broker: HttpBroker, token: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """The ``outage`` ``end`` whose last refused attempt carried this attestation (written in
    the background once an exchange succeeds)."""
    digest = sha(token)
    deadline = time.monotonic() + timeout
    while True:
        for event in broker.ledger.iter_events():
            details = event.details
            if event.type == "outage" and details.get("phase") == "end" and \
                    (details.get("last_attempt") or {}).get("attestation_sha256") == digest:
                return details
        if time.monotonic() > deadline:
            raise AssertionError("no outage end names this attestation's refused attempt")
        time.sleep(0.1)
