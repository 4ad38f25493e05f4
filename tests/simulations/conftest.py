"""Fixtures for simulation tests: a fresh simulated network or simulation per test.

Both run in virtual time, so a test that waits a simulated minute takes milliseconds.
pytest-trio takes the clock from the *test's* arguments only, so a test using them
must also take ``autojump_clock``; they refuse to run without it. The seed is fixed; a
failing test that used one prints it, so the run can be repeated exactly.

Tests marked ``slow`` (full-size simulations: an hour of wall time or more) are skipped
unless selected with ``-m slow``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from pathlib import Path

import pytest
import trio
import trio.testing

from simulations import SimNetwork, Simulation, open_simulation

SEED = 20260101


def require_virtual_time() -> None:
    if not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        pytest.fail("a simulation test must take the autojump_clock fixture too")


@pytest.fixture
def seed() -> int:
    """The seed of this test's network or simulation."""
    return SEED


@pytest.fixture
async def network(autojump_clock: trio.testing.MockClock, seed: int) -> AsyncIterator[SimNetwork]:
    """A simulated network with hosts ``a``, ``b`` and ``c``, no links set."""
    require_virtual_time()
    async with trio.open_nursery() as nursery:
        net = SimNetwork(nursery, seed=seed)
        for name in ("a", "b", "c"):
            net.add_host(name)
        yield net
        nursery.cancel_scope.cancel()


@pytest.fixture
async def sim(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, seed: int
) -> AsyncIterator[Simulation]:
    """A fresh simulation with no nodes yet (perfect links unless a test sets some)."""
    require_virtual_time()
    async with open_simulation(seed=seed, data_dir=tmp_path / "sim") as simulation:
        yield simulation


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the ``slow`` tests unless ``-m`` names them."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="a full-size simulation: run it with -m slow")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Name the seed in the report of a failed test that used one."""
    report = yield
    funcargs = getattr(item, "funcargs", {})
    if report.failed and "seed" in funcargs:
        report.sections.append(("simulation", f"seed {funcargs['seed']}"))
    return report
