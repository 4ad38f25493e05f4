"""``Node``: one ptth node, an HTTP server and client in one trio nursery.

``async with Node.open(data_dir) as node:`` loads (or creates) the identity, opens the
store, starts the server on its listeners and the HTTP client, and signs a fresh address
record when the endpoints changed. Leaving the block shuts the server down gracefully
and cancels every task of the node.

Sending: :meth:`Node.send` seals a ``msg`` frame and hands it to the per-peer sender,
which batches what is queued (up to :data:`BATCH_SIZE` frames per POST, one request in
flight per peer), retries with exponential backoff and jitter on connection errors, 429
and 503 (honouring ``Retry-After``), and resolves each frame with its result. ``send``
returns when the destination has accepted responsibility.

Receiving: ``POST /ptth/v1/frames`` verifies the request signature, admits each frame
(:func:`mesh.admit`), stores the admitted ones in one transaction and answers with a
signed array of per-frame results. :meth:`Node.inbox` yields what was stored until the
application acknowledges it.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import fcntl
import functools
import logging
import math
import os
import random
import secrets
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Sequence,
)
from pathlib import Path
from typing import Any, Final

import httpx
import trio

import crypto
import mesh
from node import _fabric
from node._api import API_PREFIX, LocalApi
from node._attach import RelayLink, RelayMode
from node._datadir import DataDir, write_atomically
from node._errors import DeliveryFailed, NodeError, PeerUnknown, Rejected
from node._net import Network, TcpNetwork, make_transport
from node._relay import ATTACH_PATH, PING_PATH, POLL_PREFIX, REPLY_PREFIX, RelayConfig, RelayService
from node._server import Handler, Request, Response, Server, ServerConfig

__all__ = [
    "BATCH_SIZE",
    "Message",
    "Node",
    "NodeConfig",
    "NodeStatistics",
    "RunBlocking",
    "run_inline",
]

log = logging.getLogger("ptth.node")

FRAMES_PATH: Final = "/ptth/v1/frames"
ADDRESS_PATH: Final = "/ptth/v1/address"
#: Frames per POST: ~100 is where httpx's per-request cost stops mattering (DESIGN §8).
BATCH_SIZE: Final = 100
#: Requests in flight to one peer: a second overlaps the peer's work on the first.
MAX_IN_FLIGHT: Final = 2
#: Frames verified inline; a bigger batch is verified in a worker thread (the GIL is
#: released by libsodium, so the second core helps).
_INLINE_VERIFY: Final = 8
_ADDRESS_LIFETIME_MS: Final = 30 * 24 * 3600 * 1000
#: How often expired frame ids leave the seen-set (seconds).
SWEEP_INTERVAL: Final = 600.0


RunBlocking = Callable[[Callable[[], Any]], Awaitable[Any]]


async def run_inline(function: Callable[[], Any]) -> Any:
    """A ``run_blocking`` that calls ``function`` in the trio thread (for simulations)."""
    return function()


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    """How a node runs. Every default is what `ptth run` uses."""

    listen: str = "127.0.0.1:8470"
    public_url: str | None = None
    name: str | None = None
    #: How long a frame lives (its exp - ts) unless the sender says otherwise.
    frame_ttl: float = 24 * 3600.0
    #: The most hops our frames may make.
    hops: int = 16
    #: How long send() keeps retrying an unreachable peer before it fails.
    send_timeout: float = 60.0
    #: Backoff between retries: first delay and cap, in seconds (jitter: x0.5..1.5).
    retry_initial: float = 0.2
    retry_max: float = 10.0
    #: Timeout of one HTTP exchange with a peer.
    request_timeout: float = 30.0
    max_inbox_bytes: int = mesh.DEFAULT_MAX_INBOX_BYTES
    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
    #: Relays to stay attached to (their address tokens), for a node behind NAT.
    relays: tuple[str, ...] = ()
    #: How to attach: "auto" (Upgrade, falling back to long-poll), "upgrade", "long-poll".
    relay_mode: str = "auto"
    #: Reversed connections kept to each relay.
    relay_pool: int = 2
    #: Serving as a relay for others: policy and limits.
    relay: RelayConfig = dataclasses.field(default_factory=RelayConfig)


@dataclasses.dataclass
class NodeStatistics:
    """Counters since start. ``frames_*`` are inbound, ``sent_*`` outbound."""

    frames_accepted: int = 0
    frames_duplicate: int = 0
    frames_rejected: int = 0
    requests_refused: int = 0
    sent_accepted: int = 0
    sent_duplicate: int = 0
    sent_rejected: int = 0
    send_failures: int = 0
    send_requests: int = 0
    send_retries: int = 0


@dataclasses.dataclass(frozen=True)
class Message:
    """A received point-to-point message. :meth:`ack` removes it from the inbox."""

    id: bytes
    src: crypto.NodeId
    body: bytes
    ct: str | None
    ts: int
    received: int
    hops: int
    seq: int
    _node: Node = dataclasses.field(repr=False, compare=False)

    async def ack(self) -> None:
        """Acknowledge: the application is done with it; it will not be offered again."""
        await self._node.ack([self.id])


@dataclasses.dataclass
class _Pending:
    wire: mesh.WireFrame
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    result: mesh.Result | None = None
    error: Exception | None = None


class _PeerSender:
    """Batches frames for one peer: one request in flight, two when a batch waits."""

    def __init__(self) -> None:
        self.queue: list[_Pending] = []
        self.running = 0
        #: The endpoint that answered last: the next batch starts there.
        self.endpoint: str | None = None


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise NodeError(f"--listen {listen!r} is not HOST:PORT (e.g. 127.0.0.1:8470)")
    return host.strip("[]"), int(port_text)


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
        self.statistics = NodeStatistics()
        self.endpoints: tuple[str, ...] = ()
        self.address: crypto.SignedAddress | None = None
        self.api_token = secrets.token_urlsafe(32)
        self.api_url: str | None = None
        self._senders: dict[crypto.NodeId, _PeerSender] = {}
        self._inbox_changed = trio.Event()
        self.replay_guard = _fabric.ReplayGuard()
        self._nursery: trio.Nursery | None = None
        self._client: httpx.AsyncClient | None = None
        self._extra_routes: list[tuple[str, Handler]] = []
        self.server: Server | None = None
        self.add_route(API_PREFIX, LocalApi(self).handle)
        # Always served, also with policy "off": an attach then gets the relay's 403
        # saying so (a node told "404 no such resource" cannot tell why).
        self.relay_service: RelayService | None = RelayService(self, config.relay)
        for prefix in (ATTACH_PATH, POLL_PREFIX, REPLY_PREFIX, "/n/"):
            self.add_route(prefix, self.relay_service.handle)
        self.links: list[RelayLink] = []

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
    ) -> AsyncIterator[Node]:
        """Run a node for ``data_dir`` for the duration of the block.

        ``network`` is where it listens and dials (default: real TCP); ``clock`` returns
        wall time in ms (default: the system clock; simulations pass virtual time);
        ``rng`` drives retry jitter and frame ids (default: seeded from the OS);
        ``run_blocking`` runs the store's blocking calls (default: in a worker thread,
        ``trio.to_thread.run_sync``; a simulation in virtual time runs them inline, so
        the clock does not jump while a thread works).

        Raises :class:`NodeError` if another node runs for ``data_dir``, the listen
        address is taken, or the identity cannot be loaded.
        """
        config = config or NodeConfig()
        network = network or TcpNetwork()
        blocking: RunBlocking = run_blocking or trio.to_thread.run_sync
        data = DataDir(Path(data_dir))
        identity, _ = await blocking(data.init)
        with _exclusive_lock(data.path):
            store = await blocking(
                lambda: mesh.Store(
                    data.path / "store.sqlite3", max_inbox_bytes=config.max_inbox_bytes
                )
            )
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
                )
                async with node._run():
                    yield node
            finally:
                store.close()

    @contextlib.asynccontextmanager
    async def _run(self) -> AsyncIterator[None]:
        host, port = _parse_listen(self.config.listen)
        try:
            listeners = await self.network.open_listeners(host, port)
        except OSError as exc:
            raise NodeError(
                f"cannot listen on {self.config.listen}: {exc.strerror or exc}"
            ) from exc
        _, bound_port = self.network.listener_address(listeners[0])
        local_url = f"http://{_url_host(host)}:{bound_port}"
        self.api_url = f"{local_url}/api/v1"
        self.links = [
            RelayLink(
                self, relay, mode=RelayMode(self.config.relay_mode), pool=self.config.relay_pool
            )
            for relay in self._relay_addresses()
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
        self.server = Server(self._handle, self.config.server, scheme=scheme)
        transport = make_transport(self.network)
        timeout = httpx.Timeout(
            self.config.request_timeout, connect=min(10.0, self.config.request_timeout)
        )
        async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
            self._client = client
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.server.serve, listeners)
                background = trio.CancelScope()
                await nursery.start(self._run_background, background)
                await self.run_blocking(self._write_api_files)
                try:
                    yield
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        (self.data.path / "api.json").unlink()
                    # Attachments and the sweeper are not work in flight for anyone:
                    # they end first.
                    background.cancel()
                    if self.relay_service is not None:
                        self.relay_service.shutdown()
                    self.server.shutdown()
                    # Senders end with the block: what they hold has not been accepted,
                    # and their callers (inside the block) are being cancelled anyway.
                    for sender in self._senders.values():
                        for pending in sender.queue:
                            pending.error = NodeError("node is shutting down")
                            pending.done.set()
                    nursery.cancel_scope.deadline = trio.current_time() + (
                        self.config.server.shutdown_grace + 1
                    )
            self._nursery = None

    async def _sweep_loop(self) -> None:
        """Forget seen ids of long-expired frames, now and then."""
        while True:
            await trio.sleep(SWEEP_INTERVAL)
            try:
                swept = await self.run_blocking(lambda: self.store.sweep(now=self.clock()))
            except mesh.MeshError as exc:
                log.warning("sweeping the store failed: %s", exc)
            else:
                if swept:
                    log.info("forgot %d expired frame ids", swept)

    async def _run_background(
        self,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The node's own upkeep (relay attachments, the sweeper), in ``scope``."""
        with scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sweep_loop)
                for link in self.links:
                    await nursery.start(link.run)
                task_status.started()

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
        return _fabric.sign_request(
            self.identity, method, url, body, now=self.clock() // 1000, nonce=nonce
        )

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The node's HTTP client (one per node, pooled)."""
        if self._client is None:
            raise NodeError("node is not running")
        return self._client

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
        info = f'{{"url": "{self.api_url}", "pid": {os.getpid()}, "node": "{self.node_id.text}"}}\n'
        write_atomically(self.data.path / "api.json", info.encode("utf-8"))

    def address_token(self) -> str:
        """This node's current address token (``ptth:...``)."""
        assert self.address is not None
        return self.address.token

    def add_route(self, prefix: str, handler: Handler) -> None:
        """Serve requests whose path starts with ``prefix`` with ``handler``."""
        self._extra_routes.append((prefix, handler))

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
            assert self.address is not None
            return Response(
                200,
                [("content-type", 'application/cose; cose-type="cose-sign1"')],
                self.address.envelope,
            )
        for prefix, handler in self._extra_routes:
            if path.startswith(prefix):
                return await handler(request)
        return Response.text(404, f"no such resource: {path}")

    def _refuse(self, status: int, words: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
        self.statistics.requests_refused += 1
        log.info("refused a request: %d %s", status, words)
        return Response.text(status, words, headers)

    async def _receive_frames(self, request: Request) -> Response:
        server = self.server
        if server is not None and server._closing.is_set():
            return self._refuse(503, "node is shutting down", [("retry-after", "5")])
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != mesh.CONTENT_TYPE_FRAMES:
            return self._refuse(
                415,
                f"frames must be sent as {mesh.CONTENT_TYPE_FRAMES}, "
                f"not {content_type or 'nothing'!r}",
            )
        now = self.clock()
        try:
            sender = _fabric.verify_request(
                request.method,
                request.url,
                request.headers,
                request.body,
                now=now // 1000,
                guard=self.replay_guard,
            )
        except crypto.CryptoError as exc:
            return self._refuse(401, f"request not authenticated: {exc}")
        try:
            items = mesh.decode_frames(request.body)
        except crypto.TooLarge as exc:
            return self._refuse(413, str(exc))
        except crypto.Malformed as exc:
            return self._refuse(400, f"body is not a CBOR sequence of frames: {exc}")
        results = await self._admit_and_store(items, now)
        if isinstance(results, Response):
            return results
        body = mesh.encode_results(results)
        digest = request.header("content-digest") or ""
        headers = [
            ("content-type", mesh.CONTENT_TYPE_RESULTS),
            *_fabric.sign_response(self.identity, 200, body, digest, now=self.clock() // 1000),
        ]
        outcomes = collections.Counter(result.outcome.value for result in results)
        log.info(
            "took %d frames from %s (%s)",
            len(items),
            sender.short,
            ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items())),
        )
        return Response(200, headers, body)

    async def _admit_and_store(
        self, items: list[mesh.WireFrame | mesh.Result], now: int
    ) -> list[mesh.Result] | Response:
        def check() -> list[mesh.Admitted | mesh.Result]:
            return [
                item
                if isinstance(item, mesh.Result)
                else mesh.admit(item, local=self.node_id, now=now)
                for item in items
            ]

        checked = check() if len(items) <= _INLINE_VERIFY else await self.run_blocking(check)
        admitted = [item for item in checked if isinstance(item, mesh.Admitted)]
        stored: list[mesh.Result] = []
        if admitted:
            try:
                stored = await self.run_blocking(lambda: self.store.accept(admitted, now=now))
            except mesh.StoreFull as exc:
                return self._refuse(429, str(exc), [("retry-after", "30")])
            except mesh.MeshError as exc:
                log.error("store failed: %s", exc)
                return self._refuse(503, f"store unavailable: {exc}", [("retry-after", "10")])
        stored_iter = iter(stored)
        results = [
            next(stored_iter) if isinstance(item, mesh.Admitted) else item for item in checked
        ]
        for result in results:
            if result.outcome is mesh.Outcome.ACCEPTED:
                self.statistics.frames_accepted += 1
            elif result.outcome is mesh.Outcome.DUPLICATE:
                self.statistics.frames_duplicate += 1
            else:
                self.statistics.frames_rejected += 1
                log.info("rejected a frame: %s: %s", result.code, result.words)
        if any(r.outcome is mesh.Outcome.ACCEPTED for r in results):
            self._inbox_changed.set()
            self._inbox_changed = trio.Event()
        return results

    async def inbox(self, *, follow: bool = True) -> AsyncGenerator[Message, None]:
        """Yield received messages not yet acknowledged, oldest first.

        With ``follow`` it then waits for more; without, it ends when the inbox is
        exhausted. A message not acknowledged is offered again by the next ``inbox()``
        (at-least-once), but never stored twice (each frame id is taken once).
        """
        after = 0
        while True:
            changed = self._inbox_changed
            entries = await self.run_blocking(functools.partial(self.store.pending, after=after))
            for entry in entries:
                after = entry.seq
                yield Message(
                    id=entry.id,
                    src=entry.src,
                    body=entry.body,
                    ct=entry.ct,
                    ts=entry.ts,
                    received=entry.received,
                    hops=entry.hops,
                    seq=entry.seq,
                    _node=self,
                )
            if not entries:
                if not follow:
                    return
                await changed.wait()

    async def ack(self, ids: Sequence[bytes]) -> int:
        """Acknowledge messages by id; return how many were still in the inbox."""
        acked: int = await self.run_blocking(lambda: self.store.ack(ids))
        return acked

    # -- sending --------------------------------------------------------------------

    def new_frame(
        self, dst: crypto.NodeId, body: bytes, *, ct: str | None = None, ttl: float | None = None
    ) -> crypto.Frame:
        """A ``msg`` frame from this node to ``dst``."""
        now = self.clock()
        lifetime = int((ttl if ttl is not None else self.config.frame_ttl) * 1000)
        return crypto.Frame(
            kind=crypto.Kind.MSG,
            src=self.node_id,
            id=self.rng.randbytes(crypto.FRAME_ID_SIZE),
            ts=now,
            exp=now + lifetime,
            hops=self.config.hops,
            dst=dst,
            body=body,
            ct=ct,
        )

    async def send(
        self,
        dst: crypto.NodeId | str,
        body: bytes,
        *,
        ct: str | None = None,
        ttl: float | None = None,
    ) -> mesh.Result:
        """Send ``body`` to node ``dst``; return when it has accepted responsibility.

        Raises :class:`PeerUnknown` if no address is known for ``dst``,
        :class:`Rejected` if it refused the frame (not retried), :class:`DeliveryFailed`
        if it stayed unreachable for ``send_timeout``, and :class:`crypto.Malformed` for
        a body over :data:`crypto.MAX_BODY_SIZE` or a bad content type.
        """
        if isinstance(dst, str):
            dst = crypto.NodeId.parse(dst)
        frame = self.new_frame(dst, body, ct=ct, ttl=ttl)
        envelope = frame.seal(self.identity)
        return await self.send_frame(dst, mesh.WireFrame(0, envelope))

    async def send_frame(self, dst: crypto.NodeId, wire: mesh.WireFrame) -> mesh.Result:
        """Hand one sealed frame to ``dst``'s sender; return its result (see :meth:`send`)."""
        if self._nursery is None:
            raise NodeError("node is not running")
        # A peer already sent to is looked up again for every batch (_post_frames): no
        # file check per frame here.
        if dst not in self._senders and self.peer_address(dst) is None:
            raise PeerUnknown(
                f"no address known for {dst.text}: add its token with 'ptth peer add'"
            )
        pending = _Pending(wire)
        sender = self._senders.get(dst)
        if sender is None:
            sender = self._senders[dst] = _PeerSender()
        sender.queue.append(pending)
        # A second request in flight only when a whole batch waits: the peer works on
        # one batch while the next crosses the network, and batches stay full.
        if not sender.running or (
            sender.running < MAX_IN_FLIGHT and len(sender.queue) >= BATCH_SIZE
        ):
            sender.running += 1
            self._nursery.start_soon(self._drain, dst, sender)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        if not pending.result.ok:
            raise Rejected(str(pending.result.code), pending.result.words)
        return pending.result

    async def add_peer(self, token: str) -> crypto.SignedAddress:
        """Verify a peer's address token and store it (as `ptth peer add` does).

        Raises :class:`crypto.CryptoError` for a bad token (:class:`crypto.Stale` if it
        is older than the one held) and :class:`NodeError` for this node's own token.
        """
        address = crypto.parse_token(token, now=self.clock())
        if address.node == self.node_id:
            raise NodeError("that token is this node's own address")
        await self.run_blocking(lambda: self.data.peers.add(address, now=self.clock()))
        return address

    def peer_address(self, node: crypto.NodeId) -> crypto.SignedAddress | None:
        """The current address record of peer ``node``, or None."""
        return self.data.peers.get(node, now=self.clock())

    async def _drain(self, dst: crypto.NodeId, sender: _PeerSender) -> None:
        batch: list[_Pending] = []
        try:
            while sender.queue:
                batch, sender.queue = sender.queue[:BATCH_SIZE], sender.queue[BATCH_SIZE:]
                try:
                    results = await self._post_frames(dst, [p.wire for p in batch], sender)
                except (NodeError, crypto.CryptoError) as exc:
                    self.statistics.send_failures += len(batch)
                    for pending in batch:
                        pending.error = exc
                        pending.done.set()
                    continue
                for pending, result in zip(batch, results, strict=True):
                    pending.result = result
                    pending.done.set()
                    if result.outcome is mesh.Outcome.ACCEPTED:
                        self.statistics.sent_accepted += 1
                    elif result.outcome is mesh.Outcome.DUPLICATE:
                        self.statistics.sent_duplicate += 1
                    else:
                        self.statistics.sent_rejected += 1
        finally:
            sender.running -= 1
            # Cancelled (the node is stopping): whoever waits on these frames must hear
            # that they were not handed on, not wait forever.
            for pending in [*batch, *sender.queue]:
                if not pending.done.is_set():
                    pending.error = NodeError("node stopped before the frame was accepted")
                    pending.done.set()
            sender.queue = []

    async def _post_frames(
        self, dst: crypto.NodeId, frames: list[mesh.WireFrame], sender: _PeerSender
    ) -> list[mesh.Result]:
        """POST ``frames`` to ``dst`` until it answers, retrying what may be retried.

        Starts at the endpoint that answered last; on a failure tries the next one at
        once, and backs off only after a round of all of them.
        """
        assert self._client is not None
        body = mesh.encode_frames(frames)
        deadline = trio.current_time() + self.config.send_timeout
        delay = self.config.retry_initial
        attempt = 0
        last_problem = "no attempt made"
        while True:
            address = self.peer_address(dst)
            if address is None:
                raise PeerUnknown(f"no address known for {dst.text}")
            endpoints = address.record.endpoints
            start = endpoints.index(sender.endpoint) if sender.endpoint in endpoints else 0
            endpoint = endpoints[(start + attempt) % len(endpoints)]
            attempt += 1
            retry_after: float | None = None
            # No attempt may run past the deadline (a connect timeout would overrun it).
            with trio.move_on_at(deadline) as attempt_scope:
                try:
                    results = await self._post_once(
                        dst, endpoint.rstrip("/") + FRAMES_PATH, body, len(frames)
                    )
                except _Retry as retry:
                    last_problem = retry.problem
                    retry_after = retry.after
                else:
                    sender.endpoint = endpoint
                    return results
            if attempt_scope.cancelled_caught:
                last_problem = f"no answer from {endpoint} before the deadline"
                retry_after = math.inf
            if retry_after is None and attempt % len(endpoints) != 0:
                continue  # another endpoint may answer: try it now
            wait = retry_after if retry_after is not None else delay * self.rng.uniform(0.5, 1.5)
            if trio.current_time() + wait > deadline:
                raise DeliveryFailed(
                    f"{dst.short} unreachable for {self.config.send_timeout:g} s "
                    f"after {attempt} attempts: {last_problem}"
                )
            self.statistics.send_retries += 1
            log.info("retrying %s in %.1f s: %s", dst.short, wait, last_problem)
            await trio.sleep(wait)
            delay = min(delay * 2, self.config.retry_max)

    async def _post_once(
        self, dst: crypto.NodeId, url: str, body: bytes, count: int
    ) -> list[mesh.Result]:
        assert self._client is not None
        headers = [
            ("content-type", mesh.CONTENT_TYPE_FRAMES),
            *self.sign_request("POST", url, body),
        ]
        digest = headers[1][1]
        self.statistics.send_requests += 1
        try:
            response = await self._client.post(url, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise _Retry(f"{type(exc).__name__} from {url}: {exc}") from exc
        if response.status_code in (429, 503):
            after = _retry_after(response.headers.get("retry-after"))
            raise _Retry(f"{response.status_code} from {url}: {response.text.strip()}", after)
        if response.status_code != 200:
            raise DeliveryFailed(
                f"{dst.short} refused the request: {response.status_code} {response.text.strip()}"
            )
        try:
            _fabric.verify_response(
                200,
                list(response.headers.multi_items()),
                response.content,
                expected=dst,
                request_digest=digest,
                now=self.clock() // 1000,
            )
            return mesh.decode_results(response.content, expected=count)
        except crypto.CryptoError as exc:
            # Not a receipt from dst: perhaps another node now holds that address.
            raise _Retry(f"bad answer from {url}: {exc}") from exc

    # -- status ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``ptth status`` shows: identity, endpoints, peers, counters."""
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
        stats = self.store.statistics()
        return {
            "node": self.node_id.text,
            "name": self.config.name,
            "endpoints": list(self.endpoints),
            "address": self.address_token(),
            "peers": peers,
            "inbox": {"frames": stats.inbox_frames, "bytes": stats.inbox_bytes},
            "seen_ids": stats.seen_ids,
            "connections": self.server.active_connections if self.server else 0,
            "attachments": [link.status() for link in self.links],
            "relaying": self.relay_service.statistics() if self.relay_service else [],
            "counters": dataclasses.asdict(self.statistics),
        }


class _Retry(Exception):
    def __init__(self, problem: str, after: float | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.after = after


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value.strip()), 300.0)


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
