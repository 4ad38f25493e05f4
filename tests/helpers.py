"""Helpers shared by the tests: node factories and peering."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

import trio

import crypto
from node import MemoryNetwork, Network, Node, NodeConfig, TcpNetwork, run_inline


def peer(a: Node, b: Node) -> None:
    """Make ``a`` and ``b`` know each other's address (as `ptth peer add` would)."""
    now = a.clock()
    a.data.peers.add(crypto.parse_token(b.address_token(), now=now), now=now)
    b.data.peers.add(crypto.parse_token(a.address_token(), now=now), now=now)


class NodeFactory:
    """Runs nodes on one shared ``network`` in the fixture's nursery.

    Each node runs as a task of that nursery (pytest-trio runs fixtures in their own
    tasks, so a node's nursery must open and close there); all end with the fixture.

    On the memory network the store runs inline (:func:`node.run_inline`), so tests
    can use the autojump clock without the clock jumping while a thread works.
    """

    def __init__(self, tmp_path: Path, network: Network, nursery: trio.Nursery) -> None:
        self.tmp_path = tmp_path
        self.network = network
        self.nursery = nursery
        self.count = 0

    def config(self, name: str, **overrides: Any) -> NodeConfig:
        tcp = isinstance(self.network, TcpNetwork)
        settings: dict[str, Any] = {"listen": "127.0.0.1:0" if tcp else f"{name}:8470"}
        settings.update(name=name, **overrides)
        return NodeConfig(**settings)

    def session(self, name: str, **overrides: Any) -> contextlib.AbstractAsyncContextManager[Node]:
        """``Node.open`` for node ``name`` (its data dir survives closing and reopening)."""
        memory = isinstance(self.network, MemoryNetwork)
        return Node.open(
            self.tmp_path / name,
            config=self.config(name, **overrides),
            network=self.network,
            rng=random.Random(name),
            run_blocking=run_inline if memory else None,
        )

    async def open(self, name: str | None = None, **overrides: Any) -> Node:
        """Start a node that runs until the fixture ends."""
        self.count += 1
        node: Node = await self.nursery.start(self._run, name or f"n{self.count}", overrides)
        return node

    async def _run(
        self,
        name: str,
        overrides: dict[str, Any],
        *,
        task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with self.session(name, **overrides) as node:
            task_status.started(node)
            await trio.sleep_forever()
