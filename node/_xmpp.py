"""The XMPP gateway: the node as an XMPP server component (XEP-0114), so that any XMPP
client follows topics of the mesh and publishes to them (``ptth run --xmpp-component
HOST:PORT --xmpp-domain DOMAIN --xmpp-secret-file FILE``; docs/architecture.md, "The
XMPP gateway").

The protocol is :mod:`mesh._xmpp` (sans-IO: the bounded stream parser, the handshake,
serialisation); this module is its trio driver. It connects out to the XMPP server's
component port, handshakes, and reconnects with exponential back-off (jittered) when the
connection drops or the server misbehaves (a stream error is sent first, saying why).

Topic JIDs: ``<topic>@DOMAIN``, the topic's words joined by dots (legal in a localpart);
a pattern (``news.*@DOMAIN``, ``news.#@DOMAIN``) when following. XMPP servers lowercase
localparts, so topics with capitals cannot be reached this way.

* Presence ``subscribe`` to a topic JID (adding it as a contact): the pattern joins the
  user's durable named subscription on the node (one per user: ``xmpp-`` and a hash of
  the bare JID, its patterns the topic JIDs the user follows, so a publication several
  of them match is delivered once), the node answers ``subscribed`` and asks for the
  user's presence in return (``subscribe``; clients grant it for a contact they added).
  ``unsubscribe`` takes the pattern out (the last one: the subscription is dropped).
  Which bare JID a subscription belongs to is kept in ``DIR/xmpp.users`` (JSON).
* Presence available (any resource): what is pending for the user and what comes next
  is delivered as chat messages from the topic JID that matched, each with who posted
  it (the body ends ``— <node id> on <topic>``; a ``<ptth xmlns='urn:ptth:xmpp:0'>``
  child carries origin, topic, id, ts and hops). A message is acknowledged in the store
  once written to the server: each is delivered once. When the user's last resource goes
  unavailable delivery stops and the subscription buffers (within the store's quotas
  and the publications' expiry).
* A chat message to a topic JID publishes its body to that topic (a resource adds a
  last word: ``news@DOMAIN/tech`` publishes to ``news.tech``), if its sender is allowed
  (``publishers``: bare JIDs, ``@domain`` for every user of a domain, ``*`` for anyone;
  by default nobody). Refusals are stanza errors the client shows.

The chirp bot, ``chirp@DOMAIN`` (:data:`node._chirpbot.BOT`: that localpart is never a
topic JID, so the one-word topic ``chirp`` cannot be followed or published to here),
takes commands in chat (:mod:`node._chirpbot` parses them and words the answers, each a
chat message from the bot): ``follow``/``unfollow NODE`` change the user's own chirp
follows, a second durable named subscription (``xmpp-chirp-`` and the hash, its patterns
the followed nodes' ``~<id>.chirp``), delivered like the topic JIDs (while the user is
available, buffered while not) as chat messages from the bot; ``post TEXT`` chirps as
this node (for the ``publishers``); ``timeline`` shows the newest chirps of the
followed nodes the bot relayed to the user since the node started, or holds for them.
Adding the bot as a contact is how it sees the user's presence; removing it drops the
user's chirp follows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import random
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import trio

import crypto
import mesh
from mesh import _xmpp as xmpp
from node import _chirpbot as bot
from node._chirp import Chirp, chirp_topic
from node._errors import NodeError, leaves
from node._mesh import MeshRuntime
from node._message import Published

__all__ = [
    "XMPP_USERS",
    "XmppConfig",
    "XmppGateway",
    "XmppNode",
    "chirp_subscription_name",
    "load_secret",
    "subscription_name",
    "xmpp_address",
]

log = logging.getLogger("ptth.xmpp")

#: Which bare JID each XMPP subscription belongs to, in the node's data directory.
XMPP_USERS: Final = "xmpp.users"
#: The namespace of the ptth details a delivered message carries.
PTTH_NS: Final = "urn:ptth:xmpp:0"
_PING_NS: Final = "urn:xmpp:ping"
_DISCO_INFO_NS: Final = "http://jabber.org/protocol/disco#info"
_CT: Final = "text/plain; charset=utf-8"
_READ_SIZE: Final = 64 * 1024
_MAX_SECRET_FILE: Final = 4096
#: After a stream error: how long, and how much, what the server still sends is read.
_LINGER: Final = 1.0
_LINGER_BYTES: Final = 1024 * 1024
_C: Final = f"{{{xmpp.COMPONENT_NS}}}"


@dataclasses.dataclass(frozen=True)
class XmppConfig:
    """The XMPP gateway's settings and limits. Every default has a reason."""

    #: The XMPP server's component port, HOST:PORT.
    component: str
    #: The component's domain (the server's config names it with the same secret).
    domain: str
    #: Who may publish by sending a message to a topic JID: bare JIDs, ``@domain``,
    #: ``*`` (anyone). Empty: nobody (the gateway only delivers).
    publishers: tuple[str, ...] = ()
    #: Back-off between connection attempts: first delay and cap (s; jitter x0.5..1.5).
    retry_initial: float = 1.0
    retry_max: float = 60.0
    #: From connecting to the server's handshake answer (s).
    handshake_timeout: float = 10.0
    #: How long one write may wait for the server (s).
    write_timeout: float = 30.0
    #: Users with subscriptions, at most (each is a named subscription of the node).
    max_users: int = 10_000
    #: Topic JIDs one user may follow.
    max_topics_per_user: int = 64
    #: What the server's stream may hold (depth, attributes, text, stanza size).
    limits: xmpp.Limits = dataclasses.field(default_factory=xmpp.Limits)

    def __post_init__(self) -> None:
        xmpp_address(self.component)
        if not self.domain or "@" in self.domain or "/" in self.domain:
            raise NodeError(f"--xmpp-domain {self.domain!r} is not a domain (e.g. ptth.example)")
        if min(self.max_users, self.max_topics_per_user) < 1:
            raise ValueError("max_users and max_topics_per_user must be >= 1")


def xmpp_address(text: str) -> tuple[str, int]:
    """``--xmpp-component HOST:PORT`` as (host, port); :class:`NodeError` if malformed."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise NodeError(
            f"--xmpp-component {text!r} is not HOST:PORT (the XMPP server's component "
            "port, e.g. 127.0.0.1:5347)"
        )
    return host, int(port)


def load_secret(path: Path) -> str:
    """The component secret in ``path`` (its first line, stripped). Raises
    :class:`NodeError` if it cannot be read, is empty or too long."""
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise NodeError(f"--xmpp-secret-file {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_SECRET_FILE:
        raise NodeError(f"--xmpp-secret-file {path} is over {_MAX_SECRET_FILE} bytes")
    lines = data.decode("utf-8", "replace").splitlines()
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise NodeError(f"--xmpp-secret-file {path} is empty: write the component secret in it")
    return secret


def subscription_name(bare_jid: str) -> str:
    """The named subscription that holds what ``bare_jid`` follows (bounded, stable)."""
    return "xmpp-" + hashlib.sha256(bare_jid.encode("utf-8")).hexdigest()[:40]


def chirp_subscription_name(bare_jid: str) -> str:
    """The named subscription that holds the chirps ``bare_jid`` follows with the bot."""
    return "xmpp-chirp-" + hashlib.sha256(bare_jid.encode("utf-8")).hexdigest()[:40]


# (Inside XmppNode, ``mesh`` is the node's attribute, not the package.)
_Saved = mesh.SavedSubscription


class _Peers(Protocol):
    @property
    def peers(self) -> Iterable[crypto.SignedAddress]: ...


class XmppNode(Protocol):
    """What the gateway needs from the node."""

    node_id: crypto.NodeId
    store: mesh.Store
    mesh: MeshRuntime
    run_blocking: Callable[[Callable[[], Any]], Awaitable[Any]]
    #: Runs the store's calls (its own thread).
    run_store: Callable[[Callable[[], Any]], Awaitable[Any]]

    @property
    def chirp(self) -> Chirp: ...

    @property
    def data(self) -> _Peers: ...

    async def publish(
        self, topic: str, body: bytes, *, ct: str | None = None, ttl: float | None = None
    ) -> Published: ...

    async def unsubscribe(self, name: str) -> bool: ...

    async def subscriptions(self) -> list[_Saved]: ...


@dataclasses.dataclass
class _User:
    jid: str
    name: str
    patterns: tuple[str, ...]
    resources: set[str] = dataclasses.field(default_factory=set)
    delivery: trio.CancelScope | None = None
    #: The chirp bot: the followed nodes' chirp topics (subscription ``chirp_name``),
    #: and the newest chirps relayed to the user (for ``timeline``).
    chirps: tuple[str, ...] = ()
    recent: deque[bot.Chirped] = dataclasses.field(
        default_factory=lambda: deque(maxlen=bot.TIMELINE_LENGTH)
    )

    @property
    def chirp_name(self) -> str:
        return chirp_subscription_name(self.jid)


class _Connection:
    """One authenticated stream to the server."""

    def __init__(self, stream: trio.abc.Stream, write_timeout: float) -> None:
        self.stream = stream
        self.write_timeout = write_timeout
        self.lock = trio.Lock()

    async def write(self, data: bytes) -> None:
        async with self.lock:
            with trio.fail_after(self.write_timeout):
                await self.stream.send_all(data)


class XmppGateway:
    """Runs the component for ``node`` (see the module docstring)."""

    def __init__(
        self, node: XmppNode, config: XmppConfig, secret: str, *, users_file: Path
    ) -> None:
        self.node = node
        self.config = config
        self._secret = secret
        self.users_file = users_file
        self._users: dict[str, _User] = {}
        self._connection: _Connection | None = None
        self._changed = trio.Event()
        self._rng = random.Random()
        self._scope = trio.CancelScope()
        #: The connection's nursery (its delivery tasks), and whether it authenticated.
        self._nursery: trio.Nursery | None = None
        self._authenticated_last = False
        #: Handshakes the server accepted, stream errors this side sent, connections
        #: that ended or could not be made, publications delivered and taken (tests
        #: read them).
        self.authenticated = 0
        self.errors_sent = 0
        self.failures = 0
        self.delivered = 0
        self.published = 0
        #: Answers the chirp bot sent.
        self.answered = 0

    # -- what tests and status see ----------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connection is not None

    def following(self, jid: str) -> tuple[str, ...]:
        """The patterns bare ``jid`` follows."""
        user = self._users.get(jid)
        return user.patterns if user is not None else ()

    def chirp_following(self, jid: str) -> tuple[crypto.NodeId, ...]:
        """The nodes bare ``jid`` follows with the chirp bot."""
        user = self._users.get(jid)
        return tuple(_owner(p) for p in user.chirps) if user is not None else ()

    def online(self, jid: str) -> bool:
        """Whether bare ``jid`` has an available resource (as the server told us)."""
        user = self._users.get(jid)
        return user is not None and bool(user.resources)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds (checked after every change of state)."""
        while not predicate():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- running ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the users, then connect, serve and reconnect until cancelled."""
        with self._scope:
            await self._load_users()
            task_status.started()
            await self._reconnect_loop()

    def shutdown(self) -> None:
        """Stop: the connection closes (what users did not get stays pending)."""
        self._scope.cancel()

    async def _reconnect_loop(self) -> None:
        delay = self.config.retry_initial
        while True:
            try:
                await self._connect_once()
            except Exception as exc:  # no connection's end may stop the node
                expected = leaves(exc)
                if all(isinstance(leaf, _EXPECTED) for leaf in expected):
                    words = "; ".join(str(leaf) or type(leaf).__name__ for leaf in expected)
                    log.warning("XMPP server %s: %s", self.config.component, words)
                else:
                    log.error("XMPP gateway failed; reconnecting", exc_info=exc)
            finally:
                self._connection = None
                self._nursery = None
                for user in self._users.values():
                    user.resources.clear()
                    user.delivery = None  # ended with the connection's nursery
                self._notify()
            self.failures += 1
            if self._authenticated_last:
                delay = self.config.retry_initial
            await trio.sleep(delay * self._rng.uniform(0.5, 1.5))
            delay = min(delay * 2, self.config.retry_max)

    async def _connect_once(self) -> None:
        self._authenticated_last = False
        host, port = xmpp_address(self.config.component)
        with trio.fail_after(self.config.handshake_timeout):
            stream = await trio.open_tcp_stream(host, port)
        async with stream:
            component = xmpp.Component(self.config.domain, self._secret, self.config.limits)
            connection = _Connection(stream, self.config.write_timeout)
            await connection.write(component.open())
            try:
                with trio.fail_after(self.config.handshake_timeout):
                    pending = await self._handshake(component, connection)
                await self._serve(component, connection, pending)
            except xmpp.XmppStreamError as exc:
                self.errors_sent += 1
                log.warning("XMPP server %s broke the stream: %s", self.config.component, exc)
                await self._linger(connection, xmpp.stream_error(exc.condition, exc.text))
                raise _Ended(f"stream error {exc.condition} sent") from None

    async def _linger(self, connection: _Connection, last: bytes) -> None:
        """Write ``last``, end our side, and read what the server still sends (a
        while, a bounded amount) so that the close is clean and it sees ``last``."""
        with contextlib.suppress(Exception), trio.move_on_after(_LINGER):
            await connection.write(last)
            if isinstance(connection.stream, trio.SocketStream):
                await connection.stream.send_eof()
            drained = 0
            while drained < _LINGER_BYTES:
                data = await connection.stream.receive_some(_READ_SIZE)
                if not data:
                    break
                drained += len(data)

    async def _handshake(
        self, component: xmpp.Component, connection: _Connection
    ) -> list[xmpp.Event]:
        while True:
            data = await connection.stream.receive_some(_READ_SIZE)
            if not data:
                raise _Ended("the server closed the connection during the handshake")
            events = component.receive(bytes(data))
            out = component.data_to_send()
            if out:
                await connection.write(out)
            for index, event in enumerate(events):
                if isinstance(event, xmpp.RemoteStreamError):
                    raise _Ended(f"the server refused us: {event.condition} {event.text}".strip())
                if isinstance(event, xmpp.StreamClosed):
                    raise _Ended("the server closed its stream during the handshake")
                if isinstance(event, xmpp.Authenticated):
                    return events[index + 1 :]

    async def _serve(
        self, component: xmpp.Component, connection: _Connection, pending: list[xmpp.Event]
    ) -> None:
        self._connection = connection
        self._authenticated_last = True
        self.authenticated += 1
        log.info("XMPP component %s connected to %s", self.config.domain, self.config.component)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._notify()
            for user in list(self._users.values()):
                # The server answers a probe with the user's presence, if they let us see it.
                for pattern in user.patterns:
                    await self._presence(connection, pattern, user.jid, "probe")
                if user.chirps:
                    await self._presence(connection, bot.BOT, user.jid, "probe")
            try:
                await self._events(connection, pending)
                while True:
                    data = await connection.stream.receive_some(_READ_SIZE)
                    if not data:
                        raise _Ended("the server closed the connection")
                    await self._events(connection, component.receive(bytes(data)))
            except (xmpp.XmppStreamError, _Ended) as exc:
                # Raised again outside the nursery, as itself rather than in a group.
                ended: xmpp.XmppStreamError | _Ended = exc
                nursery.cancel_scope.cancel()
        raise ended

    async def _events(self, connection: _Connection, events: Sequence[xmpp.Event]) -> None:
        for event in events:
            if isinstance(event, xmpp.RemoteStreamError):
                raise _Ended(f"the server sent a stream error: {event.condition} {event.text}")
            if isinstance(event, xmpp.StreamClosed):
                with contextlib.suppress(Exception), trio.move_on_after(1):
                    await connection.write(b"</stream:stream>")
                raise _Ended("the server closed its stream")
            if isinstance(event, xmpp.StanzaReceived):
                await self._stanza(connection, event.element)

    # -- stanzas --------------------------------------------------------------------------

    async def _stanza(self, connection: _Connection, stanza: ET.Element) -> None:
        try:
            sender = xmpp.parse_jid(stanza.get("from", ""))
            to = xmpp.parse_jid(stanza.get("to", ""))
        except ValueError:
            log.debug("XMPP stanza without a usable from/to dropped")
            return
        if to.domain != self.config.domain:
            return
        if stanza.tag == _C + "presence":
            await self._on_presence(connection, stanza, sender, to)
        elif stanza.tag == _C + "message":
            await self._on_message(connection, stanza, sender, to)
        elif stanza.tag == _C + "iq":
            await self._on_iq(connection, stanza, sender, to)

    async def _presence(
        self, connection: _Connection, local: str, to: str, kind: str | None = None
    ) -> None:
        presence = xmpp.element(
            "presence", {"from": f"{local}@{self.config.domain}", "to": to, "type": kind}
        )
        await connection.write(xmpp.serialize(presence))

    async def _on_presence(
        self, connection: _Connection, stanza: ET.Element, sender: xmpp.Jid, to: xmpp.Jid
    ) -> None:
        kind = stanza.get("type", "available")
        user = self._users.get(sender.bare)
        pattern = to.local
        if pattern == bot.BOT and kind in ("subscribe", "unsubscribe", "probe"):
            # The bot is a contact for its presence only: it follows nothing by itself.
            if kind == "subscribe":
                await self._presence(connection, bot.BOT, sender.bare, "subscribed")
                await self._presence(connection, bot.BOT, sender.bare)
                await self._presence(connection, bot.BOT, sender.bare, "subscribe")
            elif kind == "unsubscribe":
                await self._set_chirps(sender.bare, ())
                await self._presence(connection, bot.BOT, sender.bare, "unsubscribed")
                await self._presence(connection, bot.BOT, sender.bare, "unavailable")
            else:
                await self._presence(connection, bot.BOT, sender.bare)
            return
        if kind == "subscribe":
            refusal = await self._follow(sender.bare, pattern)
            if refusal:
                log.info("XMPP %s may not follow %r: %s", sender.bare, pattern, refusal)
                await self._presence(connection, pattern, sender.bare, "unsubscribed")
                return
            await self._presence(connection, pattern, sender.bare, "subscribed")
            await self._presence(connection, pattern, sender.bare)
            await self._presence(connection, pattern, sender.bare, "subscribe")
        elif kind == "unsubscribe":
            await self._unfollow(sender.bare, pattern)
            await self._presence(connection, pattern, sender.bare, "unsubscribed")
            await self._presence(connection, pattern, sender.bare, "unavailable")
        elif kind == "probe" and pattern:
            answer = None if user is not None and pattern in user.patterns else "unsubscribed"
            await self._presence(connection, pattern, sender.bare, answer)
        elif kind == "available" and user is not None:
            if sender.resource and sender.resource not in user.resources:
                user.resources.add(sender.resource)
                self._start_delivery(connection, user)
                self._notify()
        elif kind in ("unavailable", "error") and user is not None:
            if kind == "error" or not sender.resource:
                user.resources.clear()
            else:
                user.resources.discard(sender.resource)
            if not user.resources and user.delivery is not None:
                user.delivery.cancel()
                user.delivery = None
            self._notify()

    async def _follow(self, jid: str, pattern: str) -> str | None:
        """Add ``pattern`` to what ``jid`` follows; the reason it cannot, or None."""
        if not pattern:
            return "the component's own JID is no topic"
        try:
            crypto.validate_pattern(pattern)
        except crypto.Malformed as exc:
            return str(exc)
        user = self._users.get(jid)
        if user is None:
            if len(self._users) >= self.config.max_users:
                return f"the gateway has {self.config.max_users} users (its limit)"
            user = _User(jid, subscription_name(jid), ())
        if pattern in user.patterns:
            return None
        if len(user.patterns) >= self.config.max_topics_per_user:
            return f"{jid} follows {self.config.max_topics_per_user} topics (the limit)"
        patterns = (*user.patterns, pattern)
        try:
            await self.node.mesh.keep_subscription(user.name, patterns)
        except (crypto.Malformed, mesh.MeshError) as exc:
            return f"the node cannot keep the subscription: {exc}"
        user.patterns = patterns
        new = jid not in self._users
        self._users[jid] = user
        if new:
            await self._save_users()
        self._notify()
        return None

    async def _unfollow(self, jid: str, pattern: str) -> None:
        user = self._users.get(jid)
        if user is None or pattern not in user.patterns:
            return
        patterns = tuple(p for p in user.patterns if p != pattern)
        if patterns:
            await self.node.mesh.keep_subscription(user.name, patterns)
            user.patterns = patterns
        else:
            await self.node.unsubscribe(user.name)
            user.patterns = ()
            await self._forget_if_idle(user)
            await self._save_users()
        self._notify()

    async def _forget_if_idle(self, user: _User) -> None:
        """Drop ``user`` once they follow nothing (topics nor chirps)."""
        if user.patterns or user.chirps:
            return
        if user.delivery is not None:
            user.delivery.cancel()
            user.delivery = None
        self._users.pop(user.jid, None)

    async def _on_message(
        self, connection: _Connection, stanza: ET.Element, sender: xmpp.Jid, to: xmpp.Jid
    ) -> None:
        kind = stanza.get("type", "normal")
        body = stanza.find(_C + "body")
        if kind in ("error", "groupchat", "headline") or body is None or not body.text:
            return
        if to.local == bot.BOT:
            await self._say(connection, str(sender), await self._command(sender, body.text))
            return
        topic = f"{to.local}.{to.resource}" if to.resource else to.local
        refusal: tuple[str, str, str] | None = None
        if not self._may_publish(sender.bare):
            refusal = (
                "auth",
                "forbidden",
                f"{sender.bare} may not publish through this gateway (its operator lists "
                "who may with --xmpp-publishers)",
            )
        else:
            try:
                crypto.validate_topic(topic)
                await self.node.publish(topic, body.text.encode("utf-8"), ct=_CT)
                self.published += 1
                self._notify()
            except (crypto.Malformed, NodeError) as exc:
                refusal = ("modify", "bad-request", str(exc))
            except mesh.StoreFull as exc:
                refusal = ("wait", "resource-constraint", str(exc))
            except mesh.MeshError as exc:
                refusal = ("wait", "internal-server-error", str(exc))
        if refusal is not None:
            await self._error_reply(connection, stanza, *refusal)

    def _may_publish(self, jid: str) -> bool:
        allowed = self.config.publishers
        domain = jid.rpartition("@")[2]
        return "*" in allowed or jid in allowed or f"@{domain}" in allowed

    # -- the chirp bot -----------------------------------------------------------------

    async def _say(self, connection: _Connection, to: str, text: str) -> None:
        """A chat message from the bot."""
        message = xmpp.element(
            "message", {"type": "chat", "from": f"{bot.BOT}@{self.config.domain}", "to": to}
        )
        ET.SubElement(message, _C + "body").text = text
        await connection.write(xmpp.serialize(message))
        self.answered += 1
        self._notify()

    async def _command(self, sender: xmpp.Jid, line: str) -> str:
        """What the bot answers ``line`` from ``sender``."""
        command = bot.parse_command(line)
        jid = sender.bare
        user = self._users.get(jid)
        chirps = user.chirps if user is not None else ()
        if command.verb == "help":
            return bot.help_text(self.config.domain, command.problem)
        known = await self._known(chirps)
        if command.verb == "following":
            if not chirps:
                return "You follow nobody: 'follow NODE' to start."
            lines = [f"You follow {len(chirps)} node{'s' if len(chirps) > 1 else ''}:"]
            lines += [f"{bot.label(_owner(p), known)} {_owner(p).text}" for p in chirps]
            return "\n".join(lines)
        if command.verb == "post":
            return await self._post(jid, command.argument)
        if command.verb == "timeline":
            return bot.timeline_text(await self._timeline(user), known, len(chirps))
        node = bot.resolve(command.argument, known)
        if isinstance(node, str):
            return node[:1].upper() + node[1:] + "."
        name = bot.label(node, known)
        topic = chirp_topic(node)
        if command.verb == "unfollow":
            if topic not in chirps:
                return f"You do not follow {name}."
            refusal = await self._set_chirps(jid, tuple(p for p in chirps if p != topic))
            return f"Not followed: {refusal}." if refusal else f"You no longer follow {name}."
        if topic in chirps:
            return f"You follow {name} already."
        refusal = await self._set_chirps(jid, (*chirps, topic))
        if refusal:
            return f"Not followed: {refusal}."
        answer = f"You follow {name} now: their chirps come here."
        if not self.online(jid):
            answer += (
                f" (I do not see you online: add {bot.BOT}@{self.config.domain} as a contact "
                "and let it see your presence, or they wait here for you.)"
            )
            connection = self._connection
            if connection is not None:  # the server answers with their presence, if allowed
                await self._presence(connection, bot.BOT, jid, "probe")
        return answer

    async def _post(self, jid: str, text: str) -> str:
        if not self._may_publish(jid):
            return (
                f"{jid} may not post as this node (its operator lists who may with "
                "--xmpp-publishers)."
            )
        try:
            await self.node.chirp.post(text)
        except (crypto.Malformed, NodeError) as exc:
            return f"Not posted: {exc}."
        except mesh.MeshError as exc:
            return f"Not posted, try again later: {exc}."
        self.published += 1
        return f"Posted as {self.node.node_id.short} ({chirp_topic(self.node.node_id)})."

    async def _known(self, chirps: Sequence[str]) -> list[bot.Known]:
        """The nodes an alias may name: this node's peers (with their names), this node,
        and the nodes followed."""
        data = self.node.data

        def peers() -> list[bot.Known]:
            try:
                return [bot.Known(a.record.node, a.record.name) for a in data.peers]
            except (crypto.Malformed, OSError, ValueError):  # a broken token file
                return []

        known: list[bot.Known] = await self.node.run_blocking(peers)
        known.append(bot.Known(self.node.node_id))
        known += [bot.Known(_owner(p)) for p in chirps]
        return known

    async def _timeline(self, user: _User | None) -> list[bot.Chirped]:
        """What the bot relayed to ``user`` lately and what waits for them, of the nodes
        they follow now."""
        if user is None or not user.chirps:
            return []
        store = self.node.store
        name = user.chirp_name
        entries: list[mesh.InboxEntry] = await self.node.run_store(
            lambda: store.subscription_pending(name, after=0, limit=bot.TIMELINE_LENGTH)
        )
        chirps = [*user.recent, *(_chirped(e) for e in entries)]
        followed = {_owner(p) for p in user.chirps}
        return [c for c in chirps if c.author in followed]

    async def _set_chirps(self, jid: str, chirps: tuple[str, ...]) -> str | None:
        """Make ``chirps`` the chirp topics ``jid`` follows; the reason it cannot, or None."""
        user = self._users.get(jid)
        if user is None:
            if not chirps:
                return None
            if len(self._users) >= self.config.max_users:
                return f"the gateway has {self.config.max_users} users (its limit)"
            user = _User(jid, subscription_name(jid), ())
        if len(chirps) > self.config.max_topics_per_user:
            return f"you follow {self.config.max_topics_per_user} nodes (the limit)"
        try:
            if chirps:
                await self.node.mesh.keep_subscription(user.chirp_name, chirps)
            elif user.chirps:
                await self.node.unsubscribe(user.chirp_name)
        except (crypto.Malformed, mesh.MeshError) as exc:
            return f"the node cannot keep the subscription: {exc}"
        user.chirps = chirps
        self._users[jid] = user
        await self._forget_if_idle(user)
        await self._save_users()
        self._notify()
        return None

    async def _on_iq(
        self, connection: _Connection, stanza: ET.Element, sender: xmpp.Jid, to: xmpp.Jid
    ) -> None:
        kind = stanza.get("type")
        if kind not in ("get", "set"):
            return
        child = stanza[0] if len(stanza) else None
        if kind == "get" and child is not None and child.tag == f"{{{_PING_NS}}}ping":
            result = xmpp.element(
                "iq",
                {"type": "result", "id": stanza.get("id", ""), "from": str(to), "to": str(sender)},
            )
            await connection.write(xmpp.serialize(result))
            return
        await self._error_reply(
            connection, stanza, "cancel", "service-unavailable", "not served by this gateway"
        )

    async def _error_reply(
        self, connection: _Connection, stanza: ET.Element, kind: str, condition: str, text: str
    ) -> None:
        tag = str(stanza.tag).rpartition("}")[2]
        reply = xmpp.element(
            tag,
            {
                "type": "error",
                "id": stanza.get("id"),
                "from": stanza.get("to", ""),
                "to": stanza.get("from", ""),
            },
        )
        error = ET.SubElement(reply, _C + "error", {"type": kind})
        ET.SubElement(error, f"{{{xmpp.STANZAS_NS}}}{condition}")
        ET.SubElement(error, f"{{{xmpp.STANZAS_NS}}}text").text = text
        await connection.write(xmpp.serialize(reply))

    # -- delivery -----------------------------------------------------------------------

    def _start_delivery(self, connection: _Connection, user: _User) -> None:
        if user.delivery is not None:
            return
        if self._nursery is None:
            return
        scope = trio.CancelScope()
        user.delivery = scope
        self._nursery.start_soon(self._deliver, connection, user, scope)

    async def _deliver(self, connection: _Connection, user: _User, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                changed = self.node.mesh.inbox_changed
                sent = False
                if user.patterns:
                    sent |= await self._deliver_pending(connection, user, chirps=False)
                if user.chirps:
                    sent |= await self._deliver_pending(connection, user, chirps=True)
                if not sent:
                    await changed.wait()

    async def _deliver_pending(self, connection: _Connection, user: _User, *, chirps: bool) -> bool:
        """Send what is pending for one of ``user``'s subscriptions; whether there was any."""
        store = self.node.store
        name = user.chirp_name if chirps else user.name
        entries: list[mesh.InboxEntry] = await self.node.run_store(
            functools.partial(store.subscription_pending, name, after=0)
        )
        if not entries:
            return False
        messages: list[ET.Element] = []
        relayed: list[bot.Chirped] = []
        if chirps:
            known = await self._known(user.chirps)
            for entry in entries:
                # Chirps of a node no longer followed wait out their expiry: not sent.
                if any(_matches(p, entry.topic or "") for p in user.chirps):
                    chirp = _chirped(entry)
                    relayed.append(chirp)
                    text = bot.relay_text(chirp, known)
                    messages.append(self._message(user, entry, bot.BOT, text))
        else:
            messages = [self._message(user, e) for e in entries]
        data = b"".join(xmpp.serialize(message) for message in messages)
        seqs = [entry.seq for entry in entries]
        # Written and acknowledged together: each is delivered once.
        with trio.CancelScope(shield=True):
            if data:
                await connection.write(data)
            await self.node.run_store(functools.partial(store.ack_subscription, name, seqs))
        user.recent.extend(relayed)
        self.delivered += len(messages)
        self._notify()
        return True

    def _message(
        self, user: _User, entry: mesh.InboxEntry, local: str | None = None, body: str = ""
    ) -> ET.Element:
        """A publication as a chat message: from the topic JID that matched, or from
        ``local`` with ``body`` (the bot)."""
        topic = entry.topic or ""
        sender = local or next((p for p in user.patterns if _matches(p, topic)), topic)
        if entry.ct is None or entry.ct.startswith("text/"):
            text = entry.body.decode("utf-8", "replace")
        else:
            text = f"[{len(entry.body)} bytes of {entry.ct}]"
        message = xmpp.element(
            "message",
            {
                "type": "chat",
                "from": f"{sender}@{self.config.domain}",
                "to": user.jid,
                "id": f"{entry.src.text}:{entry.id.hex()}",
            },
        )
        shown = body or f"{text}\n— {entry.src.text} on {topic}"
        ET.SubElement(message, _C + "body").text = shown
        ET.SubElement(
            message,
            f"{{{PTTH_NS}}}ptth",
            {
                "origin": entry.src.text,
                "topic": topic,
                "id": entry.id.hex(),
                "ts": str(entry.ts),
                "hops": str(entry.hops),
            },
        )
        return message

    # -- the users file -------------------------------------------------------------------

    async def _load_users(self) -> None:
        path = self.users_file

        def read() -> dict[str, str]:
            try:
                data = json.loads(path.read_text("utf-8"))
            except FileNotFoundError:
                return {}
            except (OSError, ValueError) as exc:
                raise NodeError(f"{path}: {exc}; fix or remove it") from None
            if not isinstance(data, dict):
                raise NodeError(f"{path}: not a JSON object; fix or remove it")
            return {str(k): str(v) for k, v in data.items()}

        names = await self.node.run_blocking(read)
        saved = {s.name: s for s in await self.node.subscriptions()}
        for name, jid in names.items():
            subscription = saved.get(name)
            if subscription is None:
                continue
            user = self._users.setdefault(jid, _User(jid, subscription_name(jid), ()))
            if name == subscription_name(jid):
                user.patterns = subscription.patterns
            elif name == chirp_subscription_name(jid):
                user.chirps = tuple(p for p in subscription.patterns if mesh.secure_owner(p))
        for jid, user in list(self._users.items()):
            if not user.patterns and not user.chirps:
                del self._users[jid]

    async def _save_users(self) -> None:
        path = self.users_file
        names = {u.name: u.jid for u in self._users.values() if u.patterns}
        names |= {u.chirp_name: u.jid for u in self._users.values() if u.chirps}
        data = json.dumps(names, indent=1)

        def write() -> None:
            temporary = path.with_name(path.name + ".tmp")
            temporary.write_text(data, "utf-8")
            os.replace(temporary, path)

        await self.node.run_blocking(write)


class _Ended(Exception):
    """The connection ended; the words say why."""


#: How a connection ends without a bug: logged as a warning.
_EXPECTED: Final = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    _Ended,
    xmpp.XmppStreamError,
)


def _owner(pattern: str) -> crypto.NodeId:
    """The node whose chirps ``pattern`` (a chirp topic the bot keeps) is."""
    owner = mesh.secure_owner(pattern)
    assert owner is not None  # the bot keeps chirp topics only
    return owner


def _chirped(entry: mesh.InboxEntry) -> bot.Chirped:
    return bot.Chirped(entry.src, entry.body.decode("utf-8", "replace"), entry.ts)


def _matches(pattern: str, topic: str) -> bool:
    try:
        return mesh.matches(pattern, topic)
    except crypto.Malformed:
        return False
