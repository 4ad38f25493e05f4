"""Fixtures shared by the node tests."""

from __future__ import annotations

import pytest

from node import MemoryNetwork, Node
from tests.helpers import NodeFactory, peer


@pytest.fixture
async def pair(memory_nodes: NodeFactory) -> tuple[Node, Node, MemoryNetwork]:
    """Two peered nodes on the in-memory network, and the network (for API clients)."""
    a, b = await memory_nodes.open("a"), await memory_nodes.open("b")
    await peer(a, b)
    assert isinstance(memory_nodes.network, MemoryNetwork)
    return a, b, memory_nodes.network
