"""The exceptions of the crypto layer.

Everything that goes wrong while reading or verifying bytes raises a subclass of
:class:`CryptoError`; foreign errors (cbor2, PyNaCl, binascii) are translated at the
boundary with ``raise ... from exc``. The tree::

    CryptoError
    ├── Malformed          the bytes are not what they claim to be (bad CBOR, wrong shape)
    │   └── TooLarge       over a size limit, refused before decoding
    ├── BadSignature       well-formed, but the signature does not verify
    ├── WrongPurpose       a valid envelope made for another purpose
    ├── Expired            a valid record or frame past its expiry (or created too long ago)
    ├── Stale              a valid record that does not replace the one we hold (seq)
    └── KeyFileError       a key file that is missing, unreadable or insecure (our side)

Each error carries ``status_hint``: the HTTP status a server answers with when the
error came from a peer's input (as h11's ``RemoteProtocolError.error_status_hint``).
"""

from __future__ import annotations

__all__ = [
    "BadSignature",
    "CryptoError",
    "Expired",
    "KeyFileError",
    "Malformed",
    "Stale",
    "TooLarge",
    "WrongPurpose",
]


class CryptoError(Exception):
    """Base of every error raised by :mod:`crypto`."""

    status_hint: int = 400


class Malformed(CryptoError):
    """The input is not well-formed: bad CBOR, wrong types, missing or unknown keys.

    The peer that sent it is at fault.
    """


class TooLarge(Malformed):
    """The input is over a size limit; refused before it was decoded."""

    status_hint = 413


class BadSignature(CryptoError):
    """The input is well-formed but its signature does not verify. The sender is at fault."""

    status_hint = 401


class WrongPurpose(CryptoError):
    """A valid envelope, signed for another purpose than the one asked for."""


class Expired(CryptoError):
    """A valid record or frame whose expiry has passed, or a signature that is too old."""


class Stale(CryptoError):
    """A valid address record that does not replace the one held (its seq is not higher)."""

    status_hint = 409


class KeyFileError(CryptoError):
    """A key file that cannot be used: missing, unreadable, malformed or readable by others.

    This is a local configuration problem, not a peer's fault.
    """

    status_hint = 500
