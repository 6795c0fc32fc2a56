"""Listeners, worker processes, TLS, the drainer, graceful shutdown and the health check.

Process layout of :func:`serve`::

    supervisor ── drainer thread (spool → RecordSink), health check, control of the workers
      ├─ worker 1 ── uvloop; one socket per listener (SO_REUSEPORT); its own spool stream
      ├─ worker 2 …
      └─ worker N

Each worker is a :class:`Worker`: it owns the sessions on its sockets and the spool stream they
write. The supervisor restarts a worker that dies; the drainer recovers the dead worker's spool
(its lock is gone) and closes its statements and sessions out. ``end_credential`` on the
supervisor reaches every worker through its control pipe.

A cancel key handed to a client is the upstream backend's key under a keyed 64-bit permutation
(four Feistel rounds of HMAC-SHA256 with the gateway's ``cancel_secret``), so whichever worker (or
gateway host sharing the secret) receives the CancelRequest maps it back without shared state.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hashlib
import hmac
import inspect
import json
import logging
import multiprocessing as mp
import os
import secrets
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from broker.gateway import protocol as p
from broker.gateway.config import GatewayConfig, ListenerConfig, parse_address
from broker.gateway.login import Authenticator, Authorized, LoginRefused
from broker.gateway.recording import RecordSink, StatementInfo, Statements, encode_json_string
from broker.gateway.session import LINGER_SECONDS, Session
from broker.gateway.spool import Drainer, SpoolError, SpoolWriter

log = logging.getLogger("broker.gateway")

AuthenticatorFactory = Callable[[ListenerConfig], Authenticator]
SinkFactory = Callable[[], RecordSink]


# ---------------------------------------------------------------- cancel keys

class CancelKeys:
    """Keyed permutation of the 64-bit (pid, secret) backend key."""

    def __init__(self, secret: bytes) -> None:
        self._keys = [hmac.new(secret, b"nhb-gateway-cancel-%d" % i, hashlib.sha256).digest()
                      for i in range(4)]

    def _f(self, i: int, half: int) -> int:
        return int.from_bytes(hmac.new(self._keys[i], half.to_bytes(4, "big"), hashlib.sha256)
                              .digest()[:4], "big")

    def seal(self, pid: int, key: int) -> tuple[int, int]:
        left, right = pid, key
        for i in range(4):
            left, right = right, left ^ self._f(i, right)
        return left, right

    def open(self, pid: int, key: int) -> tuple[int, int]:
        left, right = pid, key
        for i in reversed(range(4)):
            left, right = right ^ self._f(i, left), left
        return left, right


# ---------------------------------------------------------------- TLS

def server_ssl_context(config: ListenerConfig) -> ssl.SSLContext | None:
    if config.tls is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    return ctx


def upstream_ssl_context(config: ListenerConfig) -> ssl.SSLContext:
    up = config.upstream
    if up.sslmode in ("verify-ca", "verify-full"):
        ctx = ssl.create_default_context(cafile=up.sslrootcert)
        ctx.check_hostname = up.sslmode == "verify-full"
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE                 # sslmode require/prefer/allow: encryption only
    return ctx


# ---------------------------------------------------------------- one worker

@dataclass
class ListenerRuntime:
    config: ListenerConfig
    authenticator: Authenticator
    ssl_context: ssl.SSLContext | None
    upstream_ssl_context: ssl.SSLContext
    statements: Statements
    server: asyncio.AbstractServer | None = None


@dataclass
class Worker:
    """One process's gateway: its listeners, sessions and spool stream.

    ``end_credential`` / ``shutdown`` are what the outside drives; the sessions call the rest.
    """
    config: GatewayConfig
    authenticators: AuthenticatorFactory
    cancel_keys: CancelKeys
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_event_loop)
    login_timeout: float = 30.0
    spool: SpoolWriter = field(init=False)
    listeners: list[ListenerRuntime] = field(default_factory=list)
    sessions: set[Session] = field(default_factory=set)
    by_credential: dict[str, set[Session]] = field(default_factory=dict)
    dropped: int = 0
    _counter: int = 0
    flush_handle: asyncio.TimerHandle | None = None
    _held: list[Session] = field(default_factory=list)
    _prefix: str = field(default_factory=lambda: secrets.token_hex(3))

    def __post_init__(self) -> None:
        self.spool = SpoolWriter(self.config.spool_dir, segment_bytes=self.config.spool_segment_bytes)

    async def start(self, *, reuse_port: bool = True,
                    sockets: dict[str, socket.socket] | None = None) -> None:
        for lc in self.config.listeners:
            runtime = ListenerRuntime(lc, self.authenticators(lc), server_ssl_context(lc),
                                      upstream_ssl_context(lc), Statements(lc.max_statement_bytes))
            sock = (sockets or {}).get(lc.listen) or bind_socket(lc, reuse_port=reuse_port)
            runtime.server = await self.loop.create_server(
                functools.partial(self._new_session, runtime), sock=sock, backlog=1024)
            self.listeners.append(runtime)

    def _new_session(self, runtime: ListenerRuntime) -> asyncio.Protocol:
        return Session(self, runtime).client_side

    # -- used by sessions
    def next_connection_id(self) -> str:
        self._counter += 1
        return f"{time.time_ns() // 1_000_000:x}-{self._prefix}{os.getpid():x}-{self._counter:x}"

    async def authenticate(self, listener: ListenerRuntime, username: str, password: str,
                           database: str, client_addr: str) -> Authorized:
        auth = listener.authenticator
        method = auth.authenticate
        if inspect.iscoroutinefunction(method):
            result = await method(username, password, database, client_addr)
        else:
            result = await self.loop.run_in_executor(None, method, username, password, database,
                                                     client_addr)
            if inspect.isawaitable(result):
                result = await result
        if not isinstance(result, Authorized):
            raise LoginRefused("28000", "login refused")
        return result

    def client_key(self, upstream_pid: int, upstream_key: int) -> tuple[int, int]:
        return self.cancel_keys.seal(upstream_pid, upstream_key)

    async def forward_cancel(self, listener: ListenerRuntime, request: p.CancelRequest,
                             client_addr: str) -> None:
        pid, key = self.cancel_keys.open(request.backend_pid, request.secret_key)
        up = listener.config.upstream
        session = next((s for s in self.sessions if s.upstream_pid == pid and s.upstream_key == key
                        and s.listener is listener), None)
        delivered = False
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(up.host, up.port), 5)
            writer.write(p.cancel_request(pid, key))
            await writer.drain()
            writer.close()
            delivered = True
        except (TimeoutError, OSError):
            log.warning("gateway %s: could not forward a cancel request", listener.config.target)
        self.record_standalone({
            "type": "cancel", "line_key": f"gw:cancel:{secrets.token_hex(8)}", "source": "gateway",
            "target": listener.config.target, "client_addr": client_addr,
            "upstream": f"{up.host}:{up.port}", "upstream_backend_pid": pid,
            "connection_id": session.connection_id if session else None,
            "credential_id": session.credential_id if session else None,
            "forwarded": delivered, "ts": time.time()})

    def record_standalone(self, record: dict[str, Any]) -> None:
        self.spool.add("X\t" + json.dumps(record, separators=(",", ":"), default=str) + "\n")
        try:
            self.spool.flush()
        except SpoolError:
            self.count_drop()

    def hold(self, session: Session) -> None:
        """``session`` has a packet that may go upstream only after the spool write; all such
        packets of one event-loop iteration share one write(2)."""
        if not self._held:
            self.loop.call_soon(self._release_held)
        self._held.append(session)

    def _release_held(self) -> None:
        held, self._held = self._held, []
        try:
            self.spool.flush()
            ok = True
        except SpoolError:
            ok = False
            self.count_drop()
        for session in held:
            if session._held:
                session.release(ok)

    def schedule_flush(self) -> None:
        if self.flush_handle is None:
            self.flush_handle = self.loop.call_later(0.02, self._timed_flush)

    def _timed_flush(self) -> None:
        self.flush_handle = None
        try:
            self.spool.flush()
        except SpoolError:
            self.count_drop()

    def count_drop(self) -> None:
        self.dropped = self.spool.dropped

    def register(self, session: Session) -> None:
        if session.credential_id:
            self.by_credential.setdefault(session.credential_id, set()).add(session)

    def unregister(self, session: Session) -> None:
        self.sessions.discard(session)
        if session.credential_id:
            group = self.by_credential.get(session.credential_id)
            if group is not None:
                group.discard(session)
                if not group:
                    del self.by_credential[session.credential_id]

    @staticmethod
    def unknown_statement(name: bytes) -> StatementInfo:
        return StatementInfo(encode_json_string(f"<unknown prepared statement {name!r}>"), "", False)

    @staticmethod
    def unknown_portal(name: bytes) -> StatementInfo:
        return StatementInfo(encode_json_string(f"<unknown portal {name!r}>"), "", False)

    @staticmethod
    def function_call_statement(oid: int) -> StatementInfo:
        return StatementInfo(encode_json_string(f"<function call oid={oid}>"), "", False)

    # -- driven from outside
    def end_credential(self, credential_id: str, reason: str) -> int:
        """End every open session of ``credential_id`` in this worker with a FATAL 28000;
        returns how many were ended."""
        sessions = list(self.by_credential.get(credential_id, ()))
        for session in sessions:
            session.end(f"credential ended: {reason}", "28000",
                        f"the credential has been ended ({reason}); the session is closed")
        return len(sessions)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let running statements finish (up to ``grace`` seconds), end the rest."""
        for runtime in self.listeners:
            if runtime.server is not None:
                runtime.server.close()
        ending = list(self.sessions)
        for session in ending:
            session.drain()
        deadline = time.monotonic() + grace
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.end("gateway shut down before the statement finished", "57P01",
                        "the gateway is shutting down")
        # Each ended client gets its FATAL read before the process exits and closes its
        # socket (an exit with unread client bytes would reset the connection instead).
        linger_until = time.monotonic() + LINGER_SECONDS
        await asyncio.sleep(0.05)
        while any(s.lingering for s in ending) and time.monotonic() < linger_until:
            await asyncio.sleep(0.05)
        if self.flush_handle is not None:
            self.flush_handle.cancel()
        self.spool.close()


def bind_socket(config: ListenerConfig, *, reuse_port: bool) -> socket.socket:
    host, port = config.address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


# ---------------------------------------------------------------- processes

def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the supervisor dies (prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def _worker_main(config: GatewayConfig, authenticators: AuthenticatorFactory, cancel_secret: bytes,
                 control_fd: int, ready: Any, inherited_fds: tuple[int, ...]) -> None:
    _die_with_parent()
    for fd in inherited_fds:                      # the drainer's lock must die with the supervisor
        with contextlib.suppress(OSError):
            os.close(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # a spool over its size limit: EFBIG, not death
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = Worker(config, authenticators, CancelKeys(cancel_secret), loop=loop)
    stop = loop.create_future()

    def on_control() -> None:
        try:
            data = os.read(control_fd, 65536)
        except BlockingIOError:
            return
        if not data:
            if not stop.done():
                stop.set_result("supervisor gone")
            return
        for line in data.decode().splitlines():
            command = json.loads(line)
            if command.get("end_credential"):
                worker.end_credential(command["end_credential"], command.get("reason", "ended"))

    os.set_blocking(control_fd, False)
    loop.add_reader(control_fd, on_control)
    def on_sigterm() -> None:
        if not stop.done():
            stop.set_result("SIGTERM")

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.run_until_complete(worker.start(reuse_port=True))
    # The relay makes no reference cycles on its hot path: keep the collector off the objects
    # that exist at startup and run it rarely, so no collection pause lands on a statement.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    ready.set()
    loop.run_until_complete(stop)
    loop.run_until_complete(worker.shutdown(config.shutdown_grace))
    loop.close()


class Supervisor:
    """Runs the workers, the drainer and the health check; the handle phase B drives.

    ``end_credential(credential_id, reason)`` ends that credential's sessions in every worker.
    """

    def __init__(self, config: GatewayConfig, *, authenticators: AuthenticatorFactory,
                 sink: RecordSink, cancel_secret: bytes | None = None) -> None:
        for lc in config.listeners:
            lc.check()
        self.config = config
        self.authenticators = authenticators
        self.sink = sink
        self.cancel_secret = cancel_secret or secrets.token_bytes(32)
        self.drainer = Drainer(config.spool_dir, sink, batch=config.drain_batch,
                               interval=config.drain_interval,
                               idle_priority=config.drain_priority == "idle")
        self._ctx = mp.get_context("fork")
        self._workers: list[tuple[Any, int]] = []
        self._stopping = False
        self._health: ThreadingHTTPServer | None = None

    def start(self) -> None:
        for lc in self.config.listeners:                 # fail fast on an address in use
            probe = socket.socket(socket.AF_INET6 if ":" in lc.address[0] else socket.AF_INET)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind(lc.address)
            finally:
                probe.close()
        self.drainer.run_once()                          # recovery of what a crash left behind
        for _ in range(max(1, self.config.workers)):
            self._workers.append(self._spawn())
        self.drainer.start()
        if self.config.health:
            self._start_health()

    def _spawn(self) -> tuple[Any, int]:
        read_fd, write_fd = os.pipe()
        ready = self._ctx.Event()
        proc = self._ctx.Process(target=_worker_main, daemon=True,
                                 args=(self.config, self.authenticators, self.cancel_secret,
                                       read_fd, ready, (self.drainer.lock_fd, *self._write_fds())))
        proc.start()
        os.close(read_fd)
        if not ready.wait(30):
            log.error("a gateway worker did not start")
        return proc, write_fd

    def _write_fds(self) -> tuple[int, ...]:
        return tuple(fd for _, fd in self._workers)

    def end_credential(self, credential_id: str, reason: str) -> None:
        line = (json.dumps({"end_credential": credential_id, "reason": reason}) + "\n").encode()
        for _, fd in self._workers:
            with contextlib.suppress(OSError):
                os.write(fd, line)

    def supervise(self, stop: threading.Event) -> None:
        """Block until ``stop``: restart workers that died."""
        while not stop.wait(0.5):
            for i, (proc, fd) in enumerate(self._workers):
                if not proc.is_alive() and not self._stopping:
                    log.error("gateway worker %s exited with %s; restarting", proc.pid, proc.exitcode)
                    os.close(fd)
                    self._workers[i] = self._spawn()

    def stop(self) -> None:
        self._stopping = True
        for proc, _ in self._workers:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        for proc, fd in self._workers:
            proc.join(self.config.shutdown_grace + 5)
            if proc.is_alive():
                proc.kill()
            os.close(fd)
        self.drainer.stop(final_pass=True)
        if self._health is not None:
            self._health.shutdown()

    def health(self) -> dict[str, Any]:
        alive = sum(1 for proc, _ in self._workers if proc.is_alive())
        return {"status": "ok" if alive == len(self._workers) and alive else "degraded",
                "workers": alive, "records_delivered": self.drainer.delivered,
                "sink_failures": self.drainer.failures}

    def _start_health(self) -> None:
        supervisor = self
        host, port = parse_address(self.config.health or "")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path != "/healthz":
                    self.send_error(404)
                    return
                body = json.dumps(supervisor.health()).encode()
                self.send_response(200 if b'"ok"' in body else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        self._health = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=self._health.serve_forever, daemon=True).start()


def serve(config: GatewayConfig, *, authenticators: AuthenticatorFactory, sink: RecordSink,
          cancel_secret: bytes | None = None, on_started: Callable[[Supervisor], None] | None = None) -> int:
    """Run the gateway until SIGTERM/SIGINT; graceful shutdown lets running statements finish."""
    supervisor = Supervisor(config, authenticators=authenticators, sink=sink, cancel_secret=cancel_secret)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    supervisor.start()
    if on_started is not None:
        on_started(supervisor)
    try:
        supervisor.supervise(stop)
    finally:
        supervisor.stop()
    return 0

