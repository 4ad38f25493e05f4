"""The XMPP gateway against a real XMPP server: Prosody on loopback, a slixmpp client.

The Prosody fixture writes a config in a temporary directory (loopback only, c2s and
component ports picked free, no TLS, no s2s, no offline storage: a message the gateway
sent while a user was away would be lost, so buffering must be the node's), registers
two users with prosodyctl and runs ``prosody -F`` for the module; it is ready when its
log says both listeners are up. Without prosody or slixmpp the tests say so and skip.

The nodes run in the test's trio loop; each slixmpp client runs its asyncio loop in a
thread of its own, and the test waits on what the client received (``queue.get`` with a
time-out as the failure bound) or on the gateway's state (``wait_for``), never on sleeps.
A stream that breaks the rules is tested with a hand-written server on a plain socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import queue
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

import crypto
from mesh._xmpp import Limits, handshake_digest
from node import Node
from node._chirp import chirp_topic
from node._xmpp import XmppConfig, XmppGateway, chirp_subscription_name, subscription_name
from tests.helpers import NodeFactory, chain

T = TypeVar("T")
WAIT = 30.0  # the longest anything one step waits for may take (s)
DOMAIN = "ptth.localhost"
HOST = "localhost"
SECRET = "component-secret"
PROSODY = shutil.which("prosody")
PROSODYCTL = shutil.which("prosodyctl")


@dataclasses.dataclass(frozen=True)
class Prosody:
    c2s_port: int
    component_port: int
    secret_file: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


CONFIG = """
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
certificates = "{dir}/certs"
run_as_root = true
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
c2s_direct_tls_ports = {{ }}
legacy_ssl_ports = {{ }}
component_ports = {{ {component} }}
component_interfaces = {{ "127.0.0.1" }}
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping" }}
modules_disabled = {{ "s2s"; "offline"; "tls" }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"
log = {{
    {{ levels = {{ min = "info" }}, to = "console" }};
    {{ levels = {{ min = "debug" }}, to = "file", filename = "{dir}/prosody.log" }};
}}
VirtualHost "{host}"
Component "{domain}"
    component_secret = "{secret}"
"""


@pytest.fixture(scope="module")
def prosody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prosody]:
    if PROSODY is None or PROSODYCTL is None:
        pytest.skip("prosody is not installed (apt-get install prosody)")
    pytest.importorskip("slixmpp", reason="slixmpp (the test client) is not installed")
    directory = tmp_path_factory.mktemp("prosody")
    (directory / "data").mkdir()
    (directory / "certs").mkdir()
    ports = Prosody(free_port(), free_port(), directory / "secret")
    ports.secret_file.write_text(SECRET + "\n")
    config = directory / "prosody.cfg.lua"
    config.write_text(
        CONFIG.format(
            dir=directory,
            c2s=ports.c2s_port,
            component=ports.component_port,
            host=HOST,
            domain=DOMAIN,
            secret=SECRET,
        )
    )
    for user in ("alice", "bob"):
        subprocess.run(
            [PROSODYCTL, "--config", str(config), "register", user, HOST, f"{user}-password"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    process = subprocess.Popen(
        [PROSODY, "--config", str(config), "-F"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    waiting = {
        f"Activated service 'c2s' on [127.0.0.1]:{ports.c2s_port}",
        f"Activated service 'component' on [127.0.0.1]:{ports.component_port}",
    }
    seen: list[str] = []
    try:
        while waiting:
            line = lines.get(timeout=WAIT)
            assert line is not None, f"prosody ended before it was ready: {''.join(seen)}"
            seen.append(line)
            waiting = {w for w in waiting if w not in line}
        yield ports
    finally:
        process.terminate()
        try:
            process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(WAIT)  # it reads to the end of prosody's output
        process.stdout.close()


# -- a slixmpp user in a thread of its own ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Received:
    sender: str  # bare JID
    kind: str
    body: str
    ptth: dict[str, str]
    error: str


class User:
    """A slixmpp client whose asyncio loop runs in a thread; its methods are blocking
    (call them with ``in_thread``)."""

    def __init__(self, name: str, port: int) -> None:
        self.jid = f"{name}@{HOST}"
        self.password = f"{name}-password"
        self.port = port
        self.received: queue.Queue[Received] = queue.Queue()
        self.presences: queue.Queue[tuple[str, str]] = queue.Queue()
        self.loop = asyncio.new_event_loop()
        self.client: Any = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(WAIT)

    def call(self, function: Callable[[], object]) -> None:
        """Run ``function`` in the client's loop (slixmpp is not thread-safe)."""
        self.loop.call_soon_threadsafe(function)

    def login(self) -> None:
        self.run(self._login())

    async def _login(self) -> None:
        import slixmpp

        client = slixmpp.ClientXMPP(self.jid, self.password)
        client.enable_direct_tls = False
        client.enable_starttls = False
        client.enable_plaintext = True
        client.plugin["feature_mechanisms"].unencrypted_plain = True  # loopback, no TLS here
        started = asyncio.Event()

        async def session_start(event: Any) -> None:
            await client.get_roster()
            client.send_presence()
            started.set()

        client.add_event_handler("session_start", session_start)
        client.add_event_handler("message", self._message)
        client.add_event_handler("message_error", self._message)
        client.add_event_handler("presence_subscribed", self._presence("subscribed"))
        client.add_event_handler("presence_unsubscribed", self._presence("unsubscribed"))
        self.client = client
        client.connect("127.0.0.1", self.port)
        await started.wait()

    def _presence(self, kind: str) -> Callable[[Any], None]:
        def handle(presence: Any) -> None:
            self.presences.put((presence["from"].bare, kind))

        return handle

    def _message(self, message: Any) -> None:
        ptth = message.xml.find("{urn:ptth:xmpp:0}ptth")
        error = ""
        if message["type"] == "error":
            error = message["error"]["condition"] + ": " + (message["error"]["text"] or "")
        self.received.put(
            Received(
                sender=message["from"].bare,
                kind=message["type"],
                body=message["body"],
                ptth=dict(ptth.attrib) if ptth is not None else {},
                error=error,
            )
        )

    def logout(self) -> None:
        async def logout() -> None:
            await self.client.disconnect()

        self.run(logout())

    def follow(self, topic_jid: str) -> str:
        """Add ``topic_jid`` as a contact; the answer (subscribed or unsubscribed)."""
        self.call(lambda: self.client.send_presence(pto=topic_jid, ptype="subscribe"))
        while True:  # (a topic of an earlier test may answer a probe meanwhile)
            sender, kind = self.presences.get(timeout=WAIT)
            if sender == topic_jid:
                return kind

    def unfollow(self, topic_jid: str) -> None:
        self.call(lambda: self.client.send_presence(pto=topic_jid, ptype="unsubscribe"))

    def say(self, to: str, body: str) -> None:
        self.call(lambda: self.client.send_message(mto=to, mbody=body, mtype="chat"))

    def next(self) -> Received:
        return self.received.get(timeout=WAIT)

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.logout()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT)
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.loop.run_until_complete(asyncio.sleep(0))  # let the cancelled tasks end
        self.loop.close()


@pytest.fixture
def users(prosody: Prosody) -> Iterator[Callable[[str], User]]:
    made: list[User] = []

    def make(name: str) -> User:
        user = User(name, prosody.c2s_port)
        made.append(user)
        return user

    yield make
    for user in made:
        user.close()


async def in_thread(function: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(function, abandon_on_cancel=True)


def gateway_of(node: Node) -> XmppGateway:
    assert node.xmpp is not None
    return node.xmpp


async def xmpp_node(factory: NodeFactory, name: str, prosody: Prosody, **config: Any) -> Node:
    xmpp = XmppConfig(
        component=f"127.0.0.1:{prosody.component_port}",
        domain=DOMAIN,
        retry_initial=0.05,
        retry_max=0.5,
        **config,
    )
    node = await factory.open(name, xmpp=xmpp, xmpp_secret_file=str(prosody.secret_file))
    gateway = gateway_of(node)
    with trio.fail_after(WAIT):
        await gateway.wait_for(lambda: gateway.connected)
    return node


async def knows(node: Node, topic: str, subscriber: Node) -> None:
    """Wait until ``node`` knows that ``subscriber`` wants ``topic``."""
    with trio.fail_after(WAIT):
        while subscriber.node_id not in node.mesh.router.interests.subscribers(
            topic, now=node.clock()
        ):
            await node.mesh.interests_changed.wait()


async def pending(node: Node, name: str, count: int) -> None:
    """Wait until ``count`` publications are pending for subscription ``name``."""
    store = node.store
    with trio.fail_after(WAIT):
        while True:
            changed = node.mesh.inbox_changed
            entries = await node.run_blocking(lambda: store.subscription_pending(name))
            if len(entries) == count:
                return
            await changed.wait()


# -- the tests ----------------------------------------------------------------------------------


async def test_follow_a_topic_be_away_come_back_and_publish(
    tcp_nodes: NodeFactory, prosody: Prosody, users: Callable[[str], User]
) -> None:
    a = await xmpp_node(tcp_nodes, "a", prosody, publishers=(f"alice@{HOST}",))
    b, c = await tcp_nodes.open("b"), await tcp_nodes.open("c")
    await chain([a, b, c])
    gateway = gateway_of(a)
    alice, bob = users("alice"), users("bob")
    news = f"news.#@{DOMAIN}"

    # alice adds a topic JID: a durable subscription on a, answered with subscribed.
    await in_thread(alice.login)
    assert await in_thread(lambda: alice.follow(news)) == "subscribed"
    with trio.fail_after(WAIT):
        await gateway.wait_for(lambda: gateway.online(alice.jid))
    assert gateway.following(alice.jid) == ("news.#",)
    name = subscription_name(alice.jid)
    saved = {s.name: s.patterns for s in await a.subscriptions()}
    assert saved[name] == ("news.#",)

    # A publication two hops away reaches her as a chat message from the topic JID.
    await knows(c, "news.tech", a)
    await c.publish("news.tech", b"first", ct="text/plain")
    got = await in_thread(alice.next)
    assert got.sender == news
    assert got.kind == "chat"
    assert got.body == f"first\n— {c.node_id.text} on news.tech"
    assert got.ptth["origin"] == c.node_id.text
    assert got.ptth["topic"] == "news.tech"
    assert got.ptth["hops"] == "2"

    # Away: the node buffers (Prosody keeps no offline messages here).
    await in_thread(alice.logout)
    with trio.fail_after(WAIT):
        await gateway.wait_for(lambda: not gateway.online(alice.jid))
    for body in ("second", "third"):
        await c.publish("news.tech", body.encode(), ct="text/plain")
    await pending(a, name, 2)
    assert alice.received.empty()

    # Back: each once, then what comes next.
    await in_thread(alice.login)
    first_two = {(await in_thread(alice.next)).body.partition("\n")[0] for _ in range(2)}
    assert first_two == {"second", "third"}
    await c.publish("news.tech", b"fourth", ct="text/plain")
    assert (await in_thread(alice.next)).body.startswith("fourth\n")
    with trio.fail_after(WAIT):  # acknowledged once written
        await gateway.wait_for(lambda: gateway.delivered == 4)
    await pending(a, name, 0)

    # alice publishes by messaging a topic JID; a ptth subscriber two hops away gets it.
    async with c.subscribe("chat.#") as subscription:
        await knows(a, "chat.room", c)
        await in_thread(lambda: alice.say(f"chat.room@{DOMAIN}", "hello mesh"))
        with trio.fail_after(WAIT):
            publication = await subscription.get()
        assert publication.topic == "chat.room"
        assert publication.body == b"hello mesh"
        assert publication.origin == a.node_id
        # bob is not on the publishers list: refused with a stanza error.
        await in_thread(bob.login)
        await in_thread(lambda: bob.say(f"chat.room@{DOMAIN}", "let me in"))
        refusal = await in_thread(bob.next)
        assert refusal.kind == "error"
        assert refusal.error.startswith("forbidden: bob@localhost may not publish")
        # A topic JID that is no topic: refused, and so is following one.
        await in_thread(lambda: alice.say(f"chat.*@{DOMAIN}", "wild"))
        assert (await in_thread(alice.next)).error.startswith("bad-request")
        assert await in_thread(lambda: bob.follow(f"bad!topic@{DOMAIN}")) == "unsubscribed"
        assert gateway.following(bob.jid) == ()
    assert gateway.published == 1

    # Removing the contact ends the subscription.
    await in_thread(lambda: alice.unfollow(news))
    with trio.fail_after(WAIT):
        await gateway.wait_for(lambda: not gateway.following(alice.jid))
    assert name not in {s.name for s in await a.subscriptions()}


async def test_subscriptions_and_users_survive_a_restart(
    tcp_nodes: NodeFactory, prosody: Prosody, users: Callable[[str], User]
) -> None:
    config = XmppConfig(
        component=f"127.0.0.1:{prosody.component_port}",
        domain=DOMAIN,
        retry_initial=0.05,
        retry_max=0.5,
    )
    running = await tcp_nodes.start("a", xmpp=config, xmpp_secret_file=str(prosody.secret_file))
    gateway = gateway_of(running.node)
    with trio.fail_after(WAIT):
        await gateway.wait_for(lambda: gateway.connected)
    alice = users("alice")
    await in_thread(alice.login)
    assert await in_thread(lambda: alice.follow(f"weather.*@{DOMAIN}")) == "subscribed"
    with trio.fail_after(WAIT):  # she let the topic see her presence
        await gateway.wait_for(lambda: gateway.online(alice.jid))
    far = crypto.NodeId(bytes(31) + b"\x07")  # the bot's follows are kept too
    await in_thread(lambda: alice.say(f"chirp@{DOMAIN}", f"follow {far.text}"))
    assert (await in_thread(alice.next)).body.startswith(f"You follow {far.short} now")
    await running.stop()
    a = await tcp_nodes.open("a", xmpp=config, xmpp_secret_file=str(prosody.secret_file))
    gateway = gateway_of(a)
    assert gateway.following(alice.jid) == ("weather.*",)
    assert gateway.chirp_following(alice.jid) == (far,)
    await in_thread(lambda: alice.say(f"chirp@{DOMAIN}", f"unfollow {far.short}"))
    assert (await in_thread(alice.next)).body == f"You no longer follow {far.short}."
    # On connecting it probes its followers; Prosody answers with alice's presence.
    with trio.fail_after(WAIT):
        await gateway.wait_for(lambda: gateway.online(alice.jid))
    await a.publish("weather.paris", b"rain", ct="text/plain")
    got = await in_thread(alice.next)
    assert got.sender == f"weather.*@{DOMAIN}"
    assert got.body.startswith("rain\n")
    await in_thread(lambda: alice.unfollow(f"weather.*@{DOMAIN}"))
    with trio.fail_after(WAIT):
        await gateway.wait_for(lambda: not gateway.following(alice.jid))


async def test_the_chirp_bot_follows_relays_posts_and_unfollows(
    tcp_nodes: NodeFactory, prosody: Prosody, users: Callable[[str], User]
) -> None:
    a = await xmpp_node(tcp_nodes, "a", prosody, publishers=(f"alice@{HOST}",))
    b, c = await tcp_nodes.open("b"), await tcp_nodes.open("c")
    await chain([a, b, c])
    gateway = gateway_of(a)
    alice, bob = users("alice"), users("bob")
    bot = f"chirp@{DOMAIN}"

    async def ask(user: User, line: str) -> str:
        await in_thread(lambda: user.say(bot, line))
        got = await in_thread(user.next)
        assert (got.sender, got.kind) == (bot, "chat")
        return got.body

    # The bot is a contact (for the presence), never a topic JID.
    await in_thread(alice.login)
    assert await in_thread(lambda: alice.follow(bot)) == "subscribed"
    assert gateway.following(alice.jid) == ()
    assert "\nfollow NODE" in await ask(alice, "help")
    assert (await ask(alice, "dance")).startswith("Unknown command 'dance'. I am the chirp bot")
    assert await ask(alice, "following") == "You follow nobody: 'follow NODE' to start."
    assert (await ask(alice, "follow zzzz")).startswith("No node I know is called 'zzzz': give")
    assert (await ask(alice, "timeline")) == "You follow nobody: 'follow NODE' first."

    # Follow c (two hops away) by its id: the bot probes alice's presence and relays.
    assert (await ask(alice, f"follow {c.node_id.text}")).startswith(
        f"You follow {c.node_id.short} now: their chirps come here."
    )
    assert gateway.chirp_following(alice.jid) == (c.node_id,)
    saved = {s.name: s.patterns for s in await a.subscriptions()}
    assert saved[chirp_subscription_name(alice.jid)] == (chirp_topic(c.node_id),)
    with trio.fail_after(WAIT):
        await gateway.wait_for(lambda: gateway.online(alice.jid))
    await knows(c, chirp_topic(c.node_id), a)
    await c.chirp.post("hello from c")
    got = await in_thread(alice.next)
    assert (got.sender, got.kind) == (bot, "chat")
    assert got.body == f"{c.node_id.short}: hello from c"
    assert got.ptth["origin"] == c.node_id.text
    assert got.ptth["topic"] == chirp_topic(c.node_id)

    # b by its name (a peer of a), a itself by its short id; already followed: said so.
    assert (await ask(alice, "follow B")).startswith(f"You follow b ({b.node_id.short}) now")
    assert (await ask(alice, f"follow {a.node_id.short}")).startswith("You follow")
    assert await ask(alice, "follow b") == f"You follow b ({b.node_id.short}) already."
    assert (await ask(alice, "following")).splitlines() == [
        "You follow 3 nodes:",
        f"{c.node_id.short} {c.node_id.text}",
        f"b ({b.node_id.short}) {b.node_id.text}",
        f"{a.node_id.short} {a.node_id.text}",
    ]

    # post: as node a, for the publishers only; alice follows a, so it comes back.
    got_two = {await ask(alice, "post hi all"), (await in_thread(alice.next)).body}
    assert got_two == {
        f"Posted as {a.node_id.short} ({chirp_topic(a.node_id)}).",
        f"{a.node_id.short}: hi all",
    }
    await in_thread(bob.login)
    assert await ask(bob, "post let me") == (
        f"bob@{HOST} may not post as this node (its operator lists who may with --xmpp-publishers)."
    )
    assert await ask(alice, "post " + "x" * 1001) == (
        "Not posted: a post is at most 1000 characters; this one has 1001."
    )
    assert gateway.published == 1
    timeline = (await ask(alice, "timeline")).splitlines()
    assert timeline[0] == "The last 2 chirps:"
    assert timeline[1].endswith(f"] {c.node_id.short}: hello from c")
    assert timeline[2].endswith(f"] {a.node_id.short}: hi all")

    # unfollow c: its chirps still reach node a (a follows c itself) but not alice.
    await a.chirp.follow(c.node_id)
    assert await ask(alice, f"unfollow {c.node_id.short}") == (
        f"You no longer follow {c.node_id.short}."
    )
    assert await ask(alice, f"unfollow {c.node_id.text}") == (
        f"You do not follow {c.node_id.short}."
    )
    await c.chirp.post("after")
    with trio.fail_after(WAIT):
        while "after" not in [post.text for post in await a.chirp.timeline()]:
            await a.mesh.inbox_changed.wait()
    await in_thread(lambda: alice.say(bot, "post marker"))
    seen = []
    while f"{a.node_id.short}: marker" not in seen:
        seen.append((await in_thread(alice.next)).body)
    assert not [body for body in seen if "after" in body]

    # Removing the bot from the contacts drops her chirp follows.
    await in_thread(lambda: alice.unfollow(bot))
    with trio.fail_after(WAIT):
        await gateway.wait_for(lambda: not gateway.chirp_following(alice.jid))
    assert chirp_subscription_name(alice.jid) not in {s.name for s in await a.subscriptions()}
    assert await a.chirp.following() == [c.node_id]


class Proxy:
    """A TCP proxy to Prosody's component port that the test can cut."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.cut = trio.Event()
        self.connections = 0

    async def serve(self, listener: trio.SocketListener) -> None:
        while True:
            inbound = await listener.accept()
            self.connections += 1
            outbound = await trio.open_tcp_stream("127.0.0.1", self.target)
            async with inbound, outbound, trio.open_nursery() as nursery:
                nursery.start_soon(self._pipe, inbound, outbound, nursery)
                nursery.start_soon(self._pipe, outbound, inbound, nursery)
                await self.cut.wait()
                self.cut = trio.Event()  # for the next connection
                nursery.cancel_scope.cancel()

    async def _pipe(
        self, source: trio.abc.Stream, sink: trio.abc.Stream, nursery: trio.Nursery
    ) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        nursery.cancel_scope.cancel()


async def test_the_gateway_reconnects_and_delivery_resumes(
    tcp_nodes: NodeFactory, prosody: Prosody, users: Callable[[str], User]
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    proxy = Proxy(prosody.component_port)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proxy.serve, listeners[0])
        port = listeners[0].socket.getsockname()[1]
        config = XmppConfig(
            component=f"127.0.0.1:{port}", domain=DOMAIN, retry_initial=0.01, retry_max=0.05
        )
        a = await tcp_nodes.open("a", xmpp=config, xmpp_secret_file=str(prosody.secret_file))
        gateway = gateway_of(a)
        with trio.fail_after(WAIT):
            await gateway.wait_for(lambda: gateway.connected)
        alice = users("alice")
        await in_thread(alice.login)
        assert await in_thread(lambda: alice.follow(f"sport.*@{DOMAIN}")) == "subscribed"
        with trio.fail_after(WAIT):
            await gateway.wait_for(lambda: gateway.online(alice.jid))
        await a.publish("sport.golf", b"one", ct="text/plain")
        assert (await in_thread(alice.next)).body.startswith("one\n")
        proxy.cut.set()
        with trio.fail_after(WAIT):
            await gateway.wait_for(lambda: gateway.authenticated == 2 and gateway.connected)
            # It probes alice again and Prosody answers with her presence.
            await gateway.wait_for(lambda: gateway.online(alice.jid))
        await a.publish("sport.golf", b"two", ct="text/plain")
        assert (await in_thread(alice.next)).body.startswith("two\n")
        assert proxy.connections == 2
        await in_thread(lambda: alice.unfollow(f"sport.*@{DOMAIN}"))
        with trio.fail_after(WAIT):
            await gateway.wait_for(lambda: not gateway.following(alice.jid))
        nursery.cancel_scope.cancel()
    await listeners[0].aclose()


async def test_a_wrong_secret_is_refused_and_retried(
    tcp_nodes: NodeFactory, prosody: Prosody, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not the secret\n")
    config = XmppConfig(
        component=f"127.0.0.1:{prosody.component_port}",
        domain=DOMAIN,
        retry_initial=0.01,
        retry_max=0.05,
    )
    a = await tcp_nodes.open("a", xmpp=config, xmpp_secret_file=str(wrong))
    gateway = gateway_of(a)
    with trio.fail_after(WAIT):
        await gateway.wait_for(lambda: gateway.failures >= 2)
    assert gateway.authenticated == 0
    await a.publish("still.running", b"yes")  # the node is unharmed


# -- a misbehaving server (no Prosody needed) ---------------------------------------------------

HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
    "xmlns:stream='http://etherx.jabber.org/streams' id='{id}' from='" + DOMAIN + "'>"
)


async def test_a_misbehaving_server_gets_a_stream_error_and_the_node_keeps_running(
    tcp_nodes: NodeFactory, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    config = XmppConfig(
        component=f"127.0.0.1:{port}",
        domain=DOMAIN,
        retry_initial=0.01,
        retry_max=0.05,
        limits=Limits(max_text=50_000),
    )
    a = await tcp_nodes.open("a", xmpp=config, xmpp_secret_file=str(secret))
    gateway = gateway_of(a)

    async def session(stream: trio.abc.Stream, reply: bytes) -> bytes:
        """Read the node's header, send ``reply``, return all it sends until it closes."""
        received = b""
        while b">" not in received.partition(b"<stream:stream")[2]:
            received += await stream.receive_some(4096)
        await stream.send_all(reply)
        while chunk := await stream.receive_some(4096):
            received += chunk
        return received

    attacks = [
        (
            "<!DOCTYPE x [<!ENTITY a 'b'>]>" + HEADER.format(id="1").partition("?>")[2],
            b"<restricted-xml",
        ),
        (HEADER.format(id="1") + "<!DOCTYPE x>", b"<not-well-formed"),
        (HEADER.format(id="2") + "<x>&a;</x>", b"<not-well-formed"),
        (HEADER.format(id="3") + "<x>" + "y" * 200_000, b"<policy-violation"),
        (HEADER.format(id="4") + "<a>" * 100, b"<policy-violation"),
    ]
    with trio.fail_after(WAIT):
        for attack, condition in attacks:
            stream = await listeners[0].accept()
            async with stream:
                sent = await session(stream, attack.encode())
            assert condition in sent
            assert sent.endswith(b"</stream:stream>")
        # And a server that behaves: the handshake digest is XEP-0114's.
        stream = await listeners[0].accept()
        async with stream:
            header = b""
            while b">" not in header.partition(b"<stream:stream")[2]:
                header += await stream.receive_some(4096)
            assert b"to='" + DOMAIN.encode() + b"'" in header
            await stream.send_all(HEADER.format(id="abc").encode())
            handshake = b""
            while b"</handshake>" not in handshake:
                handshake += await stream.receive_some(4096)
            digest = hashlib.sha1(b"abcs3cret").hexdigest()
            assert handshake == f"<handshake>{digest}</handshake>".encode()
            assert digest == handshake_digest("abc", "s3cret")
            await stream.send_all(b"<handshake/>")
            await gateway.wait_for(lambda: gateway.connected)
            # An iq it does not serve gets an error; a ping a result.
            await stream.send_all(
                b"<iq type='get' id='p1' from='alice@x/r' to='" + DOMAIN.encode() + b"'>"
                b"<ping xmlns='urn:xmpp:ping'/></iq>"
            )
            answer = b""
            while b"p1" not in answer:
                answer += await stream.receive_some(4096)
            assert b'type="result"' in answer
            # Bad XML once connected: a stream error, then a clean close.
            await stream.send_all(b"<message><body>&bad;</body></message>")
            while chunk := await stream.receive_some(4096):
                answer += chunk
            assert b"<not-well-formed" in answer
            assert answer.endswith(b"</stream:stream>")
        # It comes back.
        stream = await listeners[0].accept()
        await stream.aclose()
    assert gateway.errors_sent == 6
    await a.publish("still.running", b"yes")
    for listener in listeners:
        await listener.aclose()


def test_xmpp_options_are_checked(tmp_path: Path) -> None:
    from tests.node.test_cli_errors import one_line, ptth

    line = one_line(ptth("--data-dir", tmp_path, "run", "--xmpp-component", "x:1"), 1)
    assert line.endswith("--xmpp-component, --xmpp-domain and --xmpp-secret-file go together")
    missing = tmp_path / "nope"
    line = one_line(
        ptth(
            "--data-dir",
            tmp_path,
            "run",
            "--listen",
            "127.0.0.1:0",
            "--xmpp-component",
            "127.0.0.1:5347",
            "--xmpp-domain",
            DOMAIN,
            "--xmpp-secret-file",
            missing,
        ),
        1,
    )
    assert f"--xmpp-secret-file {missing}" in line
    line = one_line(
        ptth(
            "--data-dir",
            tmp_path,
            "run",
            "--xmpp-component",
            "no-port",
            "--xmpp-domain",
            DOMAIN,
            "--xmpp-secret-file",
            missing,
        ),
        1,
    )
    assert "is not HOST:PORT" in line
