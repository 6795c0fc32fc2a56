"""The fault lab: a real `broker serve` (gunicorn) with its own PostgreSQL cluster (the ledger
and a ``postgres`` credential target) and its own Redis (no persistence), and the faults an
operator meets — ``kill -9``, a hard PostgreSQL stop, a Redis restart, SIGTERM, garbage.

Used by tests/faults/ (short runs that assert) and by ``python -m bench.faults`` (longer runs
that print figures). Nothing here is mocked: every fault is done to the real process.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests

from broker.devtools.dev_issuer import DevIssuer
from tests.support.oauth import AUDIENCE, AUDITOR, GRANT, JWT_TYPE, sha
from tests.support.pg_cluster import Cluster, _as_postgres, free_port, start_cluster

REPO = Path(__file__).resolve().parents[2]
ADMIN_ENV = "NHB_FAULTS_ADMIN_DSN"
POSTGRES_TARGET, JWT_TARGET = "payments-db", "reports-api"
DURABLE = "\nfsync = on\nsynchronous_commit = on\nfull_page_writes = on\n"

POLICY = """
kind: issuer
name: gha
preset: github-actions
issuer: {issuer}
audience: {audience}
max_token_age: 10m
---
kind: target
name: payments-db
type: postgres
admin_dsn_env: {admin_env}
grants: []
max_ttl: 10m
---
kind: target
name: reports-api
type: jwt
max_ttl: 10m
---
kind: policy
name: faults
issuer: gha
targets: [payments-db, reports-api]
match:
  repository: acme/payments
max_ttl: 10m
---
kind: client
name: {auditor}
secret_sha256: "{auditor_sha}"
may: [audit, introspect, revoke]
"""


@dataclass
class Result:
    """One exchange as a client saw it."""
    token: str
    status: int | None               # None: no HTTP answer (connection refused/reset, timeout)
    body: dict[str, Any]
    started: float                   # time.monotonic()
    elapsed: float
    retry_after: str | None = None

    @property
    def error(self) -> str | None:
        return self.body.get("error") if self.status != 200 else None


@dataclass
class Storm:
    """Client threads exchanging fresh attestations until stopped."""
    lab: FaultLab
    threads: int
    audience: str
    results: list[Result] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Storm:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            result = self.lab.exchange(self.lab.attestation(), audience=self.audience, session=session)
            self.results.append(result)
            if result.status is None:
                time.sleep(0.02)     # a refused connection: do not spin

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def statuses(self) -> Counter[Any]:
        return Counter((r.status, r.error) for r in self.results)


class FaultLab:
    def __init__(self, issuer: DevIssuer, root: Path | None = None) -> None:
        self.issuer = issuer
        self.root = root or Path(tempfile.mkdtemp(prefix="nhb-faults-"))
        self.cluster: Cluster | None = None
        self.redis: subprocess.Popen[bytes] | None = None
        self.redis_port = free_port()
        self.server: subprocess.Popen[bytes] | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    # -- set-up ----------------------------------------------------------------------------
    def start(self) -> FaultLab:
        # Durable, as docs/operations.md asks of a ledger: the test clusters' fsync=off and
        # synchronous_commit=off would lose acknowledged commits to a hard stop by design.
        self.cluster = start_cluster(DURABLE, logging=False, max_connections=200)
        with psycopg.connect(self.cluster.admin_dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE ledger")
            conn.execute("CREATE DATABASE payments")
        self.start_redis()
        policies = self.root / "policies"
        policies.mkdir(exist_ok=True)
        (policies / "faults.yaml").write_text(POLICY.format(
            issuer=self.issuer.issuer, audience=AUDIENCE, admin_env=ADMIN_ENV,
            auditor=AUDITOR[0], auditor_sha=sha(AUDITOR[1])))
        return self

    def close(self) -> None:
        self.stop_server()
        self.kill_redis()
        if self.cluster is not None:
            self.cluster.stop()

    @property
    def ledger_dsn(self) -> str:
        assert self.cluster is not None
        return self.cluster.dsn("ledger")

    @property
    def target_dsn(self) -> str:
        assert self.cluster is not None
        return self.cluster.dsn("payments")

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO), "BROKER_ISSUER": self.url,
                "BROKER_POLICY_DIR": str(self.root / "policies"),
                "BROKER_STATE_DIR": str(self.root / "state"),
                "BROKER_DATABASE_URL": self.ledger_dsn,
                "BROKER_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                "BROKER_INSECURE_DEV_ISSUER": "1", ADMIN_ENV: self.target_dsn,
                "BROKER_REAPER_INTERVAL": "1", "BROKER_CHECKPOINT_INTERVAL": "0",
                "BROKER_LOG_LEVEL": "WARNING"}

    # -- the broker ------------------------------------------------------------------------
    def start_server(self, *, timeout: float = 30) -> None:
        log = open(self.root / "server.log", "ab")      # noqa: SIM115 - kept by the process
        self.server = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "serve", "--port", str(self.port),
             "--workers", "2", "--threads", "4"],
            env=self.env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)                      # its own process group: kill them all
        deadline = time.monotonic() + timeout
        while True:
            if self.server.poll() is not None:
                raise RuntimeError(f"broker exited ({self.server.returncode}):\n{self.server_log()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"broker did not become healthy:\n{self.server_log()}")
            time.sleep(0.1)

    def server_log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill9_server(self) -> None:
        """``kill -9`` of gunicorn's master and every worker at once."""
        assert self.server is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.server.pid, signal.SIGKILL)
        self.server.wait()
        self._wait_group_gone(self.server.pid)

    def sigterm_server(self, *, timeout: float = 30) -> float:
        """SIGTERM to the master (graceful: workers finish in-flight requests); seconds it took."""
        assert self.server is not None
        started = time.monotonic()
        self.server.send_signal(signal.SIGTERM)
        self.server.wait(timeout=timeout)
        self._wait_group_gone(self.server.pid)
        return time.monotonic() - started

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.sigterm_server()
        self.server = None

    @staticmethod
    def _wait_group_gone(pgid: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)

    # -- PostgreSQL and Redis --------------------------------------------------------------
    def stop_postgres(self) -> None:
        """``pg_ctl stop -m immediate``: the server dies without a checkpoint, as in a crash."""
        assert self.cluster is not None
        pg_ctl = shlex.quote(str(self.cluster.bin_dir / "pg_ctl"))
        _as_postgres(f"{pg_ctl} -D {shlex.quote(str(self.cluster.data))} -m immediate -w stop")

    def start_postgres(self) -> None:
        assert self.cluster is not None
        pg_ctl = shlex.quote(str(self.cluster.bin_dir / "pg_ctl"))
        result = _as_postgres(f"{pg_ctl} -D {shlex.quote(str(self.cluster.data))} -l "
                              f"{shlex.quote(str(self.cluster.root / 'startup.log'))} -w -t 60 start")
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {result.stderr}")

    def start_redis(self) -> None:
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.redis_port), timeout=0.2).close()
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill_redis(self) -> None:
        """``kill -9``: everything Redis remembered is gone (no persistence)."""
        if self.redis is not None:
            self.redis.kill()
            self.redis.wait()
            self.redis = None

    # -- clients -----------------------------------------------------------------------------
    def attestation(self) -> str:
        return self.issuer.mint_github(audience=AUDIENCE)       # a fresh jti and run each

    def exchange(self, token: str, *, audience: str = POSTGRES_TARGET,
                 session: requests.Session | None = None, timeout: float = 10) -> Result:
        started = time.monotonic()
        try:
            response = (session or requests).post(f"{self.url}/token", timeout=timeout, data={
                "grant_type": GRANT, "subject_token": token, "subject_token_type": JWT_TYPE,
                "audience": audience})
        except requests.RequestException:
            return Result(token, None, {}, started, time.monotonic() - started)
        try:
            body = response.json()
        except ValueError:
            body = {"raw": response.text[:200]}
        return Result(token, response.status_code, body, started, time.monotonic() - started,
                      response.headers.get("Retry-After"))

    def storm(self, *, threads: int = 4, audience: str = POSTGRES_TARGET) -> Storm:
        return Storm(self, threads, audience)

    # -- what the ledger and the target hold ---------------------------------------------------
    def ledger_rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.ledger_dsn, autocommit=True) as conn:
            return conn.execute(sql, params or None).fetchall()

    def events_by_type(self, after_seq: int = 0) -> Counter[str]:
        return Counter(dict(self.ledger_rows(
            "SELECT type, count(*) FROM events WHERE seq > %s GROUP BY type", (after_seq,))))

    def head(self) -> int:
        return int(self.ledger_rows("SELECT coalesce(max(seq), 0) FROM events")[0][0])

    def recorded(self, credential_ids: set[str]) -> set[str]:
        """Which of ``credential_ids`` have both a credentials row and a mint event."""
        if not credential_ids:
            return set()
        rows = self.ledger_rows(
            "SELECT c.credential_id FROM credentials c JOIN events e"
            " ON e.credential_id = c.credential_id AND e.type = 'mint'"
            " WHERE c.credential_id = ANY(%s)", (list(credential_ids),))
        return {r[0] for r in rows}

    def orphan_roles(self) -> set[str]:
        """``nhb_`` roles at the target whose credential the ledger does not know."""
        with psycopg.connect(self.target_dsn, autocommit=True) as conn:
            roles = {r[0] for r in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE 'nhb\\_%'")}
        known = {r[0] for r in self.ledger_rows("SELECT credential_id FROM credentials")}
        return {role for role in roles if role[len("nhb_"):] not in known}

    def wait_for(self, check: Callable[[], bool], timeout: float) -> float | None:
        """Seconds until ``check()`` held, or None if it never did within ``timeout``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if check():
                return time.monotonic() - started
            time.sleep(0.1)
        return None

    def verify_chain(self) -> subprocess.CompletedProcess[str]:
        """``broker ledger verify``, the CLI an operator runs."""
        return subprocess.run([sys.executable, "-m", "broker.cli", "ledger", "verify"],
                              env=self.env(), cwd=REPO, capture_output=True, text=True, timeout=120)


@contextlib.contextmanager
def fault_lab(issuer: DevIssuer) -> Iterator[FaultLab]:
    lab = FaultLab(issuer).start()
    try:
        yield lab
    finally:
        lab.close()


# -- garbage --------------------------------------------------------------------------------------

def garbage_burst(host: str, port: int, *, rounds: int, seed: int = 15) -> list[bytes]:
    """Send malformed traffic (random bytes, broken request lines, huge headers, bad bodies,
    abandoned requests); return the status lines of whatever the server answered."""
    import random

    rng = random.Random(seed)
    form = "application/x-www-form-urlencoded"
    payloads: list[bytes] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(rng.getrandbits(8) for _ in range(200)),
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /token HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: " + form.encode() +
        b"\r\nContent-Length: 40\r\n\r\n" + bytes(range(216, 256)),
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"a\":[1,",
        b"POST /introspect HTTP/1.1\r\nHost: x\r\nAuthorization: Basic !!!!\r\nContent-Type: " +
        form.encode() + b"\r\nContent-Length: 7\r\n\r\ntoken=x",
        b"POST /token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial",
    ]
    answers: list[bytes] = []
    for _ in range(rounds):
        for payload in [*payloads, bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4096)))]:
            try:
                with socket.create_connection((host, port), timeout=2) as s:
                    s.sendall(payload)
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_WR)
                    data = b""
                    with contextlib.suppress(OSError):
                        while chunk := s.recv(65536):
                            data += chunk
                    if data:
                        answers.append(data.split(b"\r\n", 1)[0])
            except OSError:
                pass
    return answers
