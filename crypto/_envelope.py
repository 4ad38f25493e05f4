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
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import cbor2

from crypto import _cbor
from crypto._errors import Malformed, WrongPurpose
from crypto._identity import Identity, NodeId

__all__ = ["Opened", "Purpose", "open", "seal"]

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
    protected = _cbor.encode(
        {_ALG: _EDDSA, _CONTENT_TYPE: str(purpose), _KID: identity.node_id.raw}
    )
    payload_bytes = _cbor.encode(payload)
    _cbor.decode(payload_bytes, what="envelope payload")  # as open() will read it
    signature = identity.sign(_sig_structure(protected, payload_bytes))
    return _cbor.encode(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, payload_bytes, signature]))


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
    signer, found_purpose = _read_protected(protected)
    if found_purpose != str(purpose):
        raise WrongPurpose(f"envelope is for {found_purpose!r}, expected {str(purpose)!r}")
    signer.verify(_sig_structure(protected, payload_bytes), signature)
    payload = _cbor.decode(payload_bytes, what="envelope payload")
    if not isinstance(payload, dict):
        raise Malformed(f"envelope payload is a {type(payload).__name__}, expected a map")
    _cbor.require_deterministic(payload, payload_bytes, "envelope payload")
    return Opened(signer, payload)


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
    # RFC 9052 §4.4: Sig_structure for COSE_Sign1, with empty external_aad.
    return _cbor.encode(["Signature1", protected, b"", payload])
