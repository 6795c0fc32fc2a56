"""One client connection through the gateway: handshake, upstream login, relay, recording.

Handshake (a coroutine): SSLRequest → TLS (or ``N`` on loopback without TLS), GSSENCRequest →
``N``, CancelRequest → mapped and forwarded upstream, StartupMessage → AuthenticationCleartext-
Password → the :class:`~broker.gateway.login.Authenticator` → upstream connect (TLS per
``sslmode``) and login (SCRAM-SHA-256, MD5 or cleartext) → AuthenticationOk, the server's
ParameterStatus, the gateway's own BackendKeyData, ReadyForQuery.

Relay (plain callbacks, no coroutine per message):

- client → server: every message header is read; ``Query``, ``Parse``, ``Bind``, ``Execute``,
  ``Close``, ``Sync``, ``FunctionCall`` are looked at. Each statement that will run gets a
  sequence number and a start line in the spool; with ``audit: required`` the packet is forwarded
  only after the one ``write(2)`` of its start lines succeeded.
- server → client: bytes are forwarded as they arrive, in the chunks they arrive in; a parser walks
  only the 5-byte headers (skipping DataRow/CopyData bodies) and reads the bodies of
  CommandComplete, EmptyQueryResponse, ErrorResponse, PortalSuspended, FunctionCallResponse,
  ReadyForQuery and ParameterStatus to pair outcomes with statements.

Pairing: ``_pending`` holds, in the order the server will answer, a sequence number per statement
and ``SYNC`` per ReadyForQuery expected (one per simple Query, Sync or FunctionCall). A completion
message finishes the first sequence number; an ErrorResponse finishes it with the SQLSTATE; at
ReadyForQuery any sequence number still before the ``SYNC`` was never executed (the server
skipped it after an error: later statements of a multi-statement Query string, later Executes of
a failed pipeline) and gets no record. An Execute whose pipeline failed before it ran (its Parse
or Bind was refused) carries that error's SQLSTATE.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import socket
import ssl
import struct
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from broker.gateway import protocol as p
from broker.gateway.login import Authorized, LoginRefused
from broker.gateway.recording import StatementInfo, encode_json_string, parameters_fragment
from broker.gateway.scram import MECHANISM, ScramClient, ScramError, md5_password
from broker.gateway.spool import CLOCK_OFFSET_NS, SpoolError

if TYPE_CHECKING:
    from broker.gateway.server import ListenerRuntime, Worker

log = logging.getLogger("broker.gateway.session")

SYNC = -1
_PARAMS = 1            # _flags: the statement had bound parameters
_REDACTED = 2          # _flags: a secret was redacted from its text
_unpack_u32 = p.unpack_u32_from
_perf_ns = time.perf_counter_ns
_HIGH_WATER = 1 << 20
# After a FATAL the client gets this long to read it and hang up before the socket is closed.
# Closing at once with unread client bytes in the kernel buffer makes Linux send a reset, and a
# reset makes the client's kernel throw away the FATAL it has not read yet ("server closed the
# connection unexpectedly" instead of the reason).
LINGER_SECONDS = 1.0

# SQLSTATEs the gateway itself raises.
ADMIN_SHUTDOWN = "57P01"
CONNECTION_FAILURE = "08006"
CANNOT_CONNECT = "08001"
PROTOCOL_VIOLATION = "08P01"
#: PostgreSQL's own bound on a frontend message (PQ_LARGE_MESSAGE_LIMIT): a client claiming
#: more is not buffered for, it is refused.
_MAX_CLIENT_MESSAGE = (1 << 30) - 1
IO_ERROR = "58030"
FEATURE_NOT_SUPPORTED = "0A000"

_INTERESTING = frozenset((p.B_COMMAND_COMPLETE, p.B_EMPTY_QUERY, p.B_ERROR,
                          p.B_PORTAL_SUSPENDED, p.B_FUNCTION_CALL_RESPONSE,
                          p.B_READY_FOR_QUERY, p.B_PARAMETER_STATUS))
_PG_CODECS = {"UTF8": "utf-8", "SQL_ASCII": "latin-1", "LATIN1": "latin-1", "WIN1252": "cp1252",
              "LATIN9": "iso8859-15", "WIN1251": "cp1251", "EUC_JP": "euc_jp", "SJIS": "shift_jis"}


class _Closed(Exception):
    """The peer went away during the handshake."""


class Refusal(Exception):
    """End the handshake with a FATAL ErrorResponse (message is sent as is: no secrets)."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


def _drop(data: bytes) -> None:
    """What a lingering client socket does with the bytes it still receives."""


class _Side(asyncio.Protocol):
    """asyncio protocol for one socket; hands everything to the session."""


    def __init__(self, session: Session, *, upstream: bool) -> None:
        self.session = session
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        self.transport = transport  # type: ignore[assignment]
        if first and not self.upstream:
            self.session.connection_made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self.upstream:
            self.session.server_data(data)
        else:
            self.session.client_data(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.side_lost(upstream=self.upstream)

    def pause_writing(self) -> None:
        self.session.pause_other(upstream=self.upstream, pause=True)

    def resume_writing(self) -> None:
        self.session.pause_other(upstream=self.upstream, pause=False)


class _Portal:
    __slots__ = ("info", "params", "suspended_seq")

    def __init__(self, info: StatementInfo, params: str) -> None:
        self.info = info
        self.params = params
        self.suspended_seq = 0


class Session:
    """State of one client connection (and its one upstream connection)."""

    def __init__(self, worker: Worker, listener: ListenerRuntime) -> None:
        self.worker = worker
        self.listener = listener
        self.config = listener.config
        self.loop = worker.loop
        self.client_side = _Side(self, upstream=False)
        self.server_side = _Side(self, upstream=True)
        self.client: asyncio.Transport | None = None
        self.server: asyncio.Transport | None = None
        self.client_addr = ""
        self.connection_id = worker.next_connection_id()
        self.authorized: Authorized | None = None
        self.credential_id: str | None = None
        self.relaying = False
        self.closed = False
        self.started = time.time()
        self.tls = False
        self.upstream_tls = False
        # handshake buffers
        self._cbuf = bytearray()
        self._sbuf = bytearray()
        self._cwait: asyncio.Future[None] | None = None
        self._swait: asyncio.Future[None] | None = None
        self._clost = False
        self._lingering = False
        self._slost = False
        # relay state
        self._ctail = bytearray()              # an incomplete client message
        self._cneed = 0                         # bytes that message needs in all
        self._stail = b""
        self._sskip = 0
        self._pending: deque[int] = deque()
        self._seq = 0
        self._statements: dict[bytes, StatementInfo] = {}
        self._portals: dict[bytes, _Portal] = {}
        self._codec = "utf-8"
        self._txn = b"I"
        self.bytes_up = 0
        self.bytes_down = 0
        self.upstream_pid = 0
        self.upstream_key = 0
        self._expiry: asyncio.TimerHandle | None = None
        self._end_reason: str | None = None
        self._draining = False
        self._stmt_cache = listener.statements
        self._spool = worker.spool
        self._add = worker.spool.add_line          # list.append of the spool buffer: no frame
        self._required = self.config.audit == "required"
        self._param_mode = self.config.parameters
        self._held: list[bytes] = []           # client packets waiting for the spool write
        self._flags: dict[int, Any] = {}       # seq → _Portal (row-limited Execute) or flag bits

    # ------------------------------------------------------------ asyncio plumbing
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.client = transport
        peer = transport.get_extra_info("peername")
        self.client_addr = peer[0] if isinstance(peer, tuple) else "local"
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        self.worker.sessions.add(self)
        self.loop.create_task(self._handshake())

    def client_data(self, data: bytes) -> None:
        if self.relaying:
            self._relay_client(data)
            return
        self._cbuf += data
        if self._cwait is not None and not self._cwait.done():
            self._cwait.set_result(None)

    def server_data(self, data: bytes) -> None:
        if self.relaying:
            self._relay_server(data)
            return
        self._sbuf += data
        if self._swait is not None and not self._swait.done():
            self._swait.set_result(None)

    def side_lost(self, *, upstream: bool) -> None:
        if upstream:
            self._slost = True
            waiter = self._swait
        else:
            self._clost = True
            waiter = self._cwait
        if waiter is not None and not waiter.done():
            waiter.set_exception(_Closed())
        if self.relaying:
            self._finish("upstream closed the connection" if upstream else "client disconnected")
        elif not upstream and self._cwait is None:
            self._finish("client disconnected during login")

    def pause_other(self, *, upstream: bool, pause: bool) -> None:
        other = self.client if upstream else self.server
        if other is None:
            return
        if pause:
            other.pause_reading()
        else:
            other.resume_reading()

    # ------------------------------------------------------------ handshake helpers
    async def _client_bytes(self, n: int) -> bytes:
        while len(self._cbuf) < n:
            if self._clost:
                raise _Closed()
            self._cwait = self.loop.create_future()
            await self._cwait
            self._cwait = None
        out = bytes(self._cbuf[:n])
        del self._cbuf[:n]
        return out

    async def _client_packet(self) -> bytes:
        head = await self._client_bytes(4)
        length = _unpack_u32(head, 0)[0]
        if not 8 <= length <= p.MAX_STARTUP_PACKET:
            raise Refusal(PROTOCOL_VIOLATION, "invalid startup packet")
        return head + await self._client_bytes(length - 4)

    async def _client_message(self) -> tuple[int, bytes]:
        head = await self._client_bytes(5)
        length = _unpack_u32(head, 1)[0]
        if not 4 <= length <= 1 << 16:
            raise Refusal(PROTOCOL_VIOLATION, "invalid message length")
        return head[0], await self._client_bytes(length - 4)

    async def _server_bytes(self, n: int) -> bytes:
        while len(self._sbuf) < n:
            if self._slost:
                raise _Closed()
            self._swait = self.loop.create_future()
            await self._swait
            self._swait = None
        out = bytes(self._sbuf[:n])
        del self._sbuf[:n]
        return out

    async def _server_message(self) -> tuple[int, bytes]:
        head = await self._server_bytes(5)
        length = _unpack_u32(head, 1)[0]
        if length < 4 or length > 1 << 24:
            raise _Closed()
        return head[0], await self._server_bytes(length - 4)

    def _refuse(self, sqlstate: str, message: str) -> None:
        if self.client is not None and not self.client.is_closing():
            self.client.write(p.error_response(sqlstate, message, severity="FATAL"))
            self._close_client()

    @property
    def lingering(self) -> bool:
        """The session has ended and its client socket is still open for the client to read the
        FATAL (see ``_close_client``)."""
        return self._lingering and self.client is not None and not self.client.is_closing()

    def _close_client(self) -> None:
        """Close the client side after a FATAL so that the client is sure to read it: send FIN
        (where the transport can), keep reading and dropping what the client still sends, and
        close when it hangs up or after ``LINGER_SECONDS`` (a lingering close, as web servers do)."""
        client = self.client
        if client is None or client.is_closing() or self._lingering:
            return
        self._lingering = True
        # read and drop: while relaying the transport calls _relay_client directly, which would
        # record (and try to forward) statements the ended session never runs
        self.client_side.data_received = _drop  # type: ignore[method-assign]
        client.set_protocol(self.client_side)   # uvloop reads data_received at set_protocol
        if client.can_write_eof():
            client.write_eof()
        client.resume_reading()
        self.loop.call_later(LINGER_SECONDS, client.close)

    # ------------------------------------------------------------ handshake
    async def _handshake(self) -> None:
        try:
            startup = await asyncio.wait_for(self._negotiate(), timeout=self.worker.login_timeout)
            if startup is None:
                return
            await self._login(startup)
        except Refusal as refusal:
            self._refuse(refusal.sqlstate, refusal.message)
            self._finish(refusal.message, logged_in=self.relaying)
        except (_Closed, ConnectionError):
            self._finish("client disconnected during login")
        except p.ProtocolViolation as violation:    # a malformed startup or password message
            self._refuse(PROTOCOL_VIOLATION, f"invalid frontend message: {violation}")
            self._finish("protocol violation by the client during login")
        except TimeoutError:
            self._refuse(PROTOCOL_VIOLATION, "login timed out")
            self._finish("login timed out")
        except ssl.SSLError:
            self._finish("TLS handshake failed")
            if self.client is not None:
                self.client.abort()
        except Exception:  # noqa: BLE001 - never a stack trace to the client
            log.exception("gateway session %s failed during login", self.connection_id)
            self._refuse("XX000", "the gateway failed to establish the session")
            self._finish("internal error during login")

    async def _negotiate(self) -> p.Startup | None:
        ssl_ctx = self.listener.ssl_context
        while True:
            message = p.parse_startup_packet(await self._client_packet())
            if isinstance(message, p.SSLRequest):
                if self.tls:
                    raise Refusal(PROTOCOL_VIOLATION, "duplicate SSLRequest")
                if ssl_ctx is None:
                    self.client.write(b"N")  # type: ignore[union-attr]
                    continue
                self.client.write(b"S")  # type: ignore[union-attr]
                self.client = await self.loop.start_tls(
                    self.client, self.client_side, ssl_ctx, server_side=True)  # type: ignore[arg-type]
                self.tls = True
                continue
            if isinstance(message, p.GSSENCRequest):
                self.client.write(b"N")  # type: ignore[union-attr]
                continue
            if isinstance(message, p.CancelRequest):
                await self.worker.forward_cancel(self.listener, message, self.client_addr)
                self.client.close()  # type: ignore[union-attr]
                self._finish("cancel request", record=False)
                return None
            assert isinstance(message, p.Startup)
            if ssl_ctx is not None and not self.tls and not self.config.loopback:
                raise Refusal("28000", "the gateway requires TLS (sslmode=require)")
            return message

    async def _login(self, startup: p.Startup) -> None:
        params = startup.parameters
        if params.get("replication") not in (None, "false", "0", "off", "no"):
            raise Refusal(FEATURE_NOT_SUPPORTED, "replication connections are not supported by the gateway")
        username = params.get("user", "")
        database = params.get("database", username)
        self.client.write(p.auth_cleartext_password())  # type: ignore[union-attr]
        kind, body = await self._client_message()
        if kind != p.F_PASSWORD:
            raise Refusal(PROTOCOL_VIOLATION, "expected a password message")
        password = p.parse_password_message(body)
        del body
        try:
            self.authorized = await self.worker.authenticate(self.listener, username, password,
                                                             database, self.client_addr)
        except LoginRefused as refused:
            self.worker.record_standalone({
                "type": "login_refused", "line_key": f"gw:{self.connection_id}:login_refused",
                "source": "gateway", "connection_id": self.connection_id,
                "target": self.config.target, "username": username[:128],
                "database": database[:128], "credential_id": refused.credential_id,
                "client_addr": self.client_addr, "sqlstate": refused.sqlstate,
                "reason": refused.reason or refused.message, "tls": self.tls,
                "token_sha256": hashlib.sha256(password.encode()).hexdigest(),
                "ts": time.time()})
            raise Refusal(refused.sqlstate, refused.message) from None
        finally:
            del password
        auth = self.authorized
        self.credential_id = auth.credential_id
        if auth.expires_at <= time.time():
            raise Refusal("28000", "the credential has expired")
        server_params = {k: v for k, v in params.items() if k not in ("user", "database", "replication")}
        server_params["user"] = auth.upstream_user
        server_params["database"] = auth.upstream_dbname or self.config.upstream.dbname or database
        if self.config.login == "service-role":
            server_params["application_name"] = auth.credential_id
        await self._connect_upstream(server_params, auth)
        statuses = await self._upstream_ready()
        # the client's view: AuthenticationOk, server's ParameterStatus, our key, ReadyForQuery
        client_pid, client_key = self.worker.client_key(self.upstream_pid, self.upstream_key)
        out = [p.auth_ok()]
        out.extend(statuses)
        out.append(p.backend_key_data(client_pid, client_key))
        out.append(p.ready_for_query(self._txn))
        self.worker.register(self)
        self._spool.add(f"C\t{self.connection_id}\t" + _json({
            "credential_id": auth.credential_id, "target": self.config.target,
            "database": server_params["database"], "client_addr": self.client_addr,
            "client_user": username, "upstream_user": auth.upstream_user,
            "upstream": f"{self.config.upstream.host}:{self.config.upstream.port}",
            "upstream_backend_pid": self.upstream_pid, "login": self.config.login,
            "upstream_tls": self.upstream_tls,
            "tls": self.tls, "application_name": params.get("application_name"),
            "expires_at": auth.expires_at, "record": auth.record, "ts": self.started,
            "worker_pid": os.getpid(), "clock_offset_ns": CLOCK_OFFSET_NS}) + "\n")
        try:
            self._spool.flush()
        except SpoolError:
            if self._required:
                raise Refusal(IO_ERROR, "the gateway cannot record this session (audit spool "
                                        "unwritable); refusing to connect") from None
        self.relaying = True
        # from here on the transports call the relay methods directly (no dispatch frame): an
        # instance attribute shadows _Side.data_received, and set_protocol re-reads it
        self.client_side.data_received = self._relay_client  # type: ignore[method-assign]
        self.server_side.data_received = self._relay_server  # type: ignore[method-assign]
        self.client.set_protocol(self.client_side)  # type: ignore[union-attr]
        self.server.set_protocol(self.server_side)  # type: ignore[union-attr]
        self.client.write(b"".join(out))  # type: ignore[union-attr]
        delay = auth.expires_at - time.time()
        self._expiry = self.loop.call_later(max(delay, 0), self.end, "credential expired",
                                            "28000", "the credential has expired")
        if self._cbuf:
            data, self._cbuf = bytes(self._cbuf), bytearray()
            self._relay_client(data)
        if self._sbuf:
            data, self._sbuf = bytes(self._sbuf), bytearray()
            self._relay_server(data)

    async def _connect_upstream(self, params: dict[str, str], auth: Authorized) -> None:
        up = self.config.upstream
        try:
            transport, _ = await asyncio.wait_for(
                self.loop.create_connection(lambda: self.server_side, up.host, up.port),
                timeout=up.connect_timeout)
        except (TimeoutError, OSError):
            log.warning("gateway %s: upstream %s:%s unreachable", self.config.target, up.host, up.port)
            raise Refusal(CANNOT_CONNECT, "the gateway could not reach the database") from None
        self.server = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.set_write_buffer_limits(high=_HIGH_WATER)
        if up.sslmode != "disable":
            transport.write(p.ssl_request())
            answer = await self._server_bytes(1)
            if answer == b"S":
                self.server = await self.loop.start_tls(
                    transport, self.server_side, self.listener.upstream_ssl_context,
                    server_hostname=up.host)
                self.upstream_tls = True
            elif up.sslmode in ("require", "verify-ca", "verify-full"):
                raise Refusal(CANNOT_CONNECT, "the database does not offer TLS (sslmode requires it)")
        self.server.write(p.startup_message(params))  # type: ignore[union-attr]
        await self._upstream_auth(auth)

    async def _upstream_auth(self, auth: Authorized) -> None:  # noqa: C901 - one branch per message type
        scram: ScramClient | None = None
        while True:
            kind, body = await self._server_message()
            if kind == p.B_ERROR:
                fields = p.parse_error_fields(body)
                log.warning("gateway %s: upstream refused the login of credential %s: %s",
                            self.config.target, auth.credential_id, fields.get("C"))
                state = fields.get("C", "28000")
                if state.startswith("28"):
                    raise Refusal("28000", "the database refused the gateway's login for this credential")
                raise Refusal(state, "the database refused the connection")
            if kind == p.B_NEGOTIATE_PROTOCOL:
                continue
            if kind != p.B_AUTH:
                raise Refusal(PROTOCOL_VIOLATION, "unexpected message from the database during login")
            code = p.unpack_i32_from(body, 0)[0]
            if code == p.AUTH_OK:
                return
            if code == p.AUTH_SASL:
                mechanisms = [m.decode() for m in body[4:].split(b"\x00") if m]
                if MECHANISM not in mechanisms:
                    raise Refusal(CANNOT_CONNECT,
                                  "the database offers no SASL mechanism the gateway supports")
                scram = ScramClient(auth.upstream_password)
                self.server.write(p.sasl_initial_response(MECHANISM, scram.first()))  # type: ignore[union-attr]
            elif code == p.AUTH_SASL_CONTINUE and scram is not None:
                try:
                    self.server.write(p.sasl_response(scram.final(body[4:])))  # type: ignore[union-attr]
                except ScramError:
                    raise Refusal(CANNOT_CONNECT, "the database's SCRAM exchange is malformed") from None
            elif code == p.AUTH_SASL_FINAL and scram is not None:
                try:
                    scram.verify(body[4:])
                except ScramError:
                    raise Refusal(CANNOT_CONNECT, "the database failed SCRAM server verification") from None
            elif code == p.AUTH_MD5:
                self.server.write(p.password_message(  # type: ignore[union-attr]
                    md5_password(auth.upstream_user, auth.upstream_password, body[4:8])))
            elif code == p.AUTH_CLEARTEXT:
                self.server.write(p.password_message(auth.upstream_password.encode()))  # type: ignore[union-attr]
            else:
                raise Refusal(CANNOT_CONNECT, "the database asks for an authentication method the "
                                              "gateway does not support")

    async def _upstream_ready(self) -> list[bytes]:
        statuses: list[bytes] = []
        while True:
            kind, body = await self._server_message()
            if kind == p.B_PARAMETER_STATUS:
                name, value = p.parse_parameter_status(body)
                if name == "client_encoding":
                    self._codec = _PG_CODECS.get(value.upper(), "latin-1")
                statuses.append(p.message(kind, body))
            elif kind == p.B_BACKEND_KEY_DATA:
                self.upstream_pid, self.upstream_key = struct.unpack("!II", body[:8])
            elif kind == p.B_NOTICE:
                statuses.append(p.message(kind, body))
            elif kind == p.B_READY_FOR_QUERY:
                self._txn = bytes(body[:1])
                return statuses
            elif kind == p.B_ERROR:
                fields = p.parse_error_fields(body)
                raise Refusal(fields.get("C", CONNECTION_FAILURE), "the database refused the session")
            else:
                raise Refusal(PROTOCOL_VIOLATION, "unexpected message from the database after login")

    # ------------------------------------------------------------ relay: client → server
    def _relay_client(self, data: bytes) -> None:
        """What the client sent, relayed and recorded. A malformed message (a length below 4,
        a body its type cannot have) ends the session with a FATAL ``08P01``, as PostgreSQL
        itself does — never an exception in the event loop."""
        try:
            self._relay_client_messages(data)
        except (p.ProtocolViolation, ValueError, IndexError, struct.error) as exc:
            log.warning("gateway %s: session %s: malformed message from the client (%s)",
                        self.config.target, self.connection_id, type(exc).__name__)
            self.end("protocol violation by the client", PROTOCOL_VIOLATION,
                     "invalid frontend message", forward_pending=False)

    def _relay_client_messages(self, data: bytes) -> None:  # noqa: C901 - the hot path, one function on purpose
        n = len(data)
        if (not self._ctail and data[0] == 81 and n >= 6 and _unpack_u32(data, 1)[0] == n - 1
                and data[-1] == 0):
            # fast path: the packet is exactly one simple Query of one plain statement
            infos = self._stmt_cache.split_raw(data[5:-1], self._codec)
            if len(infos) == 1 and not infos[0].extra and not infos[0].redacted:
                self._seq = seq = self._seq + 1
                self._add(f"S\t{self.connection_id}\t{seq}\t{_perf_ns()}\t{infos[0].spool_text}\t{{}}\n")
                pending = self._pending
                pending.append(seq)
                pending.append(SYNC)
            else:
                for info in infos:
                    self._start(info, "")
                self._pending.append(SYNC)
            self.bytes_up += n
            self._held.append(data)
            self.worker.hold(self)
            return
        if self._ctail:
            tail = self._ctail
            if len(tail) + len(data) < self._cneed:     # a large message still arriving
                tail += data
                return
            data = bytes(tail) + data
            self._ctail = bytearray()
        n = len(data)
        pos = 0
        starts = False
        unpack = _unpack_u32
        while n - pos >= 5:
            t = data[pos]
            length = unpack(data, pos + 1)[0]
            if length < 4 or length > _MAX_CLIENT_MESSAGE:
                raise p.ProtocolViolation("invalid message length")
            end = pos + 1 + length
            if end > n:
                break
            if t == 100:                                    # CopyData: the bulk of COPY FROM
                pos = end
                continue
            if t == 69:                                     # Execute
                starts = self._on_execute(data, pos + 5, end) or starts
            elif t == 66:                                   # Bind
                self._on_bind(data, pos + 5, end)
            elif t == 80:                                   # Parse
                self._on_parse(data, pos + 5, end)
            elif t == 83:                                   # Sync
                self._pending.append(SYNC)
            elif t == 81:                                   # Query
                starts = self._on_query(data, pos + 5, end) or starts
            elif t == 67:                                   # Close
                kind, name = p.parse_close(data[pos + 5:end])
                if kind == 83:
                    self._statements.pop(name, None)
                else:
                    self._portals.pop(name, None)
            elif t == 70:                                   # FunctionCall
                starts = self._on_function_call(data, pos + 5, end) or starts
            elif t == 88:                                   # Terminate
                self._end_reason = self._end_reason or "client terminated the session"
            pos = end
        if pos < n:
            self._ctail = bytearray(data[pos:])
            self._cneed = 1 + _unpack_u32(data, pos + 1)[0] if n - pos >= 5 else 5
            data = data[:pos]
            if not data:
                return
        self.bytes_up += len(data)
        if starts or self._held:
            # group commit: every session's start lines of this loop iteration go out in one
            # write(2), then each held packet is forwarded (Worker.release_held)
            self._held.append(data)
            self.worker.hold(self)
        else:
            self.server.write(data)  # type: ignore[union-attr]

    def release(self, spool_ok: bool) -> None:
        """Forward what was held for the spool write (or refuse, if it failed and audit is
        required)."""
        held, self._held = self._held, []
        if self.closed:
            return
        if not spool_ok and self._required:
            self._audit_failure()
            return
        server = self.server
        for data in held:
            server.write(data)  # type: ignore[union-attr]

    def _start(self, info: StatementInfo, params: str, kind: str = "") -> int:
        self._seq += 1
        seq = self._seq
        extra = info.extra
        if params:
            extra = f"{extra},{params}" if extra else params
        if kind:
            extra = f"{extra},{kind}" if extra else kind
        self._add(f"S\t{self.connection_id}\t{seq}\t{_perf_ns()}\t{info.spool_text}\t{{{extra}}}\n")
        self._pending.append(seq)
        if info.redacted or params:
            self._flags[seq] = _REDACTED if info.redacted else _PARAMS
        return seq

    def _decode(self, raw: bytes) -> str:
        return raw.decode(self._codec, "replace")

    def _on_query(self, data: bytes, start: int, end: int) -> bool:
        infos = self._stmt_cache.split_raw(p.parse_query(data[start:end]), self._codec)
        for info in infos:
            self._start(info, "")
        self._pending.append(SYNC)
        return bool(infos)

    def _on_parse(self, data: bytes, start: int, end: int) -> None:
        name, text = p.parse_parse(data[start:end])
        if name:
            cached = self._statements.get(name)
            if cached is not None:
                return                                      # re-Parse of a name fails upstream
        self._statements[name] = self._stmt_cache.one(self._decode(text))

    def _on_bind(self, data: bytes, start: int, end: int) -> None:
        body = data[start:end]
        if self._param_mode == "none":                     # the names only: the values go unread
            portal, pos = p.cstring(body, 0)
            statement, _ = p.cstring(body, pos)
            params = ""
        else:
            portal, statement, values = p.parse_bind(body)
            params = parameters_fragment(values, self._param_mode)
        info = self._statements.get(statement)
        if info is None:
            info = self.worker.unknown_statement(statement)
        self._portals[portal] = _Portal(info, params)

    def _on_execute(self, data: bytes, start: int, end: int) -> bool:
        name, limit = p.parse_execute(data[start:end])     # within this message, not the next
        portal = self._portals.get(name)
        if portal is None:
            portal = _Portal(self.worker.unknown_portal(name), "")
        if portal.suspended_seq:
            seq = self._start(portal.info, "", f'"continues_seq":{portal.suspended_seq}')
            portal.suspended_seq = 0
        else:
            seq = self._start(portal.info, portal.params)
        if limit:                                           # a row limit: may be suspended
            self._flags[seq] = portal
        return True

    def _on_function_call(self, data: bytes, start: int, end: int) -> bool:
        oid, values = p.parse_function_call(data[start:end])
        info = self.worker.function_call_statement(oid)
        self._start(info, parameters_fragment(values, self._param_mode), '"kind":"function_call"')
        self._pending.append(SYNC)
        return True

    def _audit_failure(self) -> None:
        log.error("gateway %s: audit spool unwritable; ending session %s", self.config.target,
                  self.connection_id)
        self.end("audit spool unwritable", IO_ERROR,
                 "the gateway cannot record statements (audit spool unwritable); "
                 "the statement was not run", forward_pending=False)

    # ------------------------------------------------------------ relay: server → client
    def _relay_server(self, data: bytes) -> None:  # noqa: C901 - the hot path, one function on purpose
        self.client.write(data)  # type: ignore[union-attr]
        n = len(data)
        self.bytes_down += n
        skip = self._sskip
        if skip:
            if skip >= n:
                self._sskip = skip - n
                return
            pos = skip
            self._sskip = 0
        else:
            pos = 0
        if self._stail:
            data = self._stail + data[pos:]
            self._stail = b""
            pos = 0
            n = len(data)
        unpack = _unpack_u32
        interesting = _INTERESTING
        pending = self._pending
        while n - pos >= 5:
            t = data[pos]
            end = pos + 1 + unpack(data, pos + 1)[0]
            if t not in interesting:
                if end > n:
                    self._sskip = end - n
                    return
                pos = end
                continue
            if end > n:
                break
            if t == 67:                                     # CommandComplete (inlined _outcome)
                if pending and pending[0] != SYNC:
                    seq = pending.popleft()
                    self._add(f"O\t{self.connection_id}\t{seq}\t{_perf_ns()}\tok\t"
                              f"{data[pos + 5:end - 1].decode('ascii', 'replace')}\t\t{{}}\n")
                    if self._flags:
                        self._flags.pop(seq, None)
                    if self.worker.flush_handle is None:
                        self.worker.schedule_flush()
            elif t == 90:                                   # ReadyForQuery
                self._txn = data[pos + 5:pos + 6]
                if pending and pending[0] == SYNC and not self._draining:
                    pending.popleft()
                else:
                    self._ready()
            elif t == 69:                                   # ErrorResponse
                self._error(data[pos + 5:end])
            elif t == 73:                                   # EmptyQueryResponse
                self._outcome("empty", "", "")
            elif t == 115:                                  # PortalSuspended
                self._suspended()
            elif t == 86:                                   # FunctionCallResponse
                self._outcome("ok", "FUNCTION CALL", "")
            elif t == 83:                                   # ParameterStatus
                name, value = p.parse_parameter_status(data[pos + 5:end])
                if name == "client_encoding":
                    self._codec = _PG_CODECS.get(value.upper(), "latin-1")
            pos = end
        if pos < n:
            self._stail = data[pos:]

    def _head_seq(self) -> int:
        pending = self._pending
        if pending and pending[0] != SYNC:
            return pending.popleft()
        return 0

    def _outcome(self, outcome: str, tag: str, sqlstate: str, extra: str = "") -> Any:
        seq = self._head_seq()
        if not seq:
            return None
        self._add(f"O\t{self.connection_id}\t{seq}\t{_perf_ns()}\t{outcome}\t{tag}\t"
                        f"{sqlstate}\t{{{extra}}}\n")
        if self.worker.flush_handle is None:
            self.worker.schedule_flush()
        return self._flags.pop(seq, None) if self._flags else None

    def _suspended(self) -> None:
        pending = self._pending
        seq = pending[0] if pending and pending[0] != SYNC else 0
        portal = self._outcome("suspended", "", "")
        if seq and isinstance(portal, _Portal):
            portal.suspended_seq = seq

    def _error(self, body: bytes) -> None:
        """The server's error message is kept only when it cannot echo a secret: not for a
        statement that had one redacted, and not for one with bound parameters unless parameters
        are recorded in full (``invalid input syntax for type integer: "<value>"``)."""
        fields = p.parse_error_fields(body)
        pending = self._pending
        seq = pending[0] if pending and pending[0] != SYNC else 0
        flag = self._flags.get(seq) if seq else None
        extra = f'"severity":"{fields.get("V", "ERROR")}"'
        if flag != _REDACTED and (flag != _PARAMS or self._param_mode == "full"):
            extra += f',"error":{encode_json_string(fields.get("M", "")[:1024])}'
        self._outcome("error", "", fields.get("C", "XX000"), extra)
        if fields.get("V") == "FATAL":
            self._end_reason = f"database ended the session ({fields.get('C', '')})"

    def _ready(self) -> None:
        pending = self._pending
        while pending:
            seq = pending.popleft()
            if seq == SYNC:
                break
            self._spool.add(f"O\t{self.connection_id}\t{seq}\t{_perf_ns()}\tskipped\t\t\t{{}}\n")
            self._flags.pop(seq, None)
            self.worker.schedule_flush()
        if self._draining and not pending:
            self.end("gateway shutting down", ADMIN_SHUTDOWN,
                     "the gateway is shutting down; reconnect")

    # ------------------------------------------------------------ ending
    @property
    def idle(self) -> bool:
        return not self._pending

    def drain(self) -> None:
        """Graceful shutdown: end the session as soon as no statement is running."""
        self._draining = True
        if not self.relaying:
            self.end("gateway shutting down", ADMIN_SHUTDOWN, "the gateway is shutting down")
        elif not self._pending:
            self.end("gateway shutting down", ADMIN_SHUTDOWN, "the gateway is shutting down; reconnect")

    def end(self, reason: str, sqlstate: str = ADMIN_SHUTDOWN, message: str | None = None, *,
            forward_pending: bool = True) -> None:
        """Close the session with a FATAL ErrorResponse to the client and record why."""
        if self.closed:
            return
        self._end_reason = reason
        if self.client is not None and not self.client.is_closing():
            self.client.write(p.error_response(sqlstate, message or reason, severity="FATAL"))
            self._close_client()
        if self.server is not None and not self.server.is_closing():
            if forward_pending:
                self.server.write(p.terminate())
            self.server.close()
        self._finish(reason)

    def _finish(self, reason: str, *, record: bool = True, logged_in: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
        for transport in (self.client, self.server):
            if transport is not None and not transport.is_closing():
                if transport is self.client and self._lingering:
                    continue               # closes itself when the client hangs up or the linger ends
                transport.close()
        self.worker.unregister(self)
        if self.relaying and record:
            reason = self._end_reason or reason
            for seq in self._pending:
                if seq != SYNC:
                    self._spool.add(f"O\t{self.connection_id}\t{seq}\t{_perf_ns()}\tunknown\t\t\t{{}}\n")
            self._pending.clear()
            self._spool.add(f"D\t{self.connection_id}\t" + _json({
                "reason": reason, "statements": self._seq, "bytes_from_client": self.bytes_up,
                "bytes_to_client": self.bytes_down,
                "duration_ms": round((time.time() - self.started) * 1000, 1),
                "ts": time.time(), "records_dropped": self.worker.dropped}) + "\n")
            self.worker.schedule_flush()


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, separators=(",", ":"), default=str)


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
