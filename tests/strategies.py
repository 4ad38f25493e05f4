"""Hypothesis strategies shared by the tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Scalars that deterministic CBOR carries without tags: integers within the 64-bit
# argument range (beyond it cbor2 would use bignum tags 2/3, which we refuse), floats
# (not NaN, which never equals itself), text, bytes, booleans and null.
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)


def cbor_values(depth: int = 3) -> st.SearchStrategy[Any]:
    """Values whose CBOR decodes back equal: lists (not tuples), maps with text keys."""
    if depth == 0:
        return SCALARS
    inner = cbor_values(depth - 1)
    return st.one_of(
        SCALARS,
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    )
