"""``VirtualClock``: virtual time that jumps in the pass of trio's loop that finds nothing
to run, and gives a scenario the same report as ``MockClock(autojump_threshold=0)``."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import trio
import trio.testing

from node import NodeConfig
from simulations import (
    SCENARIOS,
    VirtualClock,
    collecting_seldom,
    deterministic_scheduling,
    open_simulation,
)


def test_time_stands_still_while_tasks_run_and_jumps_to_each_deadline() -> None:
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await trio.sleep(seconds)
        woke.append((name, trio.current_time()))

    async def busy() -> None:
        start = trio.current_time()
        for _ in range(1000):  # runnable all along: no time passes
            await trio.lowlevel.checkpoint()
        woke.append(("busy", trio.current_time() - start))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleeper, "b", 2.5)
            nursery.start_soon(sleeper, "a", 0.25)
            nursery.start_soon(sleeper, "c", 3600.0)
            nursery.start_soon(busy)
            with trio.move_on_after(1.0):
                await trio.sleep_forever()
            woke.append(("scope", trio.current_time()))

    clock = VirtualClock(start=10.0)
    trio.run(main, clock=clock)
    assert woke == [
        ("busy", 0.0),
        ("a", 10.25),
        ("scope", 11.0),
        ("b", 12.5),
        ("c", 3610.0),
    ]
    assert clock.current_time() == 3610.0


class _Passes(trio.abc.Instrument):
    """Passes of trio's run loop (each polls for I/O once)."""

    def __init__(self) -> None:
        self.count = 0

    def before_io_wait(self, timeout: float) -> None:
        self.count += 1


def _mesh_report(clock: trio.abc.Clock, passes: _Passes) -> dict[str, Any]:
    """The ``mesh`` scenario's report (all but its wall time) on 16 nodes for two
    virtual minutes, at engine level with the tree, run under ``clock``."""

    async def main(data_dir: Path) -> dict[str, Any]:
        config = NodeConfig(store_sync=False, store_lean=True, tree=True, announce_radius=2)
        async with open_simulation(
            seed=3,
            data_dir=data_dir,
            config=config,
            fidelity="engine",
            signatures="stand-in",
        ) as sim:
            await SCENARIOS["mesh"].play(sim, nodes=16, duration=120.0)
            report = dataclasses.asdict(sim.report(scenario="mesh"))
        del report["wall_seconds"]
        return report

    with (
        tempfile.TemporaryDirectory(prefix="ptth-clock-") as data_dir,
        deterministic_scheduling(3),
        collecting_seldom(),
    ):
        result: dict[str, Any] = trio.run(main, Path(data_dir), clock=clock, instruments=[passes])
    return result


def test_a_scenario_reports_the_same_under_either_clock_in_fewer_passes() -> None:
    mock, virtual = _Passes(), _Passes()
    expected = _mesh_report(trio.testing.MockClock(autojump_threshold=0), mock)
    assert expected["delivered"] > 0
    assert _mesh_report(VirtualClock(), virtual) == expected
    # The jumps made in the pass that found nothing to run: a third fewer passes here.
    assert virtual.count < mock.count * 0.8
