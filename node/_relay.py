"""The relay side of Reverse HTTP (docs/architecture.md; draft-lentczner-rhttp-00).

A node that cannot be dialled attaches to a relay:

* **Upgrade.** ``POST /ptth/v1/attach`` with ``Upgrade: PTTH/1.0``, ``Connection:
  Upgrade``, a requested lease (``PTTH-Lease``, seconds) and an RFC 9421 signature: its
  ``keyid`` is the node id, so a node can only attach as itself (no squatting). The
  relay answers ``101 Switching Protocols`` with the granted lease and the node's
  public base URL (``PTTH-Base-URL``); from the next byte the relay is the HTTP client
  on that connection (an ``h11.Connection(CLIENT)``).
* **Long-poll** (the reversehttp.net design, for paths that drop Upgrade). The same
  attach without Upgrade creates a poll session: ``GET /ptth/v1/poll/<cap>`` is held
  up to ``poll_hold`` seconds and answered ``204`` (nothing) or ``200`` with one
  wrapped request (``message/http``) and a ``PTTH-Reply`` URL; the node POSTs the
  wrapped response there. The URLs are unguessable capabilities.

Visitors reach an attached node at ``/n/<node-id>/<rest>``: the relay re-serialises the
request (hop-by-hop headers removed, ``Forwarded`` and ``Via`` added, visitor copies of
those and of ``PTTH-*`` headers stripped) and sends ``/<rest>`` over an idle reversed
connection, one exchange at a time on each, and streams the answer back. Errors the
relay makes carry ``Proxy-Status`` (RFC 9209) so a caller can tell them from the
node's own answers.

Idle reversed connections are pinged every ``ping_interval``; one that does not answer
within ``ping_timeout`` is dropped. After a node's last connection (or poll) ends, its
URL space stays bound for its lease: visitors wait up to ``visitor_wait`` for it to come
back, then get ``503`` with ``Retry-After``.

**Who may attach, and how many** (:class:`RelayConfig`). ``policy``: ``open`` (any node
that signs its attach as itself), ``peers`` (nodes in the relay's peer book), ``off``
(nobody: ``403``). A node that already has an attachment here (its pool reconnecting, or
coming back within its lease) always gets back in, within ``max_connections_per_node``;
a *new* attachment must pass, in this order:

1. ``attach_rate`` / ``attach_burst``: a token bucket per source address (``429``,
   ``Retry-After`` = the seconds until a token is there): a stranger cannot churn through
   fresh identities. Every new attachment tried takes a token, also one that a later
   limit refuses.
2. ``max_nodes_per_address``: nodes attached at once from one source address (``429``,
   ``Retry-After: 30``).
3. ``max_nodes``: nodes attached at once (``503``, ``Retry-After: 30``).

A source address is the host part of the attach request's peer address (``Request.peer``,
``host:port``); for IPv6, its /64 (one site gets a /64, and can make up any address in
it). A peer that names no IP address (an in-process network's ``memory``, a Unix socket's
``?``) has no source address and is limited by ``max_nodes`` only: there is nothing to
tell strangers apart by. An attachment counts against the address of the attach that
created it, once, for as long as the relay keeps it (re-attaching, from anywhere, never
counts twice).

**Eviction.** When limit 2 or 3 is reached, the relay first makes room by evicting an
attachment that can give way (of that address, for 2; any, for 3): one with no reversed
connection, no Upgrade about to start and no poll held, whose node is detached (kept only
for its lease) or whose poll session has seen no poll for ``poll_grace`` seconds since
its last poll ended or it opened (a vanished poller: a node's pool polls again at once;
a vanished node's slot is free at most ``poll_hold`` + ``poll_grace`` after its last
poll began). Of those, the one whose node was last seen (attached, polled, a connection
began or ended) longest ago goes; it is reported detached (``on_attachment``), its poll
session ends (its next poll gets ``404``, and it attaches again as a new node) and
visitors waiting for it get ``503``. Only when nothing can give way is the attach
refused. These refusals carry ``Proxy-Status`` (``error=http_request_denied`` for the
two ``429``, ``connection_limit_reached`` for the ``503``) and say which limit, with
its number.

**Capabilities** (docs/capabilities.md). A relay given an :class:`mesh.Authority` whose
requirements include ``attach`` takes an attachment (Upgrade or long-poll) only from a
node that presents, in a ``PTTH-Capability`` request header (the ``ptthcap:`` token; the
header may be repeated, or hold several tokens separated by commas, at most
:data:`MAX_PRESENTED`), a capability to ``attach`` to this relay: rooted at the relay,
for the node the attach request's signature authenticates (or for anyone holding it),
valid now and not revoked. The first that holds is used; if none does, the attach gets
``403`` with the words of the check (``Proxy-Status``: ``http_request_denied``), before
any limit counts it. A *new* attachment is a use of the capability (its ``uses`` and
``rate``), counted once the limits have let it in; re-attaching within the lease is not.
The capability is checked again at every keep-alive ping of a reversed connection, every
poll of a long-poll session and every visitor request for the node: once it no longer
holds (revoked, expired), the attachment ends there and then (connections closed, poll
session ended, the node reported detached), the visitor gets ``503`` with the words, and
the node's next attach gets the ``403``. :func:`check_presented` is the same check for
``store`` (a frames request, node/_node.py), :func:`presentable` what a node sends.

The relay runs in a host (the node) that it knows only as a :class:`RelayHost`: its id,
its clock, its replay guard and its peer book. It can tell the host when a node attaches
and detaches (``on_attachment``; see :class:`RelayService` for exactly when).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final, Protocol

import h11
import trio

import crypto
import mesh
from node import _fabric, _net, _wrap
from node._server import PrefixedStream, Request, Response, source_address

__all__ = [
    "ATTACH_PATH",
    "CAPABILITY_HEADER",
    "HOP_BY_HOP_HEADERS",
    "MAX_PRESENTED",
    "PING_PATH",
    "POLL_PREFIX",
    "REPLY_PREFIX",
    "RelayConfig",
    "RelayHost",
    "RelayService",
    "check_presented",
    "presentable",
    "source_address",
]

log = logging.getLogger("ptth.relay")

ATTACH_PATH: Final = "/ptth/v1/attach"
POLL_PREFIX: Final = "/ptth/v1/poll/"
REPLY_PREFIX: Final = "/ptth/v1/reply/"
PING_PATH: Final = "/ptth/v1/ping"
UPGRADE_TOKENS: Final = ("ptth/1.0", "ptth/0.9")
#: What an attach is, in the words of a refusal.
_ATTACHING: Final = "attaching to this relay"
#: The request header a node presents capabilities in (``ptthcap:`` tokens).
CAPABILITY_HEADER: Final = "ptth-capability"
#: Capabilities one request may present: a node needs one per relay and operation
#: (attach, store) at most, and each one not seen before costs a signature check per
#: link. More is refused (403) rather than checked.
MAX_PRESENTED: Final = 4
_READ_SIZE: Final = 64 * 1024
#: How long a granted Upgrade holds a connection slot before its connection starts
#: being served (the 101 is one small write; the server gives up on writes after 30 s).
_UPGRADE_GRACE: Final = 30.0
#: ``Retry-After`` (s) of an attach refused because the relay, or the attach's source
#: address, is full: about a poll hold plus the poll grace, the soonest a node that
#: vanishes now can give way.
_FULL_RETRY_AFTER: Final = 30
#: Source addresses whose attach rate is tracked at once. An address past the bound
#: that has not attached for longest is forgotten (it starts again with a full burst):
#: a bound on memory against senders of many addresses, which gain little from it
#: (one /64 is one address; 10 000 x ~200 bytes is 2 MB).
_RATE_ADDRESSES: Final = 10_000

#: Headers that belong to one hop (RFC 9110 §7.6.1), and those a proxy sets itself: a
#: proxy of ours (the relay, a capability URL's) never passes a visitor's copies on.
HOP_BY_HOP_HEADERS: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "content-length",
        "forwarded",
        "via",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
    }
)
#: What never crosses the relay: those, and the relay's own error report.
_HOP_BY_HOP: Final = HOP_BY_HOP_HEADERS | {"proxy-status"}


class RelayHost(Protocol):
    """What a :class:`RelayService` needs of the node it runs in (``Node`` is one).

    Read-only: the service never sets any of these.
    """

    @property
    def node_id(self) -> crypto.NodeId:
        """The relay's own id (``Proxy-Status`` and ``Via`` name it)."""

    @property
    def clock(self) -> Callable[[], int]:
        """Wall time in ms (attach signatures are checked against it)."""

    @property
    def replay_guard(self) -> _fabric.ReplayGuard:
        """Refuses an attach signature presented twice (shared with the node's own)."""

    def peer_address(self, node: crypto.NodeId, /) -> crypto.SignedAddress | None:
        """The address record of peer ``node``, or None (policy "peers" asks)."""

    def blocked(self, node: crypto.NodeId, /) -> bool:
        """Has the host blocked ``node`` (``ptth block``)? A blocked node cannot attach."""


@dataclasses.dataclass(frozen=True)
class RelayConfig:
    """A relay's policy and limits. Every default has a reason."""

    #: Who may attach: "open" (any node), "peers" (nodes in our peer book), "off".
    policy: str = "open"
    #: Nodes attached at once: each costs a few tasks and buffers. When full, an idle
    #: attachment gives way to a new one (see the module docstring); 503 if none can.
    max_nodes: int = 1000
    #: Nodes attached at once from one source address (IPv6: one /64): many nodes
    #: behind one NAT are plausible, hundreds are not; a stranger with one address
    #: cannot take more than this of ``max_nodes``. 429 past it. Behind a reverse proxy
    #: every node comes from the proxy's address: raise it to ``max_nodes`` there.
    max_nodes_per_address: int = 16
    #: New attachments per second from one source address (a token bucket; 429 with
    #: the wait past it): one a second is far more than a NAT's nodes starting up
    #: need, and stops a stranger churning through fresh identities. Re-attaching
    #: nodes (their pools reconnecting) are not counted.
    attach_rate: float = 1.0
    #: ... and how many at once: a NAT's nodes (or one node's restarts) all get in.
    attach_burst: int = 20
    #: A poll session with no poll held can give way to a new node (when the relay or
    #: the source address is full) once its last poll ended (or it opened, if none came)
    #: this long ago (s): a node's pollers poll again at once, so after 10 s it is gone.
    poll_grace: float = 10.0
    #: Reversed connections per node: a pool of 2 is the default on the node side.
    max_connections_per_node: int = 8
    #: Longest lease granted (s): how long a URL space stays bound after the last
    #: connection ends.
    max_lease: float = 300.0
    #: How long a visitor waits for a free (or returning) connection (s).
    visitor_wait: float = 5.0
    #: How long the node may take to answer a forwarded request (s).
    reply_timeout: float = 30.0
    #: Ping an idle reversed connection this often (s) ...
    ping_interval: float = 25.0
    #: ... and drop it if the ping is not answered within this (s).
    ping_timeout: float = 10.0
    #: How long a long-poll is held before ``204`` (s).
    poll_hold: float = 25.0
    #: Largest request or response body forwarded.
    max_body_size: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.policy not in ("open", "peers", "off"):
            raise ValueError(f"relay policy must be open, peers or off, not {self.policy!r}")
        for name in ("max_nodes", "max_nodes_per_address", "attach_burst"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not self.attach_rate > 0:
            raise ValueError(f"attach_rate must be above 0 per second, not {self.attach_rate}")
        if not self.poll_grace >= 0:
            raise ValueError(f"poll_grace must be 0 s or more, not {self.poll_grace}")


class _AttachRate:
    """Token buckets of new attachments, one per source address."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        #: address -> (tokens, when counted); least recently used first.
        self.buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def take(self, address: str, now: float) -> float:
        """Take a token for ``address``: 0, or (none there) the seconds until one is."""
        tokens, then = self.buckets.pop(address, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self.buckets[address] = (tokens, now)
        self._prune(now)
        return wait

    def _prune(self, now: float) -> None:
        # Least recently used first: those refilled to a full burst are as good as new,
        # and forgetting them changes nothing.
        full = self.burst / self.rate
        while self.buckets:
            address, (_, then) = next(iter(self.buckets.items()))
            if now - then < full and len(self.buckets) <= _RATE_ADDRESSES:
                break
            del self.buckets[address]


def _sf_string(words: str) -> str:
    """``words`` as the inside of an RFC 8941 sf-string: printable ASCII, escaped."""
    printable = "".join(c if " " <= c <= "~" else "?" for c in words)
    return printable.replace("\\", "\\\\").replace('"', '\\"')


def _proxy_status(
    relay: crypto.NodeId, status: int, error: str, words: str, retry_after: int | None = None
) -> Response:
    details = _sf_string(words)
    headers = [("proxy-status", f'ptth-{relay.short}; error={error}; details="{details}"')]
    if retry_after is not None:
        headers.append(("retry-after", str(retry_after)))
    return Response.text(status, f"relay: {words}", headers)


def _presented(headers: Sequence[tuple[str, str]]) -> list[str]:
    """The tokens in the ``PTTH-Capability`` headers (repeated, or comma-separated:
    base64url has no commas)."""
    return [
        token.strip()
        for name, value in headers
        if name.lower() == CAPABILITY_HEADER
        for token in value.split(",")
        if token.strip()
    ]


def check_presented(
    authority: mesh.Authority,
    headers: Sequence[tuple[str, str]],
    *,
    now: int,
    operation: crypto.Operation,
    presenter: crypto.NodeId,
    use: bytes | None = None,
    what: str,
) -> crypto.VerifiedCapability:
    """The first capability presented in ``headers`` (``PTTH-Capability``) that lets
    ``presenter`` do ``operation`` on the relay of ``authority.local``.

    ``use``: an id for this use, counted against the capability's ``uses`` and ``rate``
    (None: not a use). Raises :class:`crypto.CapabilityRefused` (403: the presenter's
    fault) naming what is missing or failing, after ``what`` ("attaching to this
    relay"): none presented, a bad token, the check's words (for several, each one's).
    """
    relay = authority.local
    tokens = _presented(headers)
    if len(tokens) > MAX_PRESENTED:
        raise crypto.CapabilityRefused(
            f"{what}: {len(tokens)} capabilities presented, at most {MAX_PRESENTED} are looked at"
        )
    target = crypto.Target.relay(relay)
    failures: list[str] = []
    candidates: list[str | None] = [*tokens] if tokens else [None]
    for token in candidates:
        envelope = None
        if token is not None:
            try:
                envelope = crypto.capability_envelope(token)  # opened by the cache
            except crypto.CryptoError as exc:
                failures.append(f"{what}: the capability presented is bad: {exc}")
                continue
        try:
            return authority.check(
                envelope,
                now=now,
                owner=relay,
                operation=operation,
                target=target,
                presenter=presenter,
                use=use,
                what=what,
            )
        except crypto.CapabilityRefused as exc:
            failures.append(str(exc))
    if len(failures) == 1:
        raise crypto.CapabilityRefused(failures[0])
    reasons = "; ".join(
        f"({number}) {failure.removeprefix(what + ': ')}"
        for number, failure in enumerate(failures, 1)
    )
    raise crypto.CapabilityRefused(
        f"{what}: none of the {len(failures)} capabilities presented holds: {reasons}"
    )


def presentable(
    wallet: mesh.Wallet, operation: crypto.Operation, relay: crypto.NodeId
) -> list[tuple[str, str]]:
    """``PTTH-Capability`` headers with the capabilities held (at most
    :data:`MAX_PRESENTED`) that may let this node do ``operation`` on ``relay``: those
    for it, or for anyone, designating that relay with that operation. Whether they
    hold now (time, revocations) is the relay's to say."""
    target = crypto.Target.relay(relay)
    fitting = [
        capability.token
        for capability in wallet
        if operation in capability.ops
        and capability.subject in (None, wallet.local)
        and target.within(capability.target)
    ]
    return [(CAPABILITY_HEADER, token) for token in fitting[:MAX_PRESENTED]]


class _Reversed:
    """One reversed connection: the relay is the HTTP client on it."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        self.closed = trio.Event()
        self.busy = False
        #: When it last finished an exchange (pings are per connection: the node
        #: closes a connection it has heard nothing on for a while).
        self.last_used = trio.current_time()

    def close(self) -> None:
        self.closed.set()

    def hung_up(self) -> bool:
        """Whether the node sent anything while the connection was idle.

        A node speaks only when asked, so that is its end of file (it closed the
        connection; nobody was reading to notice) or bytes it had no business sending:
        either way the connection is done. Checked before each use, as httpcore checks
        a pooled connection, so that a visitor's request is not sent into a dead one.
        """
        stream = self.stream
        while isinstance(stream, PrefixedStream):  # a prefix is the new connection's
            stream = stream.stream
        return bool(self.conn.trailing_data[0]) or bool(_net.is_readable(stream))

    async def send_request(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> None:
        # Values as bytes: h11 takes ``str`` as ASCII, but a field may hold obs-text.
        fields = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        fields.append((b"content-length", str(len(body)).encode("ascii")))
        data = self.conn.send(h11.Request(method=method, target=target, headers=fields))
        data += self.conn.send(h11.Data(data=body)) if body else b""
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)

    async def next_event(self) -> h11.Event:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(_READ_SIZE)
                if not data and self.conn.their_state is h11.SEND_RESPONSE:
                    raise h11.RemoteProtocolError("the node hung up without answering")
                self.conn.receive_data(bytes(data))
                continue
            assert isinstance(event, h11.Event)
            return event


class _RelayedBody(AsyncIterator[bytes]):
    """The node's answer body, streamed on to the visitor.

    When it ends, the connection goes back to the idle ones (a whole answer) or is
    closed (anything else); also when it is closed unread, e.g. because the visitor
    went away before the head could be written. (An async generator would not do:
    closing one that never started runs none of its code.)
    """

    def __init__(self, attachment: _Attachment, connection: _Reversed, config: RelayConfig) -> None:
        self.attachment = attachment
        self.connection = connection
        self.config = config
        self.size = 0
        self.released = False

    def __aiter__(self) -> _RelayedBody:
        return self

    async def __anext__(self) -> bytes:
        if self.released:
            raise StopAsyncIteration
        connection = self.connection
        event: h11.Event | None
        try:
            with trio.fail_after(self.config.reply_timeout):
                event = await connection.next_event()
            if isinstance(event, h11.EndOfMessage):
                connection.conn.start_next_cycle()
        except (
            trio.TooSlowError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            h11.ProtocolError,
        ):
            event = None  # broken off: the connection is closed
        except BaseException:
            self.release(complete=False)
            raise
        if isinstance(event, h11.Data):
            self.size += len(event.data)
            if self.size <= self.config.max_body_size:
                return bytes(event.data)
            # Over the limit: cut off (the connection is closed).
        self.release(complete=isinstance(event, h11.EndOfMessage))
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.release(complete=False)  # nothing if it was released already
        await trio.lowlevel.checkpoint()

    def release(self, *, complete: bool) -> None:
        if self.released:
            return
        self.released = True
        connection, attachment = self.connection, self.attachment
        connection.busy = False
        if complete and not connection.closed.is_set():
            attachment.idle.append(connection)
            attachment.last_activity = connection.last_used = trio.current_time()
        else:
            connection.close()
        attachment.notify()


class _Exchange:
    """A visitor request waiting for a long-poll session to carry it."""

    def __init__(self, wrapped: bytes) -> None:
        self.wrapped = wrapped
        self.reply_token = secrets.token_urlsafe(24)
        self.done = trio.Event()
        self.response: bytes | None = None


class _Attachment:
    """Everything the relay holds for one attached node."""

    def __init__(self, node: crypto.NodeId, lease: float, address: str | None) -> None:
        self.node = node
        self.lease = lease
        #: The source address it counts against (that of the attach that created it;
        #: None: a peer with no IP address).
        self.address = address
        self.connections: list[_Reversed] = []
        self.idle: collections.deque[_Reversed] = collections.deque()
        #: Deadlines of Upgrades granted whose connections have not started yet.
        self.upgrading: list[float] = []
        self.changed = trio.Event()
        # Detached until a connection or a poll session starts: a node that attached
        # and never came holds its URL space for one lease, not longer.
        self.detached_at: float | None = trio.current_time()
        self.poll_token: str | None = None
        self.poll_deadline = 0.0
        self.waiting: collections.deque[_Exchange] = collections.deque()
        self.last_activity = trio.current_time()
        self.requests = 0
        #: When the node last showed life (attached, polled, a connection began or
        #: ended): the attachment idle longest gives way first.
        self.last_seen = trio.current_time()
        #: Polls being held now.
        self.polls_held = 0
        #: Its place was given to another node, or its capability to attach stopped
        #: holding: it is gone from the relay.
        self.evicted = False
        #: The capability it attached with (its envelope), on a relay that requires one.
        self.capability: bytes | None = None
        #: Why it is gone, if its capability stopped holding (the relay's words).
        self.refused: str | None = None

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    @property
    def polling(self) -> bool:
        return self.poll_token is not None and trio.current_time() < self.poll_deadline

    @property
    def attached(self) -> bool:
        return not self.evicted and (bool(self.connections) or self.polling)

    def connection_count(self) -> int:
        """Connections up, and those granted (by a 101) that are about to be."""
        now = trio.current_time()
        self.upgrading = [deadline for deadline in self.upgrading if deadline > now]
        return len(self.connections) + len(self.upgrading)

    def lease_over(self) -> bool:
        if self.attached:
            return False
        since = self.detached_at if self.detached_at is not None else self.poll_deadline
        return trio.current_time() >= since + self.lease

    def can_give_way(self, poll_grace: float) -> bool:
        """Whether a new node may take its place (the relay, or its address, is full).

        Not while it has a reversed connection, an Upgrade about to start or a poll
        held; yes when its node is detached (it is kept only for its lease), or its poll
        session has seen no poll for ``poll_grace`` seconds (its pollers are gone).
        """
        if self.connections or self.connection_count() or self.polls_held:
            return False
        if self.polling:
            return trio.current_time() >= self.last_seen + poll_grace
        return True


class RelayService:
    """Serves attach, poll and reply for one node acting as a relay, and ``/n/...``.

    ``on_attachment(node, attached)``, if given, is told when a node's attachment here
    begins and ends. For each node the calls alternate, starting with ``True``; it is
    never called twice in a row with the same value for the same node. A node's
    reversed connections and its poll session together make one attachment:

    * ``(node, True)`` when the node goes from detached to attached: its first reversed
      connection starts being served (right after the ``101`` is written), or its poll
      session opens (when the attach that creates it is answered; also when a poll
      revives a session that had lapsed, and had been reported so).
    * ``(node, False)`` when it goes from attached to detached:

      - its last reversed connection ends (the task serving it finishes: the node hung
        up, a ping went unanswered, an exchange broke off), while it has no live poll
        session; the call is made then and there;
      - its poll session lapses (``lease`` seconds after its last poll ended, or after
        the attach that opened it if no poll came), while it has no reversed
        connection. Nothing happens at that moment by itself; the lapse is reported when
        the relay notices it, the first of: the relay handles a request on any of its
        routes (attach, poll, reply, ``/n/...``), :meth:`statistics` is called,
        :meth:`watch` (if the host runs it) wakes at the deadline, or :meth:`shutdown`;
      - its place is given to a new node (the relay or its source address is full and
        its poll session has gone quiet; see the module docstring): then and there;
      - :meth:`shutdown`: every node still attached is reported detached then, and no
        node is reported attached after it.

    A detached node's URL space stays bound for its lease (visitors wait, then get
    ``503``): that, and its end, are not reported. The calls are made synchronously in
    the relay's own tasks (the relay's state is updated first, so the callback may look
    at it); the callback must not block, and an exception from it is logged and
    otherwise ignored.
    """

    def __init__(
        self,
        node: RelayHost,
        config: RelayConfig,
        *,
        on_attachment: Callable[[crypto.NodeId, bool], None] | None = None,
        authority: mesh.Authority | None = None,
    ) -> None:
        self.node = node
        self.config = config
        self.on_attachment = on_attachment
        #: The host's capability checks (None: nothing is required to attach).
        self.authority = authority
        #: Attaches refused for want of a capability, and attachments ended because
        #: theirs stopped holding.
        self.capability_refusals = 0
        self.capability_ends = 0
        self.attachments: dict[crypto.NodeId, _Attachment] = {}
        #: How many of :attr:`attachments` count against each source address.
        self._per_address: collections.Counter[str] = collections.Counter()
        self._attach_rate = _AttachRate(config.attach_rate, config.attach_burst)
        self._replies: dict[str, _Exchange] = {}
        self._polls: dict[str, _Attachment] = {}
        self.closing = False
        #: The nodes last reported attached (kept also when nobody listens).
        self._reported: set[crypto.NodeId] = set()
        #: No poll session of a node reported attached lapses before this (a lower
        #: bound: polls push deadlines on), so most requests need not look at them all.
        self._next_lapse = math.inf
        self._lapse_moved = trio.Event()

    def shutdown(self) -> None:
        """The node is stopping: release held polls now (they would hold shutdown up).

        Every node still attached is reported detached (``on_attachment``).
        """
        self.closing = True
        for attachment in list(self.attachments.values()):
            self._update(attachment)
            attachment.notify()

    # -- attached, detached -----------------------------------------------------------

    def _update(self, attachment: _Attachment) -> None:
        """Report ``attachment``'s node attached or detached if that changed."""
        node = attachment.node
        if self.attachments.get(node) is not attachment:
            # Replaced or forgotten (reported detached before that): the node's state
            # is the current attachment's to report.
            return
        attached = attachment.attached and not self.closing
        if attached == (node in self._reported):
            return
        if attached:
            self._reported.add(node)
        else:
            self._reported.discard(node)
        if self.on_attachment is None:
            return
        try:
            self.on_attachment(node, attached)
        except Exception:
            log.exception("on_attachment(%s, %s) failed", node.short, attached)

    def _poll_deadline(self, attachment: _Attachment, deadline: float) -> None:
        """Set ``attachment``'s poll deadline (every change of it goes through here)."""
        attachment.poll_deadline = deadline
        if deadline < self._next_lapse:
            self._next_lapse = deadline
            self._lapse_moved.set()
            self._lapse_moved = trio.Event()

    def _notice_lapses(self) -> None:
        """Report the poll sessions that have lapsed (cheap while none can have)."""
        if trio.current_time() < self._next_lapse:
            return
        self._next_lapse = math.inf
        for node in list(self._reported):
            attachment = self.attachments.get(node)
            if attachment is None:
                continue
            self._update(attachment)
            if node in self._reported and attachment.polling:
                self._next_lapse = min(self._next_lapse, attachment.poll_deadline)

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Report poll sessions detached as they lapse, until cancelled.

        Optional: a host that runs this (in its background) hears of a lapse at its
        deadline; without it, at the relay's next request or :meth:`statistics`.
        """
        task_status.started()
        while True:
            self._notice_lapses()
            moved = self._lapse_moved
            with trio.move_on_at(self._next_lapse):
                await moved.wait()

    # -- routing --------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        self._notice_lapses()
        path = request.path
        if path == ATTACH_PATH:
            return await self.attach(request)
        if path.startswith(POLL_PREFIX):
            return await self.poll(request, path[len(POLL_PREFIX) :])
        if path.startswith(REPLY_PREFIX):
            return await self.reply(request, path[len(REPLY_PREFIX) :])
        return await self.forward(request)

    def statistics(self) -> list[dict[str, Any]]:
        """One entry per node attached (or within its lease)."""
        self._notice_lapses()
        now = trio.current_time()
        return [
            {
                "node": a.node.text,
                "address": a.address,
                "connections": len(a.connections),
                "polling": a.polling,
                "lease": a.lease,
                "idle_for": round(now - a.last_activity, 1),
                "requests": a.requests,
            }
            for a in self.attachments.values()
            if not a.lease_over()
        ]

    # -- attaching ------------------------------------------------------------------

    def _refuse(self, status: int, words: str, retry_after: int | None = None) -> Response:
        headers = [("retry-after", str(retry_after))] if retry_after is not None else []
        return Response.text(status, words, headers)

    async def attach(self, request: Request) -> Response:
        if request.method != "POST":
            return self._refuse(405, "attach with POST")
        if self.config.policy == "off":
            return self._refuse(403, "this node does not relay for others")
        try:
            node = _fabric.verify_request(
                request.method,
                request.url,
                request.headers,
                request.body,
                now=self.node.clock() // 1000,
                guard=self.node.replay_guard,
            )
        except crypto.CryptoError as exc:
            return self._refuse(401, f"attach not authenticated: {exc}")
        if self.config.policy == "peers" and self.node.peer_address(node) is None:
            return self._refuse(403, f"this relay serves its peers only; {node.short} is not one")
        if self.node.blocked(node):
            return self._refuse(403, f"node {node.short} is blocked here")
        try:
            capability = self._attach_capability(request, node)
        except crypto.CapabilityRefused as exc:
            self.capability_refusals += 1
            log.info("refused an attach of %s: %s", node.short, exc)
            return _proxy_status(self.node.node_id, 403, "http_request_denied", str(exc))
        upgrade = (request.header("upgrade") or "").lower()
        wants = [token.strip() for token in upgrade.split(",") if token.strip()]
        protocols = [token for token in wants if token in UPGRADE_TOKENS]
        if wants and not protocols:
            return self._refuse(400, f"cannot upgrade to {upgrade!r}; this relay speaks PTTH/1.0")
        lease = _requested_lease(request.header("ptth-lease"), self.config.max_lease)
        attachment = self.attachments.get(node)
        if attachment is None or attachment.lease_over():
            # A new attachment (a node here already, reconnecting, is not one).
            if attachment is not None:
                self._update(attachment)
                self._remove(attachment)
            address = source_address(request.peer)
            refusal = self._make_room(address)
            if refusal is not None:
                return refusal
            if capability is not None:
                try:
                    self._count_attach(request, node, capability)
                except crypto.CapabilityRefused as exc:
                    self.capability_refusals += 1
                    log.info("refused an attach of %s: %s", node.short, exc)
                    return _proxy_status(self.node.node_id, 403, "http_request_denied", str(exc))
            attachment = _Attachment(node, lease, address)
            self.attachments[node] = attachment
            if address is not None:
                self._per_address[address] += 1
        attachment.lease = lease
        attachment.capability = capability  # (the latest presented is checked from now)
        base_url = self.base_url(request, node)
        if not wants:
            return self._open_poll_session(attachment, base_url)
        count = attachment.connection_count()
        if count >= self.config.max_connections_per_node:
            return self._refuse(
                429,
                f"{node.short} already has {count} connections, "
                f"limit {self.config.max_connections_per_node}",
                retry_after=5,
            )
        protocol = protocols[0]
        # The slot is taken now: two attaches at once must not both pass the limit.
        granted = trio.current_time() + _UPGRADE_GRACE
        attachment.upgrading.append(granted)

        async def serve(stream: trio.abc.Stream) -> None:
            if granted in attachment.upgrading:
                attachment.upgrading.remove(granted)
            if self.attachments.get(attachment.node) is not attachment:
                # Its place went to another node meanwhile (the 101 took over
                # _UPGRADE_GRACE to write): hang up; the node attaches again.
                await stream.aclose()
                return
            await self._serve_reversed(attachment, stream)

        headers = [
            ("upgrade", "PTTH/1.0" if protocol == "ptth/1.0" else "PTTH/0.9"),
            ("connection", "Upgrade"),
            ("ptth-lease", f"{lease:g}"),
            ("ptth-base-url", base_url),
        ]
        return Response(101, headers, upgrade=serve)

    def _requires_capability(self) -> mesh.Authority | None:
        authority = self.authority
        return authority if authority is not None and authority.requirements.attach else None

    def _attach_capability(self, request: Request, node: crypto.NodeId) -> bytes | None:
        """The capability ``node`` attaches with (None: none is required). Raises
        :class:`crypto.CapabilityRefused`."""
        authority = self._requires_capability()
        if authority is None:
            return None
        verified = check_presented(
            authority,
            request.headers,
            now=self.node.clock(),
            operation=crypto.Operation.ATTACH,
            presenter=node,
            what=_ATTACHING,
        )
        return verified.capability.envelope

    def _count_attach(self, request: Request, node: crypto.NodeId, capability: bytes) -> None:
        """Count a new attachment as a use of ``capability`` (its ``uses``, ``rate``):
        once the limits have let it in, so that an attach they refuse uses nothing.
        Raises :class:`crypto.CapabilityRefused` if it has no use left."""
        authority = self._requires_capability()
        assert authority is not None  # (a capability is there only if one is required)
        authority.check(
            capability,
            now=self.node.clock(),
            owner=self.node.node_id,
            operation=crypto.Operation.ATTACH,
            target=crypto.Target.relay(self.node.node_id),
            presenter=node,
            # Named by the attach's signature: each attach request has its own.
            use=(request.header("signature") or "").encode(),
            what=_ATTACHING,
        )

    def _lapsed(self, attachment: _Attachment) -> str | None:
        """Check ``attachment``'s capability again (a ping, a poll, a visitor): if it no
        longer holds, end the attachment and return why; else None."""
        authority = self._requires_capability()
        if authority is None:
            return None
        if attachment.refused is not None:
            return attachment.refused
        try:
            authority.check(
                attachment.capability,
                now=self.node.clock(),
                owner=self.node.node_id,
                operation=crypto.Operation.ATTACH,
                target=crypto.Target.relay(self.node.node_id),
                presenter=attachment.node,
                what=_ATTACHING,
            )
        except crypto.CapabilityRefused as exc:
            self._end(attachment, str(exc))
            return str(exc)
        return None

    def _end(self, attachment: _Attachment, words: str) -> None:
        """End ``attachment`` now: its capability no longer holds."""
        log.info("the attachment of %s ends: %s", attachment.node.short, words)
        self.capability_ends += 1
        attachment.refused = words
        attachment.evicted = True  # detached, and gone: it must attach again
        self._update(attachment)
        self._remove(attachment)
        attachment.poll_token = None
        for connection in attachment.connections:
            connection.close()  # (its keep-alive task ends and takes it off the list)
        for exchange in attachment.waiting:
            exchange.done.set()  # (no response: the visitor gets the words)
        attachment.waiting.clear()
        attachment.notify()

    def base_url(self, request: Request, node: crypto.NodeId) -> str:
        return f"{request.url.split('/ptth/', 1)[0]}/n/{node.text}"

    def _sweep(self) -> None:
        for attachment in list(self.attachments.values()):
            self._update(attachment)  # (a node is reported detached before it is forgotten)
            if attachment.lease_over() and not attachment.waiting:
                self._remove(attachment)

    def _remove(self, attachment: _Attachment) -> None:
        """Forget ``attachment`` (its node's state was reported already)."""
        if self.attachments.get(attachment.node) is not attachment:
            return
        del self.attachments[attachment.node]
        address = attachment.address
        if address is not None:
            self._per_address[address] -= 1
            if self._per_address[address] <= 0:
                del self._per_address[address]
        if attachment.poll_token is not None:
            self._polls.pop(attachment.poll_token, None)

    def _make_room(self, address: str | None) -> Response | None:
        """Make room for a new attachment from ``address``; None, or the refusal."""
        config = self.config
        wait = 0.0 if address is None else self._attach_rate.take(address, trio.current_time())
        if wait > 0:
            seconds = math.ceil(wait)
            return self._attach_refusal(
                429,
                "http_request_denied",
                f"too many new attachments from {address} (limit {config.attach_rate:g}/s, "
                f"burst {config.attach_burst}); next in {seconds} s",
                retry_after=seconds,
            )
        self._sweep()
        count = 0 if address is None else self._per_address[address]
        if count >= config.max_nodes_per_address and not self._evict(address):
            return self._attach_refusal(
                429,
                "http_request_denied",
                f"{count} nodes already attached from {address} "
                f"(limit {config.max_nodes_per_address})",
                retry_after=_FULL_RETRY_AFTER,
            )
        if len(self.attachments) >= config.max_nodes and not self._evict(None):
            return self._attach_refusal(
                503,
                "connection_limit_reached",
                f"full: {len(self.attachments)} nodes attached (limit {config.max_nodes}), "
                "none idle long enough to give way",
                retry_after=_FULL_RETRY_AFTER,
            )
        return None

    def _evict(self, address: str | None) -> bool:
        """Give the place of the attachment (from ``address``, or any) idle longest away.

        False if none can give way (:meth:`_Attachment.can_give_way`).
        """
        grace = self.config.poll_grace
        candidates = [
            attachment
            for attachment in self.attachments.values()
            if (address is None or attachment.address == address) and attachment.can_give_way(grace)
        ]
        if not candidates:
            return False
        victim = min(candidates, key=lambda attachment: attachment.last_seen)
        log.debug(
            "%s gives way to a new node (last seen %.0f s ago, from %s)",
            victim.node.short,
            trio.current_time() - victim.last_seen,
            victim.address,
        )
        victim.evicted = True  # detached, and never attached again: a new one comes
        self._update(victim)
        self._remove(victim)
        victim.poll_token = None
        for exchange in victim.waiting:
            exchange.done.set()  # (no response: the visitor gets a 503)
        victim.waiting.clear()
        victim.notify()
        return True

    def _attach_refusal(self, status: int, error: str, words: str, retry_after: int) -> Response:
        """An attach refused for a limit: ``Proxy-Status`` names the limit, like the words."""
        return _proxy_status(self.node.node_id, status, error, words, retry_after)

    async def _serve_reversed(self, attachment: _Attachment, stream: trio.abc.Stream) -> None:
        connection = _Reversed(stream)
        attachment.connections.append(connection)
        attachment.idle.append(connection)
        attachment.detached_at = None
        attachment.last_activity = attachment.last_seen = trio.current_time()
        attachment.notify()
        self._update(attachment)
        try:
            await self._keep_alive(attachment, connection)
        finally:
            connection.close()
            attachment.connections.remove(connection)
            if connection in attachment.idle:
                attachment.idle.remove(connection)
            attachment.last_seen = trio.current_time()
            if not attachment.connections:
                attachment.detached_at = trio.current_time()
            attachment.notify()
            self._update(attachment)

    async def _keep_alive(self, attachment: _Attachment, connection: _Reversed) -> None:
        """Ping the connection whenever it has been idle for a ping interval."""
        idle_since = trio.current_time()
        while not connection.closed.is_set():
            with trio.move_on_at(idle_since + self.config.ping_interval):
                await connection.closed.wait()
                return
            if connection.busy or connection not in attachment.idle:
                idle_since = trio.current_time()
                continue
            # Compare with the very deadline waited for: `now - last_used < interval`
            # can hold in floating point at `now == last_used + interval`, and the loop
            # would spin without time passing.
            if trio.current_time() < connection.last_used + self.config.ping_interval:
                idle_since = connection.last_used
                continue
            if self._lapsed(attachment) is not None:
                return  # (the attachment is over: its connections are closed)
            attachment.idle.remove(connection)
            connection.busy = True
            if not await self._ping(connection):
                return
            connection.busy = False
            attachment.idle.append(connection)
            attachment.notify()
            idle_since = trio.current_time()

    async def _ping(self, connection: _Reversed) -> bool:
        with trio.move_on_after(self.config.ping_timeout):
            try:
                await connection.send_request("OPTIONS", PING_PATH, [("host", "ptth")], b"")
                while True:
                    event = await connection.next_event()
                    if isinstance(event, h11.EndOfMessage):
                        connection.conn.start_next_cycle()
                        return True
                    if isinstance(event, h11.ConnectionClosed):
                        return False
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
                return False
        return False

    # -- long-poll ------------------------------------------------------------------

    def _open_poll_session(self, attachment: _Attachment, base_url: str) -> Response:
        # One session per node: a node's pool of pollers share it (several polls may
        # be held at once); a new session is made only when the old one has lapsed.
        if attachment.poll_token is not None and attachment.polling:
            token = attachment.poll_token
        else:
            if attachment.poll_token is not None:
                self._polls.pop(attachment.poll_token, None)
            token = secrets.token_urlsafe(24)
        attachment.poll_token = token
        self._poll_deadline(attachment, trio.current_time() + attachment.lease)
        attachment.detached_at = None
        attachment.last_seen = trio.current_time()
        self._polls[token] = attachment
        attachment.notify()
        self._update(attachment)
        body = json.dumps(
            {
                "mode": "long-poll",
                "poll": POLL_PREFIX + token,
                "base_url": base_url,
                "lease": attachment.lease,
                "hold": self.config.poll_hold,
            }
        ).encode()
        return Response(200, [("content-type", "application/json")], body)

    async def poll(self, request: Request, token: str) -> Response:
        attachment = self._polls.get(token)
        if attachment is None or request.method != "GET":
            return self._refuse(404, "no such poll session (it ended, or never was)")
        if (words := self._lapsed(attachment)) is not None:
            return _proxy_status(self.node.node_id, 403, "http_request_denied", words)
        hold_until = trio.current_time() + attachment.lease + self.config.poll_hold
        self._poll_deadline(attachment, hold_until)
        attachment.last_activity = attachment.last_seen = trio.current_time()
        self._update(attachment)  # (a poll revives a lapsed session)
        attachment.polls_held += 1
        try:
            with trio.move_on_after(self.config.poll_hold):
                while not attachment.waiting and not self.closing:
                    await attachment.changed.wait()
                    if attachment.refused is not None:
                        return _proxy_status(
                            self.node.node_id, 403, "http_request_denied", attachment.refused
                        )
                    if attachment.poll_token != token:
                        return self._refuse(404, "poll session replaced by a newer one")
        finally:
            attachment.polls_held -= 1
            attachment.last_seen = trio.current_time()
        self._poll_deadline(attachment, trio.current_time() + attachment.lease)
        if not attachment.waiting:
            return Response(204)
        exchange = attachment.waiting.popleft()
        self._replies[exchange.reply_token] = exchange
        headers = [
            ("content-type", "message/http"),
            ("ptth-reply", REPLY_PREFIX + exchange.reply_token),
        ]
        return Response(200, headers, exchange.wrapped)

    async def reply(self, request: Request, token: str) -> Response:
        exchange = self._replies.pop(token, None)
        if exchange is None or request.method != "POST":
            return self._refuse(404, "no such reply URL (answered already, or timed out)")
        exchange.response = request.body
        exchange.done.set()
        return Response(204)

    # -- forwarding -----------------------------------------------------------------

    def _relay_error(
        self, status: int, error: str, words: str, retry_after: int | None = None
    ) -> Response:
        return _proxy_status(self.node.node_id, status, error, words, retry_after)

    async def forward(self, request: Request) -> Response:
        rest = request.target[len("/n/") :]
        node_text, slash, tail = rest.partition("/")
        try:
            node = crypto.NodeId.parse(node_text)
        except crypto.Malformed as exc:
            return self._relay_error(404, "destination_not_found", f"bad node id: {exc}")
        attachment = self.attachments.get(node)
        if attachment is None or (attachment.lease_over() and not attachment.attached):
            return self._relay_error(
                404, "destination_not_found", f"{node.short} is not attached here"
            )
        if self._lapsed(attachment) is not None:
            return self._gave_way(attachment)
        target = "/" + tail if slash else "/"
        headers = self._forward_headers(request)
        attachment.requests += 1
        attachment.last_activity = trio.current_time()
        deadline = trio.current_time() + self.config.visitor_wait
        while True:
            connection = self._take_idle(attachment)
            if connection is not None:
                return await self._exchange(attachment, connection, request, target, headers)
            if attachment.polling and not attachment.connections:
                return await self._exchange_by_poll(attachment, request, target, headers)
            if attachment.evicted:
                return self._gave_way(attachment)
            if trio.current_time() >= deadline:
                if attachment.attached:
                    return self._relay_error(
                        503,
                        "connection_limit_reached",
                        f"no free connection to {node.short} within {self.config.visitor_wait:g} s",
                        retry_after=1,
                    )
                return self._relay_error(
                    503,
                    "destination_unavailable",
                    f"{node.short} is detached (its lease holds its URL space)",
                    retry_after=max(1, int(self.config.visitor_wait)),
                )
            with trio.move_on_at(deadline):
                await attachment.changed.wait()

    def _gave_way(self, attachment: _Attachment) -> Response:
        if attachment.refused is not None:
            return self._relay_error(
                503,
                "destination_unavailable",
                f"{attachment.node.short} is no longer attached here: {attachment.refused}",
            )
        return self._relay_error(
            503,
            "destination_unavailable",
            f"{attachment.node.short} went away; its place here went to another node",
            retry_after=max(1, int(self.config.visitor_wait)),
        )

    def _take_idle(self, attachment: _Attachment) -> _Reversed | None:
        while attachment.idle:
            connection = attachment.idle.popleft()
            if connection.closed.is_set():
                continue
            if connection.hung_up():
                connection.close()  # its keep-alive task takes it off the list
                continue
            connection.busy = True
            return connection
        return None

    def _forward_headers(self, request: Request) -> list[tuple[str, str]]:
        named = {
            token.strip().lower()
            for token in (request.header("connection") or "").split(",")
            if token.strip()
        }
        headers = [
            (name, value)
            for name, value in request.headers
            if name not in _HOP_BY_HOP and name not in named and not name.startswith("ptth-")
        ]
        host = request.header("host") or "unknown"
        visitor = request.peer.rpartition(":")[0] or request.peer
        headers.append(("forwarded", f'for="{visitor}";host="{host}";proto=http'))
        headers.append(("via", f"1.1 ptth-{self.node.node_id.short}"))
        return headers

    async def _exchange(
        self,
        attachment: _Attachment,
        connection: _Reversed,
        request: Request,
        target: str,
        headers: list[tuple[str, str]],
    ) -> Response:
        """Send the request over ``connection``; stream the answer back to the visitor."""
        try:
            with trio.fail_after(self.config.reply_timeout):
                await connection.send_request(request.method, target, headers, request.body)
                while True:
                    event = await connection.next_event()
                    if isinstance(event, h11.Response):
                        break
                    if not isinstance(event, h11.InformationalResponse):
                        raise h11.RemoteProtocolError("the node closed without answering")
        except trio.TooSlowError:
            connection.close()
            return self._relay_error(
                504,
                "http_response_timeout",
                f"{attachment.node.short} did not answer within {self.config.reply_timeout:g} s",
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
            connection.close()
            reason = str(exc) or "the connection was closed"  # (e.g. we are shutting down)
            return self._relay_error(
                502, "http_protocol_error", f"bad answer from {attachment.node.short}: {reason}"
            )
        except BaseException:
            connection.close()  # never leave it taken (busy) and half-used
            raise
        status = event.status_code
        # The node's Content-Length is kept (when it used no other framing): then a body
        # that breaks off, or is cut at max_body_size, cannot reach the visitor as a
        # complete message.
        chunked = any(name.lower() == b"transfer-encoding" for name, _ in event.headers)
        response_headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in event.headers
            if name.decode("latin-1").lower() not in _HOP_BY_HOP
            or (name.lower() == b"content-length" and not chunked)
        ]
        response_headers.append(("via", f"1.1 ptth-{self.node.node_id.short}"))
        body = _RelayedBody(attachment, connection, self.config)
        return Response(status, response_headers, stream=body)

    async def _exchange_by_poll(
        self,
        attachment: _Attachment,
        request: Request,
        target: str,
        headers: list[tuple[str, str]],
    ) -> Response:
        exchange = _Exchange(_wrap.encode_request(request.method, target, headers, request.body))
        attachment.waiting.append(exchange)
        attachment.notify()
        with trio.move_on_after(self.config.reply_timeout):
            await exchange.done.wait()
        if exchange in attachment.waiting:
            attachment.waiting.remove(exchange)
        self._replies.pop(exchange.reply_token, None)
        if exchange.response is None and attachment.evicted:
            return self._gave_way(attachment)
        if exchange.response is None:
            return self._relay_error(
                504,
                "http_response_timeout",
                f"{attachment.node.short} did not answer within {self.config.reply_timeout:g} s",
            )
        try:
            status, response_headers, body = _wrap.decode_response(exchange.response)
        except _wrap.WrapError as exc:
            return self._relay_error(
                502, "http_protocol_error", f"bad answer from {attachment.node.short}: {exc}"
            )
        kept = [(k, v) for k, v in response_headers if k.lower() not in _HOP_BY_HOP]
        kept.append(("via", f"1.1 ptth-{self.node.node_id.short}"))
        return Response(status, kept, body)


def _requested_lease(value: str | None, maximum: float) -> float:
    try:
        asked = float(value) if value is not None else 60.0
    except ValueError:
        asked = 60.0
    return max(1.0, min(asked, maximum))
