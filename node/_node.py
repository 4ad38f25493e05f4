"""``Node``: one ptth node, an HTTP server and client in one trio nursery.

``async with Node.open(data_dir) as node:`` loads (or creates) the identity, opens the
store, starts the server on its listeners, the HTTP client, the mesh runtime
(forwarders, announces, timers: :mod:`node._mesh`) and any relay attachments, and signs
a fresh address record when the endpoints changed. Leaving the block shuts the server
down gracefully and cancels every task of the node.

This module only wires the parts together: the server routes requests to the frame
intake (:meth:`node._mesh.MeshRuntime.receive`), the relay (:mod:`node._relay`) and
the local API (:mod:`node._api`); each part gets the few things it needs.

Sending is custody: :meth:`Node.send` returns once the frame is committed to this
node's store; :meth:`Node.delivered` waits for its receipt; :meth:`Node.trace` says
where it is known to be.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import fcntl
import functools
import ipaddress
import json
import logging
import os
import random
import secrets
import time
import urllib.parse
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Iterator,
    Sequence,
)
from pathlib import Path
from typing import Any, Final, overload

import httpx
import trio

import crypto
import mesh
from node import _fabric
from node._api import API_PREFIX, LocalApi
from node._attach import RelayLink, RelayMode
from node._chirp import Chirp
from node._commit import RunBlocking
from node._dashboard import OVERVIEW_PATH, Dashboard
from node._datadir import DataDir, write_atomically
from node._errors import NodeError
from node._forwarder import FRAMES_PATH, FrameClient
from node._h1 import H1Client
from node._local import open_unix_listener
from node._mesh import STARTING, MeshConfig, MeshRuntime, NodeStatistics
from node._message import Message, Published, Sent
from node._metrics import METRICS_PATH, Metrics
from node._net import Network, TcpNetwork, make_transport
from node._objects import (
    CAP_URL_PREFIX,
    DEFAULT_CALL_TIMEOUT,
    OBJECTS_FILE,
    CallHandler,
    Exposed,
    Objects,
    load_objects,
)
from node._pubsub import DurableSubscription, Subscription
from node._relay import (
    ATTACH_PATH,
    PING_PATH,
    POLL_PREFIX,
    REPLY_PREFIX,
    RelayConfig,
    RelayService,
    check_presented,
)
from node._server import Handler, Request, Response, Server, ServerConfig
from node._stomp import STOMP_USERS, StompConfig, StompGateway, stomp_address
from node._storethread import StoreThread
from node._xmpp import XMPP_USERS, XmppConfig, XmppGateway, load_secret

__all__ = [
    "Message",
    "Node",
    "NodeConfig",
    "NodeStatistics",
    "RunBlocking",
    "Sent",
    "run_inline",
]

log = logging.getLogger("ptth.node")

ADDRESS_PATH: Final = "/ptth/v1/address"
_ADDRESS_LIFETIME_MS: Final = 30 * 24 * 3600 * 1000
#: How often expired frame ids leave the seen-set (seconds).
SWEEP_INTERVAL: Final = 600.0
#: The local API's Unix socket in the data directory (node/_local.py).
_API_SOCKET: Final = "api.sock"
#: Messages :meth:`Node.inbox_pages` reads from the store at a time.
_INBOX_PAGE: Final = 100
#: Limits of the servers of the API listeners (and of --metrics-listen): only this
#: machine's clients connect to them.
_LOCAL_SERVER: Final = ServerConfig(max_connections=64)


async def run_inline(function: Callable[[], Any]) -> Any:
    """A ``run_blocking`` that calls ``function`` in the trio thread (for simulations)."""
    return function()


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    """How a node runs. Every default is what `ptth run` uses."""

    listen: str = "127.0.0.1:8470"
    public_url: str | None = None
    #: The local API's (and the dashboard's) TCP listener: a loopback address only, port
    #: 0 for any free one (api.json names it); None for none (the Unix socket
    #: ``DIR/api.sock`` still serves the API where the platform has Unix sockets).
    api_listen: str | None = "127.0.0.1:0"
    #: Where ``/metrics`` is also served without a token, for a Prometheus server
    #: (any address; None: only on the API listener, with the token).
    metrics_listen: str | None = None
    name: str | None = None
    #: How long a frame lives (its exp - ts) unless the sender says otherwise.
    frame_ttl: float = 24 * 3600.0
    #: The most hops our frames may make (None: :meth:`frame_hops` picks, by routing).
    hops: int | None = None
    #: Timeout of one HTTP exchange with a peer.
    request_timeout: float = 30.0
    max_inbox_bytes: int = mesh.DEFAULT_MAX_INBOX_BYTES
    #: What one origin's frames may take of the inbox (None: max_inbox_bytes //
    #: mesh.INBOX_ORIGIN_SHARE), so one sender cannot fill it for all.
    max_inbox_bytes_per_origin: int | None = None
    #: What the store holds for next hops: total, per origin, per next hop, per neighbour.
    quotas: mesh.Quotas = dataclasses.field(default_factory=mesh.Quotas)
    #: How often this node announces itself to the mesh (s; jitter x0.75..1.25); routes
    #: lapse after three intervals without a fresh announce.
    announce_interval: float = 600.0
    #: How long the mesh keeps this node's subscriptions without a refresh (s); they
    #: are signed again every half lease while they live.
    lease: float = 3600.0
    #: Whose frames this node forwards: "neighbours" (peers, relays, attached nodes),
    #: "open" (anyone), "off" (nobody; frames for this node are still taken).
    forward_policy: str = "neighbours"
    #: Who may hand this node frames at all: "neighbours" (peers, relays, attached
    #: nodes; a stranger is refused 403 from its request's head) or "open" (any node
    #: that signs its requests; quotas per origin still bound what each one stores).
    admission: str = "neighbours"
    #: Whose frames reach the application: "anyone" (but blocked nodes) or
    #: "allow-list" (only nodes put on the allow-list with ``ptth allow``).
    inbox_policy: str = "anyone"
    #: Back-off between retries to a neighbour: first delay and cap (s; jitter x0.5..1.5).
    retry_initial: float = 0.2
    retry_max: float = 30.0
    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
    #: Relays to stay attached to (their address tokens), for a node behind NAT.
    relays: tuple[str, ...] = ()
    #: How to attach: "auto" (Upgrade, falling back to long-poll), "upgrade", "long-poll".
    relay_mode: str = "auto"
    #: Reversed connections kept to each relay.
    relay_pool: int = 2
    #: Serving as a relay for others: policy and limits.
    relay: RelayConfig = dataclasses.field(default_factory=RelayConfig)
    #: Where the STOMP gateway listens (``--stomp``; a loopback HOST:PORT unless
    #: ``stomp_config.allow_remote``); None: no STOMP.
    stomp: str | None = None
    #: The STOMP gateway's limits (node/_stomp.py).
    stomp_config: StompConfig = dataclasses.field(default_factory=StompConfig)
    #: The XMPP gateway (``--xmpp-component``, ``--xmpp-domain``; node/_xmpp.py) and
    #: the file holding its component secret (``--xmpp-secret-file``); None: no XMPP.
    xmpp: XmppConfig | None = None
    xmpp_secret_file: str | None = None
    #: What this node requires a capability for (``--require-cap``; everything off by
    #: default: mesh/_authority.py).
    requirements: mesh.Requirements = dataclasses.field(default_factory=mesh.Requirements)
    #: Capabilities this node presents where they apply (``--cap``): to a relay that
    #: requires one to attach or to store for others (the one naming that relay).
    caps: tuple[str, ...] = ()
    #: Whether the store waits for the disk at each commit (``mesh.Store(sync=...)``).
    #: False survives the process ending at any moment, not the machine: simulations.
    store_sync: bool = True
    #: The store's SQLite URI instead of ``store.sqlite3`` in the data directory (as
    #: ``sqlite3.connect(uri=True)``): simulations keep a node's store in memory,
    #: ``file:NAME?mode=memory&cache=shared``, held open across the node's restarts.
    store_uri: str | None = None
    #: Keep SQLite's memory for the store small (``mesh.Store(lean=...)``: fewer
    #: prepared statements, a small page cache and log, 1 KiB pages in a new store), at
    #: some cost in speed: for simulations of thousands of nodes in one process.
    store_lean: bool = False
    #: Build the spanning tree with the neighbours (``--tree``): ``crd`` offers and the
    #: DHT of coordinates (docs/routing-at-scale.md); a frame for a node no route is
    #: known to goes greedily by its coordinates.
    tree: bool = False
    #: With the tree: how many hops our announces go (``--announce-radius``; None: as
    #: far as ``hops``). Nodes farther off are found in the DHT and reached greedily.
    announce_radius: int | None = None

    @property
    def frame_hops(self) -> int:
        """The most hops our frames may make: ``hops``, else 16, or 48 with the tree.

        Greedy paths over the tree are longer than the shortest: between two deep
        nodes of a 300-node mesh they are 13 to 16 hops already, and a detour round a
        node that moved or restarted passes 16; at 1,000 nodes, with churn, a few
        copies needed 33 and 34 (docs/routing-at-scale.md). A frame that does loop is
        still dropped, after 48.
        """
        if self.hops is not None:
            return self.hops
        return 48 if self.tree else 16

    def router_config(self) -> mesh.RouterConfig:
        interval_ms = int(self.announce_interval * 1000)
        try:
            policy = mesh.ForwardPolicy(self.forward_policy)
        except ValueError:
            choices = ", ".join(p.value for p in mesh.ForwardPolicy)
            raise NodeError(
                f"forward policy {self.forward_policy!r} is not one of {choices}"
            ) from None
        self.policy()  # a bad admission or inbox policy fails here too
        if self.announce_radius is not None:
            if not self.tree:
                raise NodeError(
                    "an announce radius needs the tree (--tree): nodes beyond it are "
                    "reached by their coordinates"
                )
            if not 1 <= self.announce_radius <= self.frame_hops:
                raise NodeError(
                    f"announce radius {self.announce_radius} is not within "
                    f"1..{self.frame_hops} hops"
                )
        return mesh.RouterConfig(
            announce_interval_ms=interval_ms,
            route_ttl_ms=3 * interval_ms,
            forward_policy=policy,
            tree=self.tree,
            # Behind NAT (attached to relays) or forwarding for nobody: a leaf.
            tree_root=not self.relays and policy is not mesh.ForwardPolicy.OFF,
            tree_interval_ms=interval_ms,
            tree_lifetime_ms=3 * interval_ms,
            announce_radius=self.announce_radius,
        )

    def policy(self) -> mesh.Policy:
        """The admission policy these settings ask for (with empty lists)."""
        try:
            admission = mesh.Admission(self.admission)
        except ValueError:
            choices = ", ".join(a.value for a in mesh.Admission)
            raise NodeError(f"admission {self.admission!r} is not one of {choices}") from None
        try:
            inbox = mesh.InboxPolicy(self.inbox_policy)
        except ValueError:
            choices = ", ".join(p.value for p in mesh.InboxPolicy)
            raise NodeError(f"inbox policy {self.inbox_policy!r} is not one of {choices}") from None
        return mesh.Policy(admission, inbox)


def _parse_caps(tokens: Sequence[str]) -> list[crypto.Capability]:
    """The ``--cap`` tokens, opened (their chains verified). Raises :class:`NodeError`."""
    caps = []
    for token in tokens:
        try:
            caps.append(crypto.parse_capability(token))
        except crypto.CryptoError as exc:
            raise NodeError(f"--cap {token[:24]}...: {exc}") from exc
    return caps


def _capability(cap: crypto.Capability | str | None) -> crypto.Capability | None:
    return crypto.parse_capability(cap) if isinstance(cap, str) else cap


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


def _parse_listen(listen: str, option: str = "--listen") -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise NodeError(f"{option} {listen!r} is not HOST:PORT (e.g. 127.0.0.1:8470)")
    return host.strip("[]"), int(port_text)


def _parse_api_listen(listen: str) -> tuple[str, int]:
    """``--api-listen``: HOST:PORT with a loopback HOST, since the local API (and the
    dashboard it serves) must never face the network."""
    host, port = _parse_listen(listen, "--api-listen")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host.lower() == "localhost"
    if not loopback:
        raise NodeError(
            f"--api-listen {listen!r} is not a loopback address: the local API never "
            "faces the network (use 127.0.0.1:PORT or [::1]:PORT; --metrics-listen "
            "serves /metrics to a Prometheus server elsewhere)"
        )
    return host, port


class Node:
    """A running node. Make one with :meth:`Node.open`."""

    def __init__(
        self,
        data: DataDir,
        identity: crypto.Identity,
        store: mesh.Store,
        config: NodeConfig,
        network: Network,
        clock: Callable[[], int],
        rng: random.Random,
        run_blocking: RunBlocking,
        new_id: Callable[[], bytes],
        book: mesh.CapabilityBook | None = None,
        run_store: RunBlocking | None = None,
    ) -> None:
        self.data = data
        self.identity = identity
        self.node_id = identity.node_id
        self.store = store
        self.config = config
        self.network = network
        self.clock = clock
        self.rng = rng
        self.run_blocking = run_blocking
        #: Runs the store's calls: the node's StoreThread (default: run_blocking).
        self.run_store = run_store or run_blocking
        self.endpoints: tuple[str, ...] = ()
        self.address: crypto.SignedAddress | None = None
        self.api_token = secrets.token_urlsafe(32)
        self.api_url: str | None = None
        #: The Unix socket serving the local API to this machine's user (None: none).
        self.api_socket: Path | None = None
        self.replay_guard = _fabric.ReplayGuard()
        self._client: httpx.AsyncClient | None = None
        self._sent_urls: dict[str, str] = {}  # url: as the clients send it (signed)
        self._extra_routes: list[tuple[str, Handler]] = []
        self.server: Server | None = None
        #: The toy Twitter: post, follow, timeline (a thin layer over pub/sub).
        self.chirp = Chirp(self)
        self.mesh = MeshRuntime(
            identity=identity,
            store=store,
            config=MeshConfig(
                hops=config.frame_hops,
                frame_ttl=config.frame_ttl,
                announce_interval=config.announce_interval,
                router=config.router_config(),
                lease=config.lease,
                requirements=config.requirements,
            ),
            clock=clock,
            rng=rng,
            new_id=new_id,
            run_blocking=run_blocking,
            run_store=run_store,
            own_address=self._own_address,
            peer_addresses=lambda: self.data.peers,
            book=book,
            caps=_parse_caps(config.caps),
        )
        self.mesh.router.links.backoff_initial_ms = int(config.retry_initial * 1000)
        self.mesh.router.links.backoff_max_ms = int(config.retry_max * 1000)
        self.api = LocalApi(self)
        #: The web pages and their live overview (served by the API listeners).
        self.dashboard = Dashboard(self, self.api.refusal)
        self.mesh.on_intake = self.dashboard.received
        #: Serves the API listeners (set while running).
        self.api_server: Server | None = None
        #: Where --metrics-listen serves /metrics (set while running, if it does).
        self.metrics_url: str | None = None
        #: The STOMP gateway and its HOST:PORT (set while running, with --stomp).
        self.stomp: StompGateway | None = None
        self.stomp_address: str | None = None
        #: The XMPP gateway (set while running, with --xmpp-component).
        self.xmpp: XmppGateway | None = None
        # Always served, also with policy "off": an attach then gets the relay's 403
        # saying so (a node told "404 no such resource" cannot tell why).
        self.relay_service = RelayService(
            self,
            config.relay,
            on_attachment=self._attachment_changed,
            authority=self.mesh.router.authority,
        )
        for prefix in (ATTACH_PATH, POLL_PREFIX, REPLY_PREFIX, "/n/"):
            self.add_route(prefix, self.relay_service.handle)
        #: The objects this node exposes, and its calls on others' (node/_objects.py);
        #: capability URLs (``/c/<secret>``) reach them on the public server.
        self.objects = Objects(self)
        self.add_route(CAP_URL_PREFIX, self.objects.handle_url)
        self.links: list[RelayLink] = []
        self._nursery: trio.Nursery | None = None
        #: Prometheus metrics (``GET /metrics``); the public server reports each
        #: request it answers to ``metrics.observe_request``.
        self.metrics = Metrics(self)

    @property
    def statistics(self) -> NodeStatistics:
        """Counters since start."""
        return self.mesh.statistics

    # -- opening and closing --------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        data_dir: Path | str,
        *,
        config: NodeConfig | None = None,
        network: Network | None = None,
        clock: Callable[[], int] | None = None,
        rng: random.Random | None = None,
        run_blocking: RunBlocking | None = None,
        frame_client: Callable[[FrameClient], FrameClient] | None = None,
    ) -> AsyncIterator[Node]:
        """Run a node for ``data_dir`` for the duration of the block.

        ``network`` is where it listens and dials (default: real TCP); ``clock`` returns
        wall time in ms (default: the system clock; simulations pass virtual time);
        ``rng`` drives retry jitter (default: seeded from the OS) and, when given, frame
        ids too (a simulation's seeded RNG; otherwise ids come from the OS CSPRNG);
        ``run_blocking`` runs the store's blocking calls (default: in a worker thread,
        ``trio.to_thread.run_sync``; a simulation in virtual time runs them inline, so
        the clock does not jump while a thread works). ``frame_client``, given the
        node's :class:`FrameClient` (frames POSTs to neighbours over HTTP), returns the
        one its forwarders use instead (simulations/_engine.py hands frames to the
        other node directly; default: that one, unchanged).

        Raises :class:`NodeError` if another node runs for ``data_dir``, the listen
        address is taken, or the identity cannot be loaded; :class:`mesh.MeshError`
        if the store cannot be opened.
        """
        config = config or NodeConfig()
        config.router_config()  # a bad forward policy fails before anything starts
        _parse_listen(config.listen)  # and so does a bad listen address
        if config.api_listen is not None:
            _parse_api_listen(config.api_listen)
        if config.metrics_listen is not None:
            _parse_listen(config.metrics_listen, "--metrics-listen")
        network = network or TcpNetwork()
        blocking: RunBlocking = run_blocking or trio.to_thread.run_sync
        data = DataDir(Path(data_dir))
        if config.stomp is not None:  # a bad --stomp fails before anything starts
            stomp_address(config.stomp, config.stomp_config, data.path / STOMP_USERS)
        xmpp_secret = ""
        if config.xmpp is not None:  # and so does a missing or empty secret
            if config.xmpp_secret_file is None:
                raise NodeError("--xmpp-component needs --xmpp-secret-file FILE")
            xmpp_secret = load_secret(Path(config.xmpp_secret_file))
        _parse_caps(config.caps)  # a bad --cap fails before anything starts
        identity, _ = await blocking(data.init)
        policy = config.policy()
        try:
            policy.with_lists(await blocking(data.policy_lists))
        except crypto.Malformed as exc:
            raise NodeError(f"{data.path / 'policy.json'}: {exc}; fix or remove it") from exc
        saved_objects = await blocking(functools.partial(load_objects, data.path / OBJECTS_FILE))
        new_id: Callable[[], bytes] = (
            functools.partial(rng.randbytes, crypto.FRAME_ID_SIZE)
            if rng is not None
            else functools.partial(secrets.token_bytes, crypto.FRAME_ID_SIZE)
        )
        store_path = config.store_uri or data.path / "store.sqlite3"
        uri = config.store_uri is not None
        with _exclusive_lock(data.path):
            store = await blocking(
                lambda: mesh.Store(
                    store_path,
                    max_inbox_bytes=config.max_inbox_bytes,
                    max_inbox_bytes_per_origin=config.max_inbox_bytes_per_origin,
                    quotas=config.quotas,
                    sync=config.store_sync,
                    uri=uri,
                    lean=config.store_lean,
                )
            )
            try:
                book = await blocking(
                    lambda: mesh.CapabilityBook(store_path, uri=uri, lean=config.store_lean)
                )
            except BaseException:
                store.close()
                raise
            # The store's calls go to a thread of its own (cheaper than trio's); given a
            # run_blocking (a simulation's inline one), they go where it says.
            store_thread = StoreThread() if run_blocking is None else None
            try:
                node = cls(
                    data,
                    identity,
                    store,
                    config,
                    network,
                    clock or _wall_clock_ms,
                    rng or random.Random(secrets.randbits(64)),
                    blocking,
                    new_id,
                    book,
                    run_store=None if store_thread is None else store_thread.run,
                )
                node.mesh.router.policy = policy
                node.objects.saved = saved_objects
                if config.xmpp is not None:
                    node.xmpp = XmppGateway(
                        node, config.xmpp, xmpp_secret, users_file=data.path / XMPP_USERS
                    )
                async with node._run(frame_client):
                    yield node
            finally:
                if store_thread is not None:
                    store_thread.close()
                book.close()
                store.close()

    @contextlib.asynccontextmanager
    async def _run(
        self, wrap_frames: Callable[[FrameClient], FrameClient] | None = None
    ) -> AsyncIterator[None]:
        host, port = _parse_listen(self.config.listen)
        listeners = await self._listen(host, port, "--listen", self.config.listen)
        _, bound_port = self.network.listener_address(listeners[0])
        local_url = f"http://{_url_host(host)}:{bound_port}"
        relays = self._relay_addresses()
        self.links = [
            RelayLink(
                self,
                relay,
                mode=RelayMode(self.config.relay_mode),
                pool=self.config.relay_pool,
                wallet=self.mesh.wallet,
            )
            for relay in relays
        ]
        # Relay URLs first: a sender tries endpoints in order, and a NATed node's own
        # address is not reachable from outside.
        self.endpoints = (
            *(link.public_url for link in self.links),
            self.config.public_url or local_url,
        )
        await self.run_blocking(self._refresh_address)
        public = self.config.public_url or ""
        scheme = "https" if public.startswith("https://") else "http"
        observe = self.metrics.observe_request
        self.server = Server(
            self._handle, self.config.server, scheme=scheme, admit=self._admit, observe=observe
        )
        # The local API has listeners of its own that never face the network: a Unix
        # socket in the data directory (real TCP only: a simulated node has none) and a
        # loopback TCP port. Strangers cannot reach it, nor take its connection slots.
        api_listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
        if isinstance(self.network, TcpNetwork):
            unix = await open_unix_listener(self.data.path / _API_SOCKET)
            if unix is not None:
                api_listeners.append(unix)
                self.api_socket = self.data.path / _API_SOCKET
        if self.config.api_listen is not None:
            api_host, api_port = _parse_api_listen(self.config.api_listen)
            tcp = await self._listen(api_host, api_port, "--api-listen", self.config.api_listen)
            _, bound = self.network.listener_address(tcp[0])
            self.api_url = f"http://{_url_host(api_host)}:{bound}{API_PREFIX.rstrip('/')}"
            api_listeners.extend(tcp)
        self.api_server = Server(self._handle_api, _LOCAL_SERVER, observe=observe)
        metrics_listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
        if self.config.metrics_listen is not None:
            m_host, m_port = _parse_listen(self.config.metrics_listen, "--metrics-listen")
            metrics_listeners = await self._listen(
                m_host, m_port, "--metrics-listen", self.config.metrics_listen
            )
            _, bound = self.network.listener_address(metrics_listeners[0])
            self.metrics_url = f"http://{_url_host(m_host)}:{bound}{METRICS_PATH}"
        metrics_server = Server(self._handle_metrics, _LOCAL_SERVER)
        stomp_listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
        if self.config.stomp is not None:
            users = self.data.path / STOMP_USERS
            stomp_config = self.config.stomp_config
            s_host, s_port, remote = stomp_address(self.config.stomp, stomp_config, users)
            stomp_listeners = await self._listen(s_host, s_port, "--stomp", self.config.stomp)
            _, bound = self.network.listener_address(stomp_listeners[0])
            self.stomp_address = f"{_url_host(s_host)}:{bound}"
            self.stomp = StompGateway(self, stomp_config, users=users, remote=remote)
        servers = (self.server, self.api_server, metrics_server)
        transport = make_transport(self.network)
        timeout = httpx.Timeout(
            self.config.request_timeout, connect=min(10.0, self.config.request_timeout)
        )
        frames_http = H1Client(
            self.network.client_backend(),
            connect_timeout=min(10.0, self.config.request_timeout),
            read_timeout=self.config.request_timeout,
            write_timeout=self.config.request_timeout,
            pool_timeout=self.config.request_timeout,
        )
        async with (
            httpx.AsyncClient(transport=transport, timeout=timeout) as client,
            frames_http,
        ):
            self._client = client
            frame_client = FrameClient(
                frames_http,
                self.sign_request,
                self.clock,
                self._count_request,
                wallet=self.mesh.wallet,
            )
            if wrap_frames is not None:
                frame_client = wrap_frames(frame_client)
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    # Objects first: calls may come with the first request served.
                    await nursery.start(self.objects.serve)
                    await nursery.start(self.server.serve, listeners)
                    if api_listeners:
                        await nursery.start(self.api_server.serve, api_listeners)
                    if metrics_listeners:
                        await nursery.start(metrics_server.serve, metrics_listeners)
                    if self.stomp is not None:
                        await nursery.start(self.stomp.serve, stomp_listeners)
                    if self.xmpp is not None:
                        await nursery.start(self.xmpp.run)
                    background = trio.CancelScope()
                    await nursery.start(self._run_background, background, frame_client, relays)
                    await self.run_blocking(self._write_api_files)
                    try:
                        yield
                    finally:
                        with contextlib.suppress(FileNotFoundError):
                            (self.data.path / "api.json").unlink()
                        # Forwarders, attachments and the sweeper are not work in flight
                        # for anyone: they end first. What they held stays in the store.
                        background.cancel()
                        self.relay_service.shutdown()
                        self.objects.shutdown()  # handlers running finish (in the grace)
                        if self.stomp is not None:
                            self.stomp.shutdown()
                        if self.xmpp is not None:
                            self.xmpp.shutdown()
                        for server in servers:
                            server.shutdown()
                        nursery.cancel_scope.deadline = trio.current_time() + (
                            self.config.server.shutdown_grace + 1
                        )
            finally:
                # Stopped, also when cancelled: callers outside (send(), delivered()
                # waiting for a receipt) are told so rather than left waiting.
                self._nursery = None
                self.mesh.release_waiters()
                self.mesh.subscriptions.close_all()

    async def _listen(
        self, host: str, port: int, option: str, text: str
    ) -> list[trio.abc.Listener[trio.abc.Stream]]:
        try:
            return await self.network.open_listeners(host, port)
        except OSError as exc:
            raise NodeError(f"cannot listen on {text} ({option}): {exc.strerror or exc}") from exc

    def _count_request(self) -> None:
        self.mesh.statistics.send_requests += 1

    async def _sweep_loop(self) -> None:
        """Forget seen ids of long-expired frames, now and then."""
        while True:
            await trio.sleep(SWEEP_INTERVAL)
            try:
                swept = await self.run_store(lambda: self.store.sweep(now=self.clock()))
            except mesh.MeshError as exc:
                log.warning("sweeping the store failed: %s", exc)
            else:
                if swept:
                    log.info("forgot %d expired frame ids", swept)

    async def _run_background(
        self,
        scope: trio.CancelScope,
        frame_client: FrameClient,
        relays: Sequence[crypto.SignedAddress],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The node's own upkeep (mesh, relay attachments, the sweeper), in ``scope``."""
        with scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.mesh.serve, frame_client, relays)
                nursery.start_soon(self._sweep_loop)
                if self.api_url is not None or self.api_socket is not None:
                    # The dashboard's throughput history, for a node someone can look
                    # at (a simulated node has no API listener: no wake-ups for it).
                    nursery.start_soon(self.dashboard.sample)
                await nursery.start(self.relay_service.watch)
                for link in self.links:
                    await nursery.start(link.run)
                    nursery.start_soon(self._greet_on_attach, link)
                task_status.started()

    async def _greet_on_attach(self, link: RelayLink) -> None:
        """Greet the relay each time this node (re)attaches to it: only then does the
        relay count it as a neighbour and take its announce."""
        while True:
            await link.wait_connected(1)
            await self.mesh.greet(link.relay.node)
            await link.wait_detached()

    def _attachment_changed(self, node: crypto.NodeId, attached: bool) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self.mesh.attachment_changed, node, attached)

    def _relay_addresses(self) -> list[crypto.SignedAddress]:
        addresses = []
        for token in self.config.relays:
            try:
                address = crypto.parse_token(token, now=self.clock())
            except crypto.CryptoError as exc:
                raise NodeError(f"bad --relay token: {exc}") from exc
            if address.node == self.node_id:
                raise NodeError("--relay names this node itself")
            addresses.append(address)
        return addresses

    def sign_request(self, method: str, url: str, body: bytes) -> list[tuple[str, str]]:
        """RFC 9421 headers for a request from this node, with a fresh nonce."""
        nonce = base64.urlsafe_b64encode(self.rng.randbytes(12)).decode("ascii")
        # Sign the URL as the clients send it (the host lower case, a default port left
        # out), since the receiver checks the signature against the request it got.
        target = self._sent_urls.get(url)
        if target is None:
            if len(self._sent_urls) >= 1024:
                self._sent_urls.clear()
            target = self._sent_urls[url] = str(httpx.URL(url))
        return _fabric.sign_request(
            self.identity, method, target, body, now=self.clock() // 1000, nonce=nonce
        )

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The node's HTTP client (one per node, pooled)."""
        if self._client is None:
            raise NodeError("node is not running")
        return self._client

    def _own_address(self) -> crypto.SignedAddress:
        assert self.address is not None  # signed before anything runs
        return self.address

    def _refresh_address(self) -> None:
        """Sign a new address record if the endpoints changed or the old one is half gone."""
        now = self.clock()
        held = self.data.own_address()
        if held is not None:
            record = held.record
            fresh = record.exp - now > _ADDRESS_LIFETIME_MS // 2
            if record.endpoints == self.endpoints and record.name == self.config.name and fresh:
                self.address = held
                return
        self.address = self.data.sign_address(
            self.identity, self.endpoints, exp=now + _ADDRESS_LIFETIME_MS, name=self.config.name
        )
        log.info(
            "signed address record seq %d: %s", self.address.record.seq, " ".join(self.endpoints)
        )

    def _write_api_files(self) -> None:
        token_path = self.data.path / "api.token"
        write_atomically(token_path, self.api_token.encode("ascii"), mode=0o600)
        info: dict[str, Any] = {"pid": os.getpid(), "node": self.node_id.text}
        if self.api_url is not None:
            info["url"] = self.api_url
        if self.api_socket is not None:
            info["socket"] = os.fspath(self.api_socket)
        if self.metrics_url is not None:
            info["metrics"] = self.metrics_url
        if self.stomp_address is not None:
            info["stomp"] = self.stomp_address
        write_atomically(self.data.path / "api.json", (json.dumps(info) + "\n").encode("utf-8"))

    def address_token(self) -> str:
        """This node's current address token (``ptth:...``)."""
        return self._own_address().token

    def add_route(self, prefix: str, handler: Handler) -> None:
        """Serve requests whose path starts with ``prefix`` with ``handler``."""
        self._extra_routes.append((prefix, handler))

    # -- the local API's listeners ---------------------------------------------------

    async def _handle_api(self, request: Request) -> Response:
        """The API listeners: ``/api/v1/...``, ``/metrics`` (with the API's token), and
        the dashboard's pages."""
        path = request.path
        if path == OVERVIEW_PATH:
            return await self.dashboard.overview(request)
        if path.startswith(API_PREFIX):
            return await self.api.handle(request)
        if path == METRICS_PATH:
            refused = self.api.refusal(request, urllib.parse.parse_qs(request.query))
            if refused is not None:
                return refused
            return await self.metrics.handle(request)
        return await self.dashboard.handle(request)

    async def _handle_metrics(self, request: Request) -> Response:
        """``--metrics-listen``: ``/metrics`` only, without a token."""
        if request.path == METRICS_PATH:
            return await self.metrics.handle(request)
        return Response.text(404, f"no such resource: {request.path} (only {METRICS_PATH})")

    # -- receiving ------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        path = request.path
        if path == PING_PATH:
            return Response(204)
        if path == FRAMES_PATH:
            if request.method != "POST":
                return Response.text(405, "use POST to deliver frames", [("allow", "POST")])
            return await self._receive_frames(request)
        if path == ADDRESS_PATH:
            if request.method != "GET":
                return Response.text(405, "use GET", [("allow", "GET")])
            return Response(
                200,
                [("content-type", 'application/cose; cose-type="cose-sign1"')],
                self._own_address().envelope,
            )
        for prefix, handler in self._extra_routes:
            if path.startswith(prefix):
                return await handler(request)
        if path.startswith(API_PREFIX):
            return Response.text(
                404,
                "the local API is not served on the node's public address: use it on the "
                "node's machine, through the API listener that api.json in its data "
                "directory names",
            )
        return Response.text(404, f"no such resource: {path}")

    def _refuse(self, status: int, words: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
        self.mesh.statistics.requests_refused += 1
        log.info("refused a request: %d %s", status, words)
        return Response.text(status, words, headers)

    async def _admit(self, request: Request) -> Response | None:
        """Decide a frames POST from its head, before its body is read: who signed it,
        whether that node may hand us frames, and in what form. Bodies are read only
        for requests that pass (the server's body budget bounds those)."""
        if request.path != FRAMES_PATH or request.method != "POST":
            return None
        server = self.server
        if server is not None and server._closing.is_set():
            return self._refuse(503, "node is shutting down", [("retry-after", "5")])
        if not self.mesh.ready:
            return self._refuse(503, STARTING, [("retry-after", "1")])
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != mesh.CONTENT_TYPE_FRAMES:
            return self._refuse(
                415,
                f"frames must be sent as {mesh.CONTENT_TYPE_FRAMES}, "
                f"not {content_type or 'nothing'!r}",
            )
        try:
            sender = _fabric.verify_request_head(
                request.method,
                request.url,
                request.headers,
                now=self.clock() // 1000,
                guard=self.replay_guard,
            )
        except crypto.CryptoError as exc:
            return self._refuse(401, f"request not authenticated: {exc}")
        refusal = self.mesh.router.policy.sender_refusal(
            sender, neighbour=sender in self.mesh.router.links
        )
        if refusal is not None:
            return self._refuse(403, refusal)
        request.notes["sender"] = sender
        if self.mesh.router.authority.requirements.store:
            request.notes["custody"] = self._custody(request, sender)
        return None

    def _custody(self, request: Request, sender: crypto.NodeId) -> mesh.Custody:
        """The terms on which this node, requiring a ``store`` capability, holds
        ``sender``'s frames for others: those of the capability it presents
        (``PTTH-Capability``), or none, with why.

        Frame by frame, not the whole request (a 403): its frames for this node, and
        its announces, subscriptions and revocations, are taken all the same, and the
        origin of each frame refused hears why in a drop receipt. A frames request is
        a use of the capability (named by its body's digest: a retry is not another).
        """
        digest = request.header("content-digest")
        try:
            verified = check_presented(
                self.mesh.router.authority,
                request.headers,
                now=self.clock(),
                operation=crypto.Operation.STORE,
                presenter=sender,
                use=None if digest is None else digest.encode(),
                what="storing frames for others on this relay",
            )
        except crypto.CapabilityRefused as exc:
            return mesh.Custody(refused=str(exc))
        return mesh.Custody(quota=verified.quota)

    async def _receive_frames(self, request: Request) -> Response:
        sender = request.notes.get("sender")
        if not isinstance(sender, crypto.NodeId):
            # Not admitted from its head (a server without the hook): decide it now.
            refused = await self._admit(request)
            if refused is not None:
                return refused
            sender = request.notes["sender"]
            assert isinstance(sender, crypto.NodeId)
        try:
            _fabric.verify_request_body(request.headers, request.body)
        except crypto.CryptoError as exc:
            return self._refuse(401, f"request not authenticated: {exc}")
        now = self.clock()
        try:
            items = mesh.decode_frames(request.body)
        except crypto.TooLarge as exc:
            return self._refuse(413, str(exc))
        except crypto.Malformed as exc:
            return self._refuse(400, f"body is not a CBOR sequence of frames: {exc}")
        custody = request.notes.get("custody")
        try:
            if isinstance(custody, mesh.Custody):
                with self.store.custody(sender, custody):
                    results = await self.mesh.receive(items, sender, now)
            else:
                results = await self.mesh.receive(items, sender, now)
        except mesh.StoreFull as exc:
            return self._refuse(429, str(exc), [("retry-after", "30")])
        except mesh.MeshError as exc:
            log.error("store failed: %s", exc)
            return self._refuse(503, f"store unavailable: {exc}", [("retry-after", "10")])
        body = mesh.encode_results(results)
        digest = request.header("content-digest") or ""
        headers = [
            ("content-type", mesh.CONTENT_TYPE_RESULTS),
            *_fabric.sign_response(self.identity, 200, body, digest, now=self.clock() // 1000),
        ]
        outcomes = collections.Counter(result.outcome.value for result in results)
        log.debug(
            "took %d frames from %s (%s)",
            len(items),
            sender.short,
            ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items())),
        )
        return Response(200, headers, body)

    # -- the inbox ------------------------------------------------------------------

    async def inbox(self, *, follow: bool = True) -> AsyncGenerator[Message, None]:
        """Yield received messages not yet acknowledged, oldest first.

        With ``follow`` it then waits for more; without, it ends when the inbox is
        exhausted. A message not acknowledged is offered again by the next ``inbox()``
        (at-least-once), but never stored twice (each (origin, frame id) is taken once).
        """
        async with contextlib.aclosing(self.inbox_pages(follow=follow)) as pages:
            async for page in pages:
                for message in page:
                    yield message

    async def inbox_pages(self, *, follow: bool = True) -> AsyncGenerator[list[Message], None]:
        """:meth:`inbox`, a page at a time (up to 100 messages, as the store reads
        them): for a consumer that hands them on together (the local API writes a page
        of events at once)."""
        after = 0
        read = functools.partial(self.store.pending, limit=_INBOX_PAGE)
        while True:
            changed = self.mesh.inbox_changed
            entries = await self.run_store(functools.partial(read, after=after))
            if entries:
                after = entries[-1].seq
                yield [
                    Message(
                        id=entry.id,
                        src=entry.src,
                        body=entry.body,
                        ct=entry.ct,
                        ts=entry.ts,
                        received=entry.received,
                        hops=entry.hops,
                        seq=entry.seq,
                        _ack=functools.partial(self.ack, [(entry.src, entry.id)]),
                    )
                    for entry in entries
                ]
                if len(entries) == _INBOX_PAGE or changed.is_set():
                    continue  # more to read, or more came
                # That was all there was, and nothing came since: no need to look again.
            if not follow:
                return
            await changed.wait()

    async def ack(self, keys: Sequence[tuple[crypto.NodeId, bytes] | bytes]) -> int:
        """Acknowledge messages by (origin, id) (or bare id); return how many were
        still in the inbox."""
        acked: int = await self.run_store(lambda: self.store.ack(keys))
        return acked

    # -- sending --------------------------------------------------------------------

    def new_frame(
        self,
        dst: crypto.NodeId,
        body: bytes,
        *,
        ct: str | None = None,
        ttl: float | None = None,
        receipt: bool = False,
        cap: crypto.Capability | str | None = None,
    ) -> crypto.Frame:
        """A ``msg`` frame from this node to ``dst`` (``receipt``: ask for a delivery
        receipt; ``cap``: the capability to present, by default the first one held
        that allows sending to ``dst``'s inbox). Raises :class:`crypto.Malformed` for a
        body over :data:`crypto.MAX_BODY_SIZE`, a bad content type or a bad token."""
        return self.mesh.new_frame(dst, body, ct=ct, ttl=ttl, receipt=receipt, cap=_capability(cap))

    async def send(
        self,
        dst: crypto.NodeId | str,
        body: bytes,
        *,
        ct: str | None = None,
        ttl: float | None = None,
        receipt: bool = False,
        cap: crypto.Capability | str | None = None,
    ) -> Sent:
        """Send ``body`` to node ``dst`` anywhere in the mesh; return once the frame is
        in this node's durable custody (committed to its store).

        The forwarders then carry it hop by hop; it is held here while no route to
        ``dst`` is known, until one appears or the frame expires (``ttl``, default the
        node's ``frame_ttl``). With ``receipt`` the destination sends a delivery
        receipt: wait for it with :meth:`delivered`.

        Raises :class:`crypto.Malformed` for a bad node id, a body over
        :data:`crypto.MAX_BODY_SIZE` or a bad content type; :class:`mesh.StoreFull` when
        the store's quota is reached (try later); :class:`NodeError` if the node is not
        running or ``dst`` is this node.
        """
        if isinstance(dst, str):
            dst = crypto.NodeId.parse(dst)
        frame = self.new_frame(dst, body, ct=ct, ttl=ttl, receipt=receipt, cap=cap)
        (sent,) = await self.send_sealed([(frame, frame.seal(self.identity))])
        return sent

    async def send_sealed(
        self,
        frames: Sequence[tuple[crypto.Frame, bytes]],
        *,
        idempotent: Callable[[list[Sent]], mesh.Idempotent] | None = None,
    ) -> list[Sent]:
        """Take custody of frames made with :meth:`new_frame` and sealed by this node, in
        one transaction (see :meth:`send`; ``idempotent`` as for :meth:`publish`)."""
        if self._nursery is None:
            raise NodeError("node is not running")

        def sent(hops: Sequence[crypto.NodeId | None]) -> list[Sent]:
            return [
                Sent(frame.id, frame.dst, hop)
                for (frame, _), hop in zip(frames, hops, strict=True)
                if frame.dst is not None
            ]

        hops = await self.mesh.send_frames(
            frames, idempotent=None if idempotent is None else (lambda h: idempotent(sent(h)))
        )
        self.dashboard.sent(frames)
        return sent(hops)

    # -- publish/subscribe --------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        body: bytes,
        *,
        ct: str | None = None,
        ttl: float | None = None,
        idempotent: Callable[[Published], mesh.Idempotent] | None = None,
        cap: crypto.Capability | str | None = None,
    ) -> Published:
        """Publish ``body`` to ``topic``; return once it is in this node's durable
        custody, with the neighbours it goes to (toward every subscriber whose pattern
        matches, as far as this node knows: none if nobody subscribed).

        Raises :class:`crypto.Malformed` for a bad topic, body or content type;
        :class:`NodeError` for a topic under another node's secure name (``~<id>``)
        without a capability from it, for a capability this node can tell fails, or
        when the node is not running; :class:`mesh.StoreFull` when a quota is reached.
        ``cap`` is the capability to present (a token or one opened); by default the
        first one held (:meth:`hold`, ``--cap``) that allows publishing on ``topic``.

        ``idempotent`` makes the call safe to repeat: given the answer, it returns the
        record (key, fingerprint, answer) to keep with the publication in one
        transaction; a call whose key was recorded before takes nothing and raises
        :class:`Replayed` with the first call's record.
        """
        if self._nursery is None:
            raise NodeError("node is not running")
        published = await self.mesh.publish(
            topic, body, ct=ct, ttl=ttl, idempotent=idempotent, cap=_capability(cap)
        )
        self.dashboard.sent_publication(published, body)
        return published

    @overload
    def subscribe(
        self, *patterns: str, name: None = None
    ) -> contextlib.AbstractAsyncContextManager[Subscription]: ...

    @overload
    def subscribe(
        self, *patterns: str, name: str
    ) -> contextlib.AbstractAsyncContextManager[DurableSubscription]: ...

    def subscribe(
        self, *patterns: str, name: str | None = None
    ) -> (
        contextlib.AbstractAsyncContextManager[Subscription]
        | contextlib.AbstractAsyncContextManager[DurableSubscription]
    ):
        """Subscribe to publications whose topic matches any of ``patterns`` (AMQP
        topic rules: ``*`` one word, ``#`` zero or more)::

            async with node.subscribe("news.#") as sub:
                async for publication in sub:
                    print(publication.topic, publication.body)

        Each publication is handed over once, however many of the patterns match.
        Leaving the block unsubscribes.

        With ``name`` the subscription is durable: it is kept in the store (its
        patterns replace those it had), stays in force when the block is left and
        after a restart, and what it matches waits for it until each publication is
        acknowledged (``await publication.ack()``); end it with :meth:`unsubscribe`.

        Raises :class:`crypto.Malformed` for a bad pattern or name and
        :class:`NodeError` when the node is not running.
        """
        if name is not None:
            return self._durable(name, patterns)
        return self._live(patterns)

    @contextlib.asynccontextmanager
    async def _live(self, patterns: Sequence[str]) -> AsyncIterator[Subscription]:
        if self._nursery is None:
            raise NodeError("node is not running")
        subscription = await self.mesh.subscriptions.open(patterns)
        try:
            yield subscription
        finally:
            with trio.CancelScope(shield=True):
                await self.mesh.subscriptions.close(subscription)

    @contextlib.asynccontextmanager
    async def _durable(
        self, name: str, patterns: Sequence[str]
    ) -> AsyncIterator[DurableSubscription]:
        if self._nursery is None:
            raise NodeError("node is not running")
        kept = await self.mesh.keep_subscription(name, patterns)
        store = self.store

        async def fetch(after: int) -> list[mesh.InboxEntry]:
            entries: list[mesh.InboxEntry] = await self.run_store(
                lambda: store.subscription_pending(name, after=after)
            )
            return entries

        async def ack(seq: int) -> object:
            return await self.run_store(lambda: store.ack_subscription(name, [seq]))

        yield DurableSubscription(
            name, kept, fetch=fetch, ack=ack, changed=lambda: self.mesh.inbox_changed
        )

    # -- objects --------------------------------------------------------------------------

    def expose(self, name: str, handler: CallHandler, *, open: bool = False) -> Exposed:
        """Expose object ``name``: each call on it runs ``handler`` with a
        :class:`~node._objects.CallRequest`; what it returns (an
        :class:`~node._objects.Answer`, or bytes) is the reply, and a
        :class:`CallFailed` it raises an error reply. Only holders of a ``call``
        capability this node issued on ``name`` may call (``open``: anyone); this node
        always may. Leave a ``with`` block on the handle (or ``close()`` it) to
        withdraw it; ``emit()`` publishes its events on ``~<node-id>.obj.<name>.<event>``.

        Raises :class:`crypto.Malformed` for a name that is not one topic word of up to
        64 characters, :class:`NodeError` if the name is taken.
        """
        return self.objects.expose(name, handler, open=open)

    async def call(
        self,
        target: crypto.NodeId | str,
        name: str,
        operation: str,
        body: bytes = b"",
        *,
        cap: crypto.Capability | str | bytes | None = None,
        timeout: float = DEFAULT_CALL_TIMEOUT,  # noqa: ASYNC109 - also the call's lifetime
        ct: str | None = None,
    ) -> mesh.Reply:
        """Call ``operation`` on object ``name`` of node ``target`` (any node of the
        mesh, this one too) and return its reply (2xx). A request/response over the
        mesh: the call and its reply are signed frames in custody hop by hop.

        Raises :class:`CallFailed` for any other status (``status``, ``why``) and
        :class:`CallTimeout` when no reply came within ``timeout`` seconds; see
        :meth:`Objects.call <node._objects.Objects.call>` for the rest.
        """
        if isinstance(target, str):
            target = crypto.NodeId.parse(target)
        return await self.objects.call(
            target, name, operation, body, cap=cap, timeout=timeout, ct=ct
        )

    # -- capabilities -------------------------------------------------------------------

    def hold(self, capability: crypto.Capability | str) -> crypto.Capability:
        """Keep ``capability`` to present where it applies (as ``--cap`` does): on
        publications, subscriptions and messages it allows, and to relays. Raises
        :class:`crypto.CryptoError` for a bad token. Held in memory (for this run)."""
        opened = _capability(capability)
        assert opened is not None
        self.mesh.wallet.add(opened)
        if crypto.Operation.SUBSCRIBE in opened.ops and self._nursery is not None:
            # Subscriptions a node on the way refused are stated again, with it.
            self._nursery.start_soon(self.mesh.subscriptions.refresh)
        return opened

    async def revoke(self, capability: crypto.Capability | bytes) -> crypto.Revocation:
        """Revoke a capability this node issued (or names this node its revoker), by
        id or whole: the revocation is kept (it survives restarts) and flooded to the
        mesh; every node that learns of it refuses the capability and everything
        delegated from it. Raises :class:`NodeError` when not running."""
        if self._nursery is None:
            raise NodeError("node is not running")
        cap_id = capability.id if isinstance(capability, crypto.Capability) else capability
        revocation = crypto.Revocation.sign(self.identity, cap_id, now=self.clock())
        await self.mesh.revoke(revocation)
        return revocation

    async def add_revocation(self, revocation: crypto.Revocation) -> bool:
        """Take a revocation signed elsewhere (``ptth cap revoke`` while the node runs)
        and flood it; False if it was known already."""
        if self._nursery is None:
            raise NodeError("node is not running")
        return await self.mesh.revoke(revocation)

    def capabilities(self) -> dict[str, Any]:
        """What this node requires, the capabilities it holds, the revocations it knows."""
        authority = self.mesh.router.authority
        return {
            "requires": authority.requirements.describe(),
            "held": [
                {"id": cap.id_text, "ops": sorted(cap.ops), "on": cap.target.describe()}
                for cap in self.mesh.wallet
            ],
            "revocations": len(authority.revoked),
        }

    def revoked(self, capability: crypto.Capability) -> crypto.Revocation | None:
        """The revocation this node knows of ``capability`` or a link above it."""
        for link in capability.chain:
            revocation = self.mesh.router.authority.revoked.revoking(link)
            if revocation is not None:
                return revocation
        return None

    async def unsubscribe(self, name: str) -> bool:
        """End named subscription ``name``: withdrawn from the mesh, and what was pending
        for it dropped. Returns whether there was one."""
        if self._nursery is None:
            raise NodeError("node is not running")
        return await self.mesh.drop_subscription(name)

    async def subscriptions(self) -> list[mesh.SavedSubscription]:
        """This node's named subscriptions."""
        saved: list[mesh.SavedSubscription] = await self.run_store(self.store.subscriptions)
        return saved

    async def delivered(self, frame_id: bytes) -> mesh.Trace:
        """Wait until a receipt settles frame ``frame_id`` (delivered, or dropped
        somewhere); return its trace (``trace.state`` says which). Bound the wait with
        ``trio.fail_after``; a frame sent without ``receipt=True`` is settled only if
        it is dropped.

        Raises :class:`NodeError` if this node did not send such a frame, or if the node
        stops first (the frame stays in its store).
        """
        while True:
            if self._nursery is None:
                raise NodeError(
                    f"node stopped before frame {frame_id.hex()} was settled"
                    " (it stays in the store)"
                )
            with self.mesh.watching(frame_id) as settled:
                trace = await self.trace(frame_id)
                if trace is None:
                    raise NodeError(f"this node sent no frame {frame_id.hex()}")
                if trace.state in ("delivered", "dropped"):
                    return trace
                await settled.wait()

    async def trace(self, frame_id: bytes) -> mesh.Trace | None:
        """Where frame ``frame_id`` that this node sent is known to be (None: unknown)."""
        trace: mesh.Trace | None = await self.run_store(lambda: self.store.trace(frame_id))
        return trace

    def routes(self) -> list[dict[str, Any]]:
        """The route in use to each destination: next hop, hops, age (s)."""
        return self.mesh.routes()

    async def queues(self) -> list[dict[str, Any]]:
        """Per next hop (and held frames): frames, bytes, oldest, link state."""
        return await self.mesh.queues()

    async def purge_queue(self, next_hop: crypto.NodeId | None) -> tuple[int, int]:
        """Drop every frame queued for ``next_hop`` (None: those held, no route yet);
        return (frames, bytes charged). ``ptth queue purge``; see
        :meth:`MeshRuntime.purge <node._mesh.MeshRuntime.purge>`."""
        return await self.mesh.purge(next_hop)

    async def add_peer(self, token: str) -> crypto.SignedAddress:
        """Verify a peer's address token, store it (as `ptth peer add` does) and make it
        a neighbour at once.

        Raises :class:`crypto.CryptoError` for a bad token (:class:`crypto.Stale` if it
        is older than the one held) and :class:`NodeError` for this node's own token.
        """
        address = crypto.parse_token(token, now=self.clock())
        await self.add_peer_address(address)
        return address

    async def add_peer_address(self, address: crypto.SignedAddress) -> bool:
        """Store a verified address as a peer and greet it; return False if it was held."""
        if address.node == self.node_id:
            raise NodeError("that token is this node's own address")
        added: bool = await self.run_blocking(
            lambda: self.data.peers.add(address, now=self.clock())
        )
        await self.mesh.add_peer(address)
        return added

    # -- admission policy ---------------------------------------------------------------

    def policy(self) -> dict[str, Any]:
        """The admission policy and the block, allow and trust lists (``ptth policy``)."""
        return self.mesh.router.policy.describe()

    async def change_policy(self, change: str, node: crypto.NodeId) -> bool:
        """``block``, ``unblock``, ``allow``, ``unallow``, ``trust`` or ``untrust`` ``node``,
        and keep the lists in the data directory; return False if nothing changed.

        Blocking a node refuses its requests (403) and its frames at this destination
        (a drop receipt tells their origin); the allow-list matters with inbox policy
        ``allow-list``; a trusted neighbour's messages for other nodes are passed on
        without their origin's signature checked here (:meth:`mesh.Policy.unverified_from`).
        Raises ValueError past :data:`mesh.MAX_POLICY_ENTRIES` nodes.
        """
        policy = self.mesh.router.policy
        # Changed on a copy, kept on disk, then applied: a change that could not be
        # saved is not live either.
        copy = dataclasses.replace(
            policy,
            blocked=set(policy.blocked),
            allowed=set(policy.allowed),
            trusted=set(policy.trusted),
        )
        changes: dict[str, Callable[[crypto.NodeId], bool]] = {
            "block": copy.block,
            "unblock": copy.unblock,
            "allow": copy.allow,
            "unallow": copy.unallow,
            "trust": copy.trust,
            "untrust": copy.untrust,
        }
        if not changes[change](node):
            return False
        lists = copy.lists()
        try:
            await self.run_blocking(lambda: self.data.save_policy_lists(lists))
        except OSError as exc:
            raise NodeError(
                f"cannot save the policy in {self.data.path / 'policy.json'}: "
                f"{exc.strerror or exc}; nothing changed"
            ) from exc
        policy.blocked, policy.allowed, policy.trusted = copy.blocked, copy.allowed, copy.trusted
        log.info("policy: %s %s", change, node.text)
        return True

    def blocked(self, node: crypto.NodeId) -> bool:
        """Has this node blocked ``node`` (``ptth block``)?"""
        return node in self.mesh.router.policy.blocked

    def peer_address(self, node: crypto.NodeId) -> crypto.SignedAddress | None:
        """The current address record of peer ``node``, or None."""
        return self.data.peers.get(node, now=self.clock())

    # -- status ---------------------------------------------------------------------

    async def current_status(self) -> dict[str, Any]:
        """:meth:`status`, the store's statistics read off the event loop."""
        return self.status(await self.run_store(self.store.statistics))

    def status(self, store: mesh.StoreStatistics | None = None) -> dict[str, Any]:
        """What ``ptth status`` shows: identity, endpoints, peers, counters. ``store``:
        the store's statistics read already (off the event loop); None reads them here."""
        now = self.clock()
        peers = []
        for address in self.data.peers:
            record = address.record
            peers.append(
                {
                    "node": record.node.text,
                    "name": record.name,
                    "seq": record.seq,
                    "endpoints": list(record.endpoints),
                    "expired": record.exp <= now,
                }
            )
        stats = self.store.statistics() if store is None else store
        return {
            "node": self.node_id.text,
            "name": self.config.name,
            "endpoints": list(self.endpoints),
            "address": self.address_token(),
            "peers": peers,
            "neighbours": [link.to_json() for link in self.mesh.router.links],
            "routes": len(self.mesh.router.table),
            "tree": self._tree_status(),
            "inbox": {"frames": stats.inbox_frames, "bytes": stats.inbox_bytes},
            "queued": {"frames": stats.queued_frames, "bytes": stats.queued_bytes},
            "seen_ids": stats.seen_ids,
            "connections": self.server.active_connections if self.server else 0,
            "attachments": [link.status() for link in self.links],
            "relaying": self.relay_service.statistics(),
            "counters": dataclasses.asdict(self.statistics),
            "rejected": dict(self.statistics.rejected_by_reason),
            "capabilities": self.capabilities(),
        }

    def _tree_status(self) -> dict[str, Any] | None:
        """Our place in the spanning tree (``--tree``; None when not built)."""
        tree = self.mesh.router.tree
        if tree is None:
            return None
        coordinates = tree.coordinates
        return {
            "root": None if coordinates is None else coordinates.root.text,
            "depth": None if coordinates is None else coordinates.depth,
            "parent": None if tree.parent is None else tree.parent.text,
            "path": [] if coordinates is None else [node.text for node in coordinates.path],
        }


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming the wildcard, not binding it
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


@contextlib.contextmanager
def _exclusive_lock(directory: Path) -> Iterator[None]:
    """Hold ``directory/lock`` so that one node at a time runs for a data directory."""
    path = directory / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NodeError(f"a node is already running for {directory}") from None
        yield
    finally:
        os.close(fd)
