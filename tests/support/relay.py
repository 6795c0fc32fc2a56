"""A TCP relay in front of a real server, to take it away and bring it back in a test.

``stop()`` is what a server crash looks like to its clients: the listening port closes
(connections are refused) and every open connection is reset. ``start()`` listens on the same
port again. The server behind it (the session's real PostgreSQL cluster) never notices.

``drop_answers=N``: the first N connections carry the client's bytes to the server but none of
the server's back (the client waits until its timeout) — an answer lost after the server acted.
"""
from __future__ import annotations

import contextlib
import socket
import struct
import threading

from tests.support.pg_cluster import free_port


class Relay:
    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1",
                 drop_answers: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.drop_answers = drop_answers
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> Relay:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Refuse new connections and reset the open ones (RST, as a killed server would)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, server))
                drop, self.drop_answers = self.drop_answers > 0, max(0, self.drop_answers - 1)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._discard if drop else self._pump, args=(server, client),
                             daemon=True).start()

    def _discard(self, source: socket.socket, sink: socket.socket) -> None:
        """Read the server's answer and throw it away; the client is left waiting."""
        try:
            while source.recv(65536):
                pass
        except OSError:
            pass

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._sockets.discard(source)
                self._sockets.discard(sink)
