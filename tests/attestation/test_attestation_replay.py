"""Replay guards on the real stores: Redis on 127.0.0.1:6379 and a SQLite file, including two
processes racing on the same keys."""
from __future__ import annotations

import multiprocessing
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing

import pytest

from broker.attestation import RedisReplayGuard, ReplayStoreUnavailable, SQLiteReplayGuard, open_replay_guard
from broker.attestation.replay import ReplayGuard
from broker.errors import BackendUnavailable
from broker.http.errors import body_of, status_of

GuardFactory = Callable[[], ReplayGuard]


@pytest.fixture(params=["redis", "sqlite"])
def make_guard(request, tmp_path) -> Iterator[GuardFactory]:
    """Builds guards that share one store (one Redis prefix, or one SQLite file)."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        guards: list = []

        def factory() -> ReplayGuard:
            guards.append(RedisReplayGuard(url, prefix=prefix))
            return guards[-1]
        yield factory
        import redis
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    else:
        path = tmp_path / "replay.sqlite3"
        yield lambda: SQLiteReplayGuard(path)


def test_first_use_then_replay(make_guard: GuardFactory) -> None:
    guard = make_guard()
    assert guard.first_use("github:jti:abc", 60) is True
    assert guard.first_use("github:jti:abc", 60) is False
    assert guard.first_use("github:jti:abc", 60) is False


def test_keys_are_independent(make_guard: GuardFactory) -> None:
    guard = make_guard()
    assert guard.first_use("github:jti:1", 60) is True
    assert guard.first_use("github:jti:2", 60) is True
    assert guard.first_use("gitlab:jti:1", 60) is True


def test_two_guards_on_one_store_share_what_they_saw(make_guard: GuardFactory) -> None:
    assert make_guard().first_use("k", 60) is True
    assert make_guard().first_use("k", 60) is False


def test_ttl_expiry_is_honoured(make_guard: GuardFactory) -> None:
    guard = make_guard()
    assert guard.first_use("short", 1) is True
    assert guard.first_use("long", 30) is True
    assert guard.first_use("short", 1) is False
    time.sleep(1.1)
    assert guard.first_use("short", 1) is True       # expired: usable again
    assert guard.first_use("long", 30) is False      # still inside its ttl


def test_zero_or_negative_ttl_still_guards_for_a_second(make_guard: GuardFactory) -> None:
    guard = make_guard()
    assert guard.first_use("edge", 0) is True
    assert guard.first_use("edge", -5) is False


def test_very_long_keys(make_guard: GuardFactory) -> None:
    guard = make_guard()
    long_key = "github:jti:" + "x" * 20_000
    assert guard.first_use(long_key, 60) is True
    assert guard.first_use(long_key, 60) is False
    assert guard.first_use(long_key + "y", 60) is True


def test_threads_racing_on_one_key_exactly_one_wins(make_guard: GuardFactory) -> None:
    guard = make_guard()
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def worker() -> None:
        barrier.wait()
        results.append(guard.first_use("contended", 60))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


# -- two processes ---------------------------------------------------------------------------

def _race(kind: str, target: str, prefix: str, keys: list[str], barrier, results) -> None:
    """Runs in a spawned process: wait for the other one, then claim every key."""
    if kind == "redis":
        guard: ReplayGuard = RedisReplayGuard(target, prefix=prefix)
    else:
        guard = SQLiteReplayGuard(target)
    barrier.wait(timeout=30)
    won = [key for key in keys if guard.first_use(key, 60)]
    results.put((os.getpid(), won))


def test_replay_across_two_processes_exactly_one_wins(make_guard: GuardFactory, request,
                                                      tmp_path) -> None:
    kind = request.node.callspec.params["make_guard"]
    if kind == "redis":
        target, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        make_guard()   # registers the prefix for clean-up
    else:
        target, prefix = str(tmp_path / "replay.sqlite3"), ""
        make_guard()   # creates the file and schema
    keys = [f"github:jti:{secrets.token_hex(8)}" for _ in range(200)]
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    processes = [ctx.Process(target=_race, args=(kind, target, prefix, keys, barrier, results))
                 for _ in range(2)]
    for p in processes:
        p.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for p in processes:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len({pid for pid, _ in outcomes}) == 2
    won_a, won_b = (set(won) for _, won in outcomes)
    assert won_a.isdisjoint(won_b)
    assert won_a | won_b == set(keys)                  # every key: exactly one True


# -- failures --------------------------------------------------------------------------------

def test_unreachable_redis_is_unavailable_and_leaks_no_password() -> None:
    guard = RedisReplayGuard("redis://:s3cret-pw@127.0.0.1:1/0", socket_timeout=0.5)
    with pytest.raises(ReplayStoreUnavailable) as caught:
        guard.first_use("k", 60)
    exc = caught.value
    assert isinstance(exc, BackendUnavailable)
    assert exc.error == "temporarily_unavailable" and status_of(exc) == 503
    assert exc.description == "the replay store is temporarily unavailable"
    assert exc.detail == "replay store (redis) failed: ConnectionError"
    for text in (str(exc), repr(exc), exc.detail, exc.description, str(body_of(exc))):
        assert "s3cret-pw" not in text


def test_unopenable_sqlite_store_is_unavailable(tmp_path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(ReplayStoreUnavailable) as caught:
        SQLiteReplayGuard(not_a_dir / "replay.sqlite3")
    assert caught.value.detail == "replay store (sqlite) cannot open: OperationalError"


def test_locked_sqlite_store_is_unavailable(tmp_path) -> None:
    path = tmp_path / "replay.sqlite3"
    guard = SQLiteReplayGuard(path, busy_timeout_ms=100)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")                # another process holds the write lock
    try:
        with pytest.raises(ReplayStoreUnavailable) as caught:
            guard.first_use("k", 60)
        assert caught.value.detail == "replay store (sqlite) failed: OperationalError"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert guard.first_use("k", 60) is True


# -- SQLite specifics ------------------------------------------------------------------------

def _expire(path, *keys: str) -> None:
    """Backdate rows, as if their ttl had passed (instead of sleeping)."""
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany("UPDATE replay SET expires_at = ? WHERE key = ?",
                         [(time.time() - 1, key) for key in keys])


def _rows(path) -> list[tuple[str]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT key FROM replay ORDER BY key").fetchall()


def test_sqlite_purges_expired_rows(tmp_path) -> None:
    path = tmp_path / "replay.sqlite3"
    guard = SQLiteReplayGuard(path, purge_every=1_000_000)
    for i in range(5):
        guard.first_use(f"short-{i}", 60)
    guard.first_use("long", 60)
    _expire(path, *(f"short-{i}" for i in range(5)))
    assert guard.purge_expired() == 5
    rows = _rows(path)
    assert rows == [("long",)]


def test_sqlite_purges_as_it_goes(tmp_path) -> None:
    path = tmp_path / "replay.sqlite3"
    guard = SQLiteReplayGuard(path, purge_every=3)
    guard.first_use("a", 60)
    guard.first_use("b", 60)
    _expire(path, "a", "b")
    guard.first_use("c", 60)                         # third call: purges a and b
    rows = _rows(path)
    assert rows == [("c",)]


def test_sqlite_expired_row_is_taken_over(tmp_path) -> None:
    path = tmp_path / "replay.sqlite3"
    guard = SQLiteReplayGuard(path)
    assert guard.first_use("k", 60) is True
    _expire(path, "k")
    assert guard.first_use("k", 60) is True
    assert guard.first_use("k", 60) is False


def test_sqlite_uses_wal(tmp_path) -> None:
    path = tmp_path / "replay.sqlite3"
    SQLiteReplayGuard(path).first_use("k", 60)
    with closing(sqlite3.connect(path)) as conn:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


# -- factory ---------------------------------------------------------------------------------

def test_open_replay_guard_defaults_to_sqlite_in_the_state_dir(tmp_path) -> None:
    state_dir = tmp_path / "state" / "nested"
    guard = open_replay_guard(None, str(state_dir))
    assert isinstance(guard, SQLiteReplayGuard)
    assert guard.path == str(state_dir / "replay.sqlite3")
    assert guard.first_use("k", 60) is True
    assert open_replay_guard("", str(state_dir)).first_use("k", 60) is False


def test_open_replay_guard_uses_redis_when_configured(redis_url: str, tmp_path) -> None:
    guard = open_replay_guard(redis_url, str(tmp_path))
    assert isinstance(guard, RedisReplayGuard)
    key = f"nhb-test-factory-{secrets.token_hex(6)}"
    try:
        assert guard.first_use(key, 5) is True
        assert guard.first_use(key, 5) is False
    finally:
        import redis
        redis.Redis.from_url(redis_url).delete(guard.prefix + key)
