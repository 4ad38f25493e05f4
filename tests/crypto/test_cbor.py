"""Bounded, deterministic CBOR (crypto._cbor): round-trips, refusals, and fuzzing.

Every refusal must be our :class:`Malformed` (or :class:`TooLarge`), never a foreign
exception, and limits are checked before or while decoding, never after.
"""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto import _cbor
from crypto._errors import Malformed, TooLarge
from tests.strategies import cbor_values

# -- strategies ----------------------------------------------------------------------

VALUES = cbor_values()


def nested_arrays(depth: int) -> bytes:
    return b"\x81" * depth + b"\x00"


def _no_decoder(*args: object, **kwargs: object) -> Any:
    raise AssertionError("the decoder must not be reached")


# -- round trips -----------------------------------------------------------------------


@given(VALUES)
def test_round_trip(value: Any) -> None:
    data = _cbor.encode(value)
    decoded = _cbor.decode(data)
    assert decoded == value
    assert _cbor.encode(decoded) == data
    _cbor.require_deterministic(decoded, data, "value")
    _cbor.check_bounds(data, what="value", max_items=100)


@given(st.dictionaries(st.integers(-(2**64), 2**64 - 1) | st.text(max_size=4), VALUES, max_size=6))
def test_round_trip_any_keys_with_max_items(value: dict[Any, Any]) -> None:
    data = _cbor.encode(value)
    assert _cbor.decode(data, max_items=6) == value


def test_encode_is_deterministic() -> None:
    # RFC 8949 §4.2.1: shortest integers and floats, keys sorted bytewise by encoding.
    assert _cbor.encode({"b": 1, "a": 2}) == bytes.fromhex("a2616102616201")
    assert _cbor.encode({"aa": 0, "b": 0}) == bytes.fromhex("a261620062616100")
    assert _cbor.encode(1.5) == bytes.fromhex("f93e00")
    assert _cbor.encode(24) == bytes.fromhex("1818")


def test_encode_refuses_what_cbor_cannot_carry() -> None:
    with pytest.raises(Malformed, match="cannot encode object as CBOR") as info:
        _cbor.encode(object())
    assert isinstance(info.value.__cause__, cbor2.CBOREncodeError)


# -- arbitrary input -------------------------------------------------------------------


@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_our_errors(data: bytes) -> None:
    for call in (
        lambda: _cbor.decode(data),
        lambda: _cbor.decode(data, max_items=8, allowed_tags=(18,)),
        lambda: list(_cbor.decode_sequence(data, max_items=8)),
        lambda: _cbor.check_bounds(data, what="input", max_items=8),
    ):
        try:
            call()
        except Malformed:  # TooLarge included; any other error fails the test
            pass


@given(VALUES)
def test_every_truncation_is_refused(value: Any) -> None:
    data = _cbor.encode(value)
    for end in range(len(data)):
        with pytest.raises(Malformed):
            _cbor.decode(data[:end])
        with pytest.raises(Malformed):
            _cbor.check_bounds(data[:end], what="value", max_items=100)


@given(VALUES, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_refused(value: Any, extra: bytes) -> None:
    data = _cbor.encode(value) + extra
    with pytest.raises(Malformed, match=f"has {len(extra)} trailing bytes after the CBOR item"):
        _cbor.decode(data)
    with pytest.raises(Malformed, match=f"has {len(extra)} trailing bytes after the CBOR item"):
        _cbor.check_bounds(data, what="value", max_items=100)


def test_empty_input_is_refused() -> None:
    with pytest.raises(Malformed, match="CBOR item is empty"):
        _cbor.decode(b"")


# -- size ------------------------------------------------------------------------------


def test_oversized_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cbor, "_decoder", _no_decoder)
    monkeypatch.setattr(_cbor, "check_bounds", _no_decoder)
    monkeypatch.setattr(cbor2, "CBORDecoder", _no_decoder)
    data = b"\x00" * (_cbor.MAX_ENVELOPE_SIZE + 1)
    with pytest.raises(TooLarge, match=r"CBOR item is 1048577 bytes, limit 1048576") as info:
        _cbor.decode(data)
    assert info.value.status_hint == 413
    with pytest.raises(TooLarge, match=r"thing is 11 bytes, limit 10"):
        _cbor.decode(b"\x00" * 11, what="thing", max_size=10, max_items=4)


def test_size_limit_is_inclusive() -> None:
    data = _cbor.encode(b"x" * 7)
    assert _cbor.decode(data, max_size=len(data)) == b"x" * 7


# -- depth -----------------------------------------------------------------------------


@pytest.mark.parametrize("max_items", [None, 4])
def test_nesting_up_to_max_depth_is_accepted(max_items: int | None) -> None:
    value = _cbor.decode(nested_arrays(_cbor.MAX_DEPTH), max_items=max_items)
    for _ in range(_cbor.MAX_DEPTH):
        assert isinstance(value, list)
        value = value[0]
    assert value == 0


def test_nesting_deeper_than_max_depth_is_refused() -> None:
    data = nested_arrays(_cbor.MAX_DEPTH + 1)
    with pytest.raises(Malformed, match=r"maximum container nesting depth \(16\) exceeded"):
        _cbor.decode(data)
    with pytest.raises(Malformed, match="CBOR item nests deeper than 16"):
        _cbor.decode(data, max_items=4)
    maps = b"\xa1\x61a" * (_cbor.MAX_DEPTH + 1) + b"\x00"
    with pytest.raises(Malformed, match="nesting depth"):
        _cbor.decode(maps)
    with pytest.raises(Malformed, match="nests deeper than 16"):
        _cbor.check_bounds(maps, what="maps", max_items=4)


def test_deep_tags_are_bounded_too() -> None:
    # Tags do not open containers in check_bounds, but cbor2 counts them as depth.
    data = b"\xd2" * 40 + b"\x00"
    _cbor.check_bounds(data, what="tags", max_items=4, allowed_tags=(18,))
    with pytest.raises(Malformed, match="nesting depth"):
        _cbor.decode(data, allowed_tags=(18,), max_items=4)


# -- indefinite lengths, duplicate keys ------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x9f\x01\xff", id="array"),
        pytest.param(b"\xbf\x61a\x01\xff", id="map"),
        pytest.param(b"\x5f\x41a\xff", id="bytes"),
        pytest.param(b"\x7f\x61a\xff", id="text"),
    ],
)
def test_indefinite_lengths_are_refused(data: bytes) -> None:
    with pytest.raises(Malformed, match="indefinite length"):
        _cbor.decode(data)
    with pytest.raises(Malformed, match="CBOR item uses an indefinite length, not allowed here"):
        _cbor.decode(data, max_items=4)


@pytest.mark.parametrize(
    ("data", "max_items"),
    [
        pytest.param(b"\xa2\x61a\x01\x61a\x02", None, id="text"),
        pytest.param(b"\xa2\x41a\x01\x41a\x02", None, id="bytes"),
        pytest.param(b"\xa2\x01\x01\x01\x02", 4, id="int"),
        pytest.param(b"\xa1\x61x\xa2\x61a\x01\x61a\x01", None, id="nested"),
    ],
)
def test_duplicate_keys_are_refused(data: bytes, max_items: int | None) -> None:
    with pytest.raises(Malformed, match="Duplicate map key"):
        _cbor.decode(data, max_items=max_items)


def test_non_text_keys_need_max_items() -> None:
    data = _cbor.encode({1: "a"})
    with pytest.raises(Malformed, match="map key must be a text string or byte string, not int"):
        _cbor.decode(data)
    assert _cbor.decode(data, max_items=1) == {1: "a"}


# -- tags ------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", [*_cbor._BUILTIN_TAGS, 6, 18, 24, 999, 2**32, 2**64 - 1])
def test_tags_in_a_payload_are_refused(tag: int) -> None:
    # Builtin tags would become datetimes, Decimals, sets, ... and unknown ones CBORTags.
    data = _cbor.encode({"a": [cbor2.CBORTag(tag, 1)]})
    with pytest.raises(Malformed, match=f"CBOR tag {tag} is not allowed") as info:
        _cbor.decode(data)
    assert isinstance(info.value.__cause__, cbor2.CBORDecodeError | _cbor._TagRefused)
    with pytest.raises(Malformed, match=f"CBOR tag {tag} is not allowed"):
        _cbor.decode(data, max_items=4)


def test_allowed_tag_is_accepted_only_where_allowed() -> None:
    data = _cbor.encode(cbor2.CBORTag(18, [b"p", {}, b"x", b"s"]))
    tag = _cbor.decode(data, allowed_tags=(18,), max_items=4)
    assert isinstance(tag, cbor2.CBORTag)
    assert tag.tag == 18
    assert list(tag.value) == [b"p", {}, b"x", b"s"]
    with pytest.raises(Malformed, match="CBOR tag 18 is not allowed"):
        _cbor.decode(data)
    with pytest.raises(Malformed, match="CBOR tag 18 is not allowed"):
        _cbor.decode(data, allowed_tags=(19,), max_items=4)
    # Allowing 18 does not let builtin tags through.
    with pytest.raises(Malformed, match="CBOR tag 1 is not allowed"):
        _cbor.decode(_cbor.encode(cbor2.CBORTag(18, cbor2.CBORTag(1, 0))), allowed_tags=(18,))


def test_builtin_tags_are_all_that_cbor2_decodes_natively() -> None:
    # If cbor2 learns a new tag, it would bypass tag_hook; this finds it (tags < 2**16).
    natively: list[int] = []
    hooked: list[int] = []

    def tag_hook(tag: cbor2.CBORTag, immutable: bool) -> None:
        hooked.append(tag.tag)

    for tag in range(2**16):
        hooked.clear()
        try:
            cbor2.loads(cbor2.dumps(cbor2.CBORTag(tag, 0)), tag_hook=tag_hook)
        except cbor2.CBORDecodeError:
            natively.append(tag)
            continue
        if not hooked:
            natively.append(tag)
    assert natively == sorted(_cbor._BUILTIN_TAGS)


# -- deterministic encoding ------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "value"),
    [
        pytest.param(b"\xa2\x61b\x01\x61a\x02", {"a": 2, "b": 1}, id="unsorted-keys"),
        pytest.param(b"\xa2\x62aa\x02\x61b\x01", {"aa": 2, "b": 1}, id="text-order-keys"),
        pytest.param(b"\x18\x01", 1, id="non-shortest-int"),
        pytest.param(b"\x39\x00\x00", -1, id="non-shortest-negative"),
        pytest.param(b"\xfb\x3f\xf8\x00\x00\x00\x00\x00\x00", 1.5, id="non-shortest-float"),
        pytest.param(b"\x58\x01a", b"a", id="non-shortest-length"),
        pytest.param(b"\x98\x01\x00", [0], id="non-shortest-array"),
    ],
)
def test_non_deterministic_encodings_are_refused(data: bytes, value: Any) -> None:
    assert _cbor.decode(data) == value  # well-formed, just not deterministic
    with pytest.raises(
        Malformed, match=r"payload is not deterministically encoded CBOR \(RFC 8949 §4.2.1\)"
    ):
        _cbor.require_deterministic(_cbor.decode(data), data, "payload")


FLAT_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.binary(max_size=30),
    st.text(max_size=30),
    st.floats(allow_nan=False),  # not flat: always left to the canonical encoder
)
ASCII_KEYS = st.text("abt", max_size=3) | st.text(st.characters(max_codepoint=127), max_size=30)
FLAT_KEYS = ASCII_KEYS | st.text(max_size=30) | st.binary(max_size=2)


@given(
    st.lists(st.tuples(ASCII_KEYS, FLAT_VALUES), max_size=8)
    | st.lists(st.tuples(FLAT_KEYS, FLAT_VALUES | VALUES), max_size=8),
    st.randoms(),
)
def test_flat_maps_are_checked_as_the_canonical_encoder_would(
    pairs: list[tuple[Any, Any]], random: Any
) -> None:
    # require_deterministic encodes a flat map with text keys in canonical order without
    # sorting it: it must refuse exactly what comparing with encode() refuses.
    random.shuffle(pairs)
    for value in (dict(pairs), dict(sorted(pairs, key=lambda pair: _cbor.encode(pair[0])))):
        expected = _cbor.encode(value)
        assert _cbor._encode_flat_map(value) in (None, expected)
        for data in (expected, cbor2.dumps(value), cbor2.dumps(value, canonical=True)):
            refused = False
            try:
                _cbor.require_deterministic(value, data, "payload")
            except Malformed:
                refused = True
            assert refused == (data != expected)


def test_a_frame_like_flat_map_is_encoded_without_sorting() -> None:
    value = {"t": "msg", "id": b"x", "ts": 2**40, "ct": "a", "rr": True, "why": "é"}
    assert _cbor._encode_flat_map(value) is None  # a key out of order ("ct" < "id")
    value = {"t": "msg", "ct": "a", "id": b"x", "rr": True, "ts": 2**40, "why": "é"}
    assert _cbor._encode_flat_map(value) == _cbor.encode(value)
    assert _cbor._encode_flat_map({"é": 1}) is None  # not ASCII: left to encode()
    assert _cbor._encode_flat_map({"a": 1.5}) is None  # floats have shortest forms
    assert _cbor._encode_flat_map({b"a": 1}) is None  # not text


# -- check_bounds ----------------------------------------------------------------------


def test_check_bounds_counts_items_per_container() -> None:
    _cbor.check_bounds(_cbor.encode(list(range(4))), what="a", max_items=4)
    _cbor.check_bounds(_cbor.encode({i: i for i in range(4)}), what="m", max_items=4)
    with pytest.raises(Malformed, match="thing has a array of 5 items, limit 4"):
        _cbor.check_bounds(_cbor.encode(list(range(5))), what="thing", max_items=4)
    with pytest.raises(Malformed, match="thing has a map of 5 items, limit 4"):
        _cbor.check_bounds(_cbor.encode({i: i for i in range(5)}), what="thing", max_items=4)
    # Nested containers are each held to the limit.
    with pytest.raises(Malformed, match="array of 5 items, limit 4"):
        _cbor.check_bounds(_cbor.encode([[], [0] * 5]), what="thing", max_items=4)
    # A claimed length is refused on sight, before any of the claimed items is read.
    with pytest.raises(Malformed, match="array of 18446744073709551615 items, limit 4"):
        _cbor.check_bounds(b"\x9b" + b"\xff" * 8, what="thing", max_items=4)


@pytest.mark.parametrize("major", range(8))
@pytest.mark.parametrize("info", [0x1C, 0x1D, 0x1E])
def test_check_bounds_refuses_reserved_initial_bytes(major: int, info: int) -> None:
    initial = major << 5 | info
    with pytest.raises(Malformed, match=f"x holds reserved CBOR initial byte 0x{initial:02x}"):
        _cbor.check_bounds(bytes([initial]), what="x", max_items=4)
    with pytest.raises(Malformed):
        _cbor.decode(bytes([initial]))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "x ends early, inside a CBOR item$", id="empty"),
        pytest.param(b"\x82\x01", "x ends early, inside a CBOR item$", id="array"),
        pytest.param(b"\xa1\x01", "x ends early, inside a CBOR item$", id="map-value"),
        pytest.param(b"\xd2", "x ends early, inside a CBOR item$", id="tag"),
        pytest.param(b"\x18", "inside a CBOR item's length", id="uint8"),
        pytest.param(b"\x19\x01", "inside a CBOR item's length", id="uint16"),
        pytest.param(b"\x5a\x00\x00\x01", "inside a CBOR item's length", id="bytes32"),
        pytest.param(b"\x9b" + b"\x00" * 7, "inside a CBOR item's length", id="array64"),
        pytest.param(b"\x43ab", "inside a CBOR string", id="bytes"),
        pytest.param(b"\x7b" + b"\xff" * 8, "inside a CBOR string", id="huge-text"),
    ],
)
def test_check_bounds_refuses_truncations(data: bytes, message: str) -> None:
    with pytest.raises(Malformed, match=message):
        _cbor.check_bounds(data, what="x", max_items=4, allowed_tags=(18,))


def test_check_bounds_walks_every_kind_of_item() -> None:
    value = [
        0,
        23,
        24,
        2**16,
        2**32,
        2**64 - 1,
        -(2**64),
        1.5,
        1.1,
        1e300,
        True,
        None,
        cbor2.undefined,
        b"bytes",
        "text",
        {"k": [1, {"n": b""}]},
        cbor2.CBORTag(18, [1]),
    ]
    data = _cbor.encode(value)
    _cbor.check_bounds(data, what="x", max_items=len(value), allowed_tags=(18,))
    with pytest.raises(Malformed, match="x is not valid CBOR: CBOR tag 18 is not allowed"):
        _cbor.check_bounds(data, what="x", max_items=len(value))


def test_check_bounds_refuses_a_break_out_of_place() -> None:
    with pytest.raises(Malformed, match="indefinite length"):
        _cbor.check_bounds(b"\xff", what="x", max_items=4)


# -- sequences -------------------------------------------------------------------------


def test_decode_sequence_yields_every_item() -> None:
    items = [1, "two", {"three": [3]}, b"four"]
    data = b"".join(_cbor.encode(item) for item in items)
    assert list(_cbor.decode_sequence(data, max_items=4)) == items
    assert list(_cbor.decode_sequence(b"", max_items=4)) == []


def test_decode_sequence_refuses_more_than_max_items() -> None:
    data = b"\x01\x02\x03\x04"
    got = _cbor.decode_sequence(data, max_items=3)
    assert [next(got), next(got), next(got)] == [1, 2, 3]
    with pytest.raises(TooLarge, match="more than 3 items in the CBOR sequence"):
        next(got)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        pytest.param(b"\x1c", "item 2 is not valid CBOR", id="reserved"),
        pytest.param(b"\x19\x01", "item 2 is not valid CBOR: premature end", id="truncated"),
        pytest.param(b"\x9f\xff", "item 2 is not valid CBOR: .*indefinite", id="indefinite"),
        pytest.param(b"\xc1\x00", "item 2 is not valid CBOR: CBOR tag 1 is not allowed", id="tag"),
        pytest.param(b"\xa1\x01\x01", "item 2 is not valid CBOR: .*map key must be", id="int-key"),
    ],
)
def test_decode_sequence_refuses_a_bad_item_after_good_ones(bad: bytes, message: str) -> None:
    got: list[Any] = []
    with pytest.raises(Malformed, match=f"CBOR sequence {message}"):
        got.extend(_cbor.decode_sequence(b"\x01\x61a" + bad, max_items=10))
    assert got == [1, "a"]


def test_decode_sequence_allows_the_tags_it_is_told() -> None:
    data = _cbor.encode(cbor2.CBORTag(18, [1])) * 2
    tags = list(_cbor.decode_sequence(data, max_items=2, allowed_tags=(18,)))
    assert [t.tag for t in tags] == [18, 18]
    with pytest.raises(Malformed, match="frame 0 is not valid CBOR: CBOR tag 18"):
        list(_cbor.decode_sequence(data, what="frame", max_items=2))
