"""Client side of the upstream login: SCRAM-SHA-256 (RFC 5802, RFC 7677), MD5 and cleartext.

Pure functions and one small state object; the session feeds it the server's messages.
PostgreSQL takes the user name from the startup packet and ignores the SCRAM ``n=`` attribute,
so the client-first message carries an empty one, as libpq does. Channel binding
(SCRAM-SHA-256-PLUS) is not used: the GS2 header is ``n,,`` ("client does not support it"),
which a server that offers PLUS accepts without suspecting a downgrade.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata

MECHANISM = "SCRAM-SHA-256"


class ScramError(Exception):
    """The server's SCRAM messages are malformed or its signature does not verify."""


def _saslprep(password: str) -> str:
    """A pragmatic SASLprep (RFC 4013): ASCII passes unchanged; otherwise NFKC. PostgreSQL itself
    falls back to the raw bytes when SASLprep fails, so this never refuses a password."""
    if password.isascii():
        return password
    return unicodedata.normalize("NFKC", password)


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _parse_attributes(message: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramError("malformed SCRAM attribute")
        out[part[0]] = part[2:]
    return out


class ScramClient:
    """One SCRAM-SHA-256 exchange: ``first()`` → server-first → ``final(server_first)`` →
    server-final → ``verify(server_final)``."""

    def __init__(self, password: str, *, nonce: str | None = None, username: str = "") -> None:
        self._password = _saslprep(password).encode()
        self._nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode()
        self._client_first_bare = f"n={username},r={self._nonce}"
        self._server_signature: bytes | None = None

    def first(self) -> bytes:
        return ("n,," + self._client_first_bare).encode()

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode("utf-8")
        attrs = _parse_attributes(text)
        nonce, salt_b64, iterations = attrs.get("r", ""), attrs.get("s"), attrs.get("i")
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce):
            raise ScramError("server nonce does not extend the client nonce")
        if salt_b64 is None or iterations is None or not iterations.isdigit():
            raise ScramError("server-first message lacks salt or iteration count")
        salt = base64.b64decode(salt_b64)
        salted = hashlib.pbkdf2_hmac("sha256", self._password, salt, int(iterations))
        client_key = _hmac(salted, b"Client Key")
        stored_key = _h(client_key)
        server_key = _hmac(salted, b"Server Key")
        without_proof = f"c=biws,r={nonce}"      # biws = base64("n,,")
        auth_message = f"{self._client_first_bare},{text},{without_proof}".encode()
        client_signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, client_signature, strict=True))
        self._server_signature = _hmac(server_key, auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        attrs = _parse_attributes(server_final.decode("utf-8"))
        if "e" in attrs:
            raise ScramError("server rejected the SCRAM exchange")
        if self._server_signature is None or "v" not in attrs:
            raise ScramError("server-final message without a signature")
        if not hmac.compare_digest(base64.b64decode(attrs["v"]), self._server_signature):
            raise ScramError("server signature does not verify")


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """The ``AuthenticationMD5Password`` answer: ``md5`` + md5(md5(password + user) + salt)."""
    inner = hashlib.md5((password + user).encode()).hexdigest().encode()
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode()
