"""Sized to the simulation: while one runs under collecting_seldom, Python's collector
takes its young generation the less often the more nodes there are (outside it, nothing
changes); a verify_once simulation remembers the chains verified for every node, as many
as its nodes need."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from trio.testing import MockClock

import simulations._simulation
from simulations import collecting_seldom, open_simulation
from simulations._gc import GC_OBJECTS_PER_NODE, SIMULATION_GC_THRESHOLDS, collect_for_nodes


def test_the_young_generation_grows_with_the_nodes_within_collecting_seldom() -> None:
    before = gc.get_threshold()
    collect_for_nodes(10_000)  # outside: nothing changes
    assert gc.get_threshold() == before
    first, *older = SIMULATION_GC_THRESHOLDS
    few = first // GC_OBJECTS_PER_NODE  # as many nodes as the least threshold covers
    with collecting_seldom():
        collect_for_nodes(few - 1)
        assert gc.get_threshold() == SIMULATION_GC_THRESHOLDS
        collect_for_nodes(4 * few)
        assert gc.get_threshold() == (4 * first, *older)
        collect_for_nodes(2 * few)  # fewer again (nodes are never taken away, but)
        assert gc.get_threshold() == (2 * first, *older)
    assert gc.get_threshold() == before


async def test_a_simulation_sizes_the_collection_to_its_nodes(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    before = gc.get_threshold()
    with collecting_seldom((100, 20, 100)):
        async with open_simulation(seed=1, data_dir=tmp_path, fidelity="engine") as sim:
            await sim.add_nodes(3)
            assert gc.get_threshold() == (3 * GC_OBJECTS_PER_NODE, 20, 100)
    assert gc.get_threshold() == before
    # Not within collecting_seldom: a simulation leaves the collector alone.
    async with open_simulation(seed=1, data_dir=tmp_path / "2", fidelity="engine") as sim:
        await sim.add_nodes(3)
        assert gc.get_threshold() == before


async def test_the_chains_verified_once_are_remembered_for_every_node(
    autojump_clock: MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tree holds a chain per node: the memory a verify_once simulation shares grows
    # with its nodes, so that it does not forget them before they come round.
    monkeypatch.setattr(simulations._simulation, "_REMEMBERED", 5)
    per_node = simulations._simulation._CHAINS_PER_NODE
    async with open_simulation(
        seed=1, data_dir=tmp_path, fidelity="engine", verify_once=True
    ) as sim:
        shared = sim._shared_chains
        assert shared is not None
        await sim.add_nodes(1)
        assert shared.limit == max(5, per_node)
        await sim.add_nodes(2)
        assert shared.limit == max(5, 3 * per_node)
    async with open_simulation(seed=1, data_dir=tmp_path / "2", fidelity="engine") as sim:
        assert sim._shared_chains is None  # each node checks each chain for itself
