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
from simulations._clock import sleep_until


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


def test_its_sleepers_wake_with_trios_at_the_same_instants_and_can_be_cancelled() -> None:
    woke: list[tuple[str, float]] = []
    passes = _Passes()
    pass_of: dict[str, int] = {}

    async def ours(name: str, when: float) -> None:
        await sleep_until(when)
        woke.append((name, trio.current_time()))
        pass_of[name] = passes.count

    async def theirs(name: str, when: float) -> None:
        await trio.sleep_until(when)
        woke.append((name, trio.current_time()))
        pass_of[name] = passes.count

    async def cut_short(name: str, when: float, limit: float) -> None:
        with trio.move_on_at(limit) as scope:
            await sleep_until(when)
        outcome = "cancelled" if scope.cancelled_caught else "woke"
        woke.append((f"{name} {outcome}", trio.current_time()))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ours, "late", 30.0)
            nursery.start_soon(theirs, "trio", 12.0)
            nursery.start_soon(ours, "first", 11.0)
            nursery.start_soon(ours, "with trio", 12.0)
            nursery.start_soon(cut_short, "cut", 20.0, 15.0)  # its entry stays behind
            nursery.start_soon(cut_short, "free", 16.0, 40.0)
            nursery.start_soon(ours, "past", 5.0)  # a checkpoint, as trio's
        woke.append(("done", trio.current_time()))

    clock = VirtualClock(start=10.0)
    trio.run(main, clock=clock, instruments=[passes])
    # Both kinds of sleeper due at 12.0 wake in the same pass (in the order trio gives
    # a batch); a sleeper cancelled by its scope at 15.0 leaves nothing to wake at 20.0.
    assert woke[0] == ("past", 10.0)
    assert woke[1] == ("first", 11.0)
    assert sorted(woke[2:4]) == [("trio", 12.0), ("with trio", 12.0)]
    assert pass_of["trio"] == pass_of["with trio"] == pass_of["first"] + 1
    assert woke[4:] == [
        ("cut cancelled", 15.0),
        ("free woke", 16.0),
        ("late", 30.0),
        ("done", 30.0),
    ]
    assert clock.current_time() == 30.0


def test_its_sleepers_sleep_as_trios_under_another_clock() -> None:
    async def main() -> float:
        await sleep_until(trio.current_time() + 7.5)
        return trio.current_time()

    clock = trio.testing.MockClock(autojump_threshold=0)
    assert trio.run(main, clock=clock) == 7.5


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
