"""Signed envelopes: COSE_Sign1 (RFC 9052 §4.2, CBOR tag 18) with Ed25519.

An envelope is ``18([protected, unprotected, payload, signature])`` where

* ``protected`` is a byte string holding the deterministic CBOR map
  ``{1: -8, 3: purpose, 4: kid}``: alg EdDSA (RFC 9053 §2.2), content type (RFC 9052
  §3.1, label 3) naming the purpose, and ``kid`` (label 4) = the signer's node id. All
  three are integrity-protected, so a signature made for one purpose never verifies as
  another, and the key is bound to the signature;
* ``unprotected`` is a map we leave empty and ignore on reading;
* ``payload`` is a byte string holding a deterministic CBOR map;
* ``signature`` is the 64-byte Ed25519 signature of the ``Sig_structure``
  ``["Signature1", protected, h'', payload]`` (RFC 9052 §4.4).

Reading is strict: the size is checked first, decoding is bounded (see
:mod:`crypto._cbor`), every field is type-checked, and the ``crit`` header is refused
(we understand no extension).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from crypto import _cbor
from crypto._errors import Malformed, TooLarge, WrongPurpose
from crypto._identity import Identity, NodeId

__all__ = ["Opened", "Purpose", "open", "open_encoded", "read_payload", "seal", "seal_encoded"]

COSE_SIGN1_TAG: Final = 18
_ALG: Final = 1
_CRIT: Final = 2
_CONTENT_TYPE: Final = 3
_KID: Final = 4
_EDDSA: Final = -8
_SIGNATURE_SIZE: Final = 64
_MAX_PROTECTED_SIZE: Final = 256  # alg + a purpose name + a 32-byte kid fit in ~70 bytes
#: Most items in any container of the envelope's frame (its array, the header maps).
#: COSE headers have integer labels, so these maps are bounded before they are built.
_MAX_HEADER_ITEMS: Final = 32


class Purpose(enum.StrEnum):
    """What an envelope is for; carried as the protected COSE content type."""

    FRAME = "ptth/frame"
    ADDRESS = "ptth/addr"
    CAPABILITY = "ptth/cap"
    REVOCATION = "ptth/revoke"
    COORD = "ptth/coord"


class Opened(NamedTuple):
    """A verified envelope: who signed it and the decoded payload map."""

    signer: NodeId
    payload: dict[Any, Any]


def seal(identity: Identity, purpose: Purpose | str, payload: dict[Any, Any]) -> bytes:
    """Sign ``payload`` (a map) for ``purpose`` as a COSE_Sign1 envelope; return its bytes.

    Raises :class:`Malformed` (our bug, not a peer's) if ``payload`` is not a map that
    :func:`open` would accept back: keys that are not text or bytes, values that CBOR
    carries only as tags (big integers, dates, sets, ...), nesting over the limit.
    """
    if not isinstance(payload, dict):
        raise Malformed(f"envelope payload must be a map, got {type(payload).__name__}")
    payload_bytes = _cbor.encode(payload)
    _cbor.decode(payload_bytes, what="envelope payload")  # as open() will read it
    return seal_encoded(identity, purpose, payload_bytes)


def seal_encoded(identity: Identity, purpose: Purpose | str, payload_bytes: bytes) -> bytes:
    """:func:`seal` for a payload already encoded by a caller that vouches for it: the
    deterministic encoding of a map :func:`open` accepts (a :class:`crypto.Frame`'s,
    whose fields are validated when it is made). Nothing is checked here.

    The envelope is written by hand (its shape is fixed, see the module docstring), the
    same bytes :func:`crypto._cbor.encode` would give; ``tests/test_envelope.py``
    compares the two.
    """
    protected = _protected(identity.node_id.raw, str(purpose))
    protected_part = _bstr_head(len(protected)) + protected
    payload_head = _bstr_head(len(payload_bytes))
    signature = identity.sign(
        b"".join((_SIG_STRUCTURE_HEAD, protected_part, b"\x40", payload_head, payload_bytes))
    )
    return b"".join(
        (_COSE_SIGN1_HEAD, protected_part, _EMPTY_MAP, payload_head, payload_bytes,
         _SIGNATURE_HEAD, signature)
    )  # fmt: skip


def open(  # the crypto layer's verb, used as crypto.open(...) like gzip.open
    data: bytes, purpose: Purpose | str, *, max_size: int = _cbor.MAX_ENVELOPE_SIZE
) -> Opened:
    """Verify a COSE_Sign1 envelope made for ``purpose``; return its signer and payload.

    Raises, all the sender's fault:

    * :class:`TooLarge` if ``data`` is over ``max_size`` (checked before decoding);
    * :class:`Malformed` if it is not a well-formed COSE_Sign1 of ours;
    * :class:`WrongPurpose` if it was signed for another purpose;
    * :class:`BadSignature` if the signature does not verify.
    """
    signer, payload_bytes = open_encoded(data, purpose, max_size=max_size)
    return Opened(signer, read_payload(payload_bytes))


def open_encoded(
    data: bytes, purpose: Purpose | str, *, max_size: int = _cbor.MAX_ENVELOPE_SIZE
) -> tuple[NodeId, bytes]:
    """:func:`open` up to the signature: the signer and the payload's bytes, verified but
    not yet decoded, for a caller that reads them itself, or with :func:`read_payload`.

    Raises what :func:`open` raises but for the payload's own faults.
    """
    signer, payload_bytes, signed, signature = _read(data, purpose, max_size)
    signer.verify(signed, signature)
    return signer, payload_bytes


def read_unverified(
    data: bytes, purpose: Purpose | str, *, max_size: int = _cbor.MAX_ENVELOPE_SIZE
) -> tuple[NodeId, bytes]:
    """:func:`open_encoded` without checking the signature: the signer the envelope
    *names* and the payload's bytes, read as strictly, for a node that passes on for a
    trusted neighbour what it does not act on itself (mesh/_admission.py). Nothing it
    returns is authenticated. Raises what :func:`open_encoded` raises, but
    :class:`BadSignature`."""
    signer, payload_bytes, _signed, _signature = _read(data, purpose, max_size)
    return signer, payload_bytes


def _read(data: bytes, purpose: Purpose | str, max_size: int) -> tuple[NodeId, bytes, bytes, bytes]:
    """The signer named, the payload's bytes, the Sig_structure and the signature."""
    if len(data) > max_size:
        raise TooLarge(f"envelope is {len(data)} bytes, limit {max_size}")
    fields = _split(data)
    if fields is None:  # not in the shape seal() writes: read it the general way
        protected, payload_bytes, signature = _split_general(data, max_size)
        signed = _sig_structure(protected, payload_bytes)
    else:
        protected, payload_bytes, signature, signed = fields
    signer, found_purpose = _read_protected(protected)
    if found_purpose != str(purpose):
        raise WrongPurpose(f"envelope is for {found_purpose!r}, expected {str(purpose)!r}")
    return signer, payload_bytes, signed, signature


def read_payload(payload_bytes: bytes) -> dict[Any, Any]:
    """Decode the payload of an envelope that :func:`open_encoded` verified: a map, in
    deterministic CBOR. Raises :class:`Malformed` (or :class:`TooLarge`) if it is not."""
    payload = _cbor.decode(payload_bytes, what="envelope payload")
    if not isinstance(payload, dict):
        raise Malformed(f"envelope payload is a {type(payload).__name__}, expected a map")
    _cbor.require_deterministic(payload, payload_bytes, "envelope payload")
    return payload


def _split(data: bytes) -> tuple[bytes, bytes, bytes, bytes] | None:
    """The protected header, payload and signature of an envelope in exactly the shape
    :func:`seal` writes (tag 18, an array of 4, an empty unprotected map, a 64-byte
    signature, nothing after), read without decoding, and the Sig_structure they make
    (as :func:`_sig_structure` would: the protected header and payload are taken with
    their heads, which are the shortest, as it writes them); None for anything else."""
    if not data.startswith(_COSE_SIGN1_HEAD):
        return None
    protected_at = _bstr_at(data, 2)
    if protected_at is None:
        return None
    start, end = protected_at
    if end == start or end == len(data) or data[end] != _EMPTY_MAP[0]:
        return None
    payload_at = _bstr_at(data, end + 1)
    if payload_at is None:
        return None
    payload_start, payload_end = payload_at
    if len(data) != payload_end + len(_SIGNATURE_HEAD) + _SIGNATURE_SIZE or not data.startswith(
        _SIGNATURE_HEAD, payload_end
    ):
        return None
    return (
        data[start:end],
        data[payload_start:payload_end],
        data[payload_end + len(_SIGNATURE_HEAD) :],
        b"".join((_SIG_STRUCTURE_HEAD, data[2:end], b"\x40", data[end + 1 : payload_end])),
    )


def _bstr_at(data: bytes, at: int) -> tuple[int, int] | None:
    """Where the bytes of the byte string whose head is at ``at`` start and end; None if
    ``data[at]`` does not start one, its length is not in shortest form (as seal() would
    not write it), or it runs past the end."""
    if at >= len(data):
        return None
    initial = data[at]
    if 0x40 <= initial < 0x58:
        start, length = at + 1, initial - 0x40
    elif (sizes := _LENGTH_SIZES.get(initial - 0x40)) is not None:
        size, least = sizes
        start = at + 1 + size
        length = int.from_bytes(data[at + 1 : start], "big")
        if start > len(data) or length < least:
            return None
    else:
        return None
    end = start + length
    return None if end > len(data) else (start, end)


def _split_general(data: bytes, max_size: int) -> tuple[bytes, bytes, bytes]:
    item = _cbor.decode(
        data,
        what="envelope",
        max_size=max_size,
        allowed_tags=(COSE_SIGN1_TAG,),
        max_items=_MAX_HEADER_ITEMS,
    )
    fields = _untag(item)
    protected, unprotected, payload_bytes, signature = fields
    if not isinstance(protected, bytes) or not protected:
        raise Malformed("envelope's protected header is not a non-empty byte string")
    if not isinstance(unprotected, Mapping):
        raise Malformed("envelope's unprotected header is not a map")
    if not isinstance(payload_bytes, bytes):
        raise Malformed("envelope's payload is not a byte string (detached payloads unsupported)")
    if not isinstance(signature, bytes) or len(signature) != _SIGNATURE_SIZE:
        size = len(signature) if isinstance(signature, bytes) else type(signature).__name__
        raise Malformed(f"envelope's signature is {size}, expected {_SIGNATURE_SIZE} bytes")
    return protected, payload_bytes, signature


def _untag(item: Any) -> tuple[Any, Any, Any, Any]:
    tag = getattr(item, "tag", None)
    if tag != COSE_SIGN1_TAG:
        raise Malformed("envelope is not a COSE_Sign1 (CBOR tag 18)")
    value = item.value
    if not isinstance(value, list | tuple) or len(value) != 4:
        length = len(value) if isinstance(value, list | tuple) else type(value).__name__
        raise Malformed(f"COSE_Sign1 is an array of 4, got {length}")
    return value[0], value[1], value[2], value[3]


def _read_protected(protected: bytes) -> tuple[NodeId, str]:
    # The shape seal() writes, {1: -8, 3: purpose, 4: kid} with a 32-byte kid, is read
    # without decoding; anything else is decoded and checked.
    if protected[:4] == _PROTECTED_HEAD and len(protected) > 40:
        kid_head = protected[-35:-32]
        if kid_head == _KID_HEAD:
            purpose = _text_at(protected, 4, len(protected) - 35)
            if purpose is not None:
                return NodeId(protected[-32:]), purpose
    return _read_protected_general(protected)


def _text_at(data: bytes, start: int, end: int) -> str | None:
    """The text string that fills ``data[start:end]`` exactly (head in shortest form),
    or None."""
    if start >= end:
        return None
    initial = data[start]
    if initial >> 5 != 3 or not (initial & 0x1F) < 24 or start + 1 + (initial & 0x1F) != end:
        return None
    try:
        return data[start + 1 : end].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _read_protected_general(protected: bytes) -> tuple[NodeId, str]:
    headers = _cbor.decode(
        protected, what="protected header", max_size=_MAX_PROTECTED_SIZE, any_keys=True
    )
    if not isinstance(headers, dict):
        raise Malformed("envelope's protected header is not a map")
    if _CRIT in headers:
        raise Malformed("envelope has critical headers (crit), which we do not understand")
    alg = headers.get(_ALG)
    if alg != _EDDSA:
        raise Malformed(f"envelope's alg is {alg!r}, expected EdDSA ({_EDDSA})")
    kid = headers.get(_KID)
    if not isinstance(kid, bytes):
        raise Malformed("envelope's protected header has no kid (the signer's node id)")
    purpose = headers.get(_CONTENT_TYPE)
    if not isinstance(purpose, str):
        raise Malformed("envelope's protected header has no content type (its purpose)")
    return NodeId(kid), purpose


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    # RFC 9052 §4.4: Sig_structure for COSE_Sign1, with empty external_aad:
    # ["Signature1", protected, h'', payload], written by hand as encode() would.
    return b"".join(
        (_SIG_STRUCTURE_HEAD, _bstr_head(len(protected)), protected, b"\x40",
         _bstr_head(len(payload)), payload)
    )  # fmt: skip


def _bstr_head(length: int) -> bytes:
    """The deterministic CBOR head of a byte string of ``length`` bytes."""
    if length < 24:
        return bytes((0x40 | length,))
    if length < 0x100:
        return bytes((0x58, length))
    for info, (size, _) in _LENGTH_SIZES.items():
        if length < 1 << (8 * size):
            return bytes((0x40 | info,)) + length.to_bytes(size, "big")
    raise Malformed(f"a byte string of {length} bytes is too long for CBOR")


@functools.lru_cache(maxsize=256)
def _protected(kid: bytes, purpose: str) -> bytes:
    """The protected header for a signer and purpose (the same for every envelope they
    make, so made once)."""
    return _cbor.encode({_ALG: _EDDSA, _CONTENT_TYPE: purpose, _KID: kid})


#: Heads of the parts of an envelope as seal() writes it.
_COSE_SIGN1_HEAD: Final = b"\xd2\x84"  # tag 18, an array of 4
_EMPTY_MAP: Final = b"\xa0"
_SIGNATURE_HEAD: Final = b"\x58\x40"  # a byte string of 64
_SIG_STRUCTURE_HEAD: Final = b"\x84\x6aSignature1"  # an array of 4, "Signature1"
_PROTECTED_HEAD: Final = b"\xa3\x01\x27\x03"  # a map of 3, 1: -8, 3: (the purpose)
_KID_HEAD: Final = b"\x04\x58\x20"  # 4: a byte string of 32
#: CBOR additional information 24..27: the length follows in 1, 2, 4 or 8 bytes, and is
#: at least 24, 2**8, 2**16 or 2**32 in shortest form (or it would fit in fewer).
_LENGTH_SIZES: Final = {24: (1, 24), 25: (2, 1 << 8), 26: (4, 1 << 16), 27: (8, 1 << 32)}
