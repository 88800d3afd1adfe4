"""Signed audit checkpoints: the head of an organization's audit chain in a signed note.

The format is the "signed note" of C2SP (c2sp.org/signed-note, the notes of Go's
checksum database, golang.org/x/mod/sumdb/note) carrying a body shaped like a
transparency-log checkpoint (c2sp.org/tlog-checkpoint)::

    meshgate/audit/org_2Xc9...          origin: meshgate and the organization_id
    1234                                 tree size: the chain's sequence
    q1x0w7Yc9...=                        root: base64 of the chain head's SHA-256 hash

    — audit.example.com bVc2...=         one line per signature

A signature line is an em dash, the key's name and base64 of its 4-byte key id
followed by the Ed25519 signature of the text above the blank line. The key id is
the first four bytes of SHA-256(name, "\\n", 0x01, public key), and keys are written
as Go's note package writes them (`PRIVATE+KEY+<name>+<id>+<base64(0x01, seed)>` to
sign, `<name>+<id>+<base64(0x01, public key)>` to verify), so a checkpoint can be
checked with any implementation of the note format. The root is the hash chain's
head, not a Merkle tree's: a checkpoint proves what the chain held at one sequence
(storage/audit/chain.py), not consistency proofs between checkpoints.

A checkpoint names the organization by its public organization_id only. This module
does no I/O: keys come in as text, notes go out as text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = [
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "Checkpoint",
    "CheckpointError",
    "CheckpointKeys",
    "NoteSigner",
    "NoteVerifier",
    "generate_key",
    "origin_of",
]

ORIGIN_PREFIX = "meshgate/audit/"
# a kept checkpoint the server reads: one signature line is about 100 bytes
MAX_NOTE_BYTES = 16 * 1024
# c2sp.org/signed-note: verifiers must accept at least 16 signatures
MAX_SIGNATURES = 32
_ED25519 = b"\x01"
_DASH = "\u2014 "
_NAME = re.compile(r"^[\x21-\x2a\x2c-\x7e]{1,128}$")  # visible ASCII without "+"
_ORIGIN = re.compile(r"^meshgate/audit/(org_[0-9A-Za-z]{1,64})$")
_SIZE = re.compile(r"^(0|[1-9][0-9]{0,17})$")


class CheckpointError(ValueError):
    """A key, a note or a checkpoint that is malformed, or whose signature does not verify;
    the message says which, never a key's private part."""


def _key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ED25519 + public).digest()[:4]


def _public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError(f"{what} is not base64") from None


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    name: str
    key_id: bytes
    public: Ed25519PublicKey

    @classmethod
    def parse(cls, text: str) -> NoteVerifier:
        """`<name>+<key id, 8 hex>+<base64(0x01 || 32-byte public key)>`."""
        name, key_hex, encoded = _fields(text.strip(), 3, "a verifier key")
        raw = _unb64(encoded, "a verifier key")
        if len(raw) != 33 or raw[:1] != _ED25519:
            raise CheckpointError("a verifier key must hold an Ed25519 public key")
        try:
            public = Ed25519PublicKey.from_public_bytes(raw[1:])
        except ValueError:
            raise CheckpointError("a verifier key must hold an Ed25519 public key") from None
        return cls(name, _checked_id(name, key_hex, raw[1:]), public)

    def encoded(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{_b64(_ED25519 + _public_bytes(self.public))}"

    def verifies(self, text: bytes, signature: bytes) -> bool:
        try:
            self.public.verify(signature, text)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, slots=True)
class NoteSigner:
    name: str
    key_id: bytes
    private: Ed25519PrivateKey

    def __repr__(self) -> str:  # never the private key
        return f"NoteSigner({self.name}+{self.key_id.hex()})"

    @classmethod
    def parse(cls, text: str) -> NoteSigner:
        """`PRIVATE+KEY+<name>+<key id, 8 hex>+<base64(0x01 || 32-byte seed)>`."""
        stripped = text.strip()
        if not stripped.startswith("PRIVATE+KEY+"):
            raise CheckpointError("a signing key starts with PRIVATE+KEY+")
        name, key_hex, encoded = _fields(stripped.removeprefix("PRIVATE+KEY+"), 3, "a signing key")
        raw = _unb64(encoded, "a signing key")
        if len(raw) != 33 or raw[:1] != _ED25519:
            raise CheckpointError("a signing key must hold an Ed25519 seed")
        private = Ed25519PrivateKey.from_private_bytes(raw[1:])
        return cls(name, _checked_id(name, key_hex, _public_bytes(private.public_key())), private)

    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, self.key_id, self.private.public_key())

    def encoded(self) -> str:
        seed = self.private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return f"PRIVATE+KEY+{self.name}+{self.key_id.hex()}+{_b64(_ED25519 + seed)}"

    def sign(self, text: str) -> str:
        """The signed note of `text` (which ends in a newline)."""
        body = text.encode()
        signature = self.private.sign(body)
        return f"{text}\n{_DASH}{self.name} {_b64(self.key_id + signature)}\n"


def _fields(text: str, count: int, what: str) -> list[str]:
    # base64 may hold "+": only the first separators split
    parts = text.split("+", count - 1)
    if len(parts) != count:
        raise CheckpointError(f"{what} has the form name+id+base64")
    name, key_hex = parts[0], parts[1]
    if not _NAME.match(name):
        raise CheckpointError(f"{what}'s name must be 1-128 visible ASCII characters, no +")
    if not re.fullmatch(r"[0-9a-f]{8}", key_hex):
        raise CheckpointError(f"{what}'s id must be 8 lower-case hex digits")
    return parts


def _checked_id(name: str, key_hex: str, public: bytes) -> bytes:
    key_id = _key_id(name, public)
    if key_id.hex() != key_hex:
        raise CheckpointError(f"the key {name}'s id does not match its key")
    return key_id


def generate_key(name: str) -> NoteSigner:
    """A new signing key named `name` (a schema-less URL is the convention)."""
    if not _NAME.match(name):
        raise CheckpointError("a key's name must be 1-128 visible ASCII characters, no +")
    private = Ed25519PrivateKey.generate()
    return NoteSigner(name, _key_id(name, _public_bytes(private.public_key())), private)


@dataclass(frozen=True, slots=True)
class CheckpointKeys:
    """The server's keys: the first signs, every one verifies (a rotation keeps the old
    ones here as verifiers)."""

    signer: NoteSigner
    verifiers: tuple[NoteVerifier, ...]

    @classmethod
    def parse(cls, text: str) -> CheckpointKeys:
        """Keys separated by newlines or commas, the signing key (PRIVATE+KEY+...) first,
        then signing or verifier keys that only verify; (name, id) pairs distinct."""
        entries = [e.strip() for e in re.split(r"[,\n]", text) if e.strip()]
        if not entries:
            raise CheckpointError("no key given")
        signer = NoteSigner.parse(entries[0])
        verifiers = [signer.verifier()]
        for entry in entries[1:]:
            if entry.startswith("PRIVATE+KEY+"):
                verifiers.append(NoteSigner.parse(entry).verifier())
            else:
                verifiers.append(NoteVerifier.parse(entry))
        if len({(v.name, v.key_id) for v in verifiers}) != len(verifiers):
            raise CheckpointError("two keys have the same name and id")
        return cls(signer, tuple(verifiers))

    def open(self, note: str) -> str:
        """The text of a note signed by one of these keys; CheckpointError when it is
        malformed, when a signature of a known key fails (the note was altered), or when no
        known key signed it. Signatures of unknown keys are ignored (c2sp.org/signed-note)."""
        if len(note.encode()) > MAX_NOTE_BYTES:
            raise CheckpointError(f"a checkpoint is at most {MAX_NOTE_BYTES} bytes")
        if any(ch < " " and ch != "\n" for ch in note):
            raise CheckpointError("a checkpoint holds no control characters but newlines")
        split = note.rfind("\n\n")
        if split < 0 or not note.endswith("\n"):
            raise CheckpointError("a checkpoint is a text, a blank line and signature lines")
        text, lines = note[: split + 1], note[split + 2 :].splitlines()
        if not lines or len(lines) > MAX_SIGNATURES:
            raise CheckpointError(f"a checkpoint carries 1 to {MAX_SIGNATURES} signatures")
        known = {(v.name, v.key_id): v for v in self.verifiers}
        verified = False
        for line in lines:
            name, _, encoded = line.removeprefix(_DASH).partition(" ")
            if not line.startswith(_DASH) or not name or not encoded:
                raise CheckpointError("a signature line is '\u2014 <key name> <base64>'")
            raw = _unb64(encoded, "a signature")
            if len(raw) < 5:
                raise CheckpointError("a signature is a key id and the signature itself")
            verifier = known.get((name, raw[:4]))
            if verifier is None:
                continue
            if not verifier.verifies(text.encode(), raw[4:]):
                raise CheckpointError(
                    f"the signature of key {name} does not verify: the checkpoint was altered"
                )
            verified = True
        if not verified:
            raise CheckpointError("the checkpoint is signed by no key of this server")
        return text


def origin_of(organization_id: str) -> str:
    return ORIGIN_PREFIX + organization_id


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """An organization's chain at one sequence: its head's hash (hex, as the chain stores it)."""

    organization_id: str
    sequence: int
    hash: str

    def text(self) -> str:
        root = _b64(bytes.fromhex(self.hash))
        return f"{origin_of(self.organization_id)}\n{self.sequence}\n{root}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """The body of an opened note: origin, size, root (no extension lines)."""
        lines = text.split("\n")
        if len(lines) != 4 or lines[3] != "":
            raise CheckpointError("a checkpoint's text is three lines: origin, size and root")
        origin, size, root = lines[:3]
        matched = _ORIGIN.match(origin)
        if matched is None:
            raise CheckpointError("a checkpoint's origin is meshgate/audit/<organization_id>")
        if not _SIZE.match(size):
            raise CheckpointError("a checkpoint's size is a decimal number")
        digest = _unb64(root, "a checkpoint's root")
        if len(digest) != 32:
            raise CheckpointError("a checkpoint's root is a SHA-256 hash")
        return cls(matched.group(1), int(size), digest.hex())
