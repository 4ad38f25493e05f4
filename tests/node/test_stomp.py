"""The STOMP gateway with a stock client: stomp.py against real nodes on loopback TCP.

The nodes run in the test's trio loop; stomp.py is threaded and synchronous, so each
client runs in a worker thread (``trio.to_thread``), and waits are on what its listener
receives (``queue.get(timeout=...)``), never on sleeps. Bad input is written by hand
on plain sockets.
"""

from __future__ import annotations

import functools
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import stomp
import trio

from mesh._stomp import Limits
from node import Node, NodeError
from node._stomp import STOMP_USERS, StompConfig
from tests.helpers import NodeFactory, chain

T = TypeVar("T")
WAIT = 20.0  # the longest any one frame may take to arrive (s)


class Frames(stomp.ConnectionListener):  # type: ignore[misc]
    """What a stomp.py connection received, in order."""

    def __init__(self) -> None:
        self.frames: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.heartbeats: queue.Queue[None] = queue.Queue()
        self.disconnected = threading.Event()

    def on_message(self, frame: Any) -> None:
        self.frames.put(("MESSAGE", frame))

    def on_receipt(self, frame: Any) -> None:
        self.frames.put(("RECEIPT", frame))

    def on_error(self, frame: Any) -> None:
        self.frames.put(("ERROR", frame))

    def on_heartbeat(self) -> None:
        self.heartbeats.put(None)

    def on_disconnected(self) -> None:
        self.disconnected.set()

    def next(self, command: str) -> Any:
        kind, frame = self.frames.get(timeout=WAIT)
        assert kind == command, (kind, frame.headers, frame.body)
        return frame

    def receipt(self, receipt_id: str) -> None:
        assert self.next("RECEIPT").headers["receipt-id"] == receipt_id

    def messages(self, count: int) -> list[Any]:
        return [self.next("MESSAGE") for _ in range(count)]

    def quiet(self) -> bool:
        return self.frames.empty()


def port_of(node: Node) -> int:
    assert node.stomp_address is not None
    return int(node.stomp_address.rpartition(":")[2])


def connect(
    node: Node,
    *,
    heartbeats: tuple[int, int] = (0, 0),
    login: str | None = None,
    passcode: str | None = None,
) -> tuple[Any, Frames]:
    connection = stomp.Connection12(
        [("127.0.0.1", port_of(node))], heartbeats=heartbeats, reconnect_attempts_max=1
    )
    frames = Frames()
    connection.set_listener("test", frames)
    connection.connect(login, passcode, wait=True)
    return connection, frames


@pytest.fixture
def clients() -> Iterator[list[Any]]:
    """stomp.py connections opened by a test, closed after it."""
    opened: list[Any] = []
    yield opened
    for connection in opened:
        if connection.is_connected():
            connection.disconnect()


async def in_thread(function: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(function)


async def stomp_node(factory: NodeFactory, name: str, **config: Any) -> Node:
    return await factory.open(name, stomp="127.0.0.1:0", stomp_config=StompConfig(**config))


async def knows(node: Node, topic: str, subscriber: Node) -> None:
    """Wait until ``node`` knows that ``subscriber`` wants ``topic``."""
    with trio.fail_after(WAIT):
        while subscriber.node_id not in node.mesh.router.interests.subscribers(
            topic, now=node.clock()
        ):
            await node.mesh.interests_changed.wait()


# -- across the mesh -----------------------------------------------------------------------


async def test_subscribe_on_one_node_and_send_on_another_two_hops_away(
    tcp_nodes: NodeFactory, clients: list[Any]
) -> None:
    a, b, c = (
        await stomp_node(tcp_nodes, "a"),
        await tcp_nodes.open("b"),
        await stomp_node(tcp_nodes, "c"),
    )
    await chain([a, b, c])

    def subscribe() -> tuple[Any, Frames]:
        consumer, frames = connect(c)
        consumer.subscribe("/topic/news.#", id="news", receipt="s1")
        frames.receipt("s1")
        consumer.subscribe("/node/me", id="inbox", ack="client-individual", receipt="s2")
        frames.receipt("s2")
        return consumer, frames

    consumer, got = await in_thread(subscribe)
    clients.append(consumer)
    await knows(a, "news.tech", c)

    def produce() -> None:
        producer, frames = connect(a)
        clients.append(producer)
        producer.send(
            "/topic/news.tech", "hello subscribers", content_type="text/plain", receipt="p"
        )
        frames.receipt("p")  # in a's custody
        producer.send(f"/node/{c.node_id.text}", b"\x00\xffto c", receipt="n")
        frames.receipt("n")

    await in_thread(produce)

    def consume() -> None:
        # The two may overtake each other on the way: nothing in ptth promises an order.
        received = {frame.headers["subscription"]: frame for frame in got.messages(2)}
        publication = received["news"]
        headers = publication.headers
        assert publication.body == "hello subscribers"
        assert headers["subscription"] == "news"
        assert headers["destination"] == "/topic/news.tech"
        assert headers["content-type"] == "text/plain"
        assert headers["content-length"] == str(len("hello subscribers"))
        assert headers["message-id"].startswith(a.node_id.text + ":")
        assert headers["ptth-origin"] == a.node_id.text
        assert headers["ptth-hops"] == "2"
        assert "ack" not in headers  # auto: nothing to acknowledge
        message = received["inbox"]
        assert message.headers["destination"] == f"/node/{c.node_id.text}"
        assert message.headers["content-type"] == "application/octet-stream"
        assert message.headers["content-length"] == "6"
        consumer.ack(message.headers["ack"], receipt="ack")
        got.receipt("ack")

    await in_thread(consume)
    assert await pending(c) == []  # acknowledged: gone from c's inbox


# -- acknowledgements ----------------------------------------------------------------------


async def pending(node: Node, queue_name: str | None = None) -> list[bytes]:
    """The bodies of what is unacknowledged in ``node``'s inbox, or its queue."""
    store = node.store
    if queue_name is None:
        entries = await node.run_blocking(store.pending)
    else:
        entries = await node.run_blocking(lambda: store.subscription_pending(queue_name))
    return [entry.body for entry in entries]


async def publish(node: Node, topic: str, *bodies: bytes) -> None:
    for body in bodies:
        await node.publish(topic, body, ct="text/plain")


async def test_ack_modes_and_nack_redelivery(tcp_nodes: NodeFactory, clients: list[Any]) -> None:
    n = await stomp_node(tcp_nodes, "n")

    def subscribe(ack: str, queue_name: str) -> tuple[Any, Frames]:
        consumer, frames = connect(n)
        clients.append(consumer)
        consumer.subscribe(
            f"/queue/{queue_name}", id=queue_name, ack=ack, pattern="jobs.#", receipt="s"
        )
        frames.receipt("s")
        return consumer, frames

    individual, got = await in_thread(lambda: subscribe("client-individual", "one"))
    await publish(n, "jobs.a", b"1", b"2", b"3")

    def settle_individually() -> None:
        first, second, third = got.messages(3)
        assert [m.body for m in (first, second, third)] == ["1", "2", "3"]
        assert first.headers["destination"] == "/topic/jobs.a"
        individual.ack(third.headers["ack"])  # not cumulative: 1 and 2 stay
        individual.nack(second.headers["ack"])
        again = got.next("MESSAGE")  # given back: sent again
        assert again.body == "2"
        assert again.headers["message-id"] == second.headers["message-id"]
        assert again.headers["ack"] != second.headers["ack"]
        individual.ack(first.headers["ack"])
        individual.ack(again.headers["ack"], receipt="done")
        got.receipt("done")

    await in_thread(settle_individually)
    assert await pending(n, "one") == []

    cumulative, got2 = await in_thread(lambda: subscribe("client", "two"))
    await publish(n, "jobs.b", b"4", b"5", b"6")

    def settle_cumulatively() -> None:
        messages = got2.messages(3)
        cumulative.ack(messages[1].headers["ack"], receipt="r")  # 4 and 5, not 6
        got2.receipt("r")

    await in_thread(settle_cumulatively)
    assert await pending(n, "two") == [b"6"]


async def test_unacknowledged_messages_go_to_the_next_subscriber(
    tcp_nodes: NodeFactory, clients: list[Any]
) -> None:
    n = await stomp_node(tcp_nodes, "n")

    def first_reader() -> tuple[Any, Frames]:
        consumer, frames = connect(n)
        consumer.subscribe(
            "/queue/work",
            id="w",
            ack="client",
            pattern="work.*",
            receipt="s",
            **{"prefetch-count": "2"},
        )
        frames.receipt("s")
        return consumer, frames

    first, got1 = await in_thread(first_reader)
    await publish(n, "work.x", b"m1", b"m2", b"m3")
    assert [m.body for m in await in_thread(lambda: got1.messages(2))] == ["m1", "m2"]

    def second_reader() -> tuple[Any, Frames]:
        consumer, frames = connect(n)
        clients.append(consumer)
        consumer.subscribe("/queue/work", id="w2", ack="client-individual", receipt="s")
        frames.receipt("s")  # bound already: no pattern needed
        return consumer, frames

    second, got2 = await in_thread(second_reader)
    # m1 and m2 are the first reader's until it settles them: the second gets m3 only.
    third = await in_thread(lambda: got2.next("MESSAGE"))
    assert third.body == "m3"
    assert got1.quiet()

    def drop_the_first() -> None:
        first.disconnect()  # without acknowledging m1 and m2
        redelivered = got2.messages(2)
        assert sorted(m.body for m in redelivered) == ["m1", "m2"]
        for message in (third, *redelivered):
            second.ack(message.headers["ack"])
        second.send("/topic/work.x", "m4", receipt="sync")
        got2.receipt("sync")
        fourth = got2.next("MESSAGE")
        assert fourth.body == "m4"
        second.ack(fourth.headers["ack"], receipt="end")
        got2.receipt("end")

    await in_thread(drop_the_first)
    assert await pending(n, "work") == []


# -- transactions and receipts -------------------------------------------------------------


async def test_transactions_commit_and_abort(tcp_nodes: NodeFactory, clients: list[Any]) -> None:
    n = await stomp_node(tcp_nodes, "n")

    def run() -> None:
        consumer, got = connect(n)
        clients.append(consumer)
        consumer.subscribe("/topic/tx.#", id="t", receipt="s")
        got.receipt("s")
        producer, frames = connect(n)
        clients.append(producer)
        tx = producer.begin()
        producer.send("/topic/tx.in", "first", transaction=tx)
        producer.send("/topic/tx.in", "second", transaction=tx)
        producer.send("/topic/tx.out", "outside", receipt="o")
        frames.receipt("o")
        assert got.next("MESSAGE").body == "outside"  # the transaction's wait for COMMIT
        producer.commit(tx, receipt="c")
        frames.receipt("c")  # both in custody
        # Taken into custody together: in no particular order (ptth promises none).
        assert sorted(m.body for m in got.messages(2)) == ["first", "second"]
        aborted = producer.begin()
        producer.send("/topic/tx.in", "never", transaction=aborted)
        producer.abort(aborted)
        producer.send("/topic/tx.out", "after", receipt="a")
        frames.receipt("a")
        assert got.next("MESSAGE").body == "after"  # nothing of the aborted one came first
        assert got.quiet()

    await in_thread(run)


async def test_a_receipt_means_custody(tcp_nodes: NodeFactory, clients: list[Any]) -> None:
    n = await stomp_node(tcp_nodes, "n")
    nowhere = await tcp_nodes.open("nowhere")  # never peered: frames to it are held

    def run() -> None:
        producer, frames = connect(n)
        clients.append(producer)
        producer.send(f"/node/{nowhere.node_id.text}", "held", receipt="r")
        frames.receipt("r")

    await in_thread(run)
    held = [queue for queue in await n.queues() if queue.get("next_hop") is None]
    assert held
    assert held[0]["frames"] == 1


# -- heart-beats and time-outs -------------------------------------------------------------


async def test_heart_beats_keep_an_idle_connection_open(
    tcp_nodes: NodeFactory, clients: list[Any]
) -> None:
    n = await stomp_node(tcp_nodes, "n", heartbeat=0.2, idle_timeout=0.4)

    def run() -> None:
        # The client beats every 200 ms (silent for 400 ms it would be dropped), the
        # server every 400 ms (what the client asks for).
        client, frames = connect(n, heartbeats=(200, 400))
        clients.append(client)
        # Four of the server's heart-beats: 1.6 s, four times what a silent client
        # gets; the client's own heart-beats kept it in.
        for _ in range(4):
            frames.heartbeats.get(timeout=WAIT)
        client.send("/topic/still.here", "yes", receipt="r")
        frames.receipt("r")
        assert client.is_connected()

    await in_thread(run)


def raw_connection(node: Node) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port_of(node)), timeout=WAIT)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (the test fails if it does not)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


CONNECT = b"CONNECT\naccept-version:1.2\nhost:test\n\n\0"


async def test_a_silent_client_is_dropped(tcp_nodes: NodeFactory) -> None:
    n = await stomp_node(tcp_nodes, "n", heartbeat=0.05, idle_timeout=0.3, connect_timeout=0.3)

    def silent(connect_frame: bytes) -> bytes:
        with raw_connection(n) as sock:
            sock.sendall(connect_frame)
            return read_all(sock)

    promised = CONNECT.replace(b"host:test", b"host:test\nheart-beat:50,0")
    answer = await in_thread(lambda: silent(promised))
    assert answer.startswith(b"CONNECTED\nversion:1.2\nheart-beat:50,50\n")
    assert b"ERROR\nmessage:connection timed out\n" in answer
    assert b"heart-beats every 50 ms were agreed" in answer
    answer = await in_thread(lambda: silent(CONNECT))  # no heart-beats agreed
    assert b"ERROR\nmessage:connection timed out\n" in answer
    assert b"nothing from the client for 0.3 s" in answer
    answer = await in_thread(lambda: silent(b"CONN"))  # a CONNECT that never ends
    assert answer.startswith(b"ERROR\nmessage:connection timed out\n")
    assert answer.endswith(b"no CONNECT frame within 0.3 s\0")


# -- bad input -----------------------------------------------------------------------------


async def test_bad_input_gets_an_error_and_a_close_and_the_node_serves_others(
    tcp_nodes: NodeFactory, clients: list[Any]
) -> None:
    limits = Limits(max_body=1024, max_frame=4096)
    n = await stomp_node(tcp_nodes, "n", max_frames_per_second=50, limits=limits)

    def exchange(data: bytes) -> bytes:
        with raw_connection(n) as sock:
            sock.sendall(data)
            return read_all(sock)

    cases = [
        (b"HELLO\n\n\0", b"message:unknown command"),
        (
            CONNECT + b"SEND\ndestination:/topic/a\ncontent-length:99999\n\n",
            b"message:body too large",
        ),
        (CONNECT + b"SEND\ndestination:/topic/a\n\n" + b"x" * 5000, b"message:body too large"),
        (CONNECT + b"SUBSCRIBE\n" + b"x" * 9000, b"message:header line too long"),
        (CONNECT + b"BEGIN\ntransaction:t\n\n\0" * 100, b"message:too many frames"),
        (b"SEND\ndestination:/topic/a\n\n\0", b"message:not connected"),
        (CONNECT + b"ACK\nid:3\n\n\0", b"message:no such message"),
        (CONNECT + b"SUBSCRIBE\nid:1\ndestination:/queue/none\n\n\0", b"message:no such queue"),
        (CONNECT + b"SEND\ndestination:/queue/q\nreceipt:7\n\n\0", b"receipt-id:7"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 100, b"message:unknown command"),
    ]
    for data, words in cases:
        answer = await in_thread(functools.partial(exchange, data))
        assert b"ERROR\n" in answer, data[:40]
        assert words in answer, (data[:40], answer)

    def still_serving() -> None:
        client, frames = connect(n)
        clients.append(client)
        client.subscribe("/topic/ok", id="1", receipt="s")
        frames.receipt("s")
        client.send("/topic/ok", "fine")
        assert frames.next("MESSAGE").body == "fine"

    await in_thread(still_serving)


async def test_connections_are_limited_per_address(
    tcp_nodes: NodeFactory, clients: list[Any]
) -> None:
    n = await stomp_node(tcp_nodes, "n", max_connections_per_address=2)

    def run() -> bytes:
        for _ in range(2):
            client, _ = connect(n)
            clients.append(client)
        with raw_connection(n) as sock:
            return read_all(sock)

    answer = await in_thread(run)
    assert answer.startswith(b"ERROR\nmessage:server busy\n")
    assert b"too many STOMP connections from 127.0.0.1: 2 open (limit 2)" in answer


# -- authentication and configuration ------------------------------------------------------


async def test_logins_are_checked_against_the_users_file(
    tcp_nodes: NodeFactory, clients: list[Any]
) -> None:
    (tcp_nodes.tmp_path / "n").mkdir()
    (tcp_nodes.tmp_path / "n" / STOMP_USERS).write_text("# STOMP users\nalice:s3cret\nbroken\n")
    n = await stomp_node(tcp_nodes, "n")

    def run() -> None:
        client, _ = connect(n, login="alice", passcode="s3cret")
        clients.append(client)
        assert client.is_connected()
        for login, passcode in (("alice", "wrong"), ("mallory", "s3cret"), (None, None)):
            with pytest.raises(stomp.exception.ConnectFailedException):
                connect(n, login=login, passcode=passcode)
        with raw_connection(n) as sock:
            sock.sendall(CONNECT.replace(b"host:test", b"login:alice\npasscode:nope"))
            answer = read_all(sock)
        assert b"message:access refused" in answer
        assert b"stomp.users" in answer

    await in_thread(run)


async def test_the_listener_is_loopback_only_unless_allowed(tcp_nodes: NodeFactory) -> None:
    with pytest.raises(NodeError, match="not a loopback address"):
        await tcp_nodes.open("a", stomp="0.0.0.0:0")
    with pytest.raises(NodeError, match=r"create .*stomp.users first"):
        await tcp_nodes.open("b", stomp="0.0.0.0:0", stomp_config=StompConfig(allow_remote=True))
    with pytest.raises(NodeError, match="is not HOST:PORT"):
        await tcp_nodes.open("c", stomp="61613")


def test_ptth_run_serves_stomp(tmp_path: Path) -> None:
    """A `ptth run --stomp` process: it says where STOMP is served, and a client uses it."""
    command = [
        sys.executable,
        "-m",
        "node",
        "--data-dir",
        str(tmp_path),
        "run",
        "--listen",
        "127.0.0.1:0",
        "--stomp",
        "127.0.0.1:0",
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            address = None
            for line in process.stdout:
                if line.startswith("stomp "):
                    address = line.split()[1]
                    break
            assert address is not None
            connection = stomp.Connection12([("127.0.0.1", int(address.rpartition(":")[2]))])
            frames = Frames()
            connection.set_listener("test", frames)
            connection.connect(wait=True)
            connection.subscribe("/topic/cli", id="1", receipt="s")
            frames.receipt("s")
            connection.send("/topic/cli", "from the CLI's node")
            assert frames.next("MESSAGE").body == "from the CLI's node"
            connection.disconnect()
            info = (tmp_path / "api.json").read_text()
            assert f'"stomp": "{address}"' in info
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=WAIT)
    assert process.returncode == 0
