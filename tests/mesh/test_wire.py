"""The per-hop wire format (mesh._wire): frames in a request, results in a response.

Whole-body problems refuse the request (crypto errors); an item of the wrong shape is
rejected alone, in its place. Whatever bytes arrive, only :class:`crypto.CryptoError`
comes out.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import crypto
from crypto import _cbor
from mesh import (
    MAX_FRAMES_PER_REQUEST,
    MAX_SUBSCRIBERS_PER_COPY,
    Outcome,
    Reason,
    Result,
    WireFrame,
    decode_frames,
    decode_results,
    encode_frames,
    encode_results,
    encoded_size,
    results_size,
)

# -- strategies ----------------------------------------------------------------------

WIRE_FRAMES = st.builds(
    WireFrame,
    hops=st.integers(min_value=0, max_value=crypto.MAX_HOPS),
    envelope=st.binary(max_size=200),
    to=st.lists(st.binary(min_size=32, max_size=32).map(crypto.NodeId), max_size=3).map(tuple),
    coords=st.none() | st.binary(min_size=1, max_size=40),
    src_coords=st.none() | st.binary(min_size=1, max_size=40),
)
RESULTS = st.one_of(
    st.just(Result(Outcome.ACCEPTED)),
    st.just(Result(Outcome.DUPLICATE)),
    st.builds(Result.rejected, st.sampled_from(Reason), st.text(max_size=40)),
)
# Any CBOR our decoder takes (no tags, text keys): for shapes the codec must survive.
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.binary(max_size=12),
    st.sampled_from([*Outcome, *Reason]).map(str),
)
CBOR_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


def cbor_seq(*items: Any) -> bytes:
    return b"".join(_cbor.encode(item) for item in items)


# -- frames ----------------------------------------------------------------------------


@given(st.lists(WIRE_FRAMES, min_size=1, max_size=20))
def test_frames_round_trip(frames: list[WireFrame]) -> None:
    assert decode_frames(encode_frames(frames)) == frames


# Every head size CBOR has below 2**32 (1, 2, 3 and 5 bytes), at its edges.
_HEAD_EDGES = (0, 23, 24, 255, 256, 65535, 65536)
SIZED_FRAMES = st.builds(
    WireFrame,
    hops=st.sampled_from((0, 23, 24, 255)),
    envelope=st.sampled_from(_HEAD_EDGES).map(bytes),
    to=st.lists(st.binary(min_size=32, max_size=32).map(crypto.NodeId), max_size=8).map(tuple),
    coords=st.none() | st.sampled_from(_HEAD_EDGES[1:]).map(lambda n: b"c" * n),
    src_coords=st.none() | st.sampled_from(_HEAD_EDGES[1:]).map(lambda n: b"s" * n),
)


# Words of every head size a rejection's text has, ASCII or not (UTF-8 counts bytes).
LONG_WORDS = st.sampled_from(_HEAD_EDGES[:-1]).flatmap(
    lambda n: st.sampled_from(("w" * n, "é" * (n // 2)))
)


@given(st.lists(WIRE_FRAMES | SIZED_FRAMES, max_size=6))
def test_encoded_size_is_the_length_of_the_encoding(frames: list[WireFrame]) -> None:
    assert encoded_size(frames) == len(encode_frames(frames))


@given(
    st.lists(RESULTS | st.builds(Result.rejected, st.sampled_from(Reason), LONG_WORDS), max_size=30)
)
def test_results_size_is_the_length_of_the_encoding(results: list[Result]) -> None:
    assert results_size(results) == len(encode_results(results))


def test_frames_encoding_is_hops_then_envelope() -> None:
    assert encode_frames([WireFrame(3, b"env"), WireFrame(0, b"")]) == cbor_seq(
        [3, b"env"], [0, b""]
    )


SHAPES = (
    "[hops, envelope], [hops, envelope, to], [hops, envelope, to, coords] "
    "or [hops, envelope, to, coords, src_coords]"
)


def test_items_of_the_wrong_shape_are_rejected_alone_and_in_order() -> None:
    good = [0, b"good"]
    body = cbor_seq(
        good,
        "not a list",
        [1],
        [1, b"x", 2, 3, 4, 5],
        ["1", b"x"],
        [-1, b"x"],
        [crypto.MAX_HOPS + 1, b"x"],
        [True, b"x"],
        [1.0, b"x"],
        [0, "text, not bytes"],
        {"hops": 0},
        [crypto.MAX_HOPS, b"last"],
    )
    items = decode_frames(body)
    assert items[0] == WireFrame(0, b"good")
    assert items[-1] == WireFrame(crypto.MAX_HOPS, b"last")
    rejected = items[1:-1]
    assert all(isinstance(r, Result) and r.code is Reason.MALFORMED for r in rejected)
    words = [r.words for r in rejected if isinstance(r, Result)]
    assert words == [
        f"frame 1 is not {SHAPES}",
        f"frame 2 is not {SHAPES}",
        f"frame 3 is not {SHAPES}",
        f"frame 4: hops is '1', expected 0..{crypto.MAX_HOPS}",
        f"frame 5: hops is -1, expected 0..{crypto.MAX_HOPS}",
        f"frame 6: hops is {crypto.MAX_HOPS + 1}, expected 0..{crypto.MAX_HOPS}",
        f"frame 7: hops is True, expected 0..{crypto.MAX_HOPS}",
        f"frame 8: hops is 1.0, expected 0..{crypto.MAX_HOPS}",
        "frame 9: envelope is not bytes",
        f"frame 10 is not {SHAPES}",
    ]


def test_a_copy_names_its_subscribers() -> None:
    ids = tuple(crypto.NodeId(bytes([n]) * 32) for n in (1, 2))
    body = encode_frames([WireFrame(1, b"pub", ids), WireFrame(2, b"msg")])
    assert decode_frames(body) == [WireFrame(1, b"pub", ids), WireFrame(2, b"msg")]
    bad = cbor_seq(
        [0, b"x", b""],
        [0, b"x", b"\x01" * 33],
        [0, b"x", "text"],
        [0, b"x", b"\x01" * 32 * (MAX_SUBSCRIBERS_PER_COPY + 1)],
    )
    words = [r.words for r in decode_frames(bad) if isinstance(r, Result)]
    assert words == [
        f"frame {i}: 'to' must be 1..{MAX_SUBSCRIBERS_PER_COPY} node ids of 32 bytes, concatenated"
        for i in range(4)
    ]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "holds no frames"),
        (b"\xff", "not valid CBOR"),
        (b"\x1c", "not valid CBOR"),  # reserved additional information
        (encode_frames([WireFrame(0, b"abc")])[:-1], "not valid CBOR"),  # truncated
        (encode_frames([WireFrame(0, b"ok")]) + b"\x82\x00", "frame 1 is not valid CBOR"),
        (cbor_seq([0, b"x"]) + b"\xc1\x00", "tag 1 is not allowed"),
    ],
)
def test_a_body_that_is_not_a_cbor_sequence_is_refused_whole(body: bytes, words: str) -> None:
    with pytest.raises(crypto.Malformed, match=words) as caught:
        decode_frames(body)
    assert not isinstance(caught.value, crypto.TooLarge)


def test_more_than_max_frames_is_too_large() -> None:
    frames = [WireFrame(0, b"%d" % i) for i in range(3)]
    assert decode_frames(encode_frames(frames), max_frames=3) == frames
    with pytest.raises(crypto.TooLarge, match="more than 2 items"):
        decode_frames(encode_frames(frames), max_frames=2)


def test_default_max_frames() -> None:
    body = encode_frames([WireFrame(0, b"")] * MAX_FRAMES_PER_REQUEST)
    assert len(decode_frames(body)) == MAX_FRAMES_PER_REQUEST
    with pytest.raises(crypto.TooLarge, match=f"more than {MAX_FRAMES_PER_REQUEST}"):
        decode_frames(body + encode_frames([WireFrame(0, b"")]))


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_crypto_errors_from_decode_frames(data: bytes) -> None:
    try:
        items = decode_frames(data)
    except crypto.CryptoError:
        return
    assert items
    assert all(isinstance(item, WireFrame | Result) for item in items)


@given(st.lists(CBOR_VALUES, min_size=1, max_size=5))
def test_arbitrary_cbor_items_become_frames_or_rejections(values: list[Any]) -> None:
    items = decode_frames(cbor_seq(*values))
    assert len(items) == len(values)
    for value, item in zip(values, items, strict=True):
        if isinstance(item, WireFrame):
            assert [item.hops, item.envelope] == value
        else:
            assert item.code is Reason.MALFORMED


# -- results ---------------------------------------------------------------------------


@given(st.lists(RESULTS, max_size=20))
def test_results_round_trip(results: list[Result]) -> None:
    assert decode_results(encode_results(results), expected=len(results)) == results


def test_results_encoding() -> None:
    results = [
        Result(Outcome.ACCEPTED),
        Result(Outcome.DUPLICATE),
        Result.rejected(Reason.HOP_LIMIT, "too far"),
    ]
    assert encode_results(results) == _cbor.encode(
        [["accepted"], ["duplicate"], ["rejected", "hop-limit", "too far"]]
    )


def test_ok_means_the_receiver_took_responsibility() -> None:
    assert Result(Outcome.ACCEPTED).ok
    assert Result(Outcome.DUPLICATE).ok
    assert not Result.rejected(Reason.EXPIRED, "late").ok


def test_decode_results_count_mismatch() -> None:
    body = encode_results([Result(Outcome.ACCEPTED)] * 2)
    with pytest.raises(crypto.Malformed, match="expected 3 frame results, got 2"):
        decode_results(body, expected=3)
    with pytest.raises(crypto.Malformed, match="expected 1 frame results, got 2"):
        decode_results(body, expected=1)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"accepted": 1}, "expected 1 frame results, got dict"),
        ("accepted", "expected 1 frame results, got str"),
        (["accepted"], "result 0 is not a non-empty array"),  # a flat list, not of lists
        ([[]], "result 0 is not a non-empty array"),
        ([["maybe"]], "result 0: unknown outcome 'maybe'"),
        ([[1]], "result 0: unknown outcome 1"),
        ([[["accepted"]]], r"result 0: unknown outcome \['accepted'\]"),
        ([["rejected"]], r"result 0: a rejection is \[outcome, code, words\]"),
        ([["rejected", "expired"]], "a rejection is"),
        ([["rejected", "expired", "late", "extra"]], "a rejection is"),
        ([["rejected", "expired", 7]], "a rejection is"),
    ],
)
def test_decode_results_bad_shapes(value: Any, words: str) -> None:
    with pytest.raises(crypto.Malformed, match=words):
        decode_results(_cbor.encode(value), expected=1)


def test_decode_results_bad_item_is_named_by_index() -> None:
    body = _cbor.encode([["accepted"], ["duplicate"], ["bogus"]])
    with pytest.raises(crypto.Malformed, match="frame result 2: unknown outcome 'bogus'"):
        decode_results(body, expected=3)


@pytest.mark.parametrize("body", [b"", b"\xff", b"\x81", _cbor.encode([]) + b"\x00"])
def test_decode_results_not_cbor(body: bytes) -> None:
    with pytest.raises(crypto.Malformed):
        decode_results(body, expected=0)


@pytest.mark.parametrize("code", ["quota-exceeded-v2", 42, None])
def test_unknown_rejection_code_from_a_newer_peer_is_malformed_with_its_words(
    code: Any,
) -> None:
    body = _cbor.encode([["rejected", code, "something new went wrong"], ["accepted"]])
    rejected, accepted = decode_results(body, expected=2)
    assert rejected == Result.rejected(Reason.MALFORMED, "something new went wrong")
    assert not rejected.ok
    assert accepted.ok


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (crypto.CryptoError, Reason.MALFORMED),
        (crypto.Malformed, Reason.MALFORMED),
        (crypto.TooLarge, Reason.TOO_LARGE),
        (crypto.BadSignature, Reason.BAD_SIGNATURE),
        (crypto.WrongPurpose, Reason.WRONG_PURPOSE),
        (crypto.Expired, Reason.EXPIRED),
        (crypto.Stale, Reason.MALFORMED),
        (crypto.KeyFileError, Reason.MALFORMED),
        (crypto.CapabilityRefused, Reason.FORBIDDEN),
        (crypto.CapabilityExpired, Reason.FORBIDDEN),
        (crypto.Revoked, Reason.FORBIDDEN),
    ],
)
def test_result_for_each_crypto_error(error: type[crypto.CryptoError], code: Reason) -> None:
    result = Result.for_error(error("what was wrong"))
    assert result == Result(Outcome.REJECTED, code, "what was wrong")


def test_every_crypto_error_class_is_mapped() -> None:
    # A new CryptoError subclass must be added to the table above (and perhaps to Reason).
    tested = {
        crypto.CryptoError,
        crypto.Malformed,
        crypto.TooLarge,
        crypto.BadSignature,
        crypto.WrongPurpose,
        crypto.Expired,
        crypto.Stale,
        crypto.KeyFileError,
        crypto.CapabilityRefused,
        crypto.CapabilityExpired,
        crypto.Revoked,
    }
    exported = {
        value
        for value in vars(crypto).values()
        if isinstance(value, type) and issubclass(value, crypto.CryptoError)
    }
    assert exported == tested


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=5))
def test_arbitrary_bytes_raise_only_crypto_errors_from_decode_results(
    data: bytes, expected: int
) -> None:
    try:
        results = decode_results(data, expected=expected)
    except crypto.CryptoError:
        return
    assert len(results) == expected


@given(CBOR_VALUES, st.integers(min_value=0, max_value=4))
def test_arbitrary_cbor_raises_only_crypto_errors_from_decode_results(
    value: Any, expected: int
) -> None:
    try:
        results = decode_results(_cbor.encode(value), expected=expected)
    except crypto.CryptoError:
        return
    assert len(results) == expected
    assert all(isinstance(r.outcome, Outcome) for r in results)


def test_coordinates_travel_with_a_frame_and_are_checked_for_shape() -> None:
    subscriber = crypto.NodeId(bytes(range(32)))
    frames = [
        WireFrame(2, b"env", coords=b"chain"),
        WireFrame(1, b"pub", (subscriber,), coords=b"chain"),
        WireFrame(0, b"plain"),
    ]
    assert decode_frames(encode_frames(frames)) == frames
    body = cbor_seq(
        [0, b"x", b"", b""],
        [0, b"x", b"", "text"],
        [0, b"x", b"", b"c" * (crypto.MAX_COORD_CHAIN_SIZE + 1)],
        [0, b"x", b"abc", b"chain"],
        [0, b"x", b"", b"c" * crypto.MAX_COORD_CHAIN_SIZE],
    )
    items = decode_frames(body)
    assert items[-1] == WireFrame(0, b"x", coords=b"c" * crypto.MAX_COORD_CHAIN_SIZE)
    words = [r.words for r in items[:-1] if isinstance(r, Result)]
    limit = crypto.MAX_COORD_CHAIN_SIZE
    assert words == [
        f"frame 0: 'coords' must be a coordinate chain of 1..{limit} bytes",
        f"frame 1: 'coords' must be a coordinate chain of 1..{limit} bytes",
        f"frame 2: 'coords' must be a coordinate chain of 1..{limit} bytes",
        f"frame 3: 'to' must be 1..{MAX_SUBSCRIBERS_PER_COPY} node ids of 32 bytes, concatenated",
    ]


def test_a_message_brings_its_origins_coordinates_checked_for_shape() -> None:
    frames = [
        WireFrame(2, b"msg", coords=b"dst chain", src_coords=b"src chain"),
        WireFrame(1, b"msg", src_coords=b"src chain"),  # sent with null coords
    ]
    body = encode_frames(frames)
    assert body == cbor_seq(
        [2, b"msg", b"", b"dst chain", b"src chain"], [1, b"msg", b"", None, b"src chain"]
    )
    assert decode_frames(body) == frames
    limit = crypto.MAX_COORD_CHAIN_SIZE
    bad = cbor_seq(
        [0, b"x", b"", None],  # null coords only beside the origin's
        [0, b"x", b"", None, None],
        [0, b"x", b"", b"dst", b""],
        [0, b"x", b"", b"dst", "text"],
        [0, b"x", b"", None, b"c" * (limit + 1)],
    )
    words = [r.words for r in decode_frames(bad) if isinstance(r, Result)]
    assert words == [
        f"frame 0: 'coords' must be a coordinate chain of 1..{limit} bytes",
        *(
            f"frame {i}: 'src_coords' must be a coordinate chain of 1..{limit} bytes"
            for i in range(1, 5)
        ),
    ]
