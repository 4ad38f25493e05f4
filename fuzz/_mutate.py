"""A fast, seedable mutation engine over bytes, with CBOR-aware tweaks.

:class:`Mutator` takes a corpus of valid inputs and a :class:`random.Random`, and makes
each new input from one corpus entry (or two, spliced) by one to a few stacked
mutations: bit and byte flips, inserting, deleting, duplicating or overwriting ranges,
truncation, interesting integers, dictionary words of the target, long runs of one byte
(what overflows a digit or length limit), and tweaks at the heads of CBOR items found by
walking the bytes as RFC 8949 Appendix C does: another major type, another length
(shortest or not), an indefinite length, a tag, a wrapping array.

Everything is deterministic given the ``Random``'s seed, so a run can be reproduced.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Final

__all__ = ["INTERESTING_INTEGERS", "Mutator", "cbor_heads"]

#: Values at the edges of every width a length or integer is read as.
INTERESTING_INTEGERS: Final = (
    0,
    1,
    7,
    8,
    15,
    16,
    23,
    24,
    31,
    32,
    63,
    64,
    100,
    127,
    128,
    255,
    256,
    1000,
    1024,
    4096,
    32767,
    32768,
    65535,
    65536,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**53,
    2**63 - 1,
    2**63,
    2**64 - 1,
)
_HEAD_SIZES: Final = {24: 1, 25: 2, 26: 4, 27: 8}
#: Most CBOR heads recorded per input: enough to reach every item of our structures.
_MAX_HEADS: Final = 4096
#: Longest run of one byte inserted: past Python's 4300-digit int() limit.
_MAX_RUN: Final = 5000
#: Lengths of inserted, deleted and copied ranges: mostly short, sometimes long.
_LENGTHS: Final = (1, 1, 1, 2, 2, 3, 4, 5, 8, 16, 32, 64)
#: How many mutations are stacked on one input.
_STACKED: Final = (1, 1, 1, 1, 2, 2, 3, 4)
#: Largest input a mutation may make: keeps one mutation from costing a megabyte copy.
MAX_INPUT_SIZE: Final = 1 << 20


def cbor_heads(data: bytes) -> list[int]:
    """Offsets of the CBOR item heads in ``data`` (best effort: stops at the first
    byte that does not parse, and at :data:`_MAX_HEADS`)."""
    heads: list[int] = []
    position, end = 0, len(data)
    while position < end and len(heads) < _MAX_HEADS:
        heads.append(position)
        initial = data[position]
        major, info = initial >> 5, initial & 0x1F
        position += 1
        argument = info
        if info in _HEAD_SIZES:
            size = _HEAD_SIZES[info]
            argument = int.from_bytes(data[position : position + size], "big")
            position += size
        elif info > 27:
            continue  # indefinite or reserved: the next byte may be a head again
        if major in (2, 3):  # strings: skip the content, unless it is CBOR itself
            if position + argument <= end and argument and data[position] >> 5 in (4, 5, 6):
                continue  # a byte string holding CBOR (an envelope's payload): walk in
            position += argument
    return heads


def _head(major: int, argument: int, *, size: int | None = None) -> bytes:
    """A CBOR head for ``major`` and ``argument``, in the shortest form or ``size``."""
    if size is None:
        if argument < 24:
            return bytes([major << 5 | argument])
        size = next(s for s in (1, 2, 4, 8) if argument < 1 << (8 * s))
    info = {1: 24, 2: 25, 4: 26, 8: 27}[size]
    argument &= (1 << (8 * size)) - 1
    return bytes([major << 5 | info]) + argument.to_bytes(size, "big")


def _head_end(data: bytes | bytearray, position: int) -> int:
    info = data[position] & 0x1F
    return min(len(data), position + 1 + _HEAD_SIZES.get(info, 0))


class Mutator:
    """Makes mutated inputs from ``corpus`` with ``rng``.

    ``words`` are target-specific byte strings (header names, CBOR keys, separators)
    inserted or overwritten now and then; ``cbor`` turns the CBOR-aware mutations on.
    """

    def __init__(
        self,
        corpus: Sequence[bytes],
        rng: random.Random,
        *,
        words: Sequence[bytes] = (),
        cbor: bool = True,
    ) -> None:
        if not corpus:
            raise ValueError("a mutator needs at least one corpus entry")
        self.corpus = list(corpus)
        self.rng = rng
        self.words = list(words) or [b"\x00", b"\xff"]
        self.cbor = cbor
        self._operations: list[Callable[[bytearray], None]] = [
            self.flip_bit,
            self.set_byte,
            self.insert_bytes,
            self.delete_range,
            self.duplicate_range,
            self.overwrite_range,
            self.truncate,
            self.splice,
            self.interesting_integer,
            self.insert_word,
            self.insert_run,
            self.swap_ranges,
        ]
        if cbor:
            self._operations += [self.cbor_tweak] * 6

    def mutate(self) -> bytes:
        """One new input: a corpus entry with 1 to 4 stacked mutations."""
        rng = self.rng
        data = bytearray(rng.choice(self.corpus))
        for _ in range(rng.choice(_STACKED)):
            rng.choice(self._operations)(data)
        if len(data) > MAX_INPUT_SIZE:
            del data[MAX_INPUT_SIZE:]
        return bytes(data)

    # -- generic byte mutations ----------------------------------------------------------

    def _position(self, data: bytearray, *, inclusive: bool = False) -> int:
        return self.rng.randrange(len(data) + (1 if inclusive else 0)) if data else 0

    def _range(self, data: bytearray) -> tuple[int, int]:
        if not data:
            return 0, 0
        start = self.rng.randrange(len(data))
        length = min(len(data) - start, self.rng.choice(_LENGTHS))
        return start, start + length

    def flip_bit(self, data: bytearray) -> None:
        if data:
            data[self._position(data)] ^= 1 << self.rng.randrange(8)

    def set_byte(self, data: bytearray) -> None:
        if data:
            choices = (0x00, 0xFF, 0x7F, 0x80, 0x20, 0x0A, 0x0D, self.rng.randrange(256))
            data[self._position(data)] = self.rng.choice(choices)

    def insert_bytes(self, data: bytearray) -> None:
        count = self.rng.choice(_LENGTHS)
        position = self._position(data, inclusive=True)
        data[position:position] = self.rng.randbytes(count)

    def delete_range(self, data: bytearray) -> None:
        start, end = self._range(data)
        del data[start:end]

    def duplicate_range(self, data: bytearray) -> None:
        start, end = self._range(data)
        piece = data[start:end] * self.rng.choice((1, 1, 2, 16))
        position = self._position(data, inclusive=True)
        data[position:position] = piece

    def overwrite_range(self, data: bytearray) -> None:
        start, end = self._range(data)
        data[start:end] = self.rng.randbytes(end - start)

    def truncate(self, data: bytearray) -> None:
        del data[self._position(data, inclusive=True) :]

    def splice(self, data: bytearray) -> None:
        other = self.rng.choice(self.corpus)
        if not other:
            return
        cut = self._position(data, inclusive=True)
        start = self.rng.randrange(len(other))
        data[cut:] = other[start:]

    def swap_ranges(self, data: bytearray) -> None:
        first, second = sorted((self._range(data), self._range(data)))
        if first[1] <= second[0]:
            a, b = data[first[0] : first[1]], data[second[0] : second[1]]
            data[second[0] : second[1]] = a
            data[first[0] : first[1]] = b

    def interesting_integer(self, data: bytearray) -> None:
        value = self.rng.choice(INTERESTING_INTEGERS)
        if self.rng.random() < 0.5:  # as text: most of our text formats carry numbers
            text = str(value if self.rng.random() < 0.8 else -value).encode()
            start, end = self._range(data)
            data[start:end] = text
            return
        size = self.rng.choice((1, 2, 4, 8))
        raw = (value & ((1 << (8 * size)) - 1)).to_bytes(size, self.rng.choice(("big", "little")))
        position = self._position(data, inclusive=True)
        data[position : position + size] = raw

    def insert_word(self, data: bytearray) -> None:
        word = self.rng.choice(self.words)
        position = self._position(data, inclusive=True)
        if self.rng.random() < 0.5:
            data[position:position] = word
        else:
            data[position : position + len(word)] = word

    def insert_run(self, data: bytearray) -> None:
        byte = self.rng.choice(b"09 \t,;:=\"'()[]{}\\/\x00\xff\x80\x9f\xbf[")
        count = self.rng.choice((2, 16, 256, 4096, 4301, _MAX_RUN))
        position = self._position(data, inclusive=True)
        data[position:position] = bytes([byte]) * count

    # -- CBOR-aware mutations -------------------------------------------------------------

    def cbor_tweak(self, data: bytearray) -> None:
        heads = cbor_heads(bytes(data))
        if not heads:
            self.set_byte(data)
            return
        rng = self.rng
        position = rng.choice(heads)
        initial = data[position]
        major, info = initial >> 5, initial & 0x1F
        end = _head_end(data, position)
        choice = rng.randrange(8)
        if choice == 0:  # another major type, same argument
            data[position] = rng.randrange(8) << 5 | info
        elif choice == 1:  # another length or value, shortest form
            data[position:end] = _head(major, rng.choice(INTERESTING_INTEGERS))
        elif choice == 2:  # the same argument, not in the shortest form
            argument = (
                int.from_bytes(data[position + 1 : end], "big") if end > position + 1 else info
            )
            data[position:end] = _head(major, argument, size=rng.choice((1, 2, 4, 8)))
        elif choice == 3:  # an indefinite length, or a reserved info
            data[position] = major << 5 | rng.choice((28, 29, 30, 31))
        elif choice == 4:  # a tag in front of the item
            tag = rng.choice((0, 1, 2, 3, 18, 21, 24, 25, 28, 29, 55799, 2**32 + 1))
            data[position:position] = _head(6, tag)
        elif choice == 5:  # wrap the item (and what follows) in an array or map
            data[position:position] = _head(rng.choice((4, 5)), rng.choice((1, 2, 3)))
        elif choice == 6:  # a break byte or a simple value where an item was
            data[position:end] = bytes([rng.choice((0xFF, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8))])
        else:  # remove the head (the items shift)
            del data[position:end]
