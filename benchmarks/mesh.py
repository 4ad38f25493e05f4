"""Multi-hop forwarding: throughput over 3 hops and latency over 5, beside Ed25519.

Real nodes on loopback TCP (127.0.0.1), each with its durable SQLite store
(``synchronous=FULL``, one commit per batch taken or handed on), each verifying the
origin's signature of every frame it takes (and the signed request and answer of each
hop). Measured in the same run:

* the Ed25519 verify rate of this machine (PyNaCl, one core);
* **throughput**: a chain origin -> r1 -> r2 -> destination (3 hops); the origin takes
  custody of N frames in batches of 100 (``send_sealed``), at most 10,000 on their way
  at a time, while the forwarders carry them and the destination's application reads
  and acknowledges them; frames/s = N / (first custody -> last frame read from the
  destination's inbox), and that rate as a ratio of the verify rate (each frame is
  verified at 3 hops). A drop receipt back at the origin ends the run with an error;
* **latency** at light load over 5 hops (6 nodes): one message at a time with
  ``receipt=True``; p50/p99 of the time to custody (``send`` returns), to arrival in
  the destination's inbox (one way), and to ``delivered(id)`` (the signed receipt back
  at the origin: a round trip of 10 hops).

By default all nodes run in this process (one trio loop: they share one core, the
store's commits and large verifies run in worker threads). With ``--processes`` every
node but the origin is a ``ptth run`` process of its own.

Data directories go to /dev/shm when there is one (fsync costs nothing there: the
figures are then CPU-bound), else to the system temp dir; ``--dir`` picks another place
(a real disk shows the cost of a durable commit per batch per hop).

The latency is measured ``--rounds`` times (default 3), each on a fresh chain: on a
shared 2-core machine one run's p50 varies by half from the next. Each round's figures
are printed, then the medians over the rounds and the goal (p50 <= 10 ms, p99 <= 30 ms
one way).

With ``--trusted`` each forwarder trusts the node before it (``ptth trust``): they pass
messages on without checking the origin's signature, which the destination checks.

Usage: python benchmarks/mesh.py [--frames N] [--messages M] [--rounds R] [--body BYTES]
       [--processes] [--trusted] [--dir DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, and this file would
# shadow the ``mesh`` package: take the directory off before importing ptth.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import contextlib
import io
import itertools
import json
import math
import os
import random
import signal
import statistics
import subprocess
import tempfile
import time
import timeit
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
)
from typing import Any, TextIO, TypeVar

import httpx
import nacl.signing
import trio

import crypto
from node import Node, NodeConfig
from node import _cli as cli

_T = TypeVar("_T")

BATCH = 100
#: Frames sent (and waited for) before each measurement.
WARM_UP = 200
#: Frames on their way at most in the throughput run (custody taken, not arrived).
IN_FLIGHT = 10_000
#: Inbox ids acknowledged per request, at most, by the application at a `ptth run` node.
ACK_BATCH = 500
#: The goal for five hops at light load, one way (ms).
GOAL_P50_MS = 10.0
GOAL_P99_MS = 30.0
#: Start-up, peering and routes must take no longer than this (s).
SETUP_TIMEOUT = 60.0


def verify_rate(seconds: float = 1.0) -> float:
    """Ed25519 verifies per second (PyNaCl, 200-byte message)."""
    key = nacl.signing.SigningKey.generate()
    signed = key.sign(os.urandom(200))
    verify = key.verify_key.verify
    number = 500
    elapsed = timeit.timeit(lambda: verify(signed), number=number)
    number = max(number, int(number * seconds / elapsed))
    return number / timeit.timeit(lambda: verify(signed), number=number)


def data_root(requested: str | None) -> tuple[str, str]:
    """Where data directories go, and words saying so."""
    if requested:
        return requested, f"{requested} (as asked)"
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return str(shm), "/dev/shm (tmpfs: fsync is free, figures are CPU-bound)"
    default = tempfile.gettempdir()
    return default, f"{default} (no /dev/shm: fsync costs what this disk costs)"


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


# -- the destination, wherever it runs ------------------------------------------------


class Peer:
    """A node the origin talks to: its token, and how to see its inbox."""

    token: str
    node_id: crypto.NodeId

    async def add_peer(self, token: str) -> None:
        raise NotImplementedError

    async def route_to(self, node: crypto.NodeId) -> bool:
        raise NotImplementedError

    async def trust(self, node: crypto.NodeId) -> None:
        """`ptth trust NODE`: pass on its messages for others without checking them."""
        raise NotImplementedError

    def arrivals(
        self, *, acknowledge: bool = False
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[None]]:
        """An iterator that yields once per message arriving in the inbox (oldest
        first, those already there included); ``acknowledge``: each is acknowledged
        too, as an application would (a long run must: left in the inbox, messages
        fill their origin's share of it, 32 MiB, and the rest wait a hop back)."""
        raise NotImplementedError


class InProcess(Peer):
    def __init__(self, node: Node) -> None:
        self.node = node
        self.token = node.address_token()
        self.node_id = node.node_id

    async def add_peer(self, token: str) -> None:
        await self.node.add_peer(token)

    async def route_to(self, node: crypto.NodeId) -> bool:
        return any(route["destination"] == node.text for route in self.node.routes())

    async def trust(self, node: crypto.NodeId) -> None:
        await self.node.change_policy("trust", node)

    @contextlib.asynccontextmanager
    async def arrivals(self, *, acknowledge: bool = False) -> AsyncIterator[AsyncIterator[None]]:
        async def each() -> AsyncGenerator[None, None]:
            async with contextlib.aclosing(self.node.inbox(follow=True)) as messages:
                async for message in messages:
                    yield
                    if acknowledge:
                        await message.ack()

        async with contextlib.aclosing(each()) as iterator:
            yield iterator


class Process(Peer):
    """A `ptth run` process, driven through its local API."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        command = [sys.executable, "-m", "node", "--data-dir", str(data_dir), "run"]
        self.process = subprocess.Popen(
            [*command, "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        lines: dict[str, str] = {}
        for line in self.process.stdout:  # its last line once it is serving: the token
            key, _, value = line.strip().partition(" ")
            lines[key] = value.strip()
            if key == "address":
                break
        else:
            raise RuntimeError(f"ptth run for {data_dir} ended early")
        self.token = lines["address"]
        self.node_id = crypto.NodeId.parse(lines["node"])
        info = json.loads((data_dir / "api.json").read_text())
        self.url = str(info["url"])
        self.headers = {"authorization": f"Bearer {(data_dir / 'api.token').read_text().strip()}"}

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()

    def cli(self, *args: str) -> None:
        """`ptth --data-dir DIR ARGS` (the CLI's code, in this process)."""
        err = io.StringIO()
        argv = ["--data-dir", str(self.data_dir), *args]
        if cli.run(argv, out=io.StringIO(), err=err) != 0:
            raise RuntimeError(f"ptth {' '.join(args)}: {err.getvalue().strip()}")

    async def add_peer(self, token: str) -> None:
        await trio.to_thread.run_sync(self.cli, "peer", "add", token)

    async def trust(self, node: crypto.NodeId) -> None:
        await trio.to_thread.run_sync(self.cli, "trust", node.text)

    async def route_to(self, node: crypto.NodeId) -> bool:
        async with httpx.AsyncClient(base_url=self.url, headers=self.headers) as client:
            routes = (await client.get("routes")).json()
        return any(route["destination"] == node.text for route in routes)

    @contextlib.asynccontextmanager
    async def arrivals(self, *, acknowledge: bool = False) -> AsyncIterator[AsyncIterator[None]]:
        send, receive = trio.open_memory_channel[None](math.inf)
        async with consuming(self, ACK_BATCH, send, acknowledge=acknowledge):
            yield receive


# -- the application at a `ptth run` node ------------------------------------------


class InboxConsumer:
    """The application at a `ptth run` node, through its local API: reads the inbox's
    event stream and acknowledges what it read, one request per batch."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        batch: int,
        arrived: trio.MemorySendChannel[None] | None = None,
    ) -> None:
        self.client = client
        self.batch = batch
        #: Told of each message as it is read (before it is acknowledged).
        self.arrived = arrived
        self.acked = 0
        self._changed = trio.Event()
        self._keys_in, self._keys_out = trio.open_memory_channel[str](math.inf)

    async def read(self, response: httpx.Response) -> None:
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "message":
                value = json.loads(line[6:])
                self._keys_in.send_nowait(f"{value['src']}:{value['id']}")
                if self.arrived is not None:
                    self.arrived.send_nowait(None)
        raise RuntimeError("the receiver's inbox stream ended")

    async def acknowledge(self) -> None:
        async for first in self._keys_out:
            keys = [first]
            while len(keys) < self.batch:
                try:
                    keys.append(self._keys_out.receive_nowait())
                except trio.WouldBlock:
                    break
            response = await self.client.post("inbox/ack", json={"ids": keys})
            response.raise_for_status()
            if response.json()["acked"] != len(keys):
                raise RuntimeError(f"acknowledged {len(keys)}, the inbox had {response.text}")
            self.acked += len(keys)
            self._changed.set()
            self._changed = trio.Event()

    async def wait_acked(self, total: int) -> None:
        while self.acked < total:
            await self._changed.wait()


@contextlib.asynccontextmanager
async def consuming(
    node: Process,
    batch: int,
    arrived: trio.MemorySendChannel[None] | None = None,
    *,
    acknowledge: bool = True,
) -> AsyncIterator[InboxConsumer]:
    """An :class:`InboxConsumer` of ``node``'s inbox, reading and (unless told not to)
    acknowledging."""
    async with (
        httpx.AsyncClient(base_url=node.url, headers=node.headers, timeout=None) as client,
        client.stream("GET", "inbox", params={"follow": "1"}) as response,
    ):
        response.raise_for_status()
        consumer = InboxConsumer(client, batch, arrived)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer.read, response)
            if acknowledge:
                nursery.start_soon(consumer.acknowledge)
            yield consumer
            nursery.cancel_scope.cancel()


# -- a chain --------------------------------------------------------------------------


@contextlib.contextmanager
def processes(root: Path, count: int) -> Iterator[list[Process]]:
    started: list[Process] = []
    try:
        for i in range(count):
            started.append(Process(root / f"r{i + 1}"))
        yield started
    finally:
        for process in started:
            process.stop()


@contextlib.asynccontextmanager
async def chain(
    root: Path, hops: int, outside: list[Process] | None, *, trusted: bool = False
) -> AsyncIterator[tuple[Node, Peer]]:
    """An origin (in this process) and ``hops`` more nodes in a line, peered with their
    neighbours only; yields the origin and the last node once the routes are known.
    ``trusted``: each forwarder trusts the node before it (`ptth trust`), so only the
    destination checks the origin's signatures."""
    config = NodeConfig(listen="127.0.0.1:0")
    async with contextlib.AsyncExitStack() as stack:
        origin = await stack.enter_async_context(
            Node.open(root / "origin", config=config, rng=random.Random(0))
        )
        others: list[Peer] = []
        if outside is not None:
            others += outside
        else:
            for i in range(hops):
                node = await stack.enter_async_context(
                    Node.open(root / f"n{i + 1}", config=config, rng=random.Random(i + 1))
                )
                others.append(InProcess(node))
        await origin.add_peer(others[0].token)
        await others[0].add_peer(origin.address_token())
        for left, right in itertools.pairwise(others):
            await left.add_peer(right.token)
            await right.add_peer(left.token)
        if trusted:
            upstream = [origin.node_id, *(other.node_id for other in others)]
            for forwarder, before in zip(others[:-1], upstream, strict=False):
                await forwarder.trust(before)
        last = others[-1]
        # No event says "a route appeared": look every 10 ms.
        with trio.fail_after(SETUP_TIMEOUT):
            while not await InProcess(origin).route_to(last.node_id):  # noqa: ASYNC110
                await trio.sleep(0.01)
            while not await last.route_to(origin.node_id):  # noqa: ASYNC110 - for receipts
                await trio.sleep(0.01)
        yield origin, last


async def send_batches(
    origin: Node,
    dst: crypto.NodeId,
    count: int,
    body: bytes,
    window: trio.Semaphore | None = None,
) -> None:
    """Give the origin custody of ``count`` frames, ``BATCH`` per transaction; with
    ``window``, a frame only once a place in it is free (each arrival frees one)."""
    for start in range(0, count, BATCH):
        size = min(BATCH, count - start)
        if window is not None:
            for _ in range(size):
                await window.acquire()
        frames = [origin.new_frame(dst, body) for _ in range(size)]
        await origin.send_sealed([(frame, frame.seal(origin.identity)) for frame in frames])


async def throughput(
    root: Path, frames: int, body: bytes, outside: list[Process] | None, *, trusted: bool = False
) -> float:
    """Frames/s over origin -> r1 -> r2 -> destination (``trusted``: see :func:`chain`)."""
    async with (
        chain(root, 3, outside, trusted=trusted) as (origin, last),
        last.arrivals(acknowledge=True) as arrivals,
    ):
        await send_batches(origin, last.node_id, WARM_UP, body)
        for _ in range(WARM_UP):
            await anext(arrivals)
        # At most IN_FLIGHT frames on their way: unbounded, the origin (taking custody
        # faster than the chain carries) fills a forwarder's queue to its share per
        # origin, which refuses the rest until there is room (held back for seconds at
        # a time), and the figure measures those pauses, not the chain.
        window = trio.Semaphore(IN_FLIGHT)
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_batches, origin, last.node_id, frames, body, window)
            nursery.start_soon(none_dropped, origin)
            for _ in range(frames):
                await anext(arrivals)
                window.release()
            nursery.cancel_scope.cancel()
        return frames / (time.perf_counter() - start)


async def none_dropped(origin: Node) -> None:
    """Raise if a drop receipt comes back to ``origin``: a frame the benchmark waits for
    will not arrive (rather than wait for it for ever)."""
    while True:
        await trio.sleep(0.5)  # a benchmark's watch, not a test's synchronisation
        dropped = origin.statistics.receipts_received_dropped
        if dropped:
            raise RuntimeError(
                f"{dropped} frames were dropped on the way (drop receipts came back to the "
                "origin); 'ptth trace' at the origin says why"
            )


async def latency(
    root: Path,
    messages: int,
    body: bytes,
    outside: list[Process] | None,
    *,
    trusted: bool = False,
) -> dict[str, list[float]]:
    """Per message: seconds to custody, to the destination's inbox, to the receipt
    (``trusted``: see :func:`chain`)."""
    samples: dict[str, list[float]] = {"custody": [], "one way": [], "receipt back": []}
    async with (
        chain(root, 5, outside, trusted=trusted) as (origin, last),
        last.arrivals() as arrivals,
    ):
        for i in range(WARM_UP // 10 + messages):
            start = time.perf_counter()
            sent = await origin.send(last.node_id, body, receipt=True)
            custody = time.perf_counter()
            await anext(arrivals)
            arrived = time.perf_counter()
            with trio.fail_after(SETUP_TIMEOUT):
                trace = await origin.delivered(sent.id)
            done = time.perf_counter()
            if trace.state != "delivered":
                raise RuntimeError(f"message {i} was dropped: {trace.why}")
            if i >= WARM_UP // 10:
                samples["custody"].append(custody - start)
                samples["one way"].append(arrived - start)
                samples["receipt back"].append(done - start)
    return samples


def run_measurement(
    where: Path,
    nodes: int,
    use_processes: bool,
    measure: Callable[[Path, list[Process] | None], Awaitable[Any]],
) -> Any:
    """Run ``measure`` in a fresh data directory (and, if asked, with ``nodes`` fresh
    `ptth run` processes besides the origin)."""
    with tempfile.TemporaryDirectory(dir=where, prefix="ptth-bench-") as tmp:
        if not use_processes:
            return run_stoppable(measure, Path(tmp), None)
        with processes(Path(tmp), nodes) as outside:
            return run_stoppable(measure, Path(tmp), outside)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def summarise(rounds: list[dict[str, list[float]]], out: TextIO) -> dict[str, tuple[float, float]]:
    """Print each round's p50/p99 of each latency, then per latency the median over the
    rounds of the p50s and of the p99s (with their range), and the goal; return the
    medians (ms) by name."""
    per_round = [
        {name: (statistics.median(v) * 1000, percentile(v, 0.99) * 1000) for name, v in r.items()}
        for r in rounds
    ]
    for i, figures in enumerate(per_round, 1):
        said = ", ".join(f"{name} {p50:.2f} / {p99:.2f}" for name, (p50, p99) in figures.items())
        print(f"  round {i}: p50 / p99 ms: {said}", file=out)
    medians: dict[str, tuple[float, float]] = {}
    for name in per_round[0]:
        p50s = [figures[name][0] for figures in per_round]
        p99s = [figures[name][1] for figures in per_round]
        p50, p99 = statistics.median(p50s), statistics.median(p99s)
        medians[name] = (p50, p99)
        per_hop = ""
        if name == "one way":
            per_hop = f"   ({p50 / 5:.2f} ms per hop at p50)"
        elif name == "receipt back":
            per_hop = f"   ({p50 / 10:.2f} ms per hop at p50, 10 hops)"
        print(
            f"  {name:<13} p50 {p50:8.2f} ms ({min(p50s):.2f}-{max(p50s):.2f})   "
            f"p99 {p99:8.2f} ms ({min(p99s):.2f}-{max(p99s):.2f}){per_hop}",
            file=out,
        )
    p50, p99 = medians["one way"]
    met = "met" if p50 <= GOAL_P50_MS and p99 <= GOAL_P99_MS else "not met"
    print(
        f"goal: 5 hops one way p50 <= {GOAL_P50_MS:g} ms and p99 <= {GOAL_P99_MS:g} ms "
        f"(medians of {len(rounds)} rounds): {met}",
        file=out,
    )
    return medians


def run_stoppable(measure: Callable[..., Awaitable[_T]], *args: Any) -> _T:
    """``trio.run(measure, *args)``, which Ctrl-C or SIGTERM end by cancelling it (then
    :class:`KeyboardInterrupt` is raised from here): trio delivers Ctrl-C to the main
    task only, which may wait where it cannot be interrupted, and the nodes and brokers
    a benchmark started are then left running."""

    async def main() -> _T:
        stopped = False
        outcome: list[_T] = []
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    nonlocal stopped
                    async for _ in signals:
                        stopped = True
                        nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                outcome.append(await measure(*args))
                nursery.cancel_scope.cancel()
        if stopped or not outcome:
            raise KeyboardInterrupt
        return outcome[0]

    return trio.run(main)


def stop_on_sigterm() -> None:
    """Take SIGTERM (``kill``'s default) as Ctrl-C: the run unwinds, and the nodes and
    brokers it started are stopped on the way out rather than left running."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000, help="frames for the throughput")
    parser.add_argument("--messages", type=int, default=200, help="messages for the latency")
    parser.add_argument(
        "--rounds",
        type=_positive,
        default=3,
        help="latency measurements, each on a fresh chain (their runs vary by half)",
    )
    parser.add_argument("--body", type=int, default=100, help="body size in bytes")
    parser.add_argument(
        "--processes", action="store_true", help="run every node but the origin as `ptth run`"
    )
    parser.add_argument("--dir", help="where the data directories go (default /dev/shm)")
    parser.add_argument(
        "--trusted",
        action="store_true",
        help="each forwarder trusts the node before it (ptth trust): only the destination "
        "checks the origin's signatures",
    )
    args = parser.parse_args(argv)
    body = os.urandom(args.body)
    where, said = data_root(args.dir)
    mode = (
        "each node but the origin a `ptth run` process"
        if args.processes
        else "all nodes in this process (one trio loop)"
    )
    print("ptth mesh forwarding: real nodes on loopback TCP, durable SQLite, each hop")
    print("verifying the origin's signature of every frame (and the hop's signed HTTP)")
    print(f"  nodes:       {mode}; {os.cpu_count()} CPUs")
    if args.trusted:
        print("  trusted:     each forwarder trusts the node before it (ptth trust)")
    print(f"  data dirs:   {said}")
    print(
        f"  throughput:  {args.frames} frames ({args.body}-byte bodies), custody in batches "
        f"of {BATCH}, 3 hops"
    )
    print(
        f"  latency:     {args.messages} messages one at a time, receipt=True, 5 hops, "
        f"{args.rounds} rounds"
    )
    print()

    verify = verify_rate()
    print(f"Ed25519 verify (one core)        {verify:9.0f} /s")

    async def run_throughput(root: Path, outside: list[Process] | None) -> float:
        return await throughput(root, args.frames, body, outside, trusted=args.trusted)

    async def run_latency(root: Path, outside: list[Process] | None) -> dict[str, list[float]]:
        return await latency(root, args.messages, body, outside, trusted=args.trusted)

    rate: float = run_measurement(Path(where), 3, args.processes, run_throughput)
    print(
        f"3 hops, origin -> r1 -> r2 -> dst  {rate:9.0f} frames/s   "
        f"{rate / verify:5.3f} x verify   ({3 * rate:.0f} frame verifies/s across hops, "
        f"{3 * rate / verify:5.3f} x verify)"
    )
    print(f"5 hops, light load ({args.messages} messages, one at a time):")
    rounds = [
        run_measurement(Path(where), 5, args.processes, run_latency) for _ in range(args.rounds)
    ]
    summarise(rounds, sys.stdout)


def interrupted() -> int:
    """What a benchmark's command line does on Ctrl-C or SIGTERM, once everything it
    started is stopped: one line, exit status 130."""
    print(f"{Path(sys.argv[0]).name}: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
    stop_on_sigterm()
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(interrupted())
