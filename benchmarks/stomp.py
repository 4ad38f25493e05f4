"""STOMP: stomp.py publish -> subscribe throughput through one ptth node, with receipts
and without, beside RabbitMQ's STOMP plugin in the same run when RabbitMQ is installed.

* ``ptth``: a ``ptth run --stomp 127.0.0.1:0`` process of its own, its data directory
  in ``--dir`` (default the system's temp dir). Every publication is signed and
  committed to the node's SQLite store (synchronous=FULL) before anything else happens
  to it, then handed to the local subscription.
* ``rabbitmq``: RabbitMQ from the OS package (``rabbitmq-server``), a broker of its own
  started for this run on loopback with ``benchmarks/versus.py``'s
  :func:`~benchmarks.versus.rabbitmq_broker` (state in a temporary directory) and its
  ``rabbitmq_stomp`` plugin enabled on a free port; login ``guest``. ``/topic/bench``
  is the ``amq.topic`` exchange and a queue of the subscription's own, held in memory
  (a live subscriber's messages are not written to disk).

Each round measures each system in two modes, the order of the systems rotated from
round to round: a consumer connection subscribes to ``/topic/bench`` (``ack:auto``) and
waits for the subscription's RECEIPT; a producer connection sends ``--messages``
messages of ``--body`` random bytes to ``/topic/bench``:

* ``no receipts``: as fast as stomp.py writes them;
* ``receipts``: each SEND asks for a RECEIPT, at most ``--in-flight`` unanswered at a
  time. A ptth RECEIPT means the publication is in the node's durable custody;
  RabbitMQ's STOMP adapter sends a SEND's RECEIPT once the broker has confirmed the
  message (publisher confirms).

The rate is the messages over the time from the first SEND to the last MESSAGE at the
consumer; 200 messages (or ``--messages``, if fewer) go the same way untimed first.
Printed: per system and mode the median rate and min-max, and ptth's rate as a ratio of
RabbitMQ's, taken within each round, with its median. Both clients run in this process
(stomp.py threads); the servers are processes of their own.

Usage: python benchmarks/stomp.py [--messages N] [--rounds R] [--body BYTES]
       [--in-flight K] [--systems ptth,rabbitmq] [--dir DIR] [--timeout S] [--json]
RabbitMQ: ``apt-get install rabbitmq-server`` (the STOMP plugin ships with it; this
script enables it on the broker it starts).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, and this file would
# shadow the ``stomp`` package (and benchmarks/mesh.py the ``mesh`` one): put the
# repository's root there instead (so ``benchmarks.*`` imports too).
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import stomp

from benchmarks.versus import (
    RABBITMQ_HINT,
    filesystem,
    find_rabbitmq,
    free_ports,
    rabbitmq_broker,
    rabbitmq_version,
    rotated,
    stop,
    version_of,
)

SYSTEMS = ("ptth", "rabbitmq")
MODES = ("no receipts", "receipts")
DESTINATION = "/topic/bench"
WARM_UP = 200
#: Start-up of a server (s).
SETUP_TIMEOUT = 60.0


@dataclass(frozen=True)
class Server:
    """Where a STOMP server listens and how to log in to it."""

    port: int
    login: str | None = None
    passcode: str | None = None
    #: The ``host`` header (RabbitMQ takes it as its virtual host).
    vhost: str | None = None


# -- the servers ---------------------------------------------------------------------------


@contextlib.contextmanager
def ptth_server(where: Path) -> Iterator[Server]:
    """A ``ptth run --stomp`` process with its data in a temporary directory."""
    with tempfile.TemporaryDirectory(dir=where, prefix="stomp-ptth-") as tmp:
        command = [
            sys.executable,
            "-m",
            "node",
            "--data-dir",
            tmp,
            "run",
            "--listen",
            "127.0.0.1:0",
            "--stomp",
            "127.0.0.1:0",
        ]
        with subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        ) as process:
            try:
                assert process.stdout is not None
                port = None
                for line in process.stdout:  # ends if the process exits
                    if line.startswith(b"stomp "):
                        port = int(line.split()[1].rpartition(b":")[2])
                        break
                if port is None:
                    raise RuntimeError(
                        f"ptth run exited with {process.wait()} before serving STOMP"
                    )
                yield Server(port)
            finally:
                stop(process)


@contextlib.contextmanager
def rabbitmq_server(server: Path, where: Path) -> Iterator[Server]:
    """versus.py's RabbitMQ broker, with its STOMP plugin listening on a free port."""
    (port,) = free_ports(1)
    # rabbitmq_broker passes this process's environment on to the broker.
    settings = {
        "RABBITMQ_ENABLED_PLUGINS": "rabbitmq_stomp",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
            f'-rabbitmq_stomp tcp_listeners [{{"127.0.0.1",{port}}}]'
        ),
    }
    saved = {name: os.environ.get(name) for name in settings}
    with contextlib.ExitStack() as stack:
        os.environ.update(settings)
        try:
            stack.enter_context(rabbitmq_broker(server, where))
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        wait_for(port)
        yield Server(port, "guest", "guest", "/")


def wait_for(port: int) -> None:
    deadline = time.monotonic() + SETUP_TIMEOUT
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}") from None
            time.sleep(0.1)  # a broker starting: nothing to wait on but its port


# -- the clients -----------------------------------------------------------------------------


class Consumer(stomp.ConnectionListener):  # type: ignore[misc]
    """Counts the messages it receives; set ``until`` to be told when N came."""

    def __init__(self) -> None:
        self.count = 0
        self.until = 0
        self.done = threading.Event()
        self.receipts: set[str] = set()
        self.receipt = threading.Condition()
        self.errors: list[str] = []

    def on_message(self, frame: Any) -> None:
        self.count += 1
        if self.count >= self.until:
            self.done.set()

    def on_receipt(self, frame: Any) -> None:
        with self.receipt:
            self.receipts.add(frame.headers["receipt-id"])
            self.receipt.notify_all()

    def on_error(self, frame: Any) -> None:
        self.errors.append(frame.headers.get("message", "?"))
        self.done.set()
        with self.receipt:
            self.receipt.notify_all()

    def wait_receipt(self, receipt_id: str, timeout: float) -> None:
        with self.receipt:
            if not self.receipt.wait_for(
                lambda: receipt_id in self.receipts or bool(self.errors), timeout
            ):
                raise RuntimeError(f"no RECEIPT {receipt_id} within {timeout} s")
        if self.errors:
            raise RuntimeError(f"ERROR: {self.errors[0]}")


class Producer(stomp.ConnectionListener):  # type: ignore[misc]
    """Keeps at most ``in_flight`` SENDs without their RECEIPT."""

    def __init__(self, in_flight: int) -> None:
        self.window = threading.Semaphore(in_flight)
        self.errors: list[str] = []

    def on_receipt(self, frame: Any) -> None:
        self.window.release()

    def on_error(self, frame: Any) -> None:
        self.errors.append(frame.headers.get("message", "?"))
        self.window.release()


def open_connection(server: Server, listener: Any) -> Any:
    connection = stomp.Connection12(
        [("127.0.0.1", server.port)], vhost=server.vhost, auto_decode=False
    )
    connection.set_listener("bench", listener)
    connection.connect(server.login, server.passcode, wait=True)
    return connection


def transfer(
    producer: Any,
    window: Producer,
    consumer: Consumer,
    count: int,
    body: bytes,
    receipts: bool,
    timeout: float,
) -> float:
    """Send ``count`` messages; return the seconds until the consumer had them all."""
    consumer.done.clear()
    consumer.until = consumer.count + count
    started = time.perf_counter()
    for number in range(count):
        if receipts:
            if not window.window.acquire(timeout=timeout):
                raise RuntimeError(f"no RECEIPT within {timeout} s")
            producer.send(DESTINATION, body, receipt=str(number))
        else:
            producer.send(DESTINATION, body)
        if window.errors:
            raise RuntimeError(f"ERROR: {window.errors[0]}")
    if not consumer.done.wait(timeout):
        raise RuntimeError(f"{consumer.until - consumer.count} messages missing after {timeout} s")
    if consumer.errors:
        raise RuntimeError(f"ERROR: {consumer.errors[0]}")
    return time.perf_counter() - started


def measure(
    server: Server, count: int, body: bytes, receipts: bool, in_flight: int, timeout: float
) -> float:
    """Messages per second from a producer to a subscriber through ``server``."""
    consumer = Consumer()
    window = Producer(in_flight)
    subscriber = open_connection(server, consumer)
    try:
        subscriber.subscribe(DESTINATION, id="bench", ack="auto", receipt="subscribed")
        consumer.wait_receipt("subscribed", timeout)
        producer = open_connection(server, window)
        try:
            transfer(producer, window, consumer, min(WARM_UP, count), body, receipts, timeout)
            elapsed = transfer(producer, window, consumer, count, body, receipts, timeout)
        finally:
            producer.disconnect()
    finally:
        subscriber.disconnect()
    return count / elapsed


# -- the run --------------------------------------------------------------------------------


def summarize(
    systems: Sequence[str], rounds: Sequence[dict[str, dict[str, float | None]]]
) -> dict[str, Any]:
    """Per system and mode: the rates, their median, min and max; ptth's ratio to
    RabbitMQ within each round, and its median."""
    result: dict[str, Any] = {}
    for system in systems:
        result[system] = {}
        for mode in MODES:
            rates = [one.get(system, {}).get(mode) for one in rounds]
            present = [rate for rate in rates if rate is not None]
            row: dict[str, Any] = {
                "rates": rates,
                "median": statistics.median(present) if present else None,
                "min": min(present) if present else None,
                "max": max(present) if present else None,
            }
            if system == "ptth" and "rabbitmq" in systems:
                ratios: list[float | None] = []
                for one in rounds:
                    ours = one.get("ptth", {}).get(mode)
                    theirs = one.get("rabbitmq", {}).get(mode)
                    ratios.append(None if ours is None or not theirs else ours / theirs)
                found = [ratio for ratio in ratios if ratio is not None]
                row["vs rabbitmq"] = ratios
                row["median vs rabbitmq"] = statistics.median(found) if found else None
            result[system][mode] = row
    return result


def fmt(value: float | None, pattern: str = "{:,.0f}") -> str:
    return "-" if value is None else pattern.format(value)


def report(summary: dict[str, Any], out: IO[str]) -> None:
    print(file=out)
    print(f"{'system':<10} {'mode':<12} {'median/s':>10} {'min-max':>17}  vs RabbitMQ", file=out)
    for system, modes in summary.items():
        for mode, row in modes.items():
            spread = f"{fmt(row['min'])}-{fmt(row['max'])}"
            ratio = ""
            if "median vs rabbitmq" in row:
                each = " ".join(fmt(r, "{:.2f}") for r in row["vs rabbitmq"])
                ratio = f"{fmt(row['median vs rabbitmq'], '{:.2f}')}x  ({each})"
            print(
                f"{system:<10} {mode:<12} {fmt(row['median']):>10} {spread:>17}  {ratio}",
                file=out,
            )


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def system_list(text: str) -> list[str]:
    systems = [name.strip() for name in text.split(",") if name.strip()]
    for name in systems:
        if name not in SYSTEMS:
            raise argparse.ArgumentTypeError(f"unknown system {name} (of {','.join(SYSTEMS)})")
    return systems


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=positive, default=5_000, help="per round and mode")
    parser.add_argument("--rounds", type=positive, default=3)
    parser.add_argument("--body", type=positive, default=200, help="message size in bytes")
    parser.add_argument("--in-flight", type=positive, default=100, help="SENDs awaiting RECEIPT")
    parser.add_argument(
        "--systems", type=system_list, default=list(SYSTEMS), help=f"of {','.join(SYSTEMS)}"
    )
    parser.add_argument("--dir", help="where data and broker state go (default: temp dir)")
    parser.add_argument("--timeout", type=positive, default=120, help="per transfer (s)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    args = parse(argv)
    out = out or sys.stdout
    where = Path(args.dir or tempfile.gettempdir())
    if not where.is_dir():
        print(f"stomp.py: --dir {where} is not a directory", file=sys.stderr)
        return 2
    progress = sys.stderr if args.json else out

    def say(line: str = "") -> None:
        print(line, file=progress, flush=True)

    body = os.urandom(args.body)
    say(
        f"STOMP publish -> subscribe (stomp.py {version_of('stomp.py')}): {args.body}-byte "
        f"messages, {args.messages:,} per round and mode, {args.rounds} rounds; receipts: "
        f"<= {args.in_flight} in flight"
    )
    say(f"  data and broker state: {where} ({filesystem(str(where))})")
    missing: dict[str, str] = {}
    rounds: list[dict[str, dict[str, float | None]]] = []
    with contextlib.ExitStack() as stack:
        servers: dict[str, Server] = {}
        if "ptth" in args.systems:
            servers["ptth"] = stack.enter_context(ptth_server(where))
            say(f"  ptth {version_of('ptth')}: a `ptth run --stomp` process")
        if "rabbitmq" in args.systems:
            found = find_rabbitmq()
            if found is None:
                missing["rabbitmq"] = (
                    f"no rabbitmq-server found ({RABBITMQ_HINT}; its STOMP plugin comes with it)"
                )
                say(f"  rabbitmq: not measured: {missing['rabbitmq']}")
            else:
                servers["rabbitmq"] = stack.enter_context(rabbitmq_server(found, where))
                say(f"  rabbitmq {rabbitmq_version(found)}: its STOMP plugin, a broker of its own")
        order = [system for system in args.systems if system in servers]
        for index in range(args.rounds):
            measured: dict[str, dict[str, float | None]] = {}
            for system in rotated(order, index):
                measured[system] = {}
                for mode in MODES:
                    try:
                        rate: float | None = measure(
                            servers[system],
                            args.messages,
                            body,
                            mode == "receipts",
                            args.in_flight,
                            args.timeout,
                        )
                    except Exception as exc:
                        rate = None
                        say(f"  round {index + 1}: {system} {mode} failed: {exc!r}")
                    measured[system][mode] = rate
            rounds.append(measured)
            said = "  ".join(
                f"{system} {mode} {fmt(measured[system][mode])}/s"
                for system in order
                for mode in MODES
            )
            say(f"round {index + 1}: {said}")
    summary = summarize(order, rounds)
    if args.json:
        document = {
            "workload": {
                "messages": args.messages,
                "body": args.body,
                "in flight": args.in_flight,
                "rounds": args.rounds,
            },
            "systems": summary,
            "missing": missing,
        }
        print(json.dumps(document, indent=2), file=out)
    else:
        report(summary, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
