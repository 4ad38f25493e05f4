"""Where one hop's CPU goes: each stage a message passes through, timed alone, per message.

``benchmarks/versus.py`` measures the whole path; this takes it apart. Every stage a
message meets on one hop (origin -> neighbour -> the application there) is run alone,
in this thread, over ``--messages`` 200-byte messages in batches as a busy node makes
them (``--batch``, 250: a forwarder's POST), and printed in microseconds per message
beside the Ed25519 verify and sign of the same run, the two costs no design can avoid.
The sum per node is what one core can do at most with nothing else running (no HTTP
exchange, no scheduling, no thread hand-offs: those are what the whole path costs
beyond it; compare with the process CPU per message ``versus.py`` measures).

Stages, as the node runs them:

* origin: ``make`` (a ``msg`` frame, validated), ``seal`` (its CBOR and the signature),
  ``custody`` (taken into the store: a group of one-frame writes in one transaction, as
  the group commit runs concurrent ``node.send`` calls), ``batch`` (the forwarder reads
  what is queued for the neighbour), ``encode`` (the POST's body), ``forwarded`` (the
  neighbour took them: deleted, the trace updated);
* neighbour: ``decode`` (the POST's body split into frames), ``open`` (each frame's
  signature verified and its payload read and checked), ``accept`` (delivered to the
  inbox in one transaction), ``results`` (the answer's body), ``pending`` (the local API
  reads the inbox, 100 at a time), ``ack`` (the application's acknowledgements).

Stores are SQLite in ``--dir`` (default: /dev/shm where there is one, so that the
figures are CPU, not the disk's fsync), with ``synchronous=FULL`` as a node runs; with
``--store memory``, in memory as a simulation keeps them (lean, not synced:
``simulations --stores memory``).

Last, the store's work alone: what the store stages cost a message that crosses
``--hops`` hops (default 1; may be fractional, an average): the origin's ``custody``,
then at each hop ``batch`` and ``forwarded`` at the sender and ``accept`` at the
receiver, and the destination's ``pending`` and ``ack``. Every node keeps a store, so
no run of nodes, real or simulated, delivers faster than that on one core; with
``--store memory --batch 1`` (a simulation's light load: a POST carries one or two
frames), it bounds the engine-level simulator's delivered messages per wall second.
Then the same with the message's signatures (signed once, verified at every hop): what
two cores doing nothing but the store's work and Ed25519 could deliver at most, the
ceiling of any design that keeps both.

Usage: python benchmarks/budget.py [--messages N] [--batch B] [--dir DIR]
       [--store disk|memory] [--hops H] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, and benchmarks/mesh.py
# would shadow the ``mesh`` package: take the directory off before importing ptth.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import contextlib
import json
import os
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, Final

import nacl.bindings

import crypto
import mesh

BODY: Final = 200
#: Stages in the order a message meets them, with the node that runs each.
STAGES: Final = (
    ("origin", "make"),
    ("origin", "seal"),
    ("origin", "custody"),
    ("origin", "batch"),
    ("origin", "encode"),
    ("origin", "forwarded"),
    ("neighbour", "decode"),
    ("neighbour", "open"),
    ("neighbour", "accept"),
    ("neighbour", "results"),
    ("neighbour", "pending"),
    ("neighbour", "ack"),
)


class _Stopwatch:
    """Seconds spent in each stage, summed over the batches."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def _batches(count: int, size: int) -> list[int]:
    return [min(size, count - start) for start in range(0, count, size)]


def _open_store(directory: Path, name: str, kind: str) -> mesh.Store:
    """A node's store: a file in ``directory`` (as a node keeps it), or ``memory`` as
    a simulation keeps it (named after ``directory``: unique while it exists)."""
    if kind == "memory":
        where = urllib.parse.quote(str(directory.resolve() / name), safe="/")
        return mesh.Store(f"file:{where}?mode=memory&cache=shared", uri=True, lean=True, sync=False)
    return mesh.Store(directory / f"{name}.db")


def measure(messages: int, batch: int, directory: Path, store: str = "disk") -> dict[str, Any]:
    """Seconds per message for each stage, and for one Ed25519 sign and verify."""
    origin_id = crypto.Identity.generate()
    origin, neighbour = origin_id.node_id, crypto.Identity.generate().node_id
    body = os.urandom(BODY)
    now = int(time.time() * 1000)
    watch = _Stopwatch()
    sending = _open_store(directory, "origin", store)
    receiving = _open_store(directory, "neighbour", store)
    envelopes: list[bytes] = []
    try:
        for size in _batches(messages, batch):
            with watch.stage("make"):
                frames = [
                    crypto.Frame(
                        kind=crypto.Kind.MSG,
                        src=origin,
                        id=os.urandom(crypto.FRAME_ID_SIZE),
                        ts=now,
                        exp=now + 3_600_000,
                        hops=16,
                        dst=neighbour,
                        body=body,
                    )
                    for _ in range(size)
                ]
            with watch.stage("seal"):
                envelopes = [frame.seal(origin_id) for frame in frames]
            with watch.stage("custody"):
                sending.write_group(
                    [
                        sending.enqueue_write(
                            [mesh.Outgoing.of(frame, envelope, hops=0, next_hop=neighbour)],
                            now=now,
                            receipts=[False],
                        )
                        for frame, envelope in zip(frames, envelopes, strict=True)
                    ]
                )
            with watch.stage("batch"):
                queued = sending.batch(neighbour, now=now, limit=batch)
            with watch.stage("encode"):
                request = mesh.encode_frames(item.wire for item in queued)
            with watch.stage("decode"):
                wires = mesh.decode_frames(request)
            with watch.stage("open"):
                admitted = [
                    mesh.admit(wire, now=now) if isinstance(wire, mesh.WireFrame) else wire
                    for wire in wires
                ]
            intakes = [
                mesh.Intake(item, mesh.Deliver(), origin)
                for item in admitted
                if isinstance(item, mesh.Admitted)
            ]
            assert len(intakes) == len(queued), "a frame did not open"
            with watch.stage("accept"):
                results = receiving.accept(intakes, now=now)
            with watch.stage("results"):
                answer = mesh.encode_results(results)
            assert len(mesh.decode_results(answer, expected=len(queued))) == len(queued)
            with watch.stage("forwarded"):
                sending.forwarded([item.seq for item in queued], first_hop=neighbour, now=now)
            entries: list[mesh.InboxEntry] = []
            while True:
                with watch.stage("pending"):
                    page = receiving.pending(after=entries[-1].seq if entries else 0)
                if not page:
                    break
                entries += page
            with watch.stage("ack"):
                acked = receiving.ack([(entry.src, entry.id) for entry in entries])
            assert acked == len(queued), f"acknowledged {acked} of {len(queued)}"
    finally:
        sending.close()
        receiving.close()
    signed = origin_id.sign(envelopes[-1])
    return {
        "messages": messages,
        "batch": batch,
        "store": store,
        "stages": {stage: seconds / messages for stage, seconds in watch.seconds.items()},
        "sign": _per_call(lambda: origin_id.sign(envelopes[-1])),
        "verify": _per_call(
            lambda: nacl.bindings.crypto_sign_open(signed + envelopes[-1], origin.raw)
        ),
    }


def _per_call(function: Callable[[], Any], number: int = 2000) -> float:
    started = time.perf_counter()
    for _ in range(number):
        function()
    return (time.perf_counter() - started) / number


def store_work(stages: dict[str, float], hops: float) -> float:
    """Seconds of store work alone for a message crossing ``hops`` hops: custody at its
    origin; at each hop, the sender's batch read and forwarded, the receiver's accept;
    pending and ack at its destination."""
    per_hop = stages["batch"] + stages["forwarded"] + stages["accept"]
    return stages["custody"] + hops * per_hop + stages["pending"] + stages["ack"]


def table(result: dict[str, Any], out: IO[str], hops: float = 1.0) -> None:
    stages: dict[str, float] = result["stages"]
    verify = result["verify"]
    print(
        f"one hop, stage by stage: {result['messages']:,} messages of {BODY} bytes, "
        f"batches of {result['batch']}; microseconds per message (one thread)",
        file=out,
    )
    print(f"{'node':10} {'stage':10} {'us/msg':>8} {'x verify':>9}", file=out)
    totals: dict[str, float] = {}
    for node, stage in STAGES:
        seconds = stages[stage]
        totals[node] = totals.get(node, 0.0) + seconds
        print(f"{node:10} {stage:10} {seconds * 1e6:8.1f} {seconds / verify:9.2f}", file=out)
    for node, seconds in totals.items():
        print(
            f"{node:10} {'total':10} {seconds * 1e6:8.1f} {seconds / verify:9.2f}"
            f"   (at most {1 / seconds:,.0f} msgs/s on one core)",
            file=out,
        )
    print(
        f"Ed25519 (PyNaCl, one core): sign {result['sign'] * 1e6:.1f} us, "
        f"verify {verify * 1e6:.1f} us; seal includes one sign, open one verify",
        file=out,
    )
    crypto_s = result["sign"] + verify
    work_s = sum(totals.values())
    print(
        f"beside the signatures, the hop's other work is {(work_s - crypto_s) * 1e6:.0f} us "
        f"per message ({(work_s - crypto_s) / crypto_s:.2f}x the two signatures)",
        file=out,
    )
    floor = store_work(stages, hops)
    print(
        f"the store's work alone, a message crossing {hops:g} hop(s) "
        f"({result.get('store', 'disk')} stores, batches of {result['batch']}): "
        f"{floor * 1e6:.0f} us; at most {1 / floor:,.0f} delivered a second on one core "
        "with nothing else to do",
        file=out,
    )
    signed = floor + result["sign"] + hops * verify
    print(
        f"with its signatures (signed once, verified at each of {hops:g} hop(s)): "
        f"{signed * 1e6:.0f} us; two cores doing nothing else: at most "
        f"{2 / signed:,.0f} delivered a second",
        file=out,
    )


def _default_dir() -> Path:
    shm = Path("/dev/shm")  # a private temporary directory is made in it
    return (
        shm if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else Path(tempfile.gettempdir())
    )


def main(argv: Sequence[str] | None = None, out: IO[str] = sys.stdout) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--dir", type=Path, default=None, help="where the stores go")
    parser.add_argument(
        "--store",
        choices=("disk", "memory"),
        default="disk",
        help="files synced as a node keeps them, or in memory as a simulation does",
    )
    parser.add_argument(
        "--hops", type=float, default=1.0, help="hops a message crosses, for the store's work"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.batch < 1:
        parser.error("--messages and --batch must be at least 1")
    if not args.hops >= 1:  # (NaN too)
        parser.error(f"--hops {args.hops:g}: a message crosses at least 1 hop")
    base = args.dir if args.dir is not None else _default_dir()
    if not base.is_dir():
        parser.error(f"--dir {base} is not a directory")
    with tempfile.TemporaryDirectory(prefix="ptth-budget-", dir=base) as directory:
        result = measure(args.messages, args.batch, Path(directory), args.store)
    if args.json:
        result["hops"] = args.hops
        result["store_work"] = store_work(result["stages"], args.hops)
        json.dump(result, out, indent=2)
        print(file=out)
    else:
        table(result, out, args.hops)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
