"""C2SP signed notes (c2sp.org/signed-note), checkpoints (c2sp.org/tlog-checkpoint) and
Ed25519 witness cosignatures (c2sp.org/tlog-cosignature, ``cosignature/v1``). Pure code: only
the standard library and ``cryptography``'s Ed25519.

A checkpoint note::

    <origin>
    <tree size, decimal>
    <base64 of the RFC 6962 root hash>

    — <key name> base64(key ID || Ed25519 signature of the three lines above)

* key ID = SHA-256(key name || 0x0A || signature type || public key)[:4], big-endian uint32;
  signature type 0x01 for the log's Ed25519 note signature, 0x04 for a witness's timestamped
  Ed25519 cosignature;
* a cosignature signs ``"cosignature/v1\\ntime <T>\\n" || note text`` and its signature is
  ``u64 big-endian T || 64-byte Ed25519 signature``;
* a verifier key ("vkey") is ``<name>+<hex key ID>+base64(type || 32-byte public key)``.

Verifiers return what they verified or raise :class:`NoteError`; signatures from keys the
caller does not know are ignored, as the specification requires.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ED25519 = 0x01
COSIGNATURE_V1 = 0x04
EM_DASH = "\u2014"
MAX_NOTE_BYTES = 1 << 20
MAX_SIGNATURES = 64


class NoteError(Exception):
    """A note, checkpoint, signature or verifier key that is malformed or does not verify."""


def key_id(name: str, signature_type: int, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || type || public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([signature_type])
                          + public_key).digest()[:4]


def check_key_name(name: str) -> str:
    if not name or any(c.isspace() or c == "+" for c in name) or not name.isprintable():
        raise NoteError("a key name is non-empty, without spaces or '+'")
    return name


def _raw_public(public: ed25519.Ed25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Verifier:
    """One trusted key: its name, type, key ID and Ed25519 public key."""
    name: str
    signature_type: int
    key_id: bytes
    public_key: bytes

    @property
    def vkey(self) -> str:
        return (f"{self.name}+{self.key_id.hex()}+"
                + base64.b64encode(bytes([self.signature_type]) + self.public_key).decode())

    def verify(self, text: bytes, signature: bytes) -> int | None:
        """Check ``signature`` (without the key ID) over the note ``text``: returns the
        cosignature's timestamp (None for a plain note signature); raises NoteError."""
        public = ed25519.Ed25519PublicKey.from_public_bytes(self.public_key)
        try:
            if self.signature_type == ED25519:
                if len(signature) != 64:
                    raise NoteError("an Ed25519 note signature is 64 bytes")
                public.verify(signature, text)
                return None
            if len(signature) != 72:
                raise NoteError("an Ed25519 cosignature is 8 + 64 bytes")
            timestamp: int = struct.unpack(">Q", signature[:8])[0]
            if timestamp >= 1 << 63:
                raise NoteError("cosignature timestamp out of range")
            public.verify(signature[8:], cosigned_message(text, timestamp))
            return timestamp
        except InvalidSignature:
            raise NoteError(f"signature of {self.name} does not verify") from None


def verifier_for(name: str, public: ed25519.Ed25519PublicKey, *,
                 signature_type: int = ED25519) -> Verifier:
    raw = _raw_public(public)
    return Verifier(check_key_name(name), signature_type, key_id(name, signature_type, raw), raw)


def parse_vkey(text: str) -> Verifier:
    """A verifier key ``name+hex(id)+base64(type || key)`` (types 0x01 and 0x04)."""
    name, sep, rest = text.strip().partition("+")
    hex_id, sep2, material = rest.partition("+")
    if not (sep and sep2):
        raise NoteError("a vkey is name+hex(key ID)+base64(type || public key)")
    check_key_name(name)
    try:
        identifier = bytes.fromhex(hex_id)
        blob = base64.b64decode(material, validate=True)
    except (ValueError, binascii.Error):
        raise NoteError("malformed vkey") from None
    if len(identifier) != 4 or len(blob) != 33 or blob[0] not in (ED25519, COSIGNATURE_V1):
        raise NoteError("only Ed25519 (0x01) and cosignature/v1 (0x04) vkeys are supported")
    if key_id(name, blob[0], blob[1:]) != identifier:
        raise NoteError("the vkey's key ID does not match its name and key")
    return Verifier(name, blob[0], identifier, blob[1:])


def cosigned_message(text: bytes, timestamp: int) -> bytes:
    return b"cosignature/v1\ntime " + str(int(timestamp)).encode() + b"\n" + text


# -- notes -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SignatureLine:
    name: str
    key_id: bytes
    signature: bytes          # without the key ID

    def render(self) -> str:
        return f"{EM_DASH} {self.name} " + base64.b64encode(self.key_id + self.signature).decode()


@dataclass(frozen=True)
class Note:
    text: bytes               # ends in a newline
    signatures: tuple[SignatureLine, ...]

    def render(self) -> str:
        return self.text.decode("utf-8") + "\n" + "".join(s.render() + "\n" for s in self.signatures)


def parse_note(data: str | bytes) -> Note:
    """Split a signed note into its text and signature lines (nothing verified)."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_NOTE_BYTES:
        raise NoteError("note too large")
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("a note is UTF-8") from None
    if any(ord(c) < 0x20 and c != "\n" for c in decoded):
        raise NoteError("a note has no control characters but newline")
    split = decoded.rfind("\n\n")
    if split < 0 or not decoded.endswith("\n"):
        raise NoteError("a note is text, a blank line, then signature lines")
    text, block = decoded[:split + 1], decoded[split + 2:]
    lines = block[:-1].split("\n")
    if not lines or len(lines) > MAX_SIGNATURES:
        raise NoteError("a note has 1 to 64 signature lines")
    signatures = []
    for line in lines:
        prefix = EM_DASH + " "
        if not line.startswith(prefix):
            raise NoteError("a signature line starts with an em dash and a space")
        name, sep, encoded = line[len(prefix):].partition(" ")
        if not sep or " " in encoded:
            raise NoteError("a signature line is: em dash, name, signature")
        check_key_name(name)
        try:
            blob = base64.b64decode(encoded, validate=True)
        except (ValueError, binascii.Error):
            raise NoteError("a signature is base64") from None
        if len(blob) < 5:
            raise NoteError("a signature is a key ID and at least one byte")
        signatures.append(SignatureLine(name, blob[:4], blob[4:]))
    return Note(text.encode("utf-8"), tuple(signatures))


def sign_note(text: bytes, name: str, private: ed25519.Ed25519PrivateKey) -> SignatureLine:
    """The log's own Ed25519 (0x01) signature line over ``text``."""
    verifier = verifier_for(name, private.public_key())
    return SignatureLine(name, verifier.key_id, private.sign(text))


def cosign(text: bytes, name: str, private: ed25519.Ed25519PrivateKey, *,
           timestamp: int) -> SignatureLine:
    """A witness's ``cosignature/v1`` line (what a witness returns; used by tests and tools)."""
    verifier = verifier_for(name, private.public_key(), signature_type=COSIGNATURE_V1)
    return SignatureLine(name, verifier.key_id,
                         struct.pack(">Q", timestamp) + private.sign(cosigned_message(text, timestamp)))


def matching(line: SignatureLine, verifiers: list[Verifier]) -> Verifier | None:
    """The trusted key a signature line names (name AND key ID), if any."""
    return next((v for v in verifiers if v.name == line.name and v.key_id == line.key_id), None)


def verify_note(note: Note, verifiers: list[Verifier]) -> list[tuple[Verifier, int | None]]:
    """The known keys whose signatures verify (with a cosignature's timestamp). Unknown keys
    are ignored; a known key's bad signature, or no known signature at all, is NoteError."""
    verified = []
    for line in note.signatures:
        verifier = matching(line, verifiers)
        if verifier is not None:
            verified.append((verifier, verifier.verify(note.text, line.signature)))
    if not verified:
        raise NoteError("no signature from a known key")
    return verified


# -- checkpoints ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckpointText:
    origin: str
    tree_size: int
    root_hash: bytes

    def render(self) -> bytes:
        return (f"{self.origin}\n{self.tree_size}\n"
                + base64.b64encode(self.root_hash).decode() + "\n").encode("utf-8")


def parse_checkpoint_text(text: bytes) -> CheckpointText:
    """The first three lines of a checkpoint note's text (extension lines refused: the broker
    writes none)."""
    lines = text.decode("utf-8").split("\n")
    if len(lines) != 4 or lines[3] != "" or not all(lines[:3]):
        raise NoteError("a checkpoint is three lines: origin, tree size, root hash")
    origin, size, root = lines[:3]
    if not size.isdigit() or (size != "0" and size.startswith("0")) or not size.isascii():
        raise NoteError("tree size is a decimal without leading zeroes")
    try:
        root_hash = base64.b64decode(root, validate=True)
    except (ValueError, binascii.Error):
        raise NoteError("root hash is base64") from None
    if len(root_hash) != 32:
        raise NoteError("root hash is 32 bytes")
    return CheckpointText(origin, int(size), root_hash)


def origin_for(issuer: str) -> str:
    """The log origin (and note key name) of a broker: its issuer URL without the scheme,
    plus ``/ledger`` -- e.g. ``broker.example.com/ledger``."""
    bare = issuer.rstrip("/").split("://", 1)[-1]
    return check_key_name(f"{bare}/ledger")
