"""Bounded, deterministic CBOR (RFC 8949) on top of cbor2.

Encoding is always the deterministic encoding of RFC 8949 §4.2.1 (shortest forms,
definite lengths, map keys sorted bytewise), so the same value always gives the same
bytes and a signature over them is reproducible.

Decoding untrusted input is bounded *before and while* decoding, never after:

* the size is checked before a byte is decoded (:data:`MAX_ENVELOPE_SIZE` or a caller's
  tighter limit);
* nesting depth is bounded by cbor2's ``max_depth`` as it descends;
* map keys are text or byte strings only (``strict_hashable_types``), whose hashes are
  keyed per process, so crafted colliding keys cannot make building a map quadratic;
* where integer keys are needed (COSE headers), the caller passes ``max_items`` and the
  input is first walked without building anything (:func:`check_bounds`, after RFC 8949
  Appendix C): every container's item count, the depth and the tags are checked before
  cbor2 sees a byte. Elsewhere container sizes are bounded by the input size: cbor2
  reads items one at a time and a length that claims more items than there are bytes
  fails at the end of input without allocating for the claim;
* indefinite lengths and duplicate map keys are refused as they are met (neither is
  allowed in deterministic encoding, and duplicate keys would let two readers disagree
  about a signed value);
* tags are refused as they are met: cbor2's built-in tag decoders (dates, bignums,
  regular expressions, ...) are all replaced by a refusal, and unknown tags too, except
  those the caller names (COSE_Sign1 = 18 at the top of an envelope);
* trailing bytes after the item are refused.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Collection, Iterator
from typing import Any, Final

import cbor2

from crypto._errors import Malformed, TooLarge

__all__ = [
    "MAX_DEPTH",
    "MAX_ENVELOPE_SIZE",
    "check_bounds",
    "decode",
    "decode_sequence",
    "encode",
    "require_deterministic",
]

#: Largest envelope (or any CBOR item) we decode: big enough for a frame with a 512 KiB
#: body and its headers, small enough that one bad peer cannot make us buffer much.
MAX_ENVELOPE_SIZE: Final = 1024 * 1024

#: Deepest nesting we decode. Our structures are at most 4 deep (tag, array, map,
#: value); anything much deeper is an attack on the decoder's stack.
MAX_DEPTH: Final = 16

# Tags cbor2 would otherwise decode into Python objects (datetime, Decimal, re.Pattern,
# UUID, ipaddress, sets, shared references, ...). We take none of them: each becomes a
# refusal while decoding. Found by probing cbor2 6.3 for every tag it decodes natively.
_BUILTIN_TAGS: Final = (
    0,
    1,
    2,
    3,
    4,
    5,
    25,
    28,
    29,
    30,
    35,
    36,
    37,
    52,
    54,
    100,
    256,
    258,
    260,
    261,
    1004,
    43000,
    55799,
)


class _TagRefused(Exception):
    """Raised inside cbor2's decoder; becomes :class:`Malformed` at the boundary."""


def _refuser(tag: int) -> Callable[[Any, bool], Any]:
    def refuse(value: Any, immutable: bool) -> Any:
        raise _TagRefused(f"CBOR tag {tag} is not allowed here")

    return refuse


_REFUSE_BUILTINS: Final = {tag: _refuser(tag) for tag in _BUILTIN_TAGS}


def encode(value: Any) -> bytes:
    """Encode ``value`` in deterministic CBOR (RFC 8949 §4.2.1).

    Raises :class:`Malformed` if the value holds something CBOR cannot carry (our bug,
    not a peer's).
    """
    try:
        return cbor2.dumps(value, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
        raise Malformed(f"cannot encode {type(value).__name__} as CBOR: {exc}") from exc


_ARGUMENT_SIZES: Final = {24: 1, 25: 2, 26: 4, 27: 8}


def check_bounds(
    data: bytes, *, what: str, max_items: int, allowed_tags: Collection[int] = ()
) -> None:
    """Walk one CBOR item without decoding it, as RFC 8949 Appendix C checks well-formedness.

    Raises :class:`Malformed` (the sender's fault) if a container holds more than
    ``max_items`` items (a map's pairs count once), nesting is deeper than
    :data:`MAX_DEPTH`, a length is indefinite, a tag is not in ``allowed_tags``, or the
    bytes end early. Strings are skipped by their length, so the cost is per item.
    """
    position, end = 0, len(data)
    pending = [1]  # items still to read at each open nesting level
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        if position >= end:
            raise Malformed(f"{what} ends early, inside a CBOR item")
        initial = data[position]
        major, info = initial >> 5, initial & 0x1F
        position += 1
        if info < 24:
            argument = info
        elif info in _ARGUMENT_SIZES:
            size = _ARGUMENT_SIZES[info]
            if position + size > end:
                raise Malformed(f"{what} ends early, inside a CBOR item's length")
            argument = int.from_bytes(data[position : position + size], "big")
            position += size
        elif info == 31:
            raise Malformed(f"{what} uses an indefinite length, not allowed here")
        else:
            raise Malformed(f"{what} holds reserved CBOR initial byte 0x{initial:02x}")
        if major in (2, 3):  # byte and text strings
            position += argument
            if position > end:
                raise Malformed(f"{what} ends early, inside a CBOR string")
        elif major in (4, 5):  # arrays and maps
            if argument > max_items:
                kind = "array" if major == 4 else "map"
                raise Malformed(f"{what} has a {kind} of {argument} items, limit {max_items}")
            if len(pending) > MAX_DEPTH:
                raise Malformed(f"{what} nests deeper than {MAX_DEPTH}")
            pending.append(argument * (2 if major == 5 else 1))
        elif major == 6:  # tags: the tagged item follows
            if argument not in allowed_tags:
                raise Malformed(f"{what} is not valid CBOR: CBOR tag {argument} is not allowed")
            pending[-1] += 1
        # majors 0, 1 (integers) and 7 (simple values and floats) carry nothing more
    if position != end:
        raise Malformed(f"{what} has {end - position} trailing bytes after the CBOR item")


def _decoder(fp: io.BytesIO, allowed_tags: Collection[int], *, any_keys: bool) -> cbor2.CBORDecoder:
    def tag_hook(tag: cbor2.CBORTag, immutable: bool) -> Any:
        if tag.tag in allowed_tags:
            return tag
        raise _TagRefused(f"CBOR tag {tag.tag} is not allowed here")

    return cbor2.CBORDecoder(
        fp,
        tag_hook=tag_hook,
        semantic_decoders=_REFUSE_BUILTINS,
        max_depth=MAX_DEPTH,
        allow_indefinite=False,
        allow_duplicate_keys=False,
        strict_hashable_types=not any_keys,
    )


def _describe(exc: BaseException) -> str:
    # cbor2 wraps errors raised in hooks; the innermost message is the useful one.
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc)


def _decode_one(decoder: cbor2.CBORDecoder, what: str) -> Any:
    try:
        return decoder.decode()
    except (cbor2.CBORDecodeError, _TagRefused, RecursionError) as exc:
        raise Malformed(f"{what} is not valid CBOR: {_describe(exc)}") from exc


def decode(
    data: bytes,
    *,
    what: str = "CBOR item",
    max_size: int = MAX_ENVELOPE_SIZE,
    allowed_tags: Collection[int] = (),
    max_items: int | None = None,
    any_keys: bool = False,
) -> Any:
    """Decode exactly one CBOR item from ``data``, bounded as the module docstring says.

    Map keys must be text or byte strings, unless:

    * ``max_items`` is given: then any key type is allowed once every container has
      been checked to hold at most ``max_items`` (:func:`check_bounds`). The check is
      made only if a decode with text/bytes keys fails, as it does for integer keys
      (which it refuses before building the map), so the common case costs nothing;
    * ``any_keys`` is true: for inputs so small (``max_size``) that no map in them can
      be large, e.g. a COSE protected header.

    ``what`` names the item in error messages.

    Raises :class:`TooLarge` before decoding if ``data`` is over ``max_size`` bytes, and
    :class:`Malformed` for anything that is not one well-formed item free of tags but
    ``allowed_tags``. Either way the sender of ``data`` is at fault.
    """
    if len(data) > max_size:
        raise TooLarge(f"{what} is {len(data)} bytes, limit {max_size}")
    if not data:
        raise Malformed(f"{what} is empty")
    if max_items is not None:
        try:
            return _decode_all(data, what, allowed_tags, any_keys=False)
        except Malformed:
            check_bounds(data, what=what, max_items=max_items, allowed_tags=allowed_tags)
            any_keys = True
    return _decode_all(data, what, allowed_tags, any_keys=any_keys)


def _decode_all(data: bytes, what: str, allowed_tags: Collection[int], *, any_keys: bool) -> Any:
    fp = io.BytesIO(data)
    value = _decode_one(_decoder(fp, allowed_tags, any_keys=any_keys), what)
    if fp.tell() != len(data):
        raise Malformed(f"{what} has {len(data) - fp.tell()} trailing bytes after the CBOR item")
    return value


def decode_sequence(
    data: bytes,
    *,
    what: str = "CBOR sequence item",
    max_items: int,
    allowed_tags: Collection[int] = (),
) -> Iterator[Any]:
    """Yield the items of a CBOR sequence (RFC 8742), one at a time.

    The caller bounds the size of ``data`` before calling (a request body limit). Raises
    :class:`Malformed` at the first item that is not well-formed (the items before it
    have been yielded) and :class:`TooLarge` when there are more than ``max_items``.
    """
    fp = io.BytesIO(data)
    decoder = _decoder(fp, allowed_tags, any_keys=False)
    count = 0
    while fp.tell() < len(data):
        if count == max_items:
            raise TooLarge(f"more than {max_items} items in the CBOR sequence")
        yield _decode_one(decoder, f"{what} {count}")
        count += 1


def require_deterministic(value: Any, data: bytes, what: str) -> None:
    """Raise :class:`Malformed` unless ``data`` is the deterministic encoding of ``value``.

    Signed payloads must be deterministic (RFC 8949 §4.2) so every reader agrees on them.
    """
    encoded = _encode_flat_map(value)
    if encoded is None:
        encoded = encode(value)
    if encoded != data:
        raise Malformed(f"{what} is not deterministically encoded CBOR (RFC 8949 §4.2.1)")


#: Types cbor2 encodes the same way with or without ``canonical``: integers, byte and
#: text strings in shortest form, and simple values. (Floats are not: canonical picks
#: the shortest float that keeps the value. Integers past 64 bits become tags 2 and 3
#: either way.)
_FLAT_TYPES: Final = frozenset({int, bytes, str, bool, type(None)})


def _encode_flat_map(value: Any) -> bytes | None:
    """:func:`encode` of ``value``, made without cbor2's canonical sorting, when
    ``value`` is a map whose keys are ASCII text already in canonical order and whose
    values are of :data:`_FLAT_TYPES` (a frame's payload as decoded); None otherwise.

    Then the canonical encoding is the plain one: cbor2 writes every head in shortest
    form either way, and the map in insertion order. For ASCII text keys the canonical
    order (RFC 8949 §4.2.1, bytewise on the encoded keys; cbor2's length-first order is
    the same for text keys, whose heads grow with their length) is by length, then by
    text.
    """
    if type(value) is not dict or not _FLAT_TYPES.issuperset(map(type, value.values())):
        return None
    keys = list(value)
    try:
        ascii_text = "".join(keys).isascii()  # a key that is not text raises TypeError
    except TypeError:
        return None
    if not ascii_text or keys != sorted(sorted(keys), key=len):
        return None
    return cbor2.dumps(value)
