"""ptth's runtime: the HTTP server and client, the local API and the CLI (docs/architecture.md).

It drives :mod:`mesh` with I/O; :class:`Node` is the object users run and embed::

    async with Node.open(data_dir) as node:
        sent = await node.send(node_id, b"hello", receipt=True)  # in custody: durable
        trace = await node.delivered(sent.id)  # the destination's receipt
        async for message in node.inbox():
            ...
            await message.ack()
        await node.publish("news.tech", b"...")  # to every subscriber of a match
        async with node.subscribe("news.#") as subscription:
            async for publication in subscription:
                ...
"""

from node._chirp import Chirp, Post
from node._datadir import DataDir, PeerBook, default_data_dir
from node._errors import (
    CallFailed,
    CallTimeout,
    DeliveryFailed,
    NodeError,
    NotRunning,
    PeerUnknown,
    Rejected,
)
from node._mesh import NodeStatistics
from node._message import Message, Publication, Published, Sent
from node._net import MemoryNetwork, Network, TcpNetwork, make_transport
from node._node import Node, NodeConfig, run_inline
from node._objects import Answer, CallRequest, Exposed, ObjectSpec
from node._pubsub import DurableSubscription, Subscription
from node._server import Request, Response, Server, ServerConfig

__all__ = [
    "Answer",
    "CallFailed",
    "CallRequest",
    "CallTimeout",
    "Chirp",
    "DataDir",
    "DeliveryFailed",
    "DurableSubscription",
    "Exposed",
    "MemoryNetwork",
    "Message",
    "Network",
    "Node",
    "NodeConfig",
    "NodeError",
    "NodeStatistics",
    "NotRunning",
    "ObjectSpec",
    "PeerBook",
    "PeerUnknown",
    "Post",
    "Publication",
    "Published",
    "Rejected",
    "Request",
    "Response",
    "Sent",
    "Server",
    "ServerConfig",
    "Subscription",
    "TcpNetwork",
    "default_data_dir",
    "make_transport",
    "run_inline",
]
