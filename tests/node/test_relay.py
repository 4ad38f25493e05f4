"""Reverse HTTP (docs/architecture.md): attaching to a relay, and everything a relay does.

Most tests run on the in-memory network under the autojump clock, so leases, pings,
poll holds and backoff pass in virtual time. Some play one side by hand (a fake relay,
a fake node, a proxy that strips Upgrade) with h11 over raw streams, to control the
bytes exactly; one case runs on loopback TCP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import h11
import httpx
import pytest
import trio
import trio.testing

import crypto
import mesh
from crypto import _httpsig
from node import MemoryNetwork, Node, Request, Response, Server, make_transport
from node._attach import BACKOFF_MAX, RelayLink
from node._fabric import REQUEST_COMPONENTS, ReplayGuard, sign_request, verify_request
from node._relay import (
    ATTACH_PATH,
    PING_PATH,
    POLL_PREFIX,
    REPLY_PREFIX,
    RelayConfig,
    RelayHost,
    RelayService,
)
from node._server import PrefixedStream
from node._wrap import decode_request, decode_response, encode_request, encode_response
from tests.helpers import NodeFactory, delivered, peer

RELAY = "http://relay:8470"
ATTACH_URL = RELAY + ATTACH_PATH


# -- helpers ---------------------------------------------------------------------------


def network_of(factory: NodeFactory) -> MemoryNetwork:
    assert isinstance(factory.network, MemoryNetwork)
    return factory.network


def visitor(network: MemoryNetwork) -> httpx.AsyncClient:
    """A plain HTTP client on the network: someone who knows only a relay URL."""
    return httpx.AsyncClient(transport=make_transport(network, max_connections=64), timeout=None)


def link_of(node: Node) -> RelayLink:
    (link,) = node.links
    return link


def relayed_url(node: Node | crypto.NodeId, rest: str = "", relay: str = RELAY) -> str:
    node_id = node if isinstance(node, crypto.NodeId) else node.node_id
    return f"{relay}/n/{node_id.text}{rest}"


async def natted(
    factory: NodeFactory, relay: Node, name: str = "nat", *, connections: int = 1, **overrides: Any
) -> Node:
    """A node that is reachable only through ``relay``, once ``connections`` are up."""
    node = await factory.open(name, relays=(relay.address_token(),), **overrides)
    with trio.fail_after(60):
        await link_of(node).wait_connected(connections)
    return node


async def wait_until(condition: Callable[[], bool], *, within: float = 120.0) -> None:
    """Let virtual time pass (autojump clock) until ``condition`` holds.

    For the counters of ``status()`` (failures, last error), which no event announces:
    under the autojump clock this costs no real time, and is how time passes.
    """
    with trio.fail_after(within):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def drain(node: Node) -> list[bytes]:
    bodies = []
    async for message in node.inbox(follow=False):
        bodies.append(message.body)
        await message.ack()
    return bodies


def relay_connections(relay: Node, node: crypto.NodeId) -> int:
    assert relay.relay_service is not None
    attachment = relay.relay_service.attachments.get(node)
    return 0 if attachment is None else len(attachment.connections)


def proxy_status(response: httpx.Response) -> str:
    return str(response.headers.get("proxy-status", ""))


def echo_route(node: Node) -> None:
    """``/echo``: answers with what arrived (method, target, headers, body) as JSON."""

    async def echo(request: Request) -> Response:
        seen = {
            "method": request.method,
            "target": request.target,
            "headers": [list(pair) for pair in request.headers],
            "body": request.body.decode("latin-1"),
            "relayed": request.relayed,
            "url": request.url,
        }
        headers = [("content-type", "application/json"), ("x-from-node", "yes")]
        return Response(200, headers, json.dumps(seen).encode())

    node.add_route("/echo", echo)


def hanging_route(node: Node, path: str, release: trio.Event, started: trio.Event) -> None:
    async def hang(request: Request) -> Response:
        started.set()
        await release.wait()
        return Response.text(200, "finally")

    node.add_route(path, hang)


def signed_attach_headers(
    identity: crypto.Identity | None,
    *,
    upgrade: str | None = "PTTH/1.0",
    url: str = ATTACH_URL,
    host: str = "relay:8470",
) -> list[tuple[str, str]]:
    headers = [("host", host), ("content-length", "0")]
    if upgrade is not None:
        headers += [("upgrade", upgrade), ("connection", "Upgrade")]
    if identity is not None:
        nonce = secrets.token_urlsafe(9)
        headers += sign_request(identity, "POST", url, b"", now=int(time.time()), nonce=nonce)
    return headers


@dataclasses.dataclass
class Answer:
    """A relay's answer to a hand-made attach, and the connection it came on."""

    status: int
    headers: dict[str, str]
    body: bytes
    #: The raw connection, with any bytes read past the answer served first.
    stream: trio.abc.Stream


async def raw_attach(
    network: MemoryNetwork, headers: list[tuple[str, str]], *, also: bytes = b""
) -> Answer:
    """Send an attach request by hand (plus ``also`` in the same write); read the answer."""
    stream = await network.connect("relay", 8470)
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method="POST", target=ATTACH_PATH, headers=headers)
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()) + also)
    head: h11.Response | h11.InformationalResponse | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
            continue
        if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            head = event
            break
        if isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            raise AssertionError(f"unexpected {event!r}")
    assert head is not None
    fields = {k.decode().lower(): v.decode() for k, v in head.headers}
    trailing = bytes(conn.trailing_data[0]) if head.status_code == 101 else b""
    return Answer(head.status_code, fields, body, PrefixedStream(stream, trailing))


class HandServer:
    """The node's side of a reversed connection, played by hand with h11."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER)

    async def next_request(self) -> tuple[h11.Request, bytes]:
        head: h11.Request | None = None
        body = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some(65536)))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return head, body
            else:
                raise AssertionError(f"unexpected {event!r}")


async def relay_and_hand_node(
    factory: NodeFactory, **relay_config: Any
) -> tuple[Node, crypto.Identity, HandServer]:
    """A relay, and a node played by hand attached to it over one reversed connection."""
    relay = await factory.open("relay", relay=RelayConfig(**relay_config))
    identity = crypto.Identity.generate()
    answer = await raw_attach(network_of(factory), signed_attach_headers(identity))
    assert answer.status == 101
    return relay, identity, HandServer(answer.stream)


# -- attaching and serving through the relay ----------------------------------------------


@pytest.mark.parametrize("mode", ["upgrade", "long-poll"])
async def test_frames_through_the_relay(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock, mode: str
) -> None:
    relay = await memory_nodes.open("relay")
    nat = await natted(memory_nodes, relay, relay_mode=mode)
    sender = await memory_nodes.open("sender")
    await peer(sender, nat)
    # The relay URL comes first in the node's address: senders try it first.
    assert nat.endpoints[0] == relayed_url(nat)
    assert link_of(nat).status()["mode"] == mode
    assert link_of(nat).status()["base_url"] == relayed_url(nat)

    with trio.fail_after(30):
        await delivered(sender, nat, b"through the relay")
    assert await drain(nat) == [b"through the relay"]
    # The sender tried the relay URL first, and it answered (the receipt may come
    # back before that answer does: wait until nothing moves).
    await trio.testing.wait_all_tasks_blocked()
    assert sender.mesh.frame_client._preferred[nat.node_id] == relayed_url(nat)
    assert relay.relay_service is not None
    (entry,) = relay.relay_service.statistics()
    assert entry["node"] == nat.node_id.text
    assert entry["requests"] >= 1

    # The node checks the sender's RFC 9421 signature against the relay URL the sender
    # used: a request signed for the node's own address does not verify there.
    frame = sender.new_frame(nat.node_id, b"signed for elsewhere").seal(sender.identity)
    body = mesh.encode_frames([mesh.WireFrame(0, frame)])
    url = relayed_url(nat, "/ptth/v1/frames")
    async with visitor(network_of(memory_nodes)) as client:
        for signed_for, status in [("http://nat:8470/ptth/v1/frames", 401), (url, 200)]:
            headers = [
                ("content-type", mesh.CONTENT_TYPE_FRAMES),
                *sender.sign_request("POST", signed_for, body),
            ]
            response = await client.post(url, content=body, headers=headers)
            assert response.status_code == status, response.text

        # The local API is not served through the relay (nor on the public listener
        # at all), with the right token, while it answers on the API listener.
        auth = {"authorization": f"Bearer {nat.api_token}"}
        response = await client.get(relayed_url(nat, "/api/v1/status"), headers=auth)
        assert response.status_code == 404
        assert "not served on the node's public address" in response.text
        assert nat.api_url is not None
        response = await client.get(nat.api_url + "/status", headers=auth)
        assert response.status_code == 200
        assert response.json()["attachments"][0]["mode"] == mode


async def test_visitor_request_is_reserialised(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay = await memory_nodes.open("relay")
    nat = await natted(memory_nodes, relay)
    echo_route(nat)
    via = f"1.1 ptth-{relay.node_id.short}"
    async with visitor(network_of(memory_nodes)) as client:
        response = await client.get(relayed_url(nat, "/ptth/v1/address"))
        assert response.status_code == 200
        opened = crypto.SignedAddress.open(response.content, now=nat.clock())
        assert opened.token == nat.address_token()
        assert response.headers["via"] == via

        response = await client.post(
            relayed_url(nat, "/echo?x=1&y=%20"),
            content=b"the body",
            headers=[
                (b"forwarded", b'for="6.6.6.6"'),
                (b"via", b"1.0 evil"),
                (b"x-forwarded-for", b"6.6.6.6"),
                (b"ptth-base-url", b"http://evil/n/x"),
                (b"ptth-lease", b"9999"),
                (b"proxy-status", b"fake"),
                (b"connection", b"x-secret"),
                (b"x-secret", b"hop-by-hop, named in Connection"),
                (b"x-custom", b"kept"),
                (b"x-latin", b"caf\xe9"),  # obs-text: legal, and passed on as it is
            ],
        )
    assert response.status_code == 200, response.text
    assert response.headers["x-from-node"] == "yes"
    assert response.headers["via"] == via
    seen = response.json()
    assert seen["method"] == "POST"
    assert seen["target"] == "/echo?x=1&y=%20"
    assert seen["body"] == "the body"
    assert seen["relayed"] is True
    assert seen["url"] == relayed_url(nat, "/echo?x=1&y=%20")
    headers: dict[str, list[str]] = {}
    for name, value in seen["headers"]:
        headers.setdefault(name, []).append(value)
    assert headers["forwarded"] == ['for="memory";host="relay:8470";proto=http']
    assert headers["via"] == [via]
    assert headers["x-custom"] == ["kept"]
    assert headers["x-latin"] == ["caf\xe9"]
    assert headers["content-length"] == ["8"]
    for gone in ("x-forwarded-for", "ptth-base-url", "ptth-lease", "proxy-status", "x-secret"):
        assert gone not in headers, gone
    assert "connection" not in headers


async def test_many_visitors_share_a_pool_of_two(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay = await memory_nodes.open("relay")
    nat = await natted(memory_nodes, relay, connections=2)
    assert relay_connections(relay, nat.node_id) == 2
    echo_route(nat)
    release, started = trio.Event(), trio.Event()
    hanging_route(nat, "/slow", release, started)
    statuses: list[int] = []

    async with visitor(network_of(memory_nodes)) as client:

        async def one(i: int) -> None:
            response = await client.get(relayed_url(nat, f"/echo?{i}"))
            assert response.json()["target"] == f"/echo?{i}"
            statuses.append(response.status_code)

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(one, i)
        assert statuses == [200] * 30

        # One slow exchange holds one connection; the other serves everyone else.
        slow: list[httpx.Response] = []

        async def slow_one() -> None:
            slow.append(await client.get(relayed_url(nat, "/slow")))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_one)
            await started.wait()
            start = trio.current_time()
            async with trio.open_nursery() as fast:
                for i in range(30):
                    fast.start_soon(one, i)
            assert trio.current_time() - start < 1
            assert statuses == [200] * 60
            # A long exchange (here past a ping interval) is not disturbed by pings.
            await trio.sleep(26)
            assert not slow
            release.set()
        assert slow[0].status_code == 200
        assert slow[0].text == "finally\n"
    assert relay_connections(relay, nat.node_id) == 2


async def test_busy_node_is_503(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay = await memory_nodes.open("relay", relay=RelayConfig(visitor_wait=2))
    nat = await natted(memory_nodes, relay, relay_pool=1)
    release, started = trio.Event(), trio.Event()
    hanging_route(nat, "/slow", release, started)
    async with visitor(network_of(memory_nodes)) as client, trio.open_nursery() as nursery:
        nursery.start_soon(client.get, relayed_url(nat, "/slow"))
        await started.wait()
        start = trio.current_time()
        response = await client.get(relayed_url(nat, "/ptth/v1/address"))
        assert trio.current_time() - start == pytest.approx(2)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert "error=connection_limit_reached" in proxy_status(response)
        assert "no free connection" in response.text
        release.set()


def fake_relay_token(endpoint: str = "http://fakerelay:8470") -> str:
    """The address token of a relay played by hand (signed by a throwaway identity)."""
    exp = int(time.time() * 1000) + 3_600_000
    identity = crypto.Identity.generate()
    return crypto.sign_address(identity, seq=1, endpoints=[endpoint], exp=exp).token


async def fake_relay(
    network: MemoryNetwork,
    node_ready: trio.Event,
    result: dict[str, Any],
    preamble: bytes,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A relay played by hand: answers the attach with the 101 *and*, in the same
    write, a first request on the reversed connection; records what comes back."""
    (listener,) = await network.open_listeners("fakerelay", 8470)
    async with listener, trio.open_nursery() as others:
        task_status.started()
        while True:
            stream = await listener.accept()
            server = HandServer(stream)
            attach, _ = await server.next_request()
            if attach.target == ATTACH_PATH.encode():
                break
            # The node's forwarder greeting its relay (a neighbour): not played here.
            await stream.aclose()
        others.start_soon(hang_up_on_everyone, listener)
        async with stream:
            headers = [(k.decode().lower(), v.decode()) for k, v in attach.headers]
            result["attach"] = attach
            result["node"] = verify_request(
                "POST", "http://fakerelay:8470" + ATTACH_PATH, headers, b"", now=int(time.time())
            )
            await node_ready.wait()
            client = h11.Connection(h11.CLIENT)
            first = client.send(
                h11.Request(method="OPTIONS", target=PING_PATH, headers=[("host", "x")])
            ) + client.send(h11.EndOfMessage())
            switch = (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/1.0\r\n"
                b"Connection: Upgrade\r\nPTTH-Lease: 60\r\n"
                b"PTTH-Base-URL: " + result["base_url"].encode() + b"\r\n\r\n"
            )
            await stream.send_all(preamble + switch + first)
            # The bytes after the 101 are that other conversation, whatever h11 kept.
            if server.conn.trailing_data[0]:  # (receive_data(b"") would mean EOF)
                client.receive_data(bytes(server.conn.trailing_data[0]))
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(bytes(await stream.receive_some(65536)))
                elif isinstance(event, h11.Response):
                    result["status"] = event.status_code
                elif isinstance(event, h11.EndOfMessage):
                    break
        others.cancel_scope.cancel()


async def hang_up_on_everyone(listener: trio.abc.Listener[trio.abc.Stream]) -> None:
    while True:
        await (await listener.accept()).aclose()


@pytest.mark.parametrize("preamble", [b"", b"HTTP/1.1 100 Continue\r\n\r\n"])
async def test_bytes_with_the_101_belong_to_the_reversed_connection(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock, preamble: bytes
) -> None:
    result: dict[str, Any] = {}
    node_ready = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake_relay, network_of(memory_nodes), node_ready, result, preamble)
        nat = await memory_nodes.open(
            "nat", relays=(fake_relay_token(),), relay_mode="upgrade", relay_pool=1
        )
        result["base_url"] = f"http://fakerelay:8470/n/{nat.node_id.text}"
        node_ready.set()
    # The fake relay saw a signed attach from the node, and the node answered the
    # request that arrived in the same packet as the 101.
    attach = result["attach"]
    assert (attach.method, attach.target) == (b"POST", ATTACH_PATH.encode())
    fields = {k.lower(): v for k, v in attach.headers}
    assert fields[b"upgrade"] == b"PTTH/1.0"
    assert fields[b"connection"].lower() == b"upgrade"
    assert result["node"] == nat.node_id
    assert result["status"] == 204
    assert link_of(nat).status_info.base_url == result["base_url"]
    assert link_of(nat).status_info.lease == 60


async def serve_by_hand(
    network: MemoryNetwork,
    handle: Callable[[trio.abc.Stream], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``fakerelay:8470``: ``handle`` each connection (the node retries after failures)."""
    (listener,) = await network.open_listeners("fakerelay", 8470)
    async with listener, trio.open_nursery() as nursery:
        task_status.started()
        while True:
            stream = await listener.accept()

            async def one(stream: trio.abc.Stream) -> None:
                async with stream:
                    await handle(stream)

            nursery.start_soon(one, stream)


@pytest.mark.parametrize(
    ("mode", "scheme", "behaviour", "error"),
    [
        ("upgrade", "http", "hang up", "the relay closed the connection without answering"),
        ("upgrade", "http", "say nothing", "did not answer the attach in time"),
        ("upgrade", "https", "hang up at once", "cannot reach https://fakerelay:8470"),
        (
            "upgrade",
            "http",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nno",
            "refused the attach: 200 no",
        ),
        ("upgrade", "http", b"HTTP/1.1 banana\r\n\r\n", "attach to http://fakerelay:8470 failed"),
        (
            "auto",
            "http",
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            "not a poll session",
        ),
        (
            "auto",
            "http",
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1\r\n\r\n[",
            "not a poll session",
        ),
    ],
)
async def test_node_against_a_misbehaving_relay(
    memory_nodes: NodeFactory,
    autojump_clock: trio.testing.MockClock,
    mode: str,
    scheme: str,
    behaviour: str | bytes,
    error: str,
) -> None:
    async def handle(stream: trio.abc.Stream) -> None:
        if behaviour == "hang up at once":
            return
        await HandServer(stream).next_request()
        if behaviour == "say nothing":
            await trio.sleep_forever()
        elif isinstance(behaviour, bytes):
            await stream.send_all(behaviour)

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_by_hand, network_of(memory_nodes), handle)
        token = fake_relay_token(f"{scheme}://fakerelay:8470")
        nat = await memory_nodes.open("nat", relays=(token,), relay_mode=mode, relay_pool=1)
        link = link_of(nat)
        await wait_until(lambda: link.status_info.failures >= 2)
        assert error in str(link.status_info.last_error)
        assert link.status_info.connections == 0
        nursery.cancel_scope.cancel()


async def test_bytes_after_the_attach_request_belong_to_the_reversed_connection(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # The relay side of the same rule: what the node sends right behind its attach is
    # the start of the new connection (here, an eager answer to the first request).
    await memory_nodes.open("relay")
    network = network_of(memory_nodes)
    identity = crypto.Identity.generate()
    eager = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-eager: 1\r\n\r\neager"
    answer = await raw_attach(network, signed_attach_headers(identity), also=eager)
    assert answer.status == 101
    async with answer.stream, visitor(network) as client:
        response = await client.get(relayed_url(identity.node_id, "/anything"))
    assert (response.status_code, response.text) == (200, "eager")
    assert response.headers["x-eager"] == "1"


# -- the relay and the node coming and going --------------------------------------------


@pytest.mark.parametrize("mode", ["upgrade", "long-poll"])
async def test_node_reattaches_after_the_relay_restarts(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock, mode: str
) -> None:
    async with memory_nodes.session("relay") as relay:
        nat = await natted(memory_nodes, relay, connections=2, relay_mode=mode)
        sender = await memory_nodes.open("sender")
        await peer(sender, nat)
        await delivered(sender, nat, b"before")
    link = link_of(nat)
    await wait_until(lambda: link.status_info.connections == 0)
    await trio.sleep(20)  # the relay is down for 20 s; the node backs off meanwhile
    assert link.status_info.failures >= 3
    assert "cannot reach http://relay:8470" in str(link.status_info.last_error)
    async with memory_nodes.session("relay") as relay:
        back = trio.current_time()
        with trio.fail_after(BACKOFF_MAX):
            await link.wait_connected(2)
        assert trio.current_time() - back <= BACKOFF_MAX
        assert link.status_info.last_error is None
        assert link.status_info.mode == mode
        await delivered(sender, nat, b"after")
        # (The sender may take nat's own address now: on this network it answers.)
        async with visitor(network_of(memory_nodes)) as client:
            response = await client.get(relayed_url(nat, "/ptth/v1/address"))
        assert response.status_code == 200
        assert relay.relay_service is not None
        assert relay.relay_service.statistics()[0]["requests"] >= 1
    assert await drain(nat) == [b"before", b"after"]


async def test_detached_node_within_and_after_its_lease(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay = await memory_nodes.open("relay", relay=RelayConfig(visitor_wait=3))
    network = network_of(memory_nodes)
    token = relay.address_token()
    async with memory_nodes.session("nat", relays=(token,)) as nat:
        await link_of(nat).wait_connected(2)
        nat_id = nat.node_id
        lease = link_of(nat).status_info.lease
    assert lease == 60
    address = relayed_url(nat_id, "/ptth/v1/address")
    async with visitor(network) as client:
        # Within the lease: the URL space is held; visitors wait a little, then 503.
        start = trio.current_time()
        response = await client.get(address)
        assert response.status_code == 503, response.text
        assert trio.current_time() - start == pytest.approx(3)
        assert response.headers["retry-after"] == "3"
        status = proxy_status(response)
        assert status.startswith(f"ptth-{relay.node_id.short}; error=destination_unavailable")
        assert "detached" in response.text

        # A visitor who is waiting when the node comes back is served.
        answers: list[httpx.Response] = []
        answered = trio.Event()

        async def wait_for_it() -> None:
            answers.append(await client.get(address))
            answered.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_it)
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            async with memory_nodes.session("nat", relays=(token,)):
                await answered.wait()
                assert trio.current_time() - start < 3
        gone_at = trio.current_time()
        assert answers[0].status_code == 200, answers[0].text

        # After the lease: the relay no longer knows the node. (The lease runs from
        # when the relay noticed the node had gone: at the latest, its next ping.)
        config = RelayConfig()
        noticed = gone_at + config.ping_interval + config.ping_timeout
        await trio.sleep(noticed + lease + 1 - trio.current_time())
        response = await client.get(address)
        assert response.status_code == 404
        assert "error=destination_not_found" in proxy_status(response)
        assert "is not attached here" in response.text

        stranger = crypto.Identity.generate().node_id
        response = await client.get(relayed_url(stranger, "/ptth/v1/address"))
        assert response.status_code == 404
        assert "error=destination_not_found" in proxy_status(response)
        for bad in ("/n/not-a-node-id/x", "/n/", '/n/"quoted"/x', "/n/" + "a" * 60):
            response = await client.get(RELAY + bad)
            assert response.status_code == 404, bad
            assert "error=destination_not_found" in proxy_status(response)
            assert "bad node id" in response.text


async def test_dead_connections_are_not_used(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # The node goes away without the relay noticing (nothing was being exchanged):
    # a visitor must get the relay's 503, not a broken exchange on a dead connection.
    relay = await memory_nodes.open("relay", relay=RelayConfig(visitor_wait=1))
    async with memory_nodes.session("nat", relays=(relay.address_token(),)) as nat:
        await link_of(nat).wait_connected(2)
        nat_id = nat.node_id
    assert relay_connections(relay, nat_id) == 2
    async with visitor(network_of(memory_nodes)) as client:
        response = await client.get(relayed_url(nat_id, "/ptth/v1/address"))
    assert response.status_code == 503, response.text
    assert "error=destination_unavailable" in proxy_status(response)
    assert relay_connections(relay, nat_id) == 0


# -- who may attach -----------------------------------------------------------------


async def test_attach_needs_the_nodes_own_signature(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay = await memory_nodes.open("relay")
    network = network_of(memory_nodes)
    x, y = crypto.Identity.generate(), crypto.Identity.generate()

    answer = await raw_attach(network, signed_attach_headers(None))
    assert answer.status == 401
    assert b"not authenticated" in answer.body
    await answer.stream.aclose()

    # Signed for another URL, or with a broken signature.
    answer = await raw_attach(network, signed_attach_headers(x, url="http://other/ptth/v1/attach"))
    assert answer.status == 401
    await answer.stream.aclose()
    headers = signed_attach_headers(x)
    forged = [
        (k, v[:12] + ("A" if v[12] != "A" else "B") + v[13:]) if k == "signature" else (k, v)
        for k, v in headers
    ]
    answer = await raw_attach(network, forged)
    assert answer.status == 401
    await answer.stream.aclose()

    # Y signing with its own key but claiming X's keyid: the id is the key.
    message = _httpsig.Message(
        headers=[("content-digest", dict(headers)["content-digest"])],
        method="POST",
        target_uri=ATTACH_URL,
    )
    claimed = _httpsig.sign_message(
        message,
        signing_key=y.seed,
        keyid=x.node_id.text,
        created=int(time.time()),
        components=REQUEST_COMPONENTS,
        nonce="n1",
    )
    squat = [(k, v) for k, v in headers if k not in ("signature", "signature-input")] + claimed
    answer = await raw_attach(network, squat)
    assert answer.status == 401
    await answer.stream.aclose()

    # None of that attached anyone. Y attaches as itself and gets Y's URL space: what
    # comes for X's URL never reaches Y (the URL space is named by the signer's key).
    assert relay.relay_service is not None
    assert relay.relay_service.attachments == {}
    answer = await raw_attach(network, signed_attach_headers(y))
    assert answer.status == 101
    assert answer.headers["ptth-base-url"] == relayed_url(y.node_id)
    hand = HandServer(answer.stream)
    async with answer.stream, visitor(network) as client:
        response = await client.get(relayed_url(x.node_id, "/ptth/v1/address"))
        assert response.status_code == 404
        assert "error=destination_not_found" in proxy_status(response)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.get, relayed_url(y.node_id, "/for-y"))
            request, _ = await hand.next_request()  # the first thing Y is sent
            assert request.target == b"/for-y"
            nursery.cancel_scope.cancel()

    # X's own attach, replayed by someone who saw it, is refused.
    replayed = signed_attach_headers(x, upgrade=None)
    answer = await raw_attach(network, replayed)
    assert answer.status == 200
    await answer.stream.aclose()
    answer = await raw_attach(network, replayed)
    assert answer.status == 401
    assert b"replayed" in answer.body
    await answer.stream.aclose()


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        ("PTTH/1.0", "PTTH/1.0"),
        ("PTTH/0.9", "PTTH/0.9"),
        ("ptth/1.0", "PTTH/1.0"),
        ("Ptth/0.9", "PTTH/0.9"),
        ("websocket, ptth/1.0", "PTTH/1.0"),
        ("websocket", None),
        ("h2c", None),
    ],
)
async def test_upgrade_tokens(
    memory_nodes: NodeFactory,
    autojump_clock: trio.testing.MockClock,
    offered: str,
    chosen: str | None,
) -> None:
    relay = await memory_nodes.open("relay")
    identity = crypto.Identity.generate()
    answer = await raw_attach(
        network_of(memory_nodes), signed_attach_headers(identity, upgrade=offered)
    )
    async with answer.stream:
        if chosen is None:
            assert answer.status == 400
            assert b"speaks PTTH/1.0" in answer.body
            assert relay_connections(relay, identity.node_id) == 0
        else:
            assert answer.status == 101
            assert answer.headers["upgrade"] == chosen
            assert answer.headers["connection"].lower() == "upgrade"
            assert answer.headers["ptth-lease"] == "60"
            await wait_until(lambda: relay_connections(relay, identity.node_id) == 1)
    if chosen is None:
        # A refused attach holds no URL space: visitors learn at once it is unknown.
        async with visitor(network_of(memory_nodes)) as client:
            response = await client.get(relayed_url(identity.node_id, "/x"))
        assert response.status_code == 404


async def test_attach_must_be_post(memory_nodes: NodeFactory) -> None:
    await memory_nodes.open("relay")
    async with visitor(network_of(memory_nodes)) as client:
        response = await client.get(ATTACH_URL)
    assert response.status_code == 405


async def test_lease_is_bounded(memory_nodes: NodeFactory) -> None:
    await memory_nodes.open("relay", relay=RelayConfig(max_lease=100))
    network = network_of(memory_nodes)
    for asked, granted in [("30", "30"), ("1000", "100"), ("0", "1"), ("soon", "60")]:
        headers = [*signed_attach_headers(crypto.Identity.generate()), ("ptth-lease", asked)]
        answer = await raw_attach(network, headers)
        assert answer.headers["ptth-lease"] == granted
        await answer.stream.aclose()


# -- limits and policy ----------------------------------------------------------------


async def test_connections_per_node_limit(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay = await memory_nodes.open("relay", relay=RelayConfig(max_connections_per_node=1))
    nat = await natted(memory_nodes, relay, relay_pool=2)
    link = link_of(nat)
    await wait_until(lambda: link.status_info.failures >= 2)
    assert "429" in str(link.status_info.last_error)
    assert "limit 1" in str(link.status_info.last_error)
    assert link.status_info.connections == 1
    assert relay_connections(relay, nat.node_id) == 1
    sender = await memory_nodes.open("sender")
    await peer(sender, nat)
    await delivered(sender, nat, b"one is enough")
    assert await drain(nat) == [b"one is enough"]


async def test_nodes_limit(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay = await memory_nodes.open("relay", relay=RelayConfig(max_nodes=1))
    async with memory_nodes.session("first", relays=(relay.address_token(),)) as first:
        await link_of(first).wait_connected(2)
        second = await memory_nodes.open("second", relays=(relay.address_token(),))
        await wait_until(lambda: link_of(second).status_info.failures >= 1)
        words = "full: 1 nodes attached (limit 1), none idle long enough to give way"
        assert f"503 relay: {words}" in str(link_of(second).status_info.last_error)
        answer = await raw_attach(
            network_of(memory_nodes), signed_attach_headers(crypto.Identity.generate())
        )
        assert answer.status == 503
        assert answer.headers["retry-after"] == "30"
        status = f'ptth-{relay.node_id.short}; error=connection_limit_reached; details="{words}"'
        assert answer.headers["proxy-status"] == status
        await answer.stream.aclose()
    # Once the first node is gone (the relay notices by its next ping), its place goes
    # to the second (which comes back within 1.2 x Retry-After), before its lease is over.
    with trio.fail_after(25 + 10 + 30 * 1.2 + 1):
        await link_of(second).wait_connected(1)


async def test_relaying_off(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay = await memory_nodes.open("relay", relay=RelayConfig(policy="off"))
    answer = await raw_attach(
        network_of(memory_nodes), signed_attach_headers(crypto.Identity.generate())
    )
    assert answer.status == 403
    assert b"does not relay" in answer.body
    await answer.stream.aclose()
    for mode in ("upgrade", "long-poll"):
        nat = await memory_nodes.open(
            f"nat-{mode}", relays=(relay.address_token(),), relay_mode=mode
        )
        await wait_until(lambda: link_of(nat).status_info.failures >= 1)  # noqa: B023
        assert "refused the attach: 403" in str(link_of(nat).status_info.last_error)


async def test_relaying_for_peers_only(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay = await memory_nodes.open("relay", relay=RelayConfig(policy="peers"))
    answer = await raw_attach(
        network_of(memory_nodes), signed_attach_headers(crypto.Identity.generate())
    )
    assert answer.status == 403
    assert b"serves its peers only" in answer.body
    await answer.stream.aclose()
    nat = await memory_nodes.open("nat", relays=(relay.address_token(),))
    link = link_of(nat)
    await wait_until(lambda: link.status_info.failures >= 1)
    assert "serves its peers only" in str(link.status_info.last_error)
    await peer(relay, nat)  # now it is one: the next attempt (after backoff) is let in
    with trio.fail_after(BACKOFF_MAX * 1.5):
        await link.wait_connected(2)


async def test_a_blocked_node_cannot_attach(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay = await memory_nodes.open("relay")
    stranger = crypto.Identity.generate()
    await relay.change_policy("block", stranger.node_id)
    answer = await raw_attach(network_of(memory_nodes), signed_attach_headers(stranger))
    assert answer.status == 403
    assert f"node {stranger.node_id.short} is blocked here".encode() in answer.body
    await answer.stream.aclose()
    # Others attach as before.
    nat = await memory_nodes.open("nat", relays=(relay.address_token(),))
    with trio.fail_after(30):
        await link_of(nat).wait_connected(2)


# -- failures of the node's answers ------------------------------------------------------


@pytest.mark.parametrize("mode", ["upgrade", "long-poll"])
async def test_reply_timeout_is_504(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock, mode: str
) -> None:
    relay = await memory_nodes.open("relay", relay=RelayConfig(reply_timeout=5))
    nat = await natted(memory_nodes, relay, relay_mode=mode, connections=2)
    release, started = trio.Event(), trio.Event()
    hanging_route(nat, "/hang", release, started)
    async with visitor(network_of(memory_nodes)) as client:
        start = trio.current_time()
        response = await client.get(relayed_url(nat, "/hang"))
        assert trio.current_time() - start == pytest.approx(5)
        assert response.status_code == 504
        assert "error=http_response_timeout" in proxy_status(response)
        assert "did not answer within 5 s" in response.text
        # Others are still served.
        response = await client.get(relayed_url(nat, "/ptth/v1/address"))
        assert response.status_code == 200
    release.set()


@pytest.mark.parametrize(
    ("answer", "status", "words"),
    [
        (b"HTTP/1.1 banana\r\n\r\n", 502, "bad answer from"),
        (b"", 502, "hung up without answering"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 200, "ok"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 200, "ok"),
    ],
)
async def test_answers_of_a_node_played_by_hand(
    memory_nodes: NodeFactory,
    autojump_clock: trio.testing.MockClock,
    answer: bytes,
    status: int,
    words: str,
) -> None:
    relay, identity, hand = await relay_and_hand_node(memory_nodes)
    answers: list[httpx.Response] = []
    async with visitor(network_of(memory_nodes)) as client, trio.open_nursery() as nursery:

        async def visit() -> None:
            answers.append(await client.get(relayed_url(identity.node_id, "/x?y")))

        nursery.start_soon(visit)
        request, _ = await hand.next_request()
        assert (request.method, request.target) == (b"GET", b"/x?y")
        if answer:
            await hand.stream.send_all(answer)
        else:
            await hand.stream.aclose()
    (response,) = answers
    assert response.status_code == status
    assert words in response.text
    if status == 502:
        assert "error=http_protocol_error" in proxy_status(response)
        await wait_until(lambda: relay_connections(relay, identity.node_id) == 0)
    else:
        assert relay_connections(relay, identity.node_id) == 1
        assert "proxy-status" not in response.headers
    await hand.stream.aclose()


@pytest.mark.parametrize("then", ["hang up", "stall"])
async def test_body_that_breaks_off_reaches_the_visitor_broken(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock, then: str
) -> None:
    relay, identity, hand = await relay_and_hand_node(memory_nodes, reply_timeout=5)
    async with visitor(network_of(memory_nodes)) as client, trio.open_nursery() as nursery:

        async def visit() -> None:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(relayed_url(identity.node_id, "/x"))

        nursery.start_soon(visit)
        await hand.next_request()
        await hand.stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        if then == "hang up":
            await hand.stream.aclose()
    await wait_until(lambda: relay_connections(relay, identity.node_id) == 0)
    await hand.stream.aclose()


async def test_node_body_over_the_limit_is_cut_off(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay = await memory_nodes.open("relay", relay=RelayConfig(max_body_size=1000))

    async def big(request: Request) -> Response:
        return Response(200, [], b"x" * 5000)

    nat = await natted(memory_nodes, relay, connections=2)
    nat.add_route("/big", big)
    async with visitor(network_of(memory_nodes)) as client:
        # Not a truncated body passed off as whole: the visitor sees it broken off.
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(relayed_url(nat, "/big"))
        response = await client.get(relayed_url(nat, "/ptth/v1/address"))
        assert response.status_code == 200


async def test_relay_shutdown_with_an_exchange_in_flight(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    release, started = trio.Event(), trio.Event()
    outcome: list[str] = []
    async with visitor(network_of(memory_nodes)) as client, trio.open_nursery() as nursery:
        async with memory_nodes.session("relay") as relay:
            nat = await natted(memory_nodes, relay, connections=2)
            hanging_route(nat, "/hang", release, started)

            async def visit() -> None:
                try:
                    response = await client.get(relayed_url(nat, "/hang"))
                    outcome.append(f"{response.status_code} {response.text}")
                except httpx.HTTPError as exc:
                    outcome.append(type(exc).__name__)
                answered.append(trio.current_time())

            answered: list[float] = []
            nursery.start_soon(visit)
            await started.wait()
            start = trio.current_time()
        # Reversed connections end with the relay (they are long-lived streams to its
        # server), also one with an exchange in flight: its visitor is told at once.
        assert answered[0] - start < 1
    assert outcome == [
        f"502 relay: bad answer from {nat.node_id.short}: the connection was closed\n"
    ]
    release.set()
    await wait_until(lambda: "cannot reach" in str(link_of(nat).status_info.last_error))


async def test_visitor_gone_before_the_answer(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay = await memory_nodes.open("relay", relay=RelayConfig(visitor_wait=1))
    nat = await natted(memory_nodes, relay, relay_pool=1)
    release, started = trio.Event(), trio.Event()
    hanging_route(nat, "/hang", release, started)
    network = network_of(memory_nodes)
    stream = await network.connect("relay", 8470)
    target = relayed_url(nat, "/hang").removeprefix(RELAY)
    await stream.send_all(f"GET {target} HTTP/1.1\r\nhost: relay:8470\r\n\r\n".encode())
    await started.wait()
    await stream.aclose()  # the visitor gives up
    release.set()
    await trio.sleep(1)
    async with visitor(network) as client:
        response = await client.get(relayed_url(nat, "/ptth/v1/address"))
    assert response.status_code == 200, response.text


# -- keep-alive ---------------------------------------------------------------------------


async def test_idle_connections_are_pinged(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay = await memory_nodes.open("relay")
    nat = await natted(memory_nodes, relay, connections=2)
    assert nat.server is not None
    # The relay's greeting (its announce and routes) reaches nat over a reversed
    # connection once nat attaches and greets it (a greeting that came before the
    # attachment is retried; one held back by the rate limit goes a flood interval,
    # 5 s, after the first): let those exchanges finish first, well within a ping
    # interval.
    await trio.sleep(10)
    served = nat.server.requests_served
    await trio.sleep(26)
    assert nat.server.requests_served == served + 2  # one OPTIONS ping on each
    # Pings keep the connections alive for as long as it takes: no re-attach, ever.
    await trio.sleep(300)
    assert nat.server.requests_served >= served + 2 * 12
    assert link_of(nat).status_info.attaches == 2
    assert relay_connections(relay, nat.node_id) == 2


async def test_each_connection_is_pinged_when_it_is_idle(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # Traffic on some connections must not keep the others from being pinged: the
    # node closes a connection it has heard nothing on for 60 s.
    relay = await memory_nodes.open("relay")
    nat = await natted(memory_nodes, relay, relay_pool=3, connections=3)
    async with visitor(network_of(memory_nodes)) as client:
        for _ in range(12):
            response = await client.get(relayed_url(nat, "/ptth/v1/address"))
            assert response.status_code == 200
            await trio.sleep(24)
    assert link_of(nat).status_info.attaches == 3


async def test_silent_connection_is_dropped(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay, identity, hand = await relay_and_hand_node(
        memory_nodes, ping_interval=25, ping_timeout=10
    )
    async with hand.stream:
        assert relay_connections(relay, identity.node_id) == 1
        await trio.sleep(24.9)
        assert relay_connections(relay, identity.node_id) == 1
        await trio.sleep(10.2)  # the hand-made node never reads, never answers the ping
        assert relay_connections(relay, identity.node_id) == 0
        # It was pinged, and then hung up on.
        request, _ = await hand.next_request()
        assert (request.method, request.target) == (b"OPTIONS", PING_PATH.encode())
        assert await hand.stream.receive_some(65536) == b""


# -- through a proxy that strips Upgrade ---------------------------------------------


@contextlib.asynccontextmanager
async def upgrade_stripping_proxy(network: MemoryNetwork) -> AsyncIterator[None]:
    """``proxy:8470``: forwards every request to the relay without Upgrade/Connection,
    as many proxies do. Host is kept (the relay checks signatures against it)."""
    dropped = {"upgrade", "connection", "content-length", "transfer-encoding", "keep-alive"}
    async with httpx.AsyncClient(transport=make_transport(network), timeout=None) as client:

        async def forward(request: Request) -> Response:
            headers = [(k, v) for k, v in request.headers if k not in dropped]
            answer = await client.request(
                request.method, RELAY + request.target, headers=headers, content=request.body
            )
            kept = [(k, v) for k, v in answer.headers.multi_items() if k not in dropped]
            return Response(answer.status_code, kept, answer.content)

        listeners = await network.open_listeners("proxy", 8470)
        async with trio.open_nursery() as nursery:
            await nursery.start(Server(forward).serve, listeners)
            yield
            nursery.cancel_scope.cancel()


async def test_auto_mode_falls_back_to_long_poll_through_a_proxy(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    network = network_of(memory_nodes)
    async with upgrade_stripping_proxy(network):
        relay = await memory_nodes.open("relay", public_url="http://proxy:8470")
        nat = await natted(memory_nodes, relay, relay_mode="auto", connections=2)
        link = link_of(nat)
        assert link.status()["mode"] == "long-poll"
        assert link.status()["base_url"] == relayed_url(nat, relay="http://proxy:8470")
        assert nat.endpoints[0] == relayed_url(nat, relay="http://proxy:8470")
        sender = await memory_nodes.open("sender")
        await peer(sender, nat)
        await delivered(sender, nat, b"via a proxy")
        assert await drain(nat) == [b"via a proxy"]
        assert link.status_info.failures == 0


async def test_auto_mode_tries_upgrade_again_when_it_reattaches(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    network = network_of(memory_nodes)
    async with (
        upgrade_stripping_proxy(network),
        memory_nodes.session("relay", public_url="http://proxy:8470") as relay,
    ):
        nat = await natted(memory_nodes, relay, relay_mode="auto", connections=2)
        link = link_of(nat)
        assert link.status()["mode"] == "long-poll"
    # The proxy is gone from the path: the relay itself now answers at its address.
    async with memory_nodes.session(
        "relay", listen="proxy:8470", public_url="http://proxy:8470"
    ) as relay:
        await wait_until(lambda: link.status()["mode"] == "upgrade")
        await link.wait_connected(2)
        sender = await memory_nodes.open("sender")
        await peer(sender, nat)
        await delivered(sender, nat, b"upgraded at last")
        assert await drain(nat) == [b"upgraded at last"]


async def test_upgrade_mode_keeps_failing_through_a_proxy(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    network = network_of(memory_nodes)
    async with upgrade_stripping_proxy(network):
        relay = await memory_nodes.open("relay", public_url="http://proxy:8470")
        nat = await memory_nodes.open("nat", relays=(relay.address_token(),), relay_mode="upgrade")
        link = link_of(nat)
        await wait_until(lambda: link.status_info.failures >= 6)
        assert "did not switch protocols" in str(link.status()["last_error"])
        assert link.status()["mode"] is None
        assert link.status_info.connections == 0


# -- long-poll ----------------------------------------------------------------------------


async def hand_poll_session(client: httpx.AsyncClient, identity: crypto.Identity) -> dict[str, Any]:
    headers = signed_attach_headers(identity, upgrade=None)
    response = await client.post(ATTACH_URL, headers=headers[2:], content=b"")
    assert response.status_code == 200, response.text
    session: dict[str, Any] = response.json()
    return session


async def test_long_poll_session_by_hand(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay = await memory_nodes.open("relay", relay=RelayConfig(poll_hold=25, reply_timeout=10))
    identity = crypto.Identity.generate()
    async with visitor(network_of(memory_nodes)) as client:
        session = await hand_poll_session(client, identity)
        assert session["mode"] == "long-poll"
        assert session["poll"].startswith(POLL_PREFIX)
        assert session["base_url"] == relayed_url(identity.node_id)
        assert session["hold"] == 25
        poll_url = RELAY + session["poll"]

        # Idle: the poll is held, then answered 204.
        start = trio.current_time()
        response = await client.get(poll_url)
        assert response.status_code == 204
        assert trio.current_time() - start == pytest.approx(25)

        # A visitor's request arrives wrapped; the wrapped answer goes to the reply URL.
        answers: list[httpx.Response] = []
        async with trio.open_nursery() as nursery:

            async def visit() -> None:
                answers.append(
                    await client.put(
                        relayed_url(identity.node_id, "/thing?a=b"),
                        content=b"payload",
                        headers={"x-custom": "kept", "ptth-lease": "gone"},
                    )
                )

            nursery.start_soon(visit)
            response = await client.get(poll_url)
            assert response.status_code == 200
            assert response.headers["content-type"] == "message/http"
            reply = response.headers["ptth-reply"]
            assert reply.startswith(REPLY_PREFIX)
            method, target, headers, body = decode_request(response.content)
            assert (method, target, body) == ("PUT", "/thing?a=b", b"payload")
            fields = dict(headers)
            assert fields["x-custom"] == "kept"
            assert "ptth-lease" not in fields
            assert fields["via"] == f"1.1 ptth-{relay.node_id.short}"
            wrapped = encode_response(201, [("x-answer", "yes"), ("keep-alive", "x")], b"made")
            response = await client.post(RELAY + reply, content=wrapped)
            assert response.status_code == 204
        (answer,) = answers
        assert (answer.status_code, answer.text) == (201, "made")
        assert answer.headers["x-answer"] == "yes"
        assert "keep-alive" not in answer.headers
        assert answer.headers["via"] == f"1.1 ptth-{relay.node_id.short}"

        # A reply URL answers once.
        response = await client.post(RELAY + reply, content=wrapped)
        assert response.status_code == 404
        # Unknown (or wrongly used) poll and reply URLs are 404.
        assert (await client.get(RELAY + POLL_PREFIX + "nonsense")).status_code == 404
        assert (await client.post(poll_url)).status_code == 404
        assert (await client.post(RELAY + REPLY_PREFIX + "nonsense")).status_code == 404
        assert (await client.get(RELAY + reply)).status_code == 404

        # A garbled answer is the relay's 502; no answer in time is its 504.
        for garbage, status, error in [
            (b"not http at all\r\n\r\n", 502, "http_protocol_error"),
            (None, 504, "http_response_timeout"),
        ]:
            answers.clear()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(visit)
                response = await client.get(poll_url)
                reply = response.headers["ptth-reply"]
                if garbage is not None:
                    assert (await client.post(RELAY + reply, content=garbage)).status_code == 204
            assert answers[0].status_code == status
            assert f"error={error}" in proxy_status(answers[0])
        # The late answer finds nobody waiting.
        assert (await client.post(RELAY + reply, content=wrapped)).status_code == 404

        # Attaching again while the session is alive keeps the same session.
        assert (await hand_poll_session(client, identity))["poll"] == session["poll"]


async def test_long_poll_session_lapses(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    await memory_nodes.open("relay", relay=RelayConfig(visitor_wait=1, reply_timeout=3))
    identity = crypto.Identity.generate()
    address = relayed_url(identity.node_id, "/x")
    async with visitor(network_of(memory_nodes)) as client:
        session = await hand_poll_session(client, identity)
        # Nobody polls. Within the lease the relay cannot tell a late poller from a
        # gone one: the visitor's request waits for a poll, and times out.
        response = await client.get(address)
        assert response.status_code == 504
        assert "error=http_response_timeout" in proxy_status(response)
        # After the lease the session lapses; the URL space is held.
        await trio.sleep(61 - 3)
        response = await client.get(address)
        assert response.status_code == 503
        assert "error=destination_unavailable" in proxy_status(response)
        # Attaching again makes a new session; the old one's URL is then unknown.
        fresh = await hand_poll_session(client, identity)
        assert fresh["poll"] != session["poll"]
        assert (await client.get(RELAY + session["poll"])).status_code == 404
        # That one lapses too, and one lease later the relay forgets the node.
        await trio.sleep(60 + 60 + 1)
        response = await client.get(address)
        assert response.status_code == 404
        assert "error=destination_not_found" in proxy_status(response)
        # Attaching once more starts afresh; the forgotten session's URL is gone.
        assert (await hand_poll_session(client, identity))["poll"] != fresh["poll"]
        assert (await client.get(RELAY + fresh["poll"])).status_code == 404


async def test_long_poll_against_a_misbehaving_relay(
    memory_nodes: NodeFactory,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "ptth.attach")
    network = network_of(memory_nodes)
    good = {
        "mode": "long-poll",
        "poll": POLL_PREFIX + "tok",
        "base_url": "http://fakerelay:8470/n/x",
    }
    sessions = [
        {**good, "poll": "http://evil/steal"},
        {**good, "lease": "soon", "hold": None},  # not numbers: the defaults are used
    ]

    def wrapped(target: str, reply: str) -> Response:
        headers = [("content-type", "message/http"), ("ptth-reply", reply)]
        return Response(200, headers, encode_request_for(target))

    polls = [
        Response(200, [("ptth-reply", REPLY_PREFIX + "r1")], b"not a wrapped request"),
        wrapped("/stream", REPLY_PREFIX + "r2"),
        wrapped("/x", "@evil/x"),
        Response.text(502, "bad gateway"),
        Response.text(404, "no such poll session"),
        wrapped("/hang", REPLY_PREFIX + "r3"),
    ]
    replies: dict[str, bytes] = {}

    async def handle(request: Request) -> Response:
        if request.path == ATTACH_PATH:
            session = sessions.pop(0) if len(sessions) > 1 else sessions[0]
            return Response(
                200, [("content-type", "application/json")], json.dumps(session).encode()
            )
        if request.path.startswith(POLL_PREFIX):
            if polls:
                return polls.pop(0)
            await trio.sleep(25)
            return Response(204)
        assert request.path.startswith(REPLY_PREFIX)
        replies[request.path[len(REPLY_PREFIX) :]] = request.body
        return Response(204)

    async def streamed(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"one"
            yield b"two"

        return Response(200, [], stream=chunks())

    def failures() -> list[str]:
        return [r.getMessage() for r in caplog.records if "attach failed" in r.getMessage()]

    release, started = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        (listener,) = await network.open_listeners("fakerelay", 8470)
        await nursery.start(Server(handle).serve, [listener])
        nat = await memory_nodes.open(
            "nat", relays=(fake_relay_token(),), relay_mode="long-poll", relay_pool=1
        )
        nat.add_route("/stream", streamed)
        hanging_route(nat, "/hang", release, started)
        await started.wait()
        link = link_of(nat)
        assert link.status_info.lease == 60
        assert [f.split(": ", 2)[-1] for f in failures()] == [
            "the relay's answer is not a poll session: poll URL 'http://evil/steal' is not "
            "/ptth/v1/poll/<token>",
            "the relay's poll answer has no PTTH-Reply URL: '@evil/x'",
            "poll to http://fakerelay:8470 answered 502 bad gateway",
        ]
        assert decode_response(replies["r1"])[0] == 400
        assert b"wrapped request unreadable" in decode_response(replies["r1"])[2]
        assert decode_response(replies["r2"])[0::2] == (200, b"onetwo")
        # The relay goes away while the node works on a request: the answer is lost,
        # and said so; the node tries to attach again.
        nursery.cancel_scope.cancel()
    release.set()
    await wait_until(
        lambda: any("could not deliver a reply" in r.getMessage() for r in caplog.records)
    )
    await wait_until(lambda: "cannot reach" in str(link.status_info.last_error))
    assert "r3" not in replies


def encode_request_for(target: str) -> bytes:
    return encode_request("GET", target, [("host", "fakerelay:8470")], b"")


async def test_long_poll_mode(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay = await memory_nodes.open("relay")
    nat = await natted(memory_nodes, relay, relay_mode="long-poll", connections=2)
    echo_route(nat)
    sender = await memory_nodes.open("sender")
    await peer(sender, nat)
    for i in range(3):
        await delivered(sender, nat, b"%d" % i)
        await trio.sleep(40)  # idle polls come back 204 and are made again
    assert await drain(nat) == [b"0", b"1", b"2"]
    assert relay.relay_service is not None
    (entry,) = relay.relay_service.statistics()
    assert entry["polling"] is True
    assert entry["connections"] == 0
    async with visitor(network_of(memory_nodes)) as client:
        response = await client.post(
            relayed_url(nat, "/echo"), content=b"x", headers={b"x-latin": b"caf\xe9"}
        )
        assert response.status_code == 200
        seen = response.json()
        assert seen["relayed"] is True
        assert ["x-latin", "caf\xe9"] in seen["headers"]
        # A handler's failure is its 500, not the node's end.
        response = await client.get(relayed_url(nat, "/api/v1/status"))
        assert response.status_code == 404
    assert link_of(nat).status_info.attaches == 2


async def test_handler_failure_over_long_poll_is_500(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay = await memory_nodes.open("relay")
    nat = await natted(memory_nodes, relay, relay_mode="long-poll", connections=2)

    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug in a handler")

    nat.add_route("/broken", broken)
    async with visitor(network_of(memory_nodes)) as client:
        response = await client.get(relayed_url(nat, "/broken"))
        assert response.status_code == 500
        response = await client.get(relayed_url(nat, "/ptth/v1/address"))
        assert response.status_code == 200


# -- attached and detached, as the relay reports it ----------------------------------------

Events = list[tuple[crypto.NodeId, bool]]


def attachment_events(relay: Node) -> Events:
    """What ``relay`` tells its ``on_attachment`` from now on, in order."""
    events: Events = []
    assert relay.relay_service is not None
    relay.relay_service.on_attachment = lambda node, attached: events.append((node, attached))
    return events


async def test_on_attachment_in_upgrade_mode(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    config = RelayConfig()
    async with memory_nodes.session("relay") as relay:
        events = attachment_events(relay)
        token = relay.address_token()
        async with memory_nodes.session("nat", relays=(token,), relay_mode="upgrade") as nat:
            await link_of(nat).wait_connected(2)
            nat_id = nat.node_id
            await trio.sleep(100)  # pings come and go
            # Two connections, one attachment: reported once.
            assert events == [(nat_id, True)]
        # The node is gone. The relay notices at the latest when it next pings: when
        # the last of the two connections is dropped, the node is detached.
        gone = trio.current_time()
        await wait_until(lambda: len(events) == 2)
        assert events == [(nat_id, True), (nat_id, False)]
        assert relay_connections(relay, nat_id) == 0
        assert trio.current_time() - gone <= config.ping_interval + config.ping_timeout

        # Back within the lease: attached again.
        nat = await natted(memory_nodes, relay, connections=2, relay_mode="upgrade")
        assert nat.node_id == nat_id
        assert events[2:] == [(nat_id, True)]
        async with visitor(network_of(memory_nodes)) as client:
            response = await client.get(relayed_url(nat, "/ptth/v1/address"))
            assert response.status_code == 200
        assert events[2:] == [(nat_id, True)]
    # The relay stops with the node attached: it reports it detached, once.
    assert events[2:] == [(nat_id, True), (nat_id, False)]


async def test_on_attachment_counts_connections_not_each(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    relay = await memory_nodes.open("relay")
    events = attachment_events(relay)
    network = network_of(memory_nodes)
    identity = crypto.Identity.generate()
    node = identity.node_id
    first = await raw_attach(network, signed_attach_headers(identity))
    second = await raw_attach(network, signed_attach_headers(identity))
    assert first.status == second.status == 101
    await wait_until(lambda: relay_connections(relay, node) == 2)
    assert events == [(node, True)]

    async def pong(request: Request) -> Response:
        return Response(204)

    async with trio.open_nursery() as nursery:
        # The second connection answers the relay's pings; the first is hung up.
        nursery.start_soon(functools.partial(Server(pong).serve_stream, second.stream))
        await first.stream.aclose()
        await wait_until(lambda: relay_connections(relay, node) == 1)
        await trio.sleep(100)
        assert relay_connections(relay, node) == 1
        assert events == [(node, True)]
        nursery.cancel_scope.cancel()  # (serving the second ends by closing it)
    await wait_until(lambda: relay_connections(relay, node) == 0)
    assert events == [(node, True), (node, False)]


async def test_on_attachment_in_long_poll_mode(
    memory_nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    config = RelayConfig()
    relay = await memory_nodes.open("relay", relay=config)
    service = relay.relay_service
    assert service is not None
    events = attachment_events(relay)
    token = relay.address_token()
    for visit in (True, False):
        async with memory_nodes.session("nat", relays=(token,), relay_mode="long-poll") as nat:
            await link_of(nat).wait_connected(2)
            nat_id = nat.node_id
            await trio.sleep(200)  # polls held, answered 204 and made again
            assert service.statistics()[0]["polling"] is True
            # Two pollers, one session: reported once.
            assert events[-1:] == [(nat_id, True)]
            attachment = service.attachments[nat_id]
        # The node is gone: its held polls end, and a lease later its session lapses.
        # A relay node runs watch(): the lapse is reported when it happens.
        assert events[-1:] == [(nat_id, True)]
        await wait_until(lambda: events[-1:] == [(nat_id, False)])  # noqa: B023
        assert not attachment.polling
        assert trio.current_time() == pytest.approx(attachment.poll_deadline, abs=0.05)
        if visit:
            async with visitor(network_of(memory_nodes)) as client:
                response = await client.get(relayed_url(nat_id, "/ptth/v1/address"))
            assert response.status_code == 503  # the lease holds its URL space
            assert "error=destination_unavailable" in proxy_status(response)
    # Each lapse reported once (a visitor after it changes nothing).
    assert events == [(nat_id, True), (nat_id, False)] * 2


@dataclasses.dataclass
class BareHost:
    """All a relay needs of its host (:class:`RelayHost`); no Node at all."""

    node_id: crypto.NodeId = dataclasses.field(
        default_factory=lambda: crypto.Identity.generate().node_id
    )
    replay_guard: ReplayGuard = dataclasses.field(default_factory=ReplayGuard)
    clock: Callable[[], int] = lambda: int(time.time() * 1000)

    def peer_address(self, node: crypto.NodeId) -> crypto.SignedAddress | None:
        return None

    def blocked(self, node: crypto.NodeId) -> bool:
        return False


async def test_on_attachment_of_a_poll_session_by_hand(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    events: Events = []

    def on_attachment(node: crypto.NodeId, attached: bool) -> None:
        events.append((node, attached))
        raise RuntimeError("a bug in the callback")

    host: RelayHost = BareHost()
    service = RelayService(host, RelayConfig(poll_hold=25), on_attachment=on_attachment)
    identity = crypto.Identity.generate()
    node = identity.node_id

    async def attach() -> str:
        headers = signed_attach_headers(identity, upgrade=None)
        response = await service.handle(Request("POST", ATTACH_PATH, headers, b"", "hand"))
        assert response.status == 200, response.body
        return str(json.loads(response.body)["poll"])

    async def poll(path: str) -> int:
        response = await service.handle(Request("GET", path, [("host", "relay")], b"", "hand"))
        return response.status

    path = await attach()
    assert events == [(node, True)]
    # A failing callback is logged; the relay goes on.
    assert "on_attachment(" in caplog.text
    assert "a bug in the callback" in caplog.text
    for _ in range(4):  # 100 s of polls
        assert await poll(path) == 204
    assert await attach() == path  # the same session: nothing to report
    assert events == [(node, True)]

    # A lease (60 s) after the last poll ended, the session has lapsed: reported when
    # the relay next looks (here: statistics).
    await trio.sleep(61)
    assert events == [(node, True)]
    assert service.statistics()[0]["polling"] is False
    assert events == [(node, True), (node, False)]
    assert service.statistics()[0]["polling"] is False
    assert events == [(node, True), (node, False)]
    # A poll on the lapsed session (still known within the lease) revives it.
    assert await poll(path) == 204
    assert events[2:] == [(node, True)]
    # Shutting down reports every node detached; none is reported attached after.
    service.shutdown()
    assert events[2:] == [(node, True), (node, False)]
    await attach()
    assert events[4:] == []


# -- real TCP ------------------------------------------------------------------------------


async def test_relay_on_loopback_tcp(tcp_nodes: NodeFactory) -> None:
    relay = await tcp_nodes.open("relay")
    nat = await tcp_nodes.open("nat", relays=(relay.address_token(),), relay_mode="upgrade")
    with trio.fail_after(10):
        await link_of(nat).wait_connected(2)
    sender = await tcp_nodes.open("sender")
    await peer(sender, nat)
    assert nat.endpoints[0].startswith(relay.endpoints[0] + "/n/")
    await delivered(sender, nat, b"over loopback")
    # A second frame goes in a later batch, once the first one's POST was answered.
    await delivered(sender, nat, b"and again")
    assert await drain(nat) == [b"over loopback", b"and again"]
    # The relay URL comes first in nat's address, and it answered: the frames went
    # through the relay (with the greetings, so more than one request).
    assert sender.mesh.frame_client._preferred[nat.node_id] == nat.endpoints[0]
    assert relay.relay_service is not None
    assert relay.relay_service.statistics()[0]["requests"] >= 1
