"""The README's simulation example, word for word, so that it stays true."""

from __future__ import annotations

import trio.testing

from simulations import Link, chain, open_simulation


async def test_chain(autojump_clock: trio.testing.MockClock) -> None:
    async with open_simulation(seed=7, link=Link(latency=0.05)) as sim:
        a, b, c = await sim.add_nodes(3)
        await sim.peer_all(chain([a, b, c]))  # a and c are not peers
        await a.send(c, b"hello")  # in a's custody; routed through b
        await sim.wait_delivered()
        assert [(d.body, d.hops) for d in c.received] == [(b"hello", 2)]
        sim.partition([[a], [b, c]])  # then sim.heal(); sim.add_node(..., nat=True); ...
