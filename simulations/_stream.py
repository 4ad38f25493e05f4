"""A simulated TCP connection: two :class:`SimStream` ends over the simulated network.

Each end owns the queue of what it sent and not yet delivered: ``(arrival time, item)``
where an item is bytes, an end of file (FIN) or a reset (RST). A pump task (in the
network's nursery, alive only while the queue is not empty) sleeps in virtual time until
the head is due and hands it to the other end's receive buffer. So:

* latency, jitter and loss (as retransmission delay) decide each write's arrival
  (:meth:`simulations.Direction.transit`); arrivals never go back in time, so bytes stay
  in order, as TCP keeps them;
* bandwidth makes ``send_all`` wait until the write has been serialised on its link
  direction; and a receiver that does not read stops its sender once :data:`WINDOW`
  bytes are in flight or unread (TCP's flow control): that is back-pressure;
* a partition holds what crosses it until :meth:`SimNetwork.heal` (TCP retransmits
  until then); a reset (a random one, a crash, or data sent to an end that was closed)
  breaks both ends: further operations raise ``trio.BrokenResourceError``, and unread
  data is discarded, as with ECONNRESET;
* :meth:`SimStream.is_readable` says whether ``receive_some`` would return at once,
  which httpcore asks to drop kept-alive connections the server has closed.
"""

from __future__ import annotations

import collections
import enum
import math
import operator
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import trio

from simulations._clock import sleep_until
from simulations._link import Transit

__all__ = ["WINDOW", "Carrier", "SimStream", "open_connection"]

#: Bytes in flight plus unread, per direction, before ``send_all`` waits for the
#: receiver to read (the order of Linux's default socket buffers).
WINDOW: Final = 4 * 1024 * 1024


class _Counters(Protocol):
    bytes: int
    writes: int
    resets: int
    random_resets: int


class Carrier(Protocol):
    """What a stream needs of the network that carries it (:class:`SimNetwork` is one;
    a protocol, so that this module need not import the network's)."""

    @property
    def statistics(self) -> _Counters: ...

    def _transit(self, src: str, dst: str, size: int) -> Transit: ...

    def _forget(self, end: SimStream) -> None: ...

    def _start_pump(self, pump: Callable[[], Awaitable[None]]) -> None: ...

    def is_cut(self, a: str, b: str) -> bool: ...

    async def _wait_topology_change(self) -> None: ...


class _Signal(enum.Enum):
    EOF = "FIN"
    RESET = "RST"


_Item = bytes | _Signal


class SimStream(trio.abc.HalfCloseableStream):
    """One end of a simulated connection, at host :attr:`local`, to host :attr:`remote`.

    A ``trio.abc.HalfCloseableStream``: ``send_all`` raises ``trio.BrokenResourceError``
    once the connection was reset, ``trio.ClosedResourceError`` after ``aclose`` or
    ``send_eof``; ``receive_some`` returns ``b""`` at the peer's end of file and raises
    ``trio.BrokenResourceError`` after a reset. One task at a time may send, and one
    receive (``trio.BusyResourceError``). ``window``: see :data:`WINDOW`.
    """

    def __init__(self, network: Carrier, local: str, remote: str, *, window: int = WINDOW) -> None:
        self.network = network
        self.local = local
        self.remote = remote
        self.window = window
        self.peer: SimStream = self  # set by open_connection
        self._buffer = bytearray()
        self._eof = False
        self._reset = False
        self._closed = False
        self._send_closed = False
        self._lot = trio.lowlevel.ParkingLot()
        self._queue: collections.deque[tuple[float, _Item]] = collections.deque()
        self._queued_bytes = 0
        self._window_lot = trio.lowlevel.ParkingLot()
        self._last_arrival = -math.inf
        self._pumping = False
        self._requeued = trio.Event()
        self._sending = False
        self._receiving = False

    def __repr__(self) -> str:
        return f"<SimStream {self.local} -> {self.remote}>"

    # -- the trio stream interface ------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_can_send()
            payload = bytes(data)
            if not payload:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            while self._window_full():
                await self._window_lot.park()
                self._check_can_send()
            now = trio.current_time()
            transit = self.network._transit(self.local, self.remote, len(payload))
            if transit.depart > now:
                await sleep_until(transit.depart)  # serialisation: back-pressure
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
            self._check_can_send()
            self.network.statistics.bytes += len(payload)
            self.network.statistics.writes += 1
            if transit.reset:
                self.network.statistics.random_resets += 1
                self._abort(arrival=transit.arrival)
            else:
                self._enqueue(transit.arrival, payload)
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint()
            self._check_can_send()
            while self._window_full():
                await self._window_lot.park()
                self._check_can_send()
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("this stream is closed")
            if self._send_closed or self._reset:
                return
            self._send_closed = True
            self._send_fin()
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and operator.index(max_bytes) < 1:
            raise ValueError(f"max_bytes must be >= 1, not {max_bytes}")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint()
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("this stream is closed")
                if self._reset:
                    raise trio.BrokenResourceError(
                        f"connection reset ({self.local} <- {self.remote})"
                    )
                if self._buffer:
                    size = len(self._buffer) if max_bytes is None else max_bytes
                    data = bytes(self._buffer[:size])
                    del self._buffer[:size]
                    self.peer._window_lot.unpark_all()
                    return data
                if self._eof:
                    return b""
                await self._lot.park()
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        """Close this end (idempotent). Unread data makes it a reset, as in TCP."""
        if not self._closed:
            self._closed = True
            self._lot.unpark_all()
            self._window_lot.unpark_all()
            if not self._reset:
                if self._buffer:
                    self._abort()
                elif not self._send_closed:
                    self._send_closed = True
                    self._send_fin()
            self._buffer.clear()
            self.peer._window_lot.unpark_all()
            self.network._forget(self)
        await trio.lowlevel.checkpoint()

    def is_readable(self) -> bool:
        """Whether ``receive_some`` would return (or raise) at once."""
        return bool(self._buffer) or self._eof or self._reset or self._closed

    # -- the wire ---------------------------------------------------------------------

    def _window_full(self) -> bool:
        return self._queued_bytes + len(self.peer._buffer) >= self.window

    def _check_can_send(self) -> None:
        if self._closed or self._send_closed:
            raise trio.ClosedResourceError("this stream is closed for sending")
        if self._reset:
            raise trio.BrokenResourceError(f"connection reset ({self.local} -> {self.remote})")

    def _send_fin(self) -> None:
        transit = self.network._transit(self.local, self.remote, 0)
        self._enqueue(transit.arrival, _Signal.EOF)

    def _abort(self, *, arrival: float | None = None) -> None:
        """Reset the connection from this end: drop what is queued, send an RST."""
        if self._reset:
            return
        self._reset = True
        self._buffer.clear()
        self.peer._window_lot.unpark_all()
        self._lot.unpark_all()
        self._window_lot.unpark_all()
        self._queue.clear()
        self._queued_bytes = 0
        self._wake_pump()
        if arrival is None:
            arrival = self.network._transit(self.local, self.remote, 0).arrival
        self._last_arrival = trio.current_time()
        self.network.statistics.resets += 1
        self.network._forget(self)
        self._enqueue(arrival, _Signal.RESET)

    def _enqueue(self, arrival: float, item: _Item) -> None:
        arrival = max(arrival, self._last_arrival)
        self._last_arrival = arrival
        self._queue.append((arrival, item))
        if isinstance(item, bytes):
            self._queued_bytes += len(item)
        if not self._pumping:
            self._pumping = True
            self.network._start_pump(self._pump)

    def _wake_pump(self) -> None:
        self._requeued.set()
        self._requeued = trio.Event()

    async def _pump(self) -> None:
        network = self.network
        try:
            while self._queue:
                arrival, item = self._queue[0]
                if trio.current_time() < arrival:
                    with trio.move_on_at(arrival):
                        await self._requeued.wait()
                    continue
                if network.is_cut(self.local, self.remote):
                    await network._wait_topology_change()
                    continue
                self._queue.popleft()
                if isinstance(item, bytes):
                    self._queued_bytes -= len(item)
                self.peer._arrive(item)
        finally:
            self._pumping = False

    def _arrive(self, item: _Item) -> None:
        if self._reset:
            return
        if item is _Signal.RESET:
            self._reset = True
            self._buffer.clear()
            self.peer._window_lot.unpark_all()
            self._queue.clear()
            self._queued_bytes = 0
            self._window_lot.unpark_all()
            self._wake_pump()
            self.network._forget(self)
        elif self._closed:
            if item is not _Signal.EOF:
                self._abort()  # data for a closed socket: the kernel answers RST
            return
        elif item is _Signal.EOF:
            self._eof = True
        else:
            self._buffer += item
        self._lot.unpark_all()


def open_connection(
    network: Carrier, client: str, server: str, *, window: int = WINDOW
) -> tuple[SimStream, SimStream]:
    """The ``(client end, server end)`` of a new connection between two hosts."""
    client_end = SimStream(network, client, server, window=window)
    server_end = SimStream(network, server, client, window=window)
    client_end.peer = server_end
    server_end.peer = client_end
    return client_end, server_end
