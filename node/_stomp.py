"""The STOMP gateway: a STOMP 1.2 server (1.0 and 1.1 too) over a node, so that any
STOMP client publishes, subscribes and sends across the mesh (``ptth run --stomp
HOST:PORT``; docs/architecture.md, "The STOMP gateway").

The protocol is :mod:`mesh._stomp` (sans-IO: the frame codec and each connection's
state); this module is its trio driver: it accepts connections from the node's
network, reads bytes into the decoder, does what the session says with the node's own
methods (``publish``, ``send``, ``subscribe``, the inbox and the named subscriptions
in the store) and writes the frames back.

Destinations:

* ``/topic/<topic>``: a SEND publishes (``Node.publish``); a SUBSCRIBE to
  ``/topic/<pattern>`` is a live subscription across the mesh (``Node.subscribe``).
* ``/queue/<name>``: the node's named (durable) subscription ``name``. A SUBSCRIBE
  reads what is pending for it (kept while no client reads it, within the store's
  quotas); a ``pattern`` header (comma-separated patterns) binds it, replacing the
  patterns it had, as ``ptth subscribe --name`` does; without one it must exist. A SEND
  to a queue is refused: a queue gets what its patterns match.
* ``/node/<node-id>``: a SEND sends point to point (``Node.send``); a SUBSCRIBE to
  ``/node/me`` (or this node's id) reads this node's inbox.

A queue and the inbox are shared by the STOMP subscriptions reading them (competing
consumers): a message sent to one subscription and not settled is not sent to another
(:class:`Claims`); it goes to the next reader when it is NACKed, its subscription ends
or its connection goes. ``auto`` messages are acknowledged in the store once written
to the client (a page at a time); ``client`` and ``client-individual`` ones when the
client ACKs them. A live topic subscription keeps what it was sent only in memory: a
NACK sends it again on the same subscription, a lost connection loses it.

A SEND's RECEIPT is written once the message is in the node's durable custody
(``publish``/``send`` returned); SENDs that arrive together are taken into custody
together (one group commit). Defences, each in :class:`StompConfig`: connections in
all and per address, frames per second per connection, a time to CONNECT, the
heart-beats agreed (a client silent for twice its interval is dropped; one without
heart-beats after ``idle_timeout``), a time to write, and the codec's and the session's
limits. Anything wrong is an ERROR frame saying what, then the connection closes.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import dataclasses
import functools
import importlib.metadata
import ipaddress
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, overload

import trio

import crypto
import mesh
from mesh import _stomp as stomp
from node._errors import NodeError
from node._mesh import MeshRuntime
from node._message import Publication, Published, Sent
from node._net import Network
from node._pubsub import DurableSubscription, Subscription
from node._server import accept_connections, peer_name, source_address

__all__ = [
    "STOMP_USERS",
    "Claims",
    "StompConfig",
    "StompGateway",
    "StompNode",
    "load_users",
    "stomp_address",
]

log = logging.getLogger("ptth.stomp")

#: The STOMP users of a node, in its data directory: ``login:passcode`` lines.
STOMP_USERS: Final = "stomp.users"
#: The most a users file may hold.
_MAX_USERS_FILE: Final = 1024 * 1024
_READ_SIZE: Final = 64 * 1024
#: SENDs taken into custody together, at most.
_MAX_GROUP: Final = 256
#: Bytes queued for a client past which its subscriptions wait for the writer.
_HIGH_WATER: Final = 256 * 1024
#: After an ERROR: what the client still sends is read and dropped, up to this much.
_LINGER_BYTES: Final = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class StompConfig:
    """The STOMP listener's limits. Every default has a reason."""

    #: Accept clients on a non-loopback address (then ``DIR/stomp.users`` is required).
    allow_remote: bool = False
    #: Connections at once (each a few tasks and buffers of at most a frame).
    max_connections: int = 256
    #: Connections at once from one IP address (IPv6: one /64).
    max_connections_per_address: int = 64
    #: Frames a connection may send in one second (heart-beats not counted); past it,
    #: ERROR and close. A SEND costs a signature and a commit, so an honest client
    #: stays far below; a loop of empty frames does not.
    max_frames_per_second: int = 10_000
    #: From accepting a connection to its CONNECT frame (s).
    connect_timeout: float = 10.0
    #: How long a client that agreed no heart-beats may send nothing (s).
    idle_timeout: float = 300.0
    #: The heart-beat interval the server offers and asks for (s; 0: none).
    heartbeat: float = 10.0
    #: A client that agreed heart-beats every n ms is dropped after this many n of
    #: silence (the spec asks for tolerance).
    heartbeat_grace: float = 2.0
    #: How long one write may wait for a slow reader (s).
    write_timeout: float = 30.0
    #: After an ERROR, how long the client may still send before the close (s).
    linger: float = 1.0
    #: What one frame may be.
    limits: stomp.Limits = dataclasses.field(default_factory=stomp.Limits)
    #: What one connection may hold (subscriptions, unacknowledged, transactions).
    session: stomp.SessionLimits = dataclasses.field(default_factory=stomp.SessionLimits)

    def __post_init__(self) -> None:
        if min(self.max_connections, self.max_connections_per_address) < 1:
            raise ValueError("max_connections and max_connections_per_address must be >= 1")
        if self.max_frames_per_second < 1:
            raise ValueError("max_frames_per_second must be >= 1")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def stomp_address(text: str, config: StompConfig, users: Path) -> tuple[str, int, bool]:
    """``--stomp HOST:PORT`` as (host, port, remote: not a loopback address). Raises
    :class:`NodeError` for a malformed address, and for a non-loopback host unless
    ``config.allow_remote`` and a users file ``users`` exists (strangers must log in)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise NodeError(f"--stomp {text!r} is not HOST:PORT (e.g. 127.0.0.1:61613)")
    if _is_loopback(host):
        return host, int(port), False
    if not config.allow_remote:
        raise NodeError(
            f"--stomp {text!r} is not a loopback address: the STOMP listener serves this "
            "machine only unless --stomp-allow-remote is given (with users in "
            f"{users})"
        )
    if not users.is_file():
        raise NodeError(
            f"--stomp {text!r} faces the network: create {users} first (lines "
            "login:passcode) so that clients must log in"
        )
    return host, int(port), True


def load_users(path: Path) -> dict[str, str] | None:
    """The logins and passcodes in ``path`` (``login:passcode`` lines; blank lines and
    ``#`` comments skipped); None if there is no such file. A line without ``:`` is
    skipped, logged. Raises OSError if the file cannot be read."""
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_USERS_FILE + 1)
    except FileNotFoundError:
        return None
    if len(data) > _MAX_USERS_FILE:
        raise OSError(f"{path} is over {_MAX_USERS_FILE} bytes")
    users: dict[str, str] = {}
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        login, sep, passcode = line.partition(":")
        if not sep or not login or not passcode:
            log.warning("%s line %d is not login:passcode; skipped", path, number)
            continue
        users[login] = passcode
    return users


# (Inside StompNode, ``mesh`` is the node's attribute, not the package.)
_Idempotent = mesh.Idempotent
_Saved = mesh.SavedSubscription


class StompNode(Protocol):
    """What the gateway needs from the node."""

    node_id: crypto.NodeId
    store: mesh.Store
    mesh: MeshRuntime
    network: Network
    run_blocking: Callable[[Callable[[], Any]], Awaitable[Any]]
    #: Runs the store's calls (its own thread).
    run_store: Callable[[Callable[[], Any]], Awaitable[Any]]

    async def send(
        self,
        dst: crypto.NodeId | str,
        body: bytes,
        *,
        ct: str | None = None,
        ttl: float | None = None,
        receipt: bool = False,
    ) -> Sent: ...

    async def publish(
        self,
        topic: str,
        body: bytes,
        *,
        ct: str | None = None,
        ttl: float | None = None,
        idempotent: Callable[[Published], _Idempotent] | None = None,
    ) -> Published: ...

    @overload
    def subscribe(
        self, *patterns: str, name: None = None
    ) -> contextlib.AbstractAsyncContextManager[Subscription]: ...

    @overload
    def subscribe(
        self, *patterns: str, name: str
    ) -> contextlib.AbstractAsyncContextManager[DurableSubscription]: ...

    async def subscriptions(self) -> list[_Saved]: ...

    async def ack(self, keys: Sequence[tuple[crypto.NodeId, bytes] | bytes]) -> int: ...


class Claims:
    """The messages of each queue (the inbox, a named subscription) sent to a STOMP
    subscription and not settled yet: no other subscription is sent them. Settling
    (ACK) and releasing (NACK, or the subscription gone) move the queue's epoch on;
    releasing also wakes its readers, to look again from the start."""

    def __init__(self) -> None:
        self._held: dict[str, set[Hashable]] = {}
        self._epochs: dict[str, int] = collections.defaultdict(int)
        self._released: dict[str, trio.Event] = {}

    def held(self, queue: str, key: Hashable) -> bool:
        return key in self._held.get(queue, ())

    def take(self, queue: str, key: Hashable) -> None:
        self._held.setdefault(queue, set()).add(key)

    def epoch(self, queue: str) -> int:
        return self._epochs[queue]

    def released(self, queue: str) -> trio.Event:
        """Set when something of ``queue`` is released."""
        return self._released.setdefault(queue, trio.Event())

    def settle(self, queue: str, keys: Sequence[Hashable]) -> None:
        """Acknowledged: gone from the store."""
        self._drop(queue, keys)

    def release(self, queue: str, keys: Sequence[Hashable]) -> None:
        """Given back: the next reader of ``queue`` gets them."""
        if keys:
            self._drop(queue, keys)
            self._released.pop(queue, trio.Event()).set()

    def _drop(self, queue: str, keys: Sequence[Hashable]) -> None:
        held = self._held.get(queue)
        if held is not None:
            held.difference_update(keys)
            if not held:
                del self._held[queue]
        self._epochs[queue] += 1


class StompGateway:
    """Serves STOMP on listeners for ``node`` (see the module docstring)."""

    def __init__(
        self, node: StompNode, config: StompConfig, *, users: Path, remote: bool = False
    ) -> None:
        self.node = node
        self.config = config
        self.users_path = users
        #: Listening on a non-loopback address: every client must log in.
        self.remote = remote
        self.claims = Claims()
        self._per_address: dict[str, int] = {}
        self._connections = 0
        self._scope = trio.CancelScope()
        try:
            self._version = importlib.metadata.version("ptth")
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree
            self._version = "0"
        #: Connections served since start, and refused (busy).
        self.accepted = 0
        self.refused = 0

    @property
    def connections(self) -> int:
        """Connections holding a slot now."""
        return self._connections

    async def serve(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept and serve connections until :meth:`shutdown` (or cancellation)."""
        with self._scope:
            try:
                async with trio.open_nursery() as nursery:
                    for listener in listeners:
                        nursery.start_soon(self._accept_loop, listener, nursery)
                    task_status.started()
            finally:
                with trio.CancelScope(shield=True):
                    for listener in listeners:
                        with contextlib.suppress(Exception):
                            await listener.aclose()

    def shutdown(self) -> None:
        """Stop: every connection is closed (what they did not acknowledge stays)."""
        self._scope.cancel()

    async def _accept_loop(
        self, listener: trio.abc.Listener[trio.abc.Stream], nursery: trio.Nursery
    ) -> None:
        await accept_connections(listener, nursery, self._serve_stream, "STOMP accept")

    async def _serve_stream(self, stream: trio.abc.Stream) -> None:
        peer = peer_name(stream)
        address = source_address(peer)
        refusal = self._take_slot(address)
        try:
            if refusal is not None:
                self.refused += 1
                log.info("STOMP connection from %s refused: %s", peer, refusal)
                with trio.move_on_after(1):
                    error = stomp.Frame(
                        "ERROR",
                        (("message", "server busy"), ("content-type", "text/plain")),
                        refusal.encode(),
                    )
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await stream.send_all(stomp.encode(error))
                return
            self.accepted += 1
            try:
                users = await self.node.run_blocking(functools.partial(load_users, self.users_path))
            except OSError as exc:
                log.warning("cannot read %s: %s; refusing every STOMP login", self.users_path, exc)
                users = {}
            if users is None and self.remote:
                users = {}  # facing the network: nobody without a users file
            connection = _Connection(self, stream, peer, users)
            try:
                await connection.run()
            except Exception:  # a bug must cost one connection, never the node
                log.exception("STOMP connection from %s failed", peer)
        finally:
            if refusal is None:
                self._release_slot(address)
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    def _take_slot(self, address: str | None) -> str | None:
        config = self.config
        if self._connections >= config.max_connections:
            return f"{config.max_connections} STOMP connections open; retry shortly"
        if address is not None:
            held = self._per_address.get(address, 0)
            if held >= config.max_connections_per_address:
                return (
                    f"too many STOMP connections from {address}: {held} open "
                    f"(limit {config.max_connections_per_address})"
                )
            self._per_address[address] = held + 1
        self._connections += 1
        return None

    def _release_slot(self, address: str | None) -> None:
        self._connections -= 1
        if address is not None:
            left = self._per_address[address] - 1
            if left:
                self._per_address[address] = left
            else:
                del self._per_address[address]


class _Connection:
    """One client: reads frames, does what the session says, writes frames back."""

    def __init__(
        self,
        gateway: StompGateway,
        stream: trio.abc.Stream,
        peer: str,
        users: dict[str, str] | None,
    ) -> None:
        self.gateway = gateway
        self.node = gateway.node
        self.config = config = gateway.config
        self.stream = stream
        self.peer = peer
        beat = round(config.heartbeat * 1000)
        self.decoder = stomp.Decoder(config.limits)
        self.session = stomp.Session(
            local=self.node.node_id,
            heartbeat=(beat, beat),
            users=users,
            server=f"ptth/{gateway._version}",
            session=secrets.token_hex(8),
            limits=config.session,
        )
        self.readers: dict[str, _Reader] = {}
        # Frames to write, and how many bytes were queued and written so far: one
        # writer task sends whatever has gathered in one go.
        self._out = bytearray()
        self._queued = 0
        self._written = 0
        self._wake_writer = trio.Event()
        self._progress = trio.Event()
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self.started = self.last_sent = trio.current_time()
        self._window_start = self.started
        self._window_frames = 0
        #: An ERROR was written: linger before closing.
        self.errored = False

    # -- the connection's life ---------------------------------------------------------

    async def run(self) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._writer)
                    await self._read_loop()
                    await self.flush()  # the last RECEIPT or ERROR
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for sid, (_, keys) in self.session.unsettled().items():
                    reader = self.readers.get(sid)
                    if reader is not None:
                        reader.lost(keys)
                self.readers.clear()
                if self.errored:
                    await self._linger()

    def end(self) -> None:
        """Stop everything of this connection (the close follows)."""
        self._scope.cancel()

    async def _linger(self) -> None:
        """After an ERROR: half-close, and drop what the client still sends for a
        moment, so that it reads the ERROR rather than a reset."""
        with trio.move_on_after(self.config.linger):
            with contextlib.suppress(Exception):
                send_eof = getattr(self.stream, "send_eof", None)
                if send_eof is not None:
                    await send_eof()
            drained = 0
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while drained < _LINGER_BYTES:
                    data = await self.stream.receive_some(_READ_SIZE)
                    if not data:
                        break
                    drained += len(data)

    async def _read_loop(self) -> None:
        while True:
            data = await self._receive()
            if not data:
                return  # the client left, or was dropped (after an ERROR)
            try:
                frames = self.decoder.feed(data)
                while frames:
                    if not self._within_rate(len(frames)):
                        await self._execute(
                            self.session.error(
                                "too many frames",
                                f"a connection may send at most "
                                f"{self.config.max_frames_per_second} frames a second",
                            )
                        )
                        return
                    if not await self._handle(frames):
                        return
                    # A CONNECT stops the decoder: what follows it is unescaped as the
                    # version agreed says.
                    if frames[-1].command not in ("CONNECT", "STOMP"):
                        break
                    self.decoder.version = self.session.version or "1.2"
                    frames = self.decoder.feed(b"")
            except stomp.StompError as exc:
                await self._execute(self.session.error(exc.message, exc.detail))
                return

    async def _receive(self) -> bytes | None:
        """The next bytes from the client; b"" when it closed; None after a time-out
        (an ERROR has been written)."""
        session = self.session
        if not session.connected:
            # From the connection's start, however the bytes trickle in.
            wait = self.started + self.config.connect_timeout - trio.current_time()
            why = f"no CONNECT frame within {self.config.connect_timeout:g} s"
        elif session.heartbeat[1]:
            wait = session.heartbeat[1] / 1000 * self.config.heartbeat_grace
            why = (
                f"nothing from the client for {wait:g} s (heart-beats every "
                f"{session.heartbeat[1]} ms were agreed)"
            )
        else:
            wait = self.config.idle_timeout
            why = f"nothing from the client for {wait:g} s (agree heart-beats to stay longer)"
        with trio.move_on_after(wait):
            try:
                return bytes(await self.stream.receive_some(_READ_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""
        log.info("STOMP client %s dropped: %s", self.peer, why)
        await self._execute(self.session.error("connection timed out", why))
        return None

    def _within_rate(self, frames: int) -> bool:
        now = trio.current_time()
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._window_frames = 0
        self._window_frames += frames
        return self._window_frames <= self.config.max_frames_per_second

    # -- doing what the session says -----------------------------------------------------

    async def _handle(self, frames: Sequence[stomp.Frame]) -> bool:
        actions: list[stomp.Action] = []
        for frame in frames:
            actions += self.session.receive(frame)
        return await self._execute(actions)

    async def _execute(self, actions: Sequence[stomp.Action]) -> bool:
        """Do ``actions`` in order; False once the connection is to close."""
        index = 0
        while index < len(actions):
            action = actions[index]
            if isinstance(action, stomp.Send):
                end = index
                while end < len(actions) and _groups(actions[end]):
                    end += 1
                if not await self._custody(actions[index:end]):
                    return False
                index = end
                continue
            index += 1
            if isinstance(action, stomp.Reply):
                await self._write_frame(action.frame)
            elif isinstance(action, stomp.Close):
                return False
            elif isinstance(action, stomp.Subscribe):
                if not await self._subscribe(action):
                    return False
            elif isinstance(action, stomp.Unsubscribe):
                reader = self.readers.pop(action.id)
                reader.scope.cancel()
                reader.lost(action.unsettled)
            elif isinstance(action, stomp.Ack):
                if not await self._ack(action):
                    return False
            elif isinstance(action, stomp.Nack):
                reader = self.readers[action.id]
                reader.nacked(action.keys)
                reader.wake()
        return True

    async def _write_frame(self, frame: stomp.Frame) -> None:
        if frame.command == "CONNECTED":
            self._connected()
        elif frame.command == "ERROR":
            self.errored = True
        await self.write(stomp.encode(frame, self.session.version or "1.2"))

    def _connected(self) -> None:
        log.debug(
            "STOMP client %s connected: %s, login %s, heart-beats %s",
            self.peer,
            self.session.version,
            self.session.login,
            self.session.heartbeat,
        )
        if self.session.heartbeat[0] and self._nursery is not None:
            self._nursery.start_soon(self._heartbeats, self.session.heartbeat[0] / 1000)

    async def write(self, data: bytes) -> None:
        """Queue ``data`` for the writer, waiting while over :data:`_HIGH_WATER` bytes
        are queued (a client that reads slowly slows its subscriptions down)."""
        while len(self._out) >= _HIGH_WATER:
            await self._progress.wait()
        self._out += data
        self._queued += len(data)
        self._wake_writer.set()

    async def flush(self) -> None:
        """Wait until everything queued so far is written (or the connection ends)."""
        target = self._queued
        while self._written < target:
            await self._progress.wait()

    async def _writer(self) -> None:
        """Write what is queued, all of it at once; a client that does not take it
        within the write time-out, or is gone, ends the connection."""
        while True:
            await self._wake_writer.wait()
            self._wake_writer = trio.Event()
            # One turn of the scheduler: what the other tasks of the connection have
            # to write now joins this write (one system call for many frames).
            await trio.lowlevel.checkpoint()
            while self._out:
                data = bytes(self._out)
                self._out.clear()
                try:
                    with trio.fail_after(self.config.write_timeout):
                        await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                    log.info("STOMP client %s: cannot write to it; closing", self.peer)
                    self.errored = False  # nobody to linger for
                    self.end()
                    return
                self._written += len(data)
                self.last_sent = trio.current_time()
                self._progress.set()
                self._progress = trio.Event()

    async def fail(self, message: str, detail: str = "") -> None:
        """ERROR (from a reader task), then the connection ends."""
        if not self.session.closed:
            for action in self.session.error(message, detail):
                if isinstance(action, stomp.Reply):
                    await self._write_frame(action.frame)
            await self.flush()
        self.end()

    async def _heartbeats(self, interval: float) -> None:
        while True:
            await trio.sleep_until(self.last_sent + interval)
            if trio.current_time() - self.last_sent >= interval:
                # One EOL, written before the next is considered (some clients, stomp.py
                # for one, take only a read of a lone EOL for a heart-beat).
                await self.write(b"\n")
                await self.flush()

    async def _custody(self, actions: Sequence[stomp.Action]) -> bool:
        """Take the SENDs among ``actions`` into custody together, then write the
        receipts among them in order; an ERROR for the first that failed."""
        sends = [action for action in actions if isinstance(action, stomp.Send)]
        failures: dict[int, stomp.StompError] = {}

        async def one(index: int, send: stomp.Send) -> None:
            try:
                await self._take(send)
            except stomp.StompError as exc:
                failures[index] = exc

        async with trio.open_nursery() as nursery:
            for index, send in enumerate(sends):
                nursery.start_soon(one, index, send)
        index = 0
        for action in actions:
            if isinstance(action, stomp.Send):
                failed = failures.get(index)
                index += 1
                if failed is not None:
                    errors = self.session.error(
                        failed.message, failed.detail, receipt=action.receipt
                    )
                    await self._execute(errors)
                    return False
            elif isinstance(action, stomp.Reply):
                await self._write_frame(action.frame)
        return True

    async def _take(self, send: stomp.Send) -> None:
        destination = send.destination
        try:
            if destination.kind == "topic":
                await self.node.publish(destination.name, send.body, ct=send.content_type)
            else:
                await self.node.send(destination.name, send.body, ct=send.content_type)
        except crypto.Malformed as exc:
            raise stomp.StompError("cannot send", str(exc)) from None
        except mesh.StoreFull as exc:
            raise stomp.StompError(
                "store full", f"{exc}: the message was not taken; send it again later"
            ) from None
        except NodeError as exc:
            raise stomp.StompError("cannot send", str(exc)) from None
        except mesh.MeshError as exc:
            raise stomp.StompError("store unavailable", str(exc)) from None

    async def _subscribe(self, action: stomp.Subscribe) -> bool:
        assert self._nursery is not None
        reader: _Reader
        kind = action.destination.kind
        if kind == "topic":
            reader = _TopicReader(self, action)
        elif kind == "queue":
            reader = _QueueReader(self, action)
        else:
            reader = _InboxReader(self, action)
        self.readers[action.id] = reader
        try:
            await self._nursery.start(reader.run)
        except stomp.StompError as exc:
            await self._execute(self.session.error(exc.message, exc.detail, receipt=action.receipt))
            return False
        return True

    async def _ack(self, action: stomp.Ack) -> bool:
        reader = self.readers[action.id]
        try:
            await reader.acked(action.keys)
        except (mesh.MeshError, NodeError) as exc:
            await self._execute(self.session.error("acknowledgement failed", str(exc)))
            return False
        reader.wake()
        return True


def _groups(action: stomp.Action) -> bool:
    """Whether ``action`` joins a run of SENDs taken into custody together: SENDs, and
    the receipts between them (written after the custody)."""
    if isinstance(action, stomp.Send):
        return True
    return isinstance(action, stomp.Reply) and action.frame.command == "RECEIPT"


# -- subscriptions --------------------------------------------------------------------------


class _Reader(abc.ABC):
    """One subscription's delivery: a task of its connection (a topic, or a queue kept
    in the store: the subclasses say how)."""

    def __init__(self, connection: _Connection, action: stomp.Subscribe) -> None:
        self.connection = connection
        self.node = connection.node
        self.session = connection.session
        self.action = action
        self.id = action.id
        self.scope = trio.CancelScope()
        self._space = trio.Event()

    @property
    def acknowledged(self) -> bool:
        return self.action.ack is not stomp.AckMode.AUTO

    def wake(self) -> None:
        """Something was settled: there may be room for more."""
        self._space.set()
        self._space = trio.Event()

    async def room(self) -> bool:
        """Wait until the subscription may be sent one more message (its prefetch);
        return whether it had to wait."""
        waited = False
        while self.acknowledged and self.session.unacked(self.id) >= self.action.prefetch:
            waited = True
            await self._space.wait()
        return waited

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False

        def start() -> None:
            nonlocal started
            started = True
            task_status.started()

        with self.scope:
            try:
                await self._run(start)
            except (mesh.MeshError, NodeError) as exc:
                if not started:
                    raise stomp.StompError("cannot subscribe", str(exc)) from None
                await self.connection.fail("subscription failed", str(exc))

    @abc.abstractmethod
    async def _run(self, started: Callable[[], None]) -> None:
        """Deliver; call ``started`` once the subscription is in force."""

    async def send(
        self,
        *,
        message_id: str,
        destination: str,
        body: bytes,
        content_type: str | None,
        key: object,
        headers: Sequence[tuple[str, str]],
    ) -> bool:
        """Send a message to the client; False (nothing sent) if the subscription ended
        meanwhile (an UNSUBSCRIBE handled while this task waited). With a client ack
        mode the message is pending (in the session) before the write begins."""
        if not self.session.subscribed(self.id):
            return False
        frame = self.session.message(
            self.id,
            message_id=message_id,
            destination=destination,
            body=body,
            content_type=content_type,
            key=key,
            headers=headers,
        )
        await self.connection._write_frame(frame)
        return True

    # Hooks: a topic subscription has nothing to do in them, a stored queue settles
    # its entries (the subclasses override what they need).

    async def acked(self, keys: Sequence[object]) -> None:  # noqa: B027
        """The client acknowledged these."""

    def nacked(self, keys: Sequence[object]) -> None:  # noqa: B027
        """The client gave these back."""

    def lost(self, keys: Sequence[object]) -> None:  # noqa: B027
        """The subscription ended (or its connection) without settling these."""


def _publication_headers(publication: Publication) -> list[tuple[str, str]]:
    return [
        ("ptth-origin", publication.origin.text),
        ("ptth-hops", str(publication.hops)),
        ("ptth-ts", str(publication.ts)),
    ]


class _TopicReader(_Reader):
    """``/topic/<pattern>``: a live subscription; what a client NACKs is sent again."""

    def __init__(self, connection: _Connection, action: stomp.Subscribe) -> None:
        super().__init__(connection, action)
        self._again: collections.deque[Publication] = collections.deque()
        self._waiting: trio.CancelScope | None = None

    async def _run(self, started: Callable[[], None]) -> None:
        async with self.node.subscribe(self.action.destination.name) as subscription:
            started()
            while True:
                publication = await self._next(subscription)
                if publication is None:
                    continue
                await self.room()
                sent = await self.send(
                    message_id=f"{publication.origin.text}:{publication.id.hex()}",
                    destination=f"/topic/{publication.topic}",
                    body=publication.body,
                    content_type=publication.ct,
                    key=publication,
                    headers=_publication_headers(publication),
                )
                if not sent:
                    return

    async def _next(self, subscription: Subscription) -> Publication | None:
        if self._again:
            return self._again.popleft()
        with trio.CancelScope() as self._waiting:
            try:
                return await subscription.get()
            except trio.EndOfChannel:  # the node stops
                await trio.sleep_forever()
        self._waiting = None
        return None  # woken for a NACKed one

    def nacked(self, keys: Sequence[object]) -> None:
        self._again.extend(key for key in keys if isinstance(key, Publication))
        if self._waiting is not None:
            self._waiting.cancel()


class _StoredReader(_Reader):
    """A queue kept in the store (the inbox, a named subscription), shared with the
    other STOMP subscriptions reading it (:class:`Claims`)."""

    queue = ""

    async def _run(self, started: Callable[[], None]) -> None:
        async with self._opened():
            started()
            written: list[Any] = []  # auto: written to the client, to acknowledge
            try:
                await self._deliver(written)
            finally:
                if written:
                    with trio.CancelScope(shield=True):
                        await self._settle(written)

    def _opened(self) -> contextlib.AbstractAsyncContextManager[object]:
        return contextlib.nullcontext()

    @abc.abstractmethod
    async def _fetch(self, after: int) -> list[mesh.InboxEntry]:
        """The queue's entries after ``after``, oldest first (a page)."""

    @abc.abstractmethod
    def _key(self, entry: mesh.InboxEntry) -> Hashable:
        """What names ``entry`` among the queue's claims and acknowledgements."""

    @abc.abstractmethod
    async def _acknowledge(self, keys: Sequence[Any]) -> None:
        """Remove these entries from the store: the client is done with them."""

    @abc.abstractmethod
    def _message(self, entry: mesh.InboxEntry) -> tuple[str, str, list[tuple[str, str]]]:
        """message-id, destination and the ptth headers of ``entry``."""

    async def _deliver(self, written: list[Any]) -> None:
        claims = self.connection.gateway.claims
        queue = self.queue
        after = 0
        released = claims.released(queue)
        while True:
            if released.is_set():
                after = 0  # something was given back: look from the start again
                released = claims.released(queue)
            changed = self.node.mesh.inbox_changed
            epoch = claims.epoch(queue)
            entries = await self._fetch(after)
            if not entries:
                if written:
                    await self._settle(written)
                await _first(released.wait, changed.wait)
                continue
            for entry in entries:
                key = self._key(entry)
                if claims.held(queue, key):
                    after = entry.seq
                    continue
                if await self.room() or claims.epoch(queue) != epoch:
                    break  # others settled meanwhile: read again from here
                claims.take(queue, key)
                after = entry.seq
                message_id, destination, headers = self._message(entry)
                try:
                    sent = await self.send(
                        message_id=message_id,
                        destination=destination,
                        body=entry.body,
                        content_type=entry.ct,
                        key=key,
                        headers=headers,
                    )
                except BaseException:
                    # Not written. A client-ack one is pending in the session, which
                    # gives it back when the subscription or the connection ends.
                    if not self.acknowledged:
                        claims.release(queue, [key])
                    raise
                if not sent:
                    claims.release(queue, [key])
                    return
                if not self.acknowledged:
                    written.append(key)
            if written:
                await self._settle(written)

    async def _settle(self, written: list[Any]) -> None:
        keys = list(written)
        written.clear()
        await self._acknowledge(keys)
        self.connection.gateway.claims.settle(self.queue, keys)

    async def acked(self, keys: Sequence[object]) -> None:
        await self._acknowledge(list(keys))
        self.connection.gateway.claims.settle(self.queue, list(_hashable(keys)))

    def nacked(self, keys: Sequence[object]) -> None:
        self.connection.gateway.claims.release(self.queue, list(_hashable(keys)))

    def lost(self, keys: Sequence[object]) -> None:
        self.connection.gateway.claims.release(self.queue, list(_hashable(keys)))


def _hashable(keys: Sequence[object]) -> list[Hashable]:
    return [key for key in keys if isinstance(key, Hashable)]


class _InboxReader(_StoredReader):
    """``/node/me``: this node's inbox."""

    queue = "inbox"

    async def _fetch(self, after: int) -> list[mesh.InboxEntry]:
        store = self.node.store
        entries: list[mesh.InboxEntry] = await self.node.run_store(
            lambda: store.pending(after=after)
        )
        return entries

    def _key(self, entry: mesh.InboxEntry) -> Hashable:
        return (entry.src, entry.id)

    async def _acknowledge(self, keys: Sequence[Any]) -> None:
        await self.node.ack(keys)

    def _message(self, entry: mesh.InboxEntry) -> tuple[str, str, list[tuple[str, str]]]:
        headers = [
            ("ptth-origin", entry.src.text),
            ("ptth-hops", str(entry.hops)),
            ("ptth-ts", str(entry.ts)),
        ]
        return f"{entry.src.text}:{entry.id.hex()}", f"/node/{self.node.node_id.text}", headers


class _QueueReader(_StoredReader):
    """``/queue/<name>``: a named subscription of this node."""

    def __init__(self, connection: _Connection, action: stomp.Subscribe) -> None:
        super().__init__(connection, action)
        self.name = action.destination.name
        self.queue = f"queue/{self.name}"

    @contextlib.asynccontextmanager
    async def _opened(self) -> AsyncIterator[object]:
        patterns = self.action.patterns
        if not patterns:
            saved = {s.name: s for s in await self.node.subscriptions()}.get(self.name)
            if saved is None:
                raise stomp.StompError(
                    "no such queue",
                    f"this node has no named subscription {self.name!r}: bind it with a "
                    "pattern header (e.g. pattern:news.#,weather.*) or 'ptth subscribe "
                    f"PATTERN --name {self.name}'",
                )
            patterns = saved.patterns
        try:
            # Keeps (or binds) the named subscription; the reading is done here.
            async with self.node.subscribe(*patterns, name=self.name) as kept:
                yield kept
        except crypto.Malformed as exc:
            raise stomp.StompError("bad queue", str(exc)) from None

    async def _fetch(self, after: int) -> list[mesh.InboxEntry]:
        store = self.node.store
        name = self.name
        entries: list[mesh.InboxEntry] = await self.node.run_store(
            lambda: store.subscription_pending(name, after=after)
        )
        return entries

    def _key(self, entry: mesh.InboxEntry) -> Hashable:
        return entry.seq

    async def _acknowledge(self, keys: Sequence[Any]) -> None:
        store = self.node.store
        name = self.name
        await self.node.run_store(lambda: store.ack_subscription(name, keys))

    def _message(self, entry: mesh.InboxEntry) -> tuple[str, str, list[tuple[str, str]]]:
        headers = [
            ("ptth-origin", entry.src.text),
            ("ptth-hops", str(entry.hops)),
            ("ptth-ts", str(entry.ts)),
        ]
        return f"{entry.src.text}:{entry.id.hex()}", f"/topic/{entry.topic}", headers


async def _first(*waits: Callable[[], Awaitable[object]]) -> None:
    """Wait until the first of ``waits`` returns."""
    async with trio.open_nursery() as nursery:

        async def run(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(run, wait)
