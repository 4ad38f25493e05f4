"""Shared fixtures: nodes on loopback TCP or on an in-memory network."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from hypothesis import settings

from node import MemoryNetwork, TcpNetwork
from tests.helpers import NodeFactory

# Hypothesis fails an example that takes longer than 200 ms by default: a timed
# assertion, which a loaded machine (CI's two cores, a simulation running beside the
# suite) trips. Examples are bounded by what they do, not by the clock.
settings.register_profile("ptth", deadline=None)
settings.load_profile("ptth")


@pytest.fixture
async def memory_nodes(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    async with trio.open_nursery() as nursery:
        yield NodeFactory(tmp_path, MemoryNetwork(), nursery)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def tcp_nodes(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    async with trio.open_nursery() as nursery:
        yield NodeFactory(tmp_path, TcpNetwork(), nursery)
        nursery.cancel_scope.cancel()
