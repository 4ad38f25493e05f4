"""mesh._allowance.Allowances: token buckets per sender, refusing work past a burst."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh._allowance import Allowances


def test_a_burst_then_one_per_refill() -> None:
    allowances = Allowances(burst=3, refill_ms=100)
    assert [allowances.take("a", 0) for _ in range(4)] == [True, True, True, False]
    assert allowances.take("b", 0)  # another key has its own
    assert not allowances.take("a", 99)
    assert allowances.take("a", 199)  # 0.99 held at 99 ms, one more refilled since
    assert not allowances.take("a", 199)


def test_full_allowances_are_forgotten() -> None:
    allowances = Allowances(burst=2, refill_ms=10)
    allowances.take("a", 0)
    allowances.take("b", 0)
    allowances.take("b", 0)
    allowances.prune(10)  # a is full again, b has one of two
    assert len(allowances) == 1
    allowances.prune(20)
    assert len(allowances) == 0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Allowances(burst=0, refill_ms=10)


@given(
    burst=st.integers(1, 20),
    refill=st.integers(1, 1000),
    times=st.lists(st.integers(0, 100_000), min_size=1, max_size=200),
)
def test_never_more_than_the_burst_plus_what_time_refilled(
    burst: int, refill: int, times: list[int]
) -> None:
    allowances = Allowances(burst=burst, refill_ms=refill)
    times.sort()
    taken = sum(allowances.take("k", t) for t in times)
    assert taken <= burst + (times[-1] - times[0]) // refill
    assert taken >= min(len(times), burst)
