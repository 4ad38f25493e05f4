"""ptth's runtime: the HTTP server and client, the local API and the CLI (DESIGN.md §6).

It drives :mod:`mesh` with I/O; :class:`Node` is the object users run and embed::

    async with Node.open(data_dir) as node:
        await node.send(peer_id, b"hello")
        async for message in node.inbox():
            ...
            await message.ack()
"""

from node._datadir import DataDir, PeerBook, default_data_dir
from node._errors import DeliveryFailed, NodeError, NotRunning, PeerUnknown, Rejected
from node._net import MemoryNetwork, Network, TcpNetwork, make_transport
from node._node import BATCH_SIZE, Message, Node, NodeConfig, NodeStatistics, run_inline
from node._server import Request, Response, Server, ServerConfig

__all__ = [
    "BATCH_SIZE",
    "DataDir",
    "DeliveryFailed",
    "MemoryNetwork",
    "Message",
    "Network",
    "Node",
    "NodeConfig",
    "NodeError",
    "NodeStatistics",
    "NotRunning",
    "PeerBook",
    "PeerUnknown",
    "Rejected",
    "Request",
    "Response",
    "Server",
    "ServerConfig",
    "TcpNetwork",
    "default_data_dir",
    "make_transport",
    "run_inline",
]
