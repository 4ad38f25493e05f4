"""A relay's attach limits (node/_relay.py): strangers cannot fill it; honest nodes get in.

The attack: hundreds of long-poll attaches, each from a fresh identity, all from one
address, filled an open relay in under two seconds, and a real NATed node could not
attach until those sessions' leases ran out (about ten minutes). Here a relay caps the
nodes attached from one source address and the rate of new attachments from it, gives
the places of vanished nodes to newcomers, answers ``503`` with ``Retry-After`` only when
nothing can give way, and a node's :class:`RelayLink` waits as long as it is told.

Attackers dial from addresses of their own (:class:`AddressedNetwork`); honest nodes dial
as on the plain memory network (address ``memory``). Time is the autojump clock's.
"""

from __future__ import annotations

import collections
import email.utils
import itertools
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h11
import httpcore
import httpx
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import crypto
from node import MemoryNetwork, Request
from node._attach import RETRY_AFTER_MAX, _retry_after
from node._fabric import sign_request
from node._net import _Transport
from node._relay import (
    _RATE_ADDRESSES,
    ATTACH_PATH,
    RelayConfig,
    RelayService,
    _AttachRate,
    source_address,
)
from tests.helpers import NodeFactory
from tests.node.test_relay import (
    ATTACH_URL,
    RELAY,
    BareHost,
    HandServer,
    attachment_events,
    fake_relay_token,
    link_of,
    natted,
    proxy_status,
    relayed_url,
    serve_by_hand,
    visitor,
    wait_until,
)


class AddressedNetwork(MemoryNetwork):
    """A memory network on which a dial from ``src_host`` arrives from
    ``src_host:<port>`` (the server's ``Request.peer``); other dials arrive from
    ``memory``, as on the plain one."""

    def __init__(self) -> None:
        super().__init__()
        self._ports = itertools.count(50000)

    def _make_pair(
        self, src_host: str | None, dst: tuple[str, int]
    ) -> tuple[trio.abc.Stream, trio.abc.Stream]:
        client, server = super()._make_pair(src_host, dst)
        if src_host is not None:
            # What the server names its peer by (node/_server.py, peer_name).
            vars(server)["peer_name"] = f"{src_host}:{next(self._ports)}"
        return client, server


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    async with trio.open_nursery() as nursery:
        yield NodeFactory(tmp_path, AddressedNetwork(), nursery)
        nursery.cancel_scope.cancel()


def network_of(factory: NodeFactory) -> AddressedNetwork:
    assert isinstance(factory.network, AddressedNetwork)
    return factory.network


def client_from(network: MemoryNetwork, address: str) -> httpx.AsyncClient:
    """An HTTP client whose connections come from ``address``."""
    pool = httpcore.AsyncConnectionPool(
        network_backend=network.client_backend(), local_address=address, http2=False
    )
    return httpx.AsyncClient(transport=_Transport(pool), timeout=None)


def attach_headers(factory: NodeFactory, identity: crypto.Identity) -> list[tuple[str, str]]:
    """A long-poll attach's headers, signed by ``identity`` now (the nodes' clock)."""
    nonce = secrets.token_urlsafe(9)
    now = factory.clock() // 1000
    return sign_request(identity, "POST", ATTACH_URL, b"", now=now, nonce=nonce)


async def attach(
    factory: NodeFactory, client: httpx.AsyncClient, identity: crypto.Identity
) -> httpx.Response:
    headers = attach_headers(factory, identity)
    return await client.post(ATTACH_URL, headers=headers, content=b"")


def attached_from(relay_service: RelayService | None, address: str) -> int:
    assert relay_service is not None
    return sum(a.address == address for a in relay_service.attachments.values())


def details(response: httpx.Response) -> str:
    """The words of a relay's ``Proxy-Status``."""
    status = proxy_status(response)
    assert 'details="' in status, status
    return status.split('details="', 1)[1].rstrip('"')


# -- one address, many identities ------------------------------------------------------


async def test_fresh_identities_from_one_address_are_capped(
    nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # The attack scaled down: a relay for 50 nodes, 200 attaches from one address.
    relay = await nodes.open("relay", relay=RelayConfig(max_nodes=50))
    events = attachment_events(relay)
    network = network_of(nodes)
    refusals: collections.Counter[str] = collections.Counter()
    attacker = "203.0.113.9"
    async with client_from(network, attacker) as client:
        start = trio.current_time()
        for _ in range(200):
            response = await attach(nodes, client, crypto.Identity.generate())
            if response.status_code == 200:
                refusals["none"] += 1
                continue
            assert response.status_code == 429, response.text
            assert response.text == f"relay: {details(response)}\n"
            assert f"ptth-{relay.node_id.short}; error=http_request_denied" in proxy_status(
                response
            )
            if "already attached" in response.text:
                assert details(response) == f"16 nodes already attached from {attacker} (limit 16)"
                assert response.headers["retry-after"] == "30"
                refusals["address"] += 1
            else:
                words = f"too many new attachments from {attacker} (limit 1/s, burst 20); next in"
                assert details(response).startswith(words), response.text
                assert response.headers["retry-after"] == "1"
                refusals["rate"] += 1
        elapsed = trio.current_time() - start
    # However fast it went, 16 got in; the rest were refused for the address or the rate.
    assert refusals["none"] == 16
    assert refusals["address"] >= 4
    assert refusals["rate"] >= 200 - 16 - 4 - elapsed - 1
    assert attached_from(relay.relay_service, attacker) == 16
    assert len(events) == 16

    # An honest node (another address) attaches at once, and visitors reach it.
    start = trio.current_time()
    nat = await natted(nodes, relay, connections=2)
    assert trio.current_time() - start < 1
    assert link_of(nat).status_info.failures == 0
    async with visitor(network) as client:
        response = await client.get(relayed_url(nat, "/ptth/v1/address"))
    assert response.status_code == 200, response.text
    assert events[-1] == (nat.node_id, True)
    assert relay.relay_service is not None
    entry = next(e for e in relay.relay_service.statistics() if e["node"] == nat.node_id.text)
    assert entry["address"] is None  # (the memory network names no address)

    # The attacker's address stays capped while its sessions live; its rate too.
    async with client_from(network, attacker) as client:
        await trio.sleep(5)  # (tokens come back: the address limit answers)
        response = await attach(nodes, client, crypto.Identity.generate())
        assert response.status_code == 429
        assert "16 nodes already attached from 203.0.113.9 (limit 16)" in response.text


async def test_many_addresses_fill_the_relay_then_idle_sessions_give_way(
    nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # 20 addresses, 10 fresh identities each (within each one's limits) against a relay
    # for 50: it fills, and says so. The attacker's sessions never poll.
    relay = await nodes.open("relay", relay=RelayConfig(max_nodes=50))
    service = relay.relay_service
    assert service is not None
    events = attachment_events(relay)
    network = network_of(nodes)
    sessions: list[tuple[crypto.NodeId, str]] = []
    full: list[httpx.Response] = []
    for host in range(20):
        async with client_from(network, f"198.51.100.{host + 10}") as client:
            for _ in range(10):
                identity = crypto.Identity.generate()
                response = await attach(nodes, client, identity)
                if response.status_code == 200:
                    sessions.append((identity.node_id, response.json()["poll"]))
                else:
                    full.append(response)
    assert len(sessions) == 50
    assert len(full) == 150
    for response in full:
        assert response.status_code == 503
        assert response.headers["retry-after"] == "30"
        assert f"ptth-{relay.node_id.short}; error=connection_limit_reached" in proxy_status(
            response
        )
        assert details(response) == (
            "full: 50 nodes attached (limit 50), none idle long enough to give way"
        )
    filled_at = trio.current_time()

    # An honest node is refused too, at first: the sessions are young. Its link follows
    # the relay's Retry-After, and by then they have gone quiet: one gives way to it.
    nat = await nodes.open("nat", relays=(relay.address_token(),))
    link = link_of(nat)
    await wait_until(lambda: link.status_info.failures >= 1)
    assert link.status_info.retry_after == 30
    words = "refused the attach: 503 relay: full: 50 nodes attached (limit 50)"
    assert words in str(link.status_info.last_error)
    assert "(Retry-After: 30 s)" in str(link.status_info.last_error)
    with trio.fail_after(30 * 1.2 + 1):
        await link.wait_connected(2)
    assert trio.current_time() - filled_at >= 30
    status = link.status()
    assert (status["last_error"], status["retry_after"]) == (None, None)
    assert len(service.attachments) == 50
    async with visitor(network) as client:
        response = await client.get(relayed_url(nat, "/ptth/v1/address"))
        assert response.status_code == 200, response.text
        # The one that gave way was attached first (idle longest): reported detached,
        # forgotten, its poll session ended.
        gone, poll = sessions[0]
        assert (gone, False) in events
        assert gone not in service.attachments
        response = await client.get(RELAY + poll)
        assert response.status_code == 404
        response = await client.get(relayed_url(gone, "/x"))
        assert response.status_code == 404
        assert "error=destination_not_found" in proxy_status(response)
    # Attached and detached still alternate for every node.
    for node in {node for node, _ in events}:
        states = [attached for n, attached in events if n == node]
        assert states == [True, False] * (len(states) // 2) + [True] * (len(states) % 2)


# -- the attach rate ---------------------------------------------------------------------


async def test_attach_rate_is_limited_per_address(
    nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    config = RelayConfig(attach_rate=0.5, attach_burst=3, max_nodes_per_address=100)
    relay = await nodes.open("relay", relay=config)
    network = network_of(nodes)
    first = crypto.Identity.generate()
    async with (
        client_from(network, "198.51.100.7") as client,
        client_from(network, "198.51.100.8") as neighbour,
    ):
        for identity in (first, crypto.Identity.generate(), crypto.Identity.generate()):
            assert (await attach(nodes, client, identity)).status_code == 200
        refused_at = trio.current_time()
        response = await attach(nodes, client, crypto.Identity.generate())
        assert response.status_code == 429
        assert response.headers["retry-after"] == "2"  # one token at 0.5/s
        assert details(response) == (
            "too many new attachments from 198.51.100.7 (limit 0.5/s, burst 3); next in 2 s"
        )
        assert "error=http_request_denied" in proxy_status(response)
        # A node attached already is not a new attachment: its pool gets back in.
        assert (await attach(nodes, client, first)).status_code == 200
        # Another address has its own bucket.
        assert (await attach(nodes, neighbour, crypto.Identity.generate())).status_code == 200
        # Just before the token is there: still refused, with the rest of the wait.
        await trio.sleep_until(refused_at + 1.9)
        response = await attach(nodes, client, crypto.Identity.generate())
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        # At Retry-After: in.
        await trio.sleep_until(refused_at + 2.01)
        assert (await attach(nodes, client, crypto.Identity.generate())).status_code == 200
        response = await attach(nodes, client, crypto.Identity.generate())
        assert response.status_code == 429
    # Honest traffic meanwhile: a node from elsewhere attaches at once.
    start = trio.current_time()
    await natted(nodes, relay)
    assert trio.current_time() - start < 1


@given(
    rate=st.floats(0.1, 10),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 3), min_size=1, max_size=60),
)
def test_attach_rate_buckets(rate: float, burst: int, gaps: list[float]) -> None:
    # Over any run of attempts, at most burst + rate x elapsed get in; a refusal's wait
    # is when the next token is there (taken then, it gets in).
    bucket = _AttachRate(rate, burst)
    now = 0.0
    admitted = 0
    for gap in gaps:
        now += gap
        wait = bucket.take("a", now)
        if wait == 0:
            admitted += 1
        else:
            assert 0 < wait <= 1 / rate + 1e-9
            probe = _AttachRate(rate, burst)
            probe.buckets["a"] = bucket.buckets["a"]
            assert probe.take("a", now + wait + 1e-9) == 0
        assert admitted <= burst + rate * now + 1e-9


def test_attach_rate_forgets_the_least_recent_addresses() -> None:
    bucket = _AttachRate(1.0, 5)
    for index in range(_RATE_ADDRESSES + 10):
        bucket.take(f"10.0.{index // 256}.{index % 256}", 0.0)
    assert len(bucket.buckets) == _RATE_ADDRESSES
    assert "10.0.0.0" not in bucket.buckets  # the least recently used went first
    # Once refilled (a full burst is as good as none), a bucket is dropped.
    bucket.take("10.9.9.9", 5.0)
    assert list(bucket.buckets) == ["10.9.9.9"]


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("127.0.0.2:40000", "127.0.0.2"),
        ("198.51.100.7:1", "198.51.100.7"),
        ("2001:db8:1:2::5:443", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff:8", "2001:db8:1:2::/64"),
        ("[2001:db8:1:3::5]:443", "2001:db8:1:3::/64"),
        ("fe80::1%eth0:80", "fe80::/64"),
        ("::ffff:192.0.2.1:5", "192.0.2.1"),
        ("[::1]:80", "::/64"),
        ("memory", None),
        ("relay 0a1b2c", None),
        ("?", None),
        ("example.org:80", None),
    ],
)
def test_source_address(peer: str, address: str | None) -> None:
    assert source_address(peer) == address


# -- places that give way ----------------------------------------------------------------


async def test_a_vanished_pollers_place_is_reused(
    nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    config = RelayConfig(max_nodes=2, poll_hold=25, poll_grace=10, reply_timeout=30)
    relay = await nodes.open("relay", relay=config)
    events = attachment_events(relay)
    network = network_of(nodes)
    # An honest node that long-polls: its polls are held, it never gives way.
    honest = await natted(nodes, relay, relay_mode="long-poll")
    async with (
        client_from(network, "192.0.2.10") as poller,
        client_from(network, "192.0.2.11") as newcomer,
        visitor(network) as client,
    ):
        vanishing = crypto.Identity.generate()
        session = (await attach(nodes, poller, vanishing)).json()
        assert (await poller.get(RELAY + session["poll"])).status_code == 204
        last_poll_ended = trio.current_time()
        # It polls no more. Within the grace it keeps its place: the relay is full.
        await trio.sleep(5)
        late = crypto.Identity.generate()
        response = await attach(nodes, newcomer, late)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "30"
        assert "full: 2 nodes attached (limit 2)" in response.text
        # After it, its place goes to the newcomer.
        await trio.sleep_until(last_poll_ended + 10)
        response = await attach(nodes, newcomer, late)
        assert response.status_code == 200, response.text
        opened = trio.current_time()
        assert (vanishing.node_id, False) in events
        assert (await poller.get(RELAY + session["poll"])).status_code == 404
        response = await client.get(relayed_url(vanishing.node_id, "/x"))
        assert response.status_code == 404

        # The newcomer never polls. A visitor waits for it (its session is young) ...
        answers: list[httpx.Response] = []
        async with trio.open_nursery() as nursery:

            async def visit() -> None:
                answers.append(await client.get(relayed_url(late.node_id, "/x")))

            nursery.start_soon(visit)
            # ... and a session no poll came to gives way once the grace is over.
            await trio.sleep_until(opened + 9)
            third = crypto.Identity.generate()
            assert (await attach(nodes, newcomer, third)).status_code == 503
            await trio.sleep_until(opened + 10)
            assert (await attach(nodes, newcomer, third)).status_code == 200
        # The visitor who was waiting hears at once that the node went away.
        assert trio.current_time() == pytest.approx(opened + 10)
        (answer,) = answers
        assert answer.status_code == 503
        assert "error=destination_unavailable" in proxy_status(answer)
        assert "went away; its place here went to another node" in answer.text
        assert answer.headers["retry-after"] == "5"
        assert events.count((late.node_id, False)) == 1

        # The honest node, polling all along, kept its place and is reached.
        response = await client.get(relayed_url(honest, "/ptth/v1/address"))
        assert response.status_code == 200, response.text
    assert (honest.node_id, False) not in events


async def test_a_detached_node_gives_way_before_its_lease_is_over(
    nodes: NodeFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # A node gone from a full relay: its URL space is held for its lease, but a new
    # node need not wait for that.
    relay = await nodes.open("relay", relay=RelayConfig(max_nodes=1))
    events = attachment_events(relay)
    async with nodes.session("first", relays=(relay.address_token(),)) as first:
        await link_of(first).wait_connected(2)
        first_id = first.node_id
        second = await nodes.open("second", relays=(relay.address_token(),))
        link = link_of(second)
        await wait_until(lambda: link.status_info.failures >= 1)
        assert link.status_info.retry_after == 30
        failures = link.status_info.failures
        await trio.sleep(20)
        assert link.status_info.failures == failures  # (it waits as told)
    gone = trio.current_time()
    config = RelayConfig()
    # The relay notices at the latest at its next ping; the second node's link comes
    # back within 1.2 x Retry-After; the lease (60 s) is not waited for.
    with trio.fail_after(config.ping_interval + config.ping_timeout + 30 * 1.2 + 1):
        await link.wait_connected(2)
    assert trio.current_time() - gone < 60
    assert events[:2] == [(first_id, True), (first_id, False)]
    assert events[2:] == [(second.node_id, True)]


async def test_address_limit_gives_way_within_the_address(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Played on the service directly, with IPv6 peers: a /64 is one address.
    events: list[tuple[crypto.NodeId, bool]] = []
    host = BareHost()
    config = RelayConfig(max_nodes_per_address=2, poll_grace=10)
    service = RelayService(host, config, on_attachment=lambda n, a: events.append((n, a)))

    async def attach_from(peer: str, identity: crypto.Identity) -> Any:
        nonce = secrets.token_urlsafe(9)
        headers = [
            ("host", "relay:8470"),
            *sign_request(identity, "POST", ATTACH_URL, b"", now=host.clock() // 1000, nonce=nonce),
        ]
        return await service.handle(Request("POST", ATTACH_PATH, headers, b"", peer))

    site, other = "2001:db8:1:2::", "2001:db8:1:3::"
    a, b, c, d = (crypto.Identity.generate() for _ in range(4))
    assert (await attach_from(f"{site}5:1000", a)).status == 200
    await trio.sleep(1)
    assert (await attach_from(f"{site}6:1000", b)).status == 200
    refused = await attach_from(f"{site}7:1000", c)
    assert refused.status == 429
    assert refused.body == f"relay: 2 nodes already attached from {site}/64 (limit 2)\n".encode()
    assert dict(refused.headers)["retry-after"] == "30"
    # Another /64 is another address.
    assert (await attach_from(f"{other}5:1000", d)).status == 200
    # Once the first session has gone quiet, it gives way to the site's newcomer: the
    # longest idle of that address, not anyone else's (d is idle as long as b).
    await trio.sleep(10)
    assert (await attach_from(f"{site}7:1000", c)).status == 200
    assert events[-2:] == [(a.node_id, False), (c.node_id, True)]
    assert a.node_id not in service.attachments
    assert {b.node_id, c.node_id, d.node_id} <= set(service.attachments)
    # Re-attaching from anywhere never counts twice.
    assert (await attach_from(f"{other}9:1000", b)).status == 200
    assert collections.Counter(x.address for x in service.attachments.values()) == {
        f"{site}/64": 2,
        f"{other}/64": 1,
    }
    # A peer with no IP address (here an in-process one) has no address to be limited
    # by: only max_nodes counts.
    for _ in range(5):
        assert (await attach_from("memory", crypto.Identity.generate())).status == 200
    assert len(service.attachments) == 8


# -- the attaching side ------------------------------------------------------------------


def _when(nodes: NodeFactory, seconds: float) -> str:
    return email.utils.formatdate(nodes.clock() / 1000 + seconds, usegmt=True)


@pytest.mark.parametrize(
    ("mode", "status", "retry_after", "wait"),
    [
        *(
            (mode, status, retry_after, wait)
            for mode in ("upgrade", "long-poll")
            for status, retry_after, wait in [(503, "40", 40.0), (429, "7", 7.0)]
        ),
        ("long-poll", 503, "date+50", 49.0),
        # More than RETRY_AFTER_MAX: that is followed (a relay cannot park a node forever).
        ("upgrade", 503, "99999", RETRY_AFTER_MAX),
    ],
)
async def test_relay_link_waits_as_long_as_the_relay_says(
    nodes: NodeFactory,
    autojump_clock: trio.testing.MockClock,
    mode: str,
    status: int,
    retry_after: str,
    wait: float,
) -> None:
    attempts: list[float] = []

    async def handle(stream: trio.abc.Stream) -> None:
        server = HandServer(stream)
        request, _ = await server.next_request()
        if request.target != ATTACH_PATH.encode():
            answer = h11.Response(status_code=404, headers=[("content-length", "0")])
            await stream.send_all(server.conn.send(answer) + server.conn.send(h11.EndOfMessage()))
            return
        attempts.append(trio.current_time())
        value = _when(nodes, 50) if retry_after == "date+50" else retry_after
        body = b"relay: full: 1 nodes attached (limit 1), none idle long enough to give way"
        answer = h11.Response(
            status_code=status,
            headers=[
                ("content-type", "text/plain"),
                ("content-length", str(len(body))),
                ("retry-after", value),
                ("connection", "close"),
            ],
        )
        data = server.conn.send(answer) + server.conn.send(h11.Data(data=body))
        await stream.send_all(data + server.conn.send(h11.EndOfMessage()))

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_by_hand, network_of(nodes), handle)
        nat = await nodes.open("nat", relays=(fake_relay_token(),), relay_mode=mode, relay_pool=1)
        link = link_of(nat)
        tries = 2 if wait >= RETRY_AFTER_MAX else 4  # (the long wait once is enough)
        await wait_until(lambda: len(attempts) >= tries, within=tries * wait * 1.3 + 5)
        nursery.cancel_scope.cancel()
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    # Never sooner than told; a little later at most (jitter to spread a crowd).
    assert all(wait - 0.01 <= gap <= max(wait, 1) * 1.2 + 1 for gap in gaps), gaps
    assert link.status_info.failures >= tries - 1
    error = str(link.status_info.last_error)
    assert f"refused the attach: {status} relay: full: 1 nodes attached (limit 1)" in error
    assert link.status_info.retry_after is not None
    assert link.status_info.retry_after >= wait - 1
    assert link.status()["retry_after"] == link.status_info.retry_after
    assert link.status_info.connections == 0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("30", 30.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("Thu, 01 Jan 1970 00:01:40 GMT", 60.0),
        ("Thu, 01 Jan 1970 00:01:40 -0000", 60.0),
        ("Thu, 01 Jan 1970 00:00:10 GMT", 0.0),
        # Found by python -m fuzz: none may raise, all stay within the cap.
        ("86400", 600.0),
        ("9" * 5000, 600.0),
        ("Wed, 21 Oct 2037 07:28:00 -9223372036854775807", None),
        ("Wed, 21 Oct 2037 07:28:004294967296", None),
        ("Wed, " + "29" * 2000 + "1 Oct 2037 07:28:00 GMT", None),
        ("²", None),
    ],
)
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    assert _retry_after(value, now_ms=40_000) == seconds


def test_relay_config_is_checked() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"policy": "everyone"}, "open, peers or off"),
        ({"max_nodes_per_address": 0}, "max_nodes_per_address must be at least 1"),
        ({"attach_burst": 0}, "attach_burst must be at least 1"),
        ({"attach_rate": 0}, "attach_rate must be above 0"),
        ({"poll_grace": -1}, "poll_grace must be 0 s or more"),
    ]
    for bad, words in cases:
        with pytest.raises(ValueError, match=words):
            RelayConfig(**bad)
