"""The simulated network: named hosts, links, NAT and partitions, under real nodes.

:class:`SimNetwork` is a :class:`node.MemoryNetwork` whose connections are
:class:`~simulations.SimStream` pairs (the ``_make_pair`` seam of ``node/_net.py``) and
whose dials take a virtual round trip and obey the network's rules. A node runs on it
through :meth:`SimNetwork.host`, a per-host view that is a :class:`node.Network`: the
node's h11 server accepts from its listeners and its httpx client dials through its
httpcore backend, naming the host it dials from. Nothing in the node changes.

Dialling, as TCP does it:

* the SYN and SYN-ACK each take a one-way delay; each may be lost (``Link.loss``), and
  a lost SYN is sent again after 1, 2, 4, ... s; after :data:`SYN_RETRIES` retries the
  dial fails with ``ETIMEDOUT`` (127 s, Linux's default), unless the dialler's own
  connect timeout ends it first;
* a SYN that crosses a partition, or that is addressed to a NATed host from any other
  host, is dropped (so the dial times out: nobody can dial in to a NATed host; what the
  NATed host dials works both ways, like any connection);
* a SYN that arrives where nobody listens (a crashed node) is answered with an RST:
  ``ConnectionRefusedError`` after one round trip; an unknown host name gives
  ``EHOSTUNREACH``.

Partitions split the hosts into groups (hosts named in no group form one more group);
no packet crosses between groups until :meth:`SimNetwork.heal`, and bytes already in
flight wait for it. :meth:`SimNetwork.crash_host` resets every connection of a host, as
a crashed process's kernel does.

Random choices come from one :class:`~simulations.Direction` per ordered host pair,
seeded from the network's seed and the two names, so a run depends only on its seed.
"""

from __future__ import annotations

import dataclasses
import errno
import random
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import httpcore
import trio

from node import MemoryNetwork
from simulations._clock import sleep_until
from simulations._errors import SimulationError
from simulations._link import Direction, Link, Transit
from simulations._stream import SimStream, open_connection

__all__ = [
    "OUTSIDE",
    "SYN_RETRIES",
    "SYN_RTO",
    "Host",
    "HostNetwork",
    "NetworkStatistics",
    "SimNetwork",
]

#: The initial retransmission timeout of a SYN (RFC 6298, Linux), seconds.
SYN_RTO: Final = 1.0
#: SYN retransmissions before a dial fails (Linux tcp_syn_retries: 1+2+...+64 = 127 s).
SYN_RETRIES: Final = 6
#: The host a dial comes from when it names none (a test's own client): a public host
#: that is in no partition group and uses the default link.
OUTSIDE: Final = "outside"

_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,62})")


@dataclasses.dataclass
class NetworkStatistics:
    """Counters of everything that crossed the network since it was made."""

    #: Dials attempted, connections established, dials refused (nobody listening), and
    #: dials never answered (every SYN lost or dropped until ETIMEDOUT or the dialler's
    #: own timeout).
    dials: int = 0
    connections: int = 0
    dials_refused: int = 0
    dials_unanswered: int = 0
    #: Bytes written by either end of any connection (HTTP heads and bodies), in writes.
    bytes: int = 0
    writes: int = 0
    #: Segments (SYNs included) lost at random (``Link.loss``) and retransmitted.
    segments_lost: int = 0
    #: SYNs dropped by a partition or a NAT.
    syns_dropped: int = 0
    #: Connection resets sent, of which ``random_resets`` drawn from ``Link.reset``.
    resets: int = 0
    random_resets: int = 0


@dataclasses.dataclass
class Host:
    """A host of the simulated network. ``nat``: nobody can dial in."""

    name: str
    nat: bool = False


class SimNetwork(MemoryNetwork):
    """A simulated network in virtual time; see the module docstring.

    ``nursery`` runs the tasks that carry bytes (one per connection direction with
    bytes in flight); ``seed`` fixes every random choice of the network; ``default_link``
    applies to every host pair without a link of its own.
    """

    def __init__(
        self, nursery: trio.Nursery, *, seed: int = 0, default_link: Link | None = None
    ) -> None:
        super().__init__()
        self.seed = seed
        self.default_link = default_link or Link()
        self.statistics = NetworkStatistics()
        self._nursery = nursery
        self._hosts: dict[str, Host] = {}
        self._links: dict[tuple[str, str], Link] = {}
        self._directions: dict[tuple[str, str], Direction] = {}
        self._groups: dict[str, int] | None = None
        self._changed = trio.Event()
        # Open connection ends by host (dicts, not sets: iteration must not depend on
        # hash values, or a crash would reset connections in a different order per run).
        self._ends: dict[str, dict[SimStream, None]] = {}

    # -- hosts and links ----------------------------------------------------------------

    def add_host(self, name: str, *, nat: bool = False) -> Host:
        """Add a host. Raises :class:`SimulationError` for a taken or unusable name."""
        if not _HOST_NAME.fullmatch(name) or name == OUTSIDE:
            raise SimulationError(
                f"host name {name!r} is not usable: letters, digits, '.' and '-', "
                f"at most 63, not {OUTSIDE!r}"
            )
        if name in self._hosts:
            raise SimulationError(f"host {name!r} already exists")
        host = self._hosts[name] = Host(name, nat)
        return host

    @property
    def hosts(self) -> dict[str, Host]:
        """The hosts by name, in the order they were added."""
        return dict(self._hosts)

    def host(self, name: str) -> HostNetwork:
        """The network as seen from host ``name``: give it to ``Node.open(network=...)``.

        Raises :class:`SimulationError` if there is no such host.
        """
        self._known(name)
        return HostNetwork(self, name)

    def set_nat(self, name: str, nat: bool) -> None:
        """Put host ``name`` behind a NAT (or take it out). Open connections stay."""
        self._known(name).nat = nat

    def set_link(self, a: str, b: str, link: Link) -> None:
        """Use ``link`` between hosts ``a`` and ``b``, both ways, from now on."""
        self._known(a)
        self._known(b)
        self._links[a, b] = self._links[b, a] = link

    def link(self, src: str, dst: str) -> Link:
        """The link from ``src`` to ``dst`` (a host to itself: loopback, no delay)."""
        if src == dst:
            return self._links.get((src, dst), _LOOPBACK)
        return self._links.get((src, dst), self.default_link)

    def _known(self, name: str) -> Host:
        host = self._hosts.get(name)
        if host is None:
            raise SimulationError(f"no host {name!r} in this network")
        return host

    def _direction(self, src: str, dst: str) -> Direction:
        direction = self._directions.get((src, dst))
        if direction is None:
            rng = random.Random(f"{self.seed}/link/{src}/{dst}")
            direction = self._directions[src, dst] = Direction(rng)
        return direction

    def _transit(self, src: str, dst: str, size: int) -> Transit:
        transit = self._direction(src, dst).transit(self.link(src, dst), size, trio.current_time())
        self.statistics.segments_lost += transit.lost_segments
        return transit

    # -- partitions ---------------------------------------------------------------------

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Split the network: hosts in different groups cannot reach each other.

        Hosts named in no group form one more group together. Replaces any partition in
        force. Raises :class:`SimulationError` for an unknown host or a host named in
        two groups.
        """
        mapping: dict[str, int] = {}
        for index, group in enumerate(groups):
            for name in group:
                self._known(name)
                if name in mapping:
                    raise SimulationError(f"host {name!r} is in two partition groups")
                mapping[name] = index
        self._groups = mapping
        self._topology_changed()

    def heal(self) -> None:
        """End the partition: everything reaches everything again; held bytes flow."""
        self._groups = None
        self._topology_changed()

    @property
    def partitioned(self) -> bool:
        return self._groups is not None

    def is_cut(self, a: str, b: str) -> bool:
        """Whether a partition separates hosts ``a`` and ``b`` now."""
        if self._groups is None or a == b:
            return False
        return self._groups.get(a, -1) != self._groups.get(b, -1)

    def _blocked(self, src: str, dst: str) -> bool:
        """Whether a SYN from ``src`` to ``dst`` is dropped (partition or NAT)."""
        if src == dst:
            return False
        host = self._hosts.get(dst)
        return self.is_cut(src, dst) or (host is not None and host.nat)

    def _topology_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_topology_change(self) -> None:
        await self._changed.wait()

    # -- crashes ------------------------------------------------------------------------

    def crash_host(self, name: str) -> int:
        """Reset every open connection of host ``name``; return how many.

        The peers see the resets after a one-way delay (not across a partition).
        """
        self._known(name)
        ends = list(self._ends.get(name, {}))
        for end in ends:
            end._abort()
        return len(ends)

    def _forget(self, end: SimStream) -> None:
        ends = self._ends.get(end.local)
        if ends is not None:
            ends.pop(end, None)

    def _start_pump(self, pump: Callable[[], Awaitable[None]]) -> None:
        self._nursery.start_soon(pump)

    # -- dialling -----------------------------------------------------------------------

    async def open_listeners(
        self, host: str, port: int
    ) -> list[trio.abc.Listener[trio.abc.Stream]]:
        """As :meth:`node.MemoryNetwork.open_listeners`, on a host of this network.

        Raises :class:`OSError` ``EADDRNOTAVAIL`` for a host that is not in it.
        """
        if host not in self._hosts:
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EADDRNOTAVAIL, f"no host {host!r} in the simulated network")
        return await super().open_listeners(host, port)

    async def connect(
        self, host: str, port: int, *, src_host: str | None = None
    ) -> trio.abc.Stream:
        """Dial ``(host, port)`` from ``src_host`` (default :data:`OUTSIDE`).

        Takes a virtual round trip. Raises :class:`TimeoutError` (``ETIMEDOUT``) when
        every SYN was dropped, :class:`ConnectionRefusedError` when nobody listens, and
        :class:`OSError` ``EHOSTUNREACH`` for an unknown host.
        """
        src = src_host or OUTSIDE
        await self.handshake(src, host, port)
        try:
            stream = await super().connect(host, port, src_host=src)
        except ConnectionRefusedError:
            self.statistics.dials_refused += 1
            raise
        return stream

    async def handshake(self, src: str, host: str, port: int) -> None:
        """The SYN and SYN-ACK of a dial from ``src`` to ``(host, port)``, as
        :meth:`connect` makes them (counted as a dial), up to where the listener is
        looked for: nothing is connected.

        Raises :class:`TimeoutError` (``ETIMEDOUT``) when every SYN was dropped and
        :class:`OSError` ``EHOSTUNREACH`` for an unknown host.
        """
        self.statistics.dials += 1
        if host not in self._hosts:
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EHOSTUNREACH, f"no route to host {host!r}")
        forward, back = self._direction(src, host), self._direction(host, src)
        answered = False
        try:
            for attempt in range(SYN_RETRIES + 1):
                link = self.link(src, host)
                if self._blocked(src, host):
                    self.statistics.syns_dropped += 1
                elif forward.lost(link) or back.lost(link):
                    self.statistics.segments_lost += 1
                else:
                    await sleep_until(trio.current_time() + forward.delay(link) + back.delay(link))
                    answered = True
                    break
                await sleep_until(trio.current_time() + SYN_RTO * 2**attempt)
            else:
                raise TimeoutError(errno.ETIMEDOUT, f"connection to {host}:{port} timed out")
        finally:
            if not answered:
                self.statistics.dials_unanswered += 1

    def listening(self, host: str, port: int) -> bool:
        """Whether a listener is open on ``(host, port)`` (a dial there connects)."""
        return (host.lower(), port) in self._listeners

    def _make_pair(
        self, src_host: str | None, dst: tuple[str, int]
    ) -> tuple[trio.abc.Stream, trio.abc.Stream]:
        client, server = open_connection(self, src_host or OUTSIDE, dst[0])
        self._ends.setdefault(client.local, {})[client] = None
        self._ends.setdefault(server.local, {})[server] = None
        self.statistics.connections += 1
        return client, server


_LOOPBACK: Final = Link()


class HostNetwork:
    """The :class:`node.Network` of one host: listens there, dials from there."""

    def __init__(self, network: SimNetwork, name: str) -> None:
        self.network = network
        self.name = name

    async def open_listeners(
        self, host: str, port: int
    ) -> list[trio.abc.Listener[trio.abc.Stream]]:
        """Listen on this host. Raises :class:`OSError` ``EADDRNOTAVAIL`` for another
        host's name, ``EADDRINUSE`` for a port in use."""
        if host != self.name:
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EADDRNOTAVAIL, f"host {self.name} cannot listen on {host}")
        return await self.network.open_listeners(host, port)

    def client_backend(self) -> httpcore.AsyncNetworkBackend:
        """The network's backend, dialling from this host."""
        return _FromHost(self.network.client_backend(), self.name)

    def listener_address(self, listener: trio.abc.Listener[trio.abc.Stream]) -> tuple[str, int]:
        return self.network.listener_address(listener)


class _FromHost(httpcore.AsyncNetworkBackend):
    """An httpcore backend that dials with ``local_address`` set to one host.

    The ``timeout`` parameters (ruff ASYNC109) are httpcore's interface.
    """

    def __init__(self, inner: httpcore.AsyncNetworkBackend, host: str) -> None:
        self._inner = inner
        self._host = host

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=self._host, socket_options=socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._inner.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options
        )

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
