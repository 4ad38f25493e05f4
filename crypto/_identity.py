"""Node identities: an Ed25519 key pair per node; the node id is the public key.

The text form of a node id is the 32 key bytes in lowercase, unpadded base32 (RFC 4648
§6): 52 characters of ``a-z2-7``, a valid DNS label and URL path segment. 52 characters
carry 260 bits, so the last character has 4 unused bits; they must be zero, or two
texts would name the same node.

The private key (the 32-byte Ed25519 seed) lives in a key file created with mode 0600;
a key file that group or others can read is refused.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import functools
import hashlib
import hmac
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import nacl.bindings
import nacl.exceptions
import nacl.signing

from crypto._errors import BadSignature, KeyFileError, Malformed

__all__ = [
    "NODE_ID_TEXT_LENGTH",
    "Identity",
    "NodeId",
    "stand_in_signature",
    "stand_in_verdict",
    "standing_in",
    "verifying_once",
]

NODE_ID_SIZE: Final = 32
NODE_ID_TEXT_LENGTH: Final = 52
_SHORT_LENGTH: Final = 10
_SIGNATURE_SIZE: Final = 64
_BASE32_ALPHABET: Final = frozenset("abcdefghijklmnopqrstuvwxyz234567")
_KEY_FILE_HEADER: Final = "ptth-ed25519-seed-v1"


@functools.total_ordering
class NodeId:
    """A node's id: its 32-byte Ed25519 public key. Immutable, hashable, ordered."""

    __slots__ = ("_bytes", "_text")
    _bytes: bytes
    _text: str

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != NODE_ID_SIZE:
            size = len(raw) if isinstance(raw, bytes) else type(raw).__name__
            raise Malformed(f"a node id is {NODE_ID_SIZE} bytes, got {size}")
        object.__setattr__(self, "_bytes", raw)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("NodeId is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("NodeId is immutable")

    def __reduce__(self) -> tuple[type[NodeId], tuple[bytes]]:
        # copy, deepcopy and pickle would otherwise restore the slot with __setattr__.
        return (NodeId, (self._bytes,))

    @classmethod
    def parse(cls, text: str) -> NodeId:
        """Parse the 52-character text form. Raises :class:`Malformed` saying what is wrong.

        Every signed request names its signer this way, so parses are cached (node ids
        are immutable; a failed parse is not cached).
        """
        node_id = _parse(text)
        if type(node_id) is not cls:  # a subclass asked: build its own
            return cls(node_id.raw)
        return node_id

    @classmethod
    def _parse_uncached(cls, text: str) -> NodeId:
        if len(text) != NODE_ID_TEXT_LENGTH:
            raise Malformed(
                f"a node id is {NODE_ID_TEXT_LENGTH} characters of base32, got {len(text)}"
            )
        bad = sorted(set(text) - _BASE32_ALPHABET)
        if bad:
            shown = "".join(bad)
            raise Malformed(f"a node id uses only a-z and 2-7 (lowercase base32); found {shown!r}")
        raw = base64.b32decode(text.upper() + "====")
        node_id = cls(raw)
        if node_id.text != text:
            raise Malformed("a node id's last character must leave its 4 spare bits zero")
        return node_id  # its text is cached: node_id.text was just made

    @property
    def raw(self) -> bytes:
        """The 32 raw bytes."""
        return self._bytes

    @property
    def text(self) -> str:
        """The 52-character lowercase base32 form (made once, when first asked for)."""
        try:
            return self._text
        except AttributeError:
            text = base64.b32encode(self._bytes).decode("ascii")[:NODE_ID_TEXT_LENGTH].lower()
            object.__setattr__(self, "_text", text)
            return text

    @property
    def short(self) -> str:
        """The first 10 characters, for display."""
        return self.text[:_SHORT_LENGTH]

    def verify(self, message: bytes, signature: bytes) -> None:
        """Check an Ed25519 ``signature`` of ``message`` by this node.

        Raises :class:`BadSignature` when it does not verify (the signer's fault).
        """
        remembered = _REMEMBERED.get()
        if remembered is not None and remembered.has(self._bytes, message, signature):
            return
        if not isinstance(signature, bytes) or len(signature) != _SIGNATURE_SIZE:
            size = f"{len(signature)} bytes" if isinstance(signature, bytes) else "not bytes"
            raise BadSignature(
                f"signature does not verify for node {self.short}: it is {size},"
                f" expected {_SIGNATURE_SIZE} bytes"
            )
        verdict = stand_in_verdict(self._bytes, message, signature)  # simulations only
        if verdict is False:
            raise BadSignature(f"signature does not verify for node {self.short}")
        if verdict is None:
            try:
                # What VerifyKey(key).verify() does, without making a VerifyKey each time.
                nacl.bindings.crypto_sign_open(signature + message, self._bytes)
            except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError) as exc:
                raise BadSignature(f"signature does not verify for node {self.short}") from exc
            except (ValueError, TypeError) as exc:
                raise BadSignature(
                    f"signature cannot be checked for node {self.short}: {exc}"
                ) from exc
        if remembered is not None:
            remembered.add(self._bytes, message, signature)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, NodeId):
            return self._bytes == other._bytes
        return NotImplemented

    def __lt__(self, other: object) -> bool:
        if isinstance(other, NodeId):
            return self._bytes < other._bytes
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __repr__(self) -> str:
        return f"NodeId({self.text!r})"

    def __str__(self) -> str:
        return self.text


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> NodeId:
    return NodeId._parse_uncached(text)


class _Remembered:
    """Signatures that verified, by (key, message, signature); forgotten all at once
    past ``limit`` (the working set of a simulation is what it verifies lately)."""

    __slots__ = ("_seen", "limit")

    def __init__(self, limit: int) -> None:
        self._seen: set[tuple[bytes, bytes, bytes]] = set()
        self.limit = limit

    def has(self, key: bytes, message: bytes, signature: bytes) -> bool:
        return (key, message, signature) in self._seen

    def add(self, key: bytes, message: bytes, signature: bytes) -> None:
        if len(self._seen) >= self.limit:
            self._seen.clear()
        self._seen.add((key, message, signature))


#: Set by :func:`verifying_once` for the tasks and threads started within it (a context
#: variable: no state shared beyond them).
_REMEMBERED: Final = contextvars.ContextVar[_Remembered | None]("ptth_verified", default=None)


#: Set by :func:`standing_in` for the tasks and threads started within it.
_STAND_IN: Final = contextvars.ContextVar[bool]("ptth_stand_in", default=False)


def _stand_in(public_key: bytes, message: bytes) -> bytes:
    """The stand-in signature of ``message`` by ``public_key``'s node (see
    :func:`standing_in`): as long as an Ed25519 signature, made by anyone."""
    return hashlib.blake2b(message, key=public_key, digest_size=_SIGNATURE_SIZE).digest()


def stand_in_signature(public_key: bytes, message: bytes) -> bytes | None:
    """Within :func:`standing_in`: the stand-in signature of ``message`` by
    ``public_key``'s node. Elsewhere None: sign with Ed25519."""
    return _stand_in(public_key, message) if _STAND_IN.get() else None


def stand_in_verdict(public_key: bytes, message: bytes, signature: bytes) -> bool | None:
    """Within :func:`standing_in`: whether ``signature`` is ``public_key``'s stand-in
    signature of ``message``. Elsewhere None: check Ed25519."""
    if not _STAND_IN.get():
        return None
    return hmac.compare_digest(signature, _stand_in(public_key, message))


@contextlib.contextmanager
def standing_in() -> Iterator[None]:
    """Within this block, and in the trio tasks and threads started in it, Ed25519 is
    replaced by a cheap stand-in: a node's signature of a message is its BLAKE2b keyed
    with the node's public key (64 bytes, as Ed25519's), made by :meth:`Identity.sign`
    and checked by :meth:`NodeId.verify` and RFC 9421's :func:`verify_message`.

    For simulations only, where signing and verifying are a large share of a run and
    every node is honest code of ours: a signature still names its signer and covers
    its bytes, so a frame signed by another node, or altered, is refused as before, and
    a run's report is the same. But anyone who knows a node's id can make its stand-in
    signatures: nothing within this block authenticates anything. A node serving real
    peers never enters it.
    """
    token = _STAND_IN.set(True)
    try:
        yield
    finally:
        _STAND_IN.reset(token)


@contextlib.contextmanager
def verifying_once(limit: int = 100_000) -> Iterator[None]:
    """Within this block, and in the trio tasks and threads started in it, a signature
    that verified is not verified again: :meth:`NodeId.verify` remembers the last
    ``limit`` (key, message, signature) it accepted and accepts them again at once.

    For simulations, where every node of the mesh runs in one process and checks the
    same envelopes (an announce flooded to every node, a publication at every hop): the
    outcome of each check is the same as verifying it again, since the same bytes
    verify the same way, and a simulation spends much of its time on these checks. A
    node serving real peers has no use for it: each of its peers' envelopes reaches it
    once.
    """
    token = _REMEMBERED.set(_Remembered(limit))
    try:
        yield
    finally:
        _REMEMBERED.reset(token)


class Identity:
    """A node's Ed25519 key pair. The private half never leaves this object but to a file."""

    __slots__ = ("_key", "node_id")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != NODE_ID_SIZE:
            raise Malformed(f"an Ed25519 seed is {NODE_ID_SIZE} bytes, got {len(seed)}")
        self._key = nacl.signing.SigningKey(seed)
        self.node_id = NodeId(bytes(self._key.verify_key))

    @classmethod
    def generate(cls) -> Identity:
        """A new random identity (from the OS's CSPRNG, via libsodium)."""
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def seed(self) -> bytes:
        """The 32-byte private seed. Handle with care."""
        return bytes(self._key)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message`` (within :func:`standing_in`,
        its stand-in)."""
        stand_in = stand_in_signature(self.node_id.raw, message)  # simulations only
        return self._key.sign(message).signature if stand_in is None else stand_in

    def save(self, path: Path) -> None:
        """Write the key file, created with mode 0600; never overwrite an existing file.

        Raises :class:`KeyFileError` if the file exists or cannot be written.
        """
        text = f"{_KEY_FILE_HEADER}\n{base64.urlsafe_b64encode(self.seed).decode('ascii')}\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise KeyFileError(f"key file {path} already exists; not overwriting it") from exc
        except OSError as exc:
            raise KeyFileError(f"cannot create key file {path}: {exc.strerror}") from exc
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            os.unlink(path)  # ours (O_EXCL); a partial key file would block every retry
            raise KeyFileError(f"cannot write key file {path}: {exc.strerror}") from exc

    @classmethod
    def load(cls, path: Path) -> Identity:
        """Read a key file written by :meth:`save`.

        Raises :class:`KeyFileError` if it is missing, unreadable, malformed, or readable
        by group or others (its mode must be 0600 or stricter).
        """
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise KeyFileError(f"no key file at {path}") from exc
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
        try:
            st_mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(st_mode):
                raise KeyFileError(f"key file {path} is not a regular file")
            mode = stat.S_IMODE(st_mode)
            if mode & 0o077:
                raise KeyFileError(
                    f"key file {path} has mode {mode:04o}: readable by others; "
                    f"run 'chmod 600 {path}'"
                )
            text = os.read(fd, 1024).decode("ascii", errors="replace")
        finally:
            os.close(fd)
        lines = text.split()
        if len(lines) != 2 or lines[0] != _KEY_FILE_HEADER:
            raise KeyFileError(f"key file {path} is not a ptth key file ({_KEY_FILE_HEADER})")
        try:
            seed = base64.urlsafe_b64decode(lines[1])
        except (binascii.Error, ValueError) as exc:
            raise KeyFileError(f"key file {path} holds a damaged key") from exc
        if len(seed) != NODE_ID_SIZE:
            raise KeyFileError(
                f"key file {path} holds a {len(seed)}-byte key, expected {NODE_ID_SIZE}"
            )
        return cls(seed)

    def __repr__(self) -> str:
        return f"Identity({self.node_id.text!r})"
