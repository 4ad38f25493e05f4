"""A flooding neighbour cannot fill a relay's store, nor crowd out an honest one.

R relays for its neighbours with small queue quotas; the destination D is down, so
whatever R takes piles up in its queue. Neighbour F floods R far past the quotas with
frames of many origins (identities it makes up, signing each frame, posting raw signed
requests); neighbour H sends a few honest frames meanwhile. R must answer F 429 with
Retry-After and words naming the quota (or refuse the frames past an origin's share one
by one), never hold more than its quotas (charged as the store charges them, checked in
the database itself after every request), keep taking H's frames, and deliver all it
took once D is back. A stranger is refused from its request's head (403).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import trio
import trio.testing

import crypto
import mesh
from node import MemoryNetwork, Node, make_transport
from node._fabric import sign_request
from tests.helpers import NodeFactory, peer

BODY_SIZE = 500
#: Frames per flooding request, and flooding requests in all.
BATCH = 3
REQUESTS = 60
#: Origins F makes up: it floods with the first alone (until the per-origin quota
#: stops it), then with the others in turn (until the per-neighbour quota does).
ORIGINS = 6
ALONE = 5
#: Honest frames H sends during the flood.
HONEST = 5


def transit_frame(origin: crypto.Identity, dst: crypto.NodeId, now: int, body: bytes) -> bytes:
    return crypto.Frame(
        kind=crypto.Kind.MSG,
        src=origin.node_id,
        id=os.urandom(16),
        ts=now,
        exp=now + 3_600_000,
        hops=8,
        dst=dst,
        body=body,
    ).seal(origin)


class Poster:
    """Raw signed ``POST /ptth/v1/frames`` to ``target``, as node ``identity``."""

    def __init__(self, network: MemoryNetwork, identity: crypto.Identity, target: Node) -> None:
        self.network = network
        self.identity = identity
        self.target = target
        self.url = target.endpoints[0] + "/ptth/v1/frames"

    async def post(self, envelopes: list[bytes]) -> httpx.Response:
        body = mesh.encode_frames([mesh.WireFrame(0, envelope) for envelope in envelopes])
        headers = [
            ("content-type", mesh.CONTENT_TYPE_FRAMES),
            *sign_request(self.identity, "POST", self.url, body, now=self.target.clock() // 1000),
        ]
        async with httpx.AsyncClient(transport=make_transport(self.network)) as client:
            return await client.post(self.url, content=body, headers=headers)


#: What the store charges a queue row (mesh.stored_charge, in SQL).
CHARGE = f"MAX({mesh.MIN_CHARGE}, size + {mesh.ROW_OVERHEAD})"


class Usage:
    """What R's queue holds, read from its database file (not from its own counters)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def query(self, sql: str) -> dict[bytes | None, int]:
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            return {key: int(size) for key, size in db.execute(sql)}
        finally:
            db.close()

    def total(self) -> int:
        return sum(self.query(f"SELECT 0, COALESCE(SUM({CHARGE}), 0) FROM queue").values())

    def by(self, column: str) -> dict[bytes | None, int]:
        return self.query(f"SELECT {column}, SUM({CHARGE}) FROM queue GROUP BY {column}")


async def until(what: str, condition: Callable[[], bool], *, seconds: float = 120) -> None:
    """Wait (virtual time) for ``condition``, which no event signals; fail after
    ``seconds``."""
    with trio.move_on_after(seconds) as scope:
        while not condition():  # noqa: ASYNC110 - polling a state no event announces
            await trio.sleep(0.05)
    assert not scope.cancelled_caught, f"gave up waiting for {what}"


async def test_flooding_neighbour_is_held_to_its_quotas(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    network = memory_nodes.network
    assert isinstance(network, MemoryNetwork)
    origins = [crypto.Identity.generate() for _ in range(ORIGINS)]
    now = int(time.time() * 1000)
    # What R charges for one of them (its envelope and per-row overhead).
    size = mesh.stored_charge(
        len(transit_frame(origins[0], origins[1].node_id, now, os.urandom(BODY_SIZE)))
    )
    # Room for 6 flooding frames per origin, 20 per neighbour, 40 in all (half a frame
    # to spare: a frame's size varies by a byte or two).
    quotas = mesh.Quotas(
        total=40 * size + size // 2,
        per_origin=6 * size + size // 2,
        per_next_hop=40 * size + size // 2,
        per_neighbour=20 * size + size // 2,
    )
    relay = await memory_nodes.open("r", quotas=quotas)
    honest = await memory_nodes.open("h")
    flooder = await memory_nodes.open("f")
    await peer(relay, honest)
    await peer(relay, flooder)
    async with memory_nodes.session("d") as down:
        dst = down.node_id
        await peer(relay, down)
        await until(
            "H to learn a route to D",
            lambda: any(route["destination"] == dst.text for route in honest.routes()),
        )
    # D is down from here: what R takes for it stays in R's queue.

    usage = Usage(memory_nodes.tmp_path / "r" / "store.sqlite3")

    def check_quotas() -> None:
        held = relay.store.statistics().queued_bytes
        assert held == usage.total(), "R's own count differs from its database"
        assert held <= quotas.total
        for src, used in usage.by("src").items():
            assert used <= quotas.per_origin, (src, used)
        for hop, used in usage.by("next_hop").items():
            assert used <= quotas.per_next_hop, (hop, used)
        for came, used in usage.by("came_from").items():
            assert used <= quotas.per_neighbour, (came, used)

    async def taken_by_relay(frame_id: bytes) -> None:
        """Wait until R has taken H's frame (H's trace: R's signed answer, first hop)."""
        with trio.fail_after(60):
            while True:
                trace = await honest.trace(frame_id)
                assert trace is not None
                if trace.first_hop == relay.node_id:
                    return
                await trio.sleep(0.05)

    poster = Poster(network, flooder.identity, relay)
    accepted: set[bytes] = set()  # bodies R took from F
    refusals: list[str] = []
    honest_bodies: list[bytes] = []
    honest_ids: list[bytes] = []
    for i in range(REQUESTS):
        origin = origins[0] if i < ALONE else origins[1 + i % (ORIGINS - 1)]
        now = relay.clock()
        bodies = [os.urandom(BODY_SIZE) for _ in range(BATCH)]
        response = await poster.post([transit_frame(origin, dst, now, b) for b in bodies])
        if response.status_code == 200:
            # Frames past their origin's share are refused one by one (store-full).
            results = mesh.decode_results(response.content, expected=BATCH)
            for body, result in zip(bodies, results, strict=True):
                if result.outcome is mesh.Outcome.ACCEPTED:
                    accepted.add(body)
                else:
                    assert result.code is mesh.Reason.STORE_FULL, result
                    refusals.append(result.words)
        else:
            assert response.status_code == 429, response.text
            assert response.headers["retry-after"].isdigit()
            refusals.append(response.text)
        check_quotas()
        if i % (REQUESTS // HONEST) == REQUESTS // HONEST - 1:
            # H's frame goes through R while R refuses F.
            assert refusals, "F should have been refused by now"
            body = b"honest %d" % len(honest_ids)
            sent = await honest.send(dst, body, receipt=True)
            assert sent.next_hop == relay.node_id
            await taken_by_relay(sent.id)
            check_quotas()
            honest_ids.append(sent.id)
            honest_bodies.append(body)

    # F got far past its quotas and was told which one it hit.
    assert REQUESTS * BATCH * size > 4 * quotas.per_neighbour
    assert len(accepted) * size <= quotas.per_neighbour
    assert len(refusals) >= REQUESTS // 2
    assert any("quota per origin" in words for words in refusals), refusals[:3]
    assert any("quota per neighbour" in words for words in refusals), refusals[:3]
    assert any(f"taken from {flooder.node_id.short}" in words for words in refusals)
    assert len(honest_ids) == HONEST

    # ... and F is still refused (it has less than a batch of room left).
    now = relay.clock()
    response = await poster.post(
        [transit_frame(origins[1], dst, now, os.urandom(BODY_SIZE)) for _ in range(BATCH)]
    )
    assert response.status_code == 429
    assert "quota per neighbour" in response.text

    # A stranger (no neighbour of R) is refused from its request's head.
    stranger = Poster(network, crypto.Identity.generate(), relay)
    response = await stranger.post([transit_frame(stranger.identity, dst, relay.clock(), b"x")])
    assert response.status_code == 403, response.text
    assert "is not a neighbour of this node" in response.text

    # D comes back: everything R took reaches it, the honest frames with receipts.
    async with memory_nodes.session("d") as back:
        with trio.fail_after(300):
            for frame_id in honest_ids:
                trace = await honest.delivered(frame_id)
                assert trace.state == "delivered", trace
        await until("R's queue to drain", lambda: relay.store.statistics().queued_frames == 0)
        received = [message.body async for message in back.inbox(follow=False)]
    assert sorted(received) == sorted([*accepted, *honest_bodies])


async def test_memory_network_host_names_are_case_insensitive(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    """Host names are case-insensitive (httpx lowercases them when it dials): a node
    listening on the memory network as "R:8470" must be reachable at http://R:8470."""
    upper = await memory_nodes.open("R")
    lower = await memory_nodes.open("l")
    await peer(upper, lower)
    sent = await lower.send(upper.node_id, b"hello R", receipt=True)
    with trio.fail_after(30):
        trace = await lower.delivered(sent.id)
    assert trace.state == "delivered", trace
