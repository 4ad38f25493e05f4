"""Real, unmodified ptth nodes on a simulated network, in virtual time (docs/architecture.md).

The network (:class:`SimNetwork`) plugs in under each node's httpx client (an httpcore
network backend) and its h11 server (listeners of in-memory streams), so the whole HTTP
stack and all node code run unchanged. It models named hosts, links with latency,
jitter, loss, resets and bandwidth (:class:`Link`), NAT, partitions, and crashes. Time
is virtual (``trio.testing.MockClock(autojump_threshold=0)``, or :class:`VirtualClock`,
which jumps in fewer passes of trio's loop): an hour of a small mesh
runs in seconds (a big one costs what its announces and frames cost to process), and a
seed fixes every random choice.

Sending is custody, as in the node: :meth:`SimNode.send` returns once the origin holds
the frame; the mesh carries it hop by hop. A test::

    async def test_chain(autojump_clock):
        async with open_simulation(seed=7, link=Link(latency=0.05)) as sim:
            a, b, c = await sim.add_nodes(3)
            await sim.peer_all(chain([a, b, c]))
            await a.send(c, b"hello")  # two hops, through b
            [delivery] = await c.wait_received(1)
            assert (delivery.body, delivery.hops) == (b"hello", 2)
            sim.partition([[a], [b, c]])  # a holds what it sends until sim.heal()
            ...

From the shell: ``python -m simulations run chain --nodes 10 --seed 1 --duration 1h``
(``--help`` lists the scenarios), or :func:`run_scenario` from Python.

Two fidelities (:class:`Fidelity`; docs/simulations-fidelity.md): ``full`` runs every
byte through the nodes' HTTP stack; ``engine`` (``open_simulation(fidelity="engine")``,
``--fidelity engine``) hands their frames POSTs from mesh to mesh as events over the
same network model, several times faster, with the same scenarios and report.
"""

from simulations._clock import VirtualClock
from simulations._engine import Fidelity
from simulations._errors import NodeDown, NotVirtualTime, SimulationError
from simulations._gc import collecting_seldom
from simulations._link import MSS, Link
from simulations._network import OUTSIDE, Host, HostNetwork, NetworkStatistics, SimNetwork
from simulations._report import (
    ChirpReport,
    Delivery,
    Ledger,
    Report,
    RevocationReport,
    SentMessage,
    SentPost,
    format_duration,
)
from simulations._scenarios import (
    SCENARIOS,
    Progress,
    Scenario,
    deterministic_scheduling,
    run_scenario,
)
from simulations._simulation import (
    EPOCH_MS,
    NODE_PORT,
    Signatures,
    SimNode,
    Simulation,
    Stores,
    open_simulation,
)
from simulations._stream import SimStream
from simulations._topology import both_ways, chain, complete, random_graph, ring, star
from simulations._traffic import generate_traffic

__all__ = [
    "EPOCH_MS",
    "MSS",
    "NODE_PORT",
    "OUTSIDE",
    "SCENARIOS",
    "ChirpReport",
    "Delivery",
    "Fidelity",
    "Host",
    "HostNetwork",
    "Ledger",
    "Link",
    "NetworkStatistics",
    "NodeDown",
    "NotVirtualTime",
    "Progress",
    "Report",
    "RevocationReport",
    "Scenario",
    "SentMessage",
    "SentPost",
    "Signatures",
    "SimNetwork",
    "SimNode",
    "SimStream",
    "Simulation",
    "SimulationError",
    "Stores",
    "VirtualClock",
    "both_ways",
    "chain",
    "collecting_seldom",
    "complete",
    "deterministic_scheduling",
    "format_duration",
    "generate_traffic",
    "open_simulation",
    "random_graph",
    "ring",
    "run_scenario",
    "star",
]
