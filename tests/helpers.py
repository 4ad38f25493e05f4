"""Helpers shared by the tests: node factories, peering, and watching what moves."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import random
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing

import crypto
import mesh
from node import (
    MemoryNetwork,
    Message,
    Network,
    Node,
    NodeConfig,
    TcpNetwork,
    make_transport,
    run_inline,
)
from node._errors import DeliveryFailed
from node._fabric import sign_request
from node._forwarder import FRAMES_PATH, FrameClient, PostFailed


async def peer(a: Node, b: Node) -> None:
    """Make ``a`` and ``b`` neighbours (as `ptth peer add` on each side would)."""
    now = a.clock()
    await a.add_peer_address(crypto.parse_token(b.address_token(), now=now))
    await b.add_peer_address(crypto.parse_token(a.address_token(), now=now))


async def chain(nodes: Sequence[Node]) -> None:
    """Peer each node with the next: a line ``nodes[0] - nodes[1] - ...``."""
    for left, right in itertools.pairwise(nodes):
        await peer(left, right)


async def drain(node: Node) -> list[bytes]:
    """The bodies of every message in ``node``'s inbox now, acknowledged."""
    bodies = []
    async for message in node.inbox(follow=False):
        bodies.append(message.body)
        await message.ack()
    return bodies


async def next_message(node: Node) -> Message:
    """Wait for the oldest message in ``node``'s inbox (left unacknowledged)."""
    async with contextlib.aclosing(node.inbox()) as inbox:
        async for message in inbox:
            return message
    raise AssertionError("inbox(follow=True) ended")  # pragma: no cover


async def messages(node: Node, count: int) -> list[Message]:
    """Wait until ``node``'s inbox has held ``count`` messages; return them (unacked)."""
    got: list[Message] = []
    if count <= 0:
        return got
    async with contextlib.aclosing(node.inbox()) as inbox:
        async for message in inbox:
            got.append(message)
            if len(got) == count:
                break
    return got


async def delivered(sender: Node, dst: Node, body: bytes, **options: Any) -> mesh.Trace:
    """Send ``body`` from ``sender`` to ``dst`` asking for a receipt; wait for it."""
    sent = await sender.send(dst.node_id, body, receipt=True, **options)
    trace = await sender.delivered(sent.id)
    assert trace.state == "delivered", trace
    return trace


def kinds(frames: Sequence[mesh.WireFrame]) -> list[str]:
    """The kind of each frame (``msg``, ``rcpt``, ``ann``; ``?`` if it does not open)."""
    result = []
    for wire in frames:
        try:
            result.append(str(crypto.Frame.open(wire.envelope).kind))
        except crypto.CryptoError:
            result.append("?")
    return result


@dataclasses.dataclass(frozen=True)
class Post:
    """One POST round of a forwarder to a neighbour (every endpoint tried once)."""

    at: float  # trio time when it ended
    dst: crypto.NodeId
    frames: tuple[mesh.WireFrame, ...]
    results: tuple[mesh.Result, ...] | None  # None: it failed
    problem: str | None

    @property
    def kinds(self) -> list[str]:
        return kinds(self.frames)

    @property
    def messages(self) -> int:
        """How many ``msg`` frames it carried."""
        return self.kinds.count("msg")


class Recorder(FrameClient):
    """A node's :class:`FrameClient` that logs every POST round (see :func:`record`)."""

    def __init__(self, inner: FrameClient) -> None:
        super().__init__(
            inner.client, inner.sign_request, inner.clock, inner.on_request, wallet=inner.wallet
        )
        self._preferred = inner._preferred
        self.posts: list[Post] = []
        self._changed = trio.Event()

    async def post(
        self, dst: crypto.NodeId, endpoints: Sequence[str], frames: Sequence[mesh.WireFrame]
    ) -> list[mesh.Result]:
        try:
            results = await super().post(dst, endpoints, frames)
        except (PostFailed, DeliveryFailed) as exc:
            self._log(Post(trio.current_time(), dst, tuple(frames), None, str(exc)))
            raise
        self._log(Post(trio.current_time(), dst, tuple(frames), tuple(results), None))
        return results

    def _log(self, post: Post) -> None:
        self.posts.append(post)
        self._changed.set()
        self._changed = trio.Event()

    def to(self, dst: Node | crypto.NodeId) -> list[Post]:
        node = dst.node_id if isinstance(dst, Node) else dst
        return [post for post in self.posts if post.dst == node]

    def failures(self, dst: Node | crypto.NodeId) -> list[Post]:
        return [post for post in self.to(dst) if post.results is None]

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition`` holds (checked after each POST round)."""
        while not condition():
            await self._changed.wait()


def record(node: Node) -> Recorder:
    """Log every POST round of ``node``'s forwarders from now on."""
    recorder = Recorder(node.mesh.frame_client)
    node.mesh.frame_client = recorder
    return recorder


class NodeFactory:
    """Runs nodes on one shared ``network`` in the fixture's nursery.

    Each node runs as a task of that nursery (pytest-trio runs fixtures in their own
    tasks, so a node's nursery must open and close there); all end with the fixture.

    On the memory network the store runs inline (:func:`node.run_inline`), so tests
    can use the autojump clock without the clock jumping while a thread works; under
    a :class:`trio.testing.MockClock` the nodes' wall clock is virtual too (it starts
    at the real time and moves with trio's clock), so frames and routes expire, and
    signatures age, in virtual time.
    """

    def __init__(self, tmp_path: Path, network: Network, nursery: trio.Nursery) -> None:
        self.tmp_path = tmp_path
        self.network = network
        self.nursery = nursery
        self.count = 0
        self.sessions: dict[str, int] = {}
        self._base_ms: int | None = None

    def config(self, name: str, **overrides: Any) -> NodeConfig:
        tcp = isinstance(self.network, TcpNetwork)
        settings: dict[str, Any] = {"listen": "127.0.0.1:0" if tcp else f"{name}:8470"}
        settings.update(name=name, **overrides)
        return NodeConfig(**settings)

    def clock(self) -> int:
        """Wall time in ms as the nodes see it (virtual under a MockClock)."""
        virtual = int(trio.current_time() * 1000)
        if self._base_ms is None:
            self._base_ms = int(time.time() * 1000) - virtual
        return self._base_ms + virtual

    def session(self, name: str, **overrides: Any) -> contextlib.AbstractAsyncContextManager[Node]:
        """``Node.open`` for node ``name`` (its data dir survives closing and reopening)."""
        memory = isinstance(self.network, MemoryNetwork)
        virtual = memory and isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
        # Seeded per session: a reopened node must not draw the frame ids and request
        # nonces of its previous run again.
        self.sessions[name] = self.sessions.get(name, 0) + 1
        return Node.open(
            self.tmp_path / name,
            config=self.config(name, **overrides),
            network=self.network,
            clock=self.clock if virtual else None,
            rng=random.Random(f"{name}/{self.sessions[name]}"),
            run_blocking=run_inline if memory else None,
        )

    async def open(self, name: str | None = None, **overrides: Any) -> Node:
        """Start a node that runs until the fixture ends."""
        return (await self.start(name, **overrides)).node

    async def start(self, name: str | None = None, **overrides: Any) -> Running:
        """Start a node that runs until the fixture ends or :meth:`Running.stop`."""
        self.count += 1
        running: Running = await self.nursery.start(self._run, name or f"n{self.count}", overrides)
        return running

    async def _run(
        self,
        name: str,
        overrides: dict[str, Any],
        *,
        task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        done = trio.Event()
        try:
            with trio.CancelScope() as scope:
                async with self.session(name, **overrides) as node:
                    task_status.started(Running(node, scope, done))
                    await trio.sleep_forever()
        finally:
            done.set()


@dataclasses.dataclass(frozen=True)
class Running:
    """A node started by :meth:`NodeFactory.start`."""

    node: Node
    scope: trio.CancelScope
    done: trio.Event

    async def stop(self) -> None:
        """Cancel the node (as if its process were killed) and wait until it is gone."""
        self.scope.cancel()
        await self.done.wait()


class Stranger:
    """A node identity (by default nobody's neighbour) posting frames by hand."""

    def __init__(self, network: MemoryNetwork, identity: crypto.Identity | None = None) -> None:
        self.identity = identity or crypto.Identity.generate()
        self.network = network

    def frame(self, dst: crypto.NodeId, now: int, *, body: bytes = b"x") -> bytes:
        return crypto.Frame(
            kind=crypto.Kind.MSG,
            src=self.identity.node_id,
            id=secrets.token_bytes(crypto.FRAME_ID_SIZE),
            ts=now,
            exp=now + 60_000,
            hops=8,
            dst=dst,
            body=body,
        ).seal(self.identity)

    async def post_raw(self, target: Node, envelopes: list[bytes]) -> httpx.Response:
        """POST ``envelopes`` to ``target``'s frames endpoint, signed; the answer."""
        url = target.endpoints[0] + FRAMES_PATH
        body = mesh.encode_frames([mesh.WireFrame(0, e) for e in envelopes])
        headers = [
            ("content-type", mesh.CONTENT_TYPE_FRAMES),
            *sign_request(self.identity, "POST", url, body, now=target.clock() // 1000),
        ]
        async with httpx.AsyncClient(transport=make_transport(self.network)) as client:
            return await client.post(url, content=body, headers=headers)

    async def post(self, target: Node, envelopes: list[bytes]) -> list[mesh.Result]:
        """POST ``envelopes``; it must be taken (200): the per-frame results."""
        response = await self.post_raw(target, envelopes)
        assert response.status_code == 200, response.text
        return mesh.decode_results(response.content, expected=len(envelopes))
