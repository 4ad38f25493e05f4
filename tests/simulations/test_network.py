"""The simulated network itself: latency, jitter, bandwidth, loss, resets, NAT,
partitions, crashes, and the stream semantics trio expects (no nodes here)."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from simulations import MSS, Link, SimNetwork, SimStream
from simulations._stream import open_connection


async def pair(
    network: SimNetwork, src: str, dst: str, port: int = 80
) -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """Dial ``dst`` from ``src``; return the (client, server) ends."""
    [listener] = await network.open_listeners(dst, port)
    async with listener:
        client = await network.connect(dst, port, src_host=src)
        server = await listener.accept()
    return client, server


async def receive_exactly(stream: trio.abc.Stream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some()
        assert chunk, f"end of file after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


# -- delay ------------------------------------------------------------------------------


async def test_latency_is_honoured(network: SimNetwork, autojump_clock: MockClock) -> None:
    network.set_link("a", "b", Link(latency=0.05))
    start = trio.current_time()
    client, server = await pair(network, "a", "b")
    assert trio.current_time() - start == pytest.approx(0.10)  # SYN, SYN-ACK
    for data, sender, receiver in [(b"ping", client, server), (b"pong", server, client)]:
        sent = trio.current_time()
        await sender.send_all(data)
        assert await receiver.receive_some() == data
        assert trio.current_time() - sent == pytest.approx(0.05)
    await client.aclose()
    await server.aclose()


async def test_jitter_varies_delay_but_keeps_order(
    network: SimNetwork, autojump_clock: MockClock
) -> None:
    network.set_link("a", "b", Link(latency=0.05, jitter=0.02))
    client, server = await pair(network, "a", "b")
    delays = []
    for _ in range(100):
        sent = trio.current_time()
        await client.send_all(b"x")
        await server.receive_some()
        delays.append(trio.current_time() - sent)
    assert all(0.05 <= d <= 0.07 + 1e-9 for d in delays)
    assert max(delays) - min(delays) > 0.015
    # Writes in quick succession arrive in order, whatever their jitter.
    expected = b"".join(b"%d," % i for i in range(500))
    for i in range(500):
        await client.send_all(b"%d," % i)
    assert await receive_exactly(server, len(expected)) == expected
    await client.aclose()
    await server.aclose()


async def test_bandwidth_serialises_writes_on_a_link(
    network: SimNetwork, autojump_clock: MockClock
) -> None:
    network.set_link("a", "b", Link(latency=0.01, bandwidth=1_000_000))
    (c1, s1), (c2, s2) = await pair(network, "a", "b", 80), await pair(network, "a", "b", 81)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        # Two connections share the direction: 2 x 500 kB at 1 MB/s take a second.
        nursery.start_soon(c1.send_all, b"x" * 500_000)
        nursery.start_soon(c2.send_all, b"y" * 500_000)
    assert trio.current_time() - start == pytest.approx(1.0)
    await receive_exactly(s1, 500_000)
    await receive_exactly(s2, 500_000)
    assert trio.current_time() - start == pytest.approx(1.01)
    # The other direction has its own transmitter.
    start = trio.current_time()
    await s1.send_all(b"z" * 100_000)
    assert trio.current_time() - start == pytest.approx(0.1)
    for stream in (c1, s1, c2, s2):
        await stream.aclose()


async def test_a_receiver_that_does_not_read_stops_its_sender(
    network: SimNetwork, autojump_clock: MockClock
) -> None:
    client, server = open_connection(network, "a", "b", window=1000)
    await client.send_all(b"x" * 1000)
    with trio.move_on_after(60) as waited:
        await client.send_all(b"more")
    assert waited.cancelled_caught  # the window is full until the server reads
    assert len(await server.receive_some()) == 1000
    await client.send_all(b"more")
    assert await server.receive_some() == b"more"
    await client.aclose()
    await server.aclose()


# -- loss and resets --------------------------------------------------------------------


async def test_loss_rate_is_within_tolerance_and_costs_only_time(
    network: SimNetwork, autojump_clock: MockClock
) -> None:
    loss = 0.1
    network.set_link("a", "b", Link(latency=0.01, loss=loss))
    client, server = await pair(network, "a", "b")
    lost_before = network.statistics.segments_lost
    writes = 3000
    payload = b"".join(i.to_bytes(4, "big") * (MSS // 4) for i in range(writes))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive_and_check, server, payload)
        for i in range(writes):  # one segment per write
            await client.send_all(payload[i * MSS : (i + 1) * MSS])
    lost = network.statistics.segments_lost - lost_before
    # Every transmission is lost with probability `loss`; lost ones are sent again.
    assert lost / (writes + lost) == pytest.approx(loss, abs=0.02)
    await client.aclose()
    await server.aclose()


async def receive_and_check(stream: trio.abc.Stream, expected: bytes) -> None:
    assert await receive_exactly(stream, len(expected)) == expected


async def test_a_lost_segment_is_retransmitted_after_the_rto(
    network: SimNetwork, autojump_clock: MockClock
) -> None:
    link = Link(latency=0.01, loss=0.5)
    network.set_link("a", "b", link)
    client, server = open_connection(network, "a", "b")
    delays = set()
    for _ in range(50):
        sent = trio.current_time()
        await client.send_all(b"x")
        await server.receive_some()
        delays.add(round(trio.current_time() - sent, 6))
    # 0, 1, 2, ... losses: latency + rto * (2**k - 1)
    allowed = {round(0.01 + link.rto * (2**k - 1), 6) for k in range(16)}
    assert delays <= allowed
    assert len(delays) >= 3
    await client.aclose()
    await server.aclose()


async def test_a_reset_breaks_both_ends(network: SimNetwork, autojump_clock: MockClock) -> None:
    client, server = await pair(network, "a", "b")
    network.set_link("a", "b", Link(latency=0.01, reset=1.0))
    await client.send_all(b"doomed")
    with pytest.raises(trio.BrokenResourceError, match="reset"):
        await server.receive_some()
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"again")
    with pytest.raises(trio.BrokenResourceError):
        await client.receive_some()
    assert network.statistics.random_resets == 1
    await client.aclose()
    await server.aclose()


# -- dialling, NAT, partitions, crashes -------------------------------------------------


async def test_dialling_where_nobody_listens_is_refused_after_a_round_trip(
    network: SimNetwork, autojump_clock: MockClock
) -> None:
    network.set_link("a", "b", Link(latency=0.02))
    start = trio.current_time()
    with pytest.raises(ConnectionRefusedError):
        await network.connect("b", 80, src_host="a")
    assert trio.current_time() - start == pytest.approx(0.04)
    with pytest.raises(OSError, match="no route") as info:
        await network.connect("nowhere", 80, src_host="a")
    assert info.value.errno == errno.EHOSTUNREACH
    assert network.statistics.dials_refused == 1


async def test_nat_refuses_inbound_and_what_it_dials_works_both_ways(
    network: SimNetwork, autojump_clock: MockClock
) -> None:
    network.add_host("home", nat=True)
    [listener] = await network.open_listeners("home", 80)
    start = trio.current_time()
    with pytest.raises(TimeoutError) as info:
        await network.connect("home", 80, src_host="a")
    assert info.value.errno == errno.ETIMEDOUT
    assert trio.current_time() - start == pytest.approx(127.0)  # 7 SYNs: 1+2+...+64 s
    with pytest.raises(TimeoutError):
        await network.connect("home", 80)  # from outside the simulation too
    assert network.statistics.dials_unanswered == 2
    assert network.statistics.syns_dropped == 14
    await listener.aclose()
    # The NATed host dials out; the connection carries both ways.
    client, server = await pair(network, "home", "a")
    await client.send_all(b"request")
    assert await server.receive_some() == b"request"
    await server.send_all(b"response")
    assert await client.receive_some() == b"response"
    await client.aclose()
    await server.aclose()


async def test_partition_blocks_and_heal_restores(
    network: SimNetwork, autojump_clock: MockClock
) -> None:
    network.set_link("a", "b", Link(latency=0.01))
    client, server = await pair(network, "a", "b")
    network.partition([["a"], ["b", "c"]])
    assert network.partitioned
    assert network.is_cut("a", "b")
    assert not network.is_cut("b", "c")
    # Bytes in flight wait; new dials across the cut go unanswered.
    await client.send_all(b"held")
    with trio.move_on_after(300) as waited:
        await server.receive_some()
    assert waited.cancelled_caught
    with trio.move_on_after(30) as dialling:
        await network.connect("b", 80, src_host="a")
    assert dialling.cancelled_caught
    # Within a group, traffic flows.
    b_to_c = await pair(network, "b", "c")
    await b_to_c[0].send_all(b"fine")
    assert await b_to_c[1].receive_some() == b"fine"
    # Heal: what was held arrives at once; new dials work.
    network.heal()
    healed = trio.current_time()
    assert await server.receive_some() == b"held"
    assert trio.current_time() == healed
    a_to_b = await pair(network, "a", "b", port=81)
    for stream in (client, server, *b_to_c, *a_to_b):
        await stream.aclose()


async def test_hosts_in_no_group_form_one_more_group(
    network: SimNetwork, autojump_clock: MockClock
) -> None:
    network.add_host("d")
    network.partition([["a"]])
    assert network.is_cut("a", "b")
    assert not network.is_cut("b", "c")
    assert not network.is_cut("c", "d")


async def test_a_crash_resets_the_hosts_connections(
    network: SimNetwork, autojump_clock: MockClock
) -> None:
    network.set_link("a", "b", Link(latency=0.03))
    client, server = await pair(network, "a", "b")
    assert network.crash_host("b") == 1
    start = trio.current_time()
    with pytest.raises(trio.BrokenResourceError):
        await client.receive_some()
    assert trio.current_time() - start == pytest.approx(0.03)
    await client.aclose()
    await server.aclose()


# -- stream semantics ----------------------------------------------------------------------


async def test_streams_pass_trios_stream_conformance_checks(
    network: SimNetwork, autojump_clock: MockClock
) -> None:
    network.set_link("a", "b", Link(latency=0.01, jitter=0.005, loss=0.05, bandwidth=1_000_000))

    async def stream_maker() -> tuple[SimStream, SimStream]:
        return open_connection(network, "a", "b")

    async def clogged_stream_maker() -> tuple[SimStream, SimStream]:
        ends = open_connection(network, "a", "b", window=1)
        for end in ends:  # fill each window: the next write must wait
            await end.send_all(b"x")
        return ends

    await trio.testing.check_half_closeable_stream(stream_maker, clogged_stream_maker)


async def test_is_readable_tells_httpcore_the_server_hung_up(
    network: SimNetwork, autojump_clock: MockClock
) -> None:
    network.set_link("a", "b", Link(latency=0.02))
    client, server = await pair(network, "a", "b")
    assert isinstance(client, SimStream)
    assert not client.is_readable()
    await server.aclose()
    assert not client.is_readable()  # the FIN is on its way
    await trio.sleep(0.03)
    assert client.is_readable()
    assert await client.receive_some() == b""
    await client.aclose()


async def test_closing_with_unread_data_resets_and_data_to_a_closed_end_too(
    network: SimNetwork, autojump_clock: MockClock
) -> None:
    client, server = await pair(network, "a", "b")
    await server.send_all(b"unread")
    await trio.sleep(0.001)
    await client.aclose()  # unread data: an RST, not a FIN
    with pytest.raises(trio.BrokenResourceError):
        await server.receive_some()
    await server.aclose()

    client, server = await pair(network, "a", "b", port=81)
    await client.aclose()  # a FIN
    assert await server.receive_some() == b""
    await server.send_all(b"too late")  # reaches a closed socket: it answers RST
    await trio.sleep(0.001)
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"again")
    await server.aclose()


async def test_the_same_seed_gives_the_same_delays(seed: int, autojump_clock: MockClock) -> None:
    async def delays(seed: int) -> list[float]:
        async with trio.open_nursery() as nursery:
            network = SimNetwork(
                nursery, seed=seed, default_link=Link(latency=0.01, jitter=0.05, loss=0.2)
            )
            network.add_host("a")
            network.add_host("b")
            client, server = open_connection(network, "a", "b")
            result = []
            for _ in range(20):
                sent = trio.current_time()
                await client.send_all(b"x" * 3000)
                await receive_exactly(server, 3000)
                result.append(round(trio.current_time() - sent, 9))
            await client.aclose()
            await server.aclose()
            return result

    first = await delays(seed)
    assert await delays(seed) == first
    assert await delays(seed + 1) != first


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"latency": -1}, "latency"),
        ({"jitter": float("nan")}, "jitter"),
        ({"loss": 1.0}, "loss"),
        ({"reset": 1.5}, "reset"),
        ({"bandwidth": 0}, "bandwidth"),
    ],
)
def test_link_values_are_checked(settings: dict[str, float], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Link(**settings)


async def test_host_names_are_checked(network: SimNetwork, autojump_clock: MockClock) -> None:
    from simulations import SimulationError

    with pytest.raises(SimulationError, match="already exists"):
        network.add_host("a")
    with pytest.raises(SimulationError, match="not usable"):
        network.add_host("a b")
    with pytest.raises(SimulationError, match="no host"):
        network.partition([["zz"]])
    with pytest.raises(SimulationError, match="two partition groups"):
        network.partition([["a"], ["a"]])
    with pytest.raises(OSError, match="no host"):
        await network.open_listeners("zz", 80)
    with pytest.raises(OSError, match="cannot listen"):
        await network.host("a").open_listeners("b", 80)
