"""One-hop throughput of the fabric, against the Ed25519 verify rate of this machine.

Two real nodes on loopback TCP in this process (so both share one core for their
trio loops; the receiver verifies big batches in a worker thread). Prints:

* Ed25519 verifies/s (PyNaCl) and full frame opens/s (decode + verify + validate),
* frames/s one hop with batch size 1 (one send at a time, each waiting for its
  acknowledgement) and batch size 100 (100 sends in flight, so the sender batches),
  each as a ratio of the verify rate measured in the same run;
* the same with the receiver in its own process (``ptth run``), as nodes really run:
  sender and receiver then have a core each.

Usage: python benchmarks/fabric.py [--frames N] [--body BYTES]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, and benchmarks/mesh.py
# would shadow the ``mesh`` package: take the directory off before importing ptth.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import os
import random
import signal
import subprocess
import tempfile
import time
import timeit

import nacl.signing
import trio

import crypto
from node import Node, NodeConfig


def verify_rate(seconds: float = 1.0) -> float:
    key = nacl.signing.SigningKey.generate()
    signed = key.sign(os.urandom(200))
    verify = key.verify_key.verify
    number = 500
    elapsed = timeit.timeit(lambda: verify(signed), number=number)
    number = max(number, int(number * seconds / elapsed))
    return number / timeit.timeit(lambda: verify(signed), number=number)


def sign_rate(seconds: float = 1.0) -> float:
    """Ed25519 signatures per second on one core (PyNaCl), over 200 bytes."""
    key = nacl.signing.SigningKey.generate()
    message = os.urandom(200)
    sign = key.sign
    number = 500
    elapsed = timeit.timeit(lambda: sign(message), number=number)
    number = max(number, int(number * seconds / elapsed))
    return number / timeit.timeit(lambda: sign(message), number=number)


def open_rate(body: int, seconds: float = 1.0) -> float:
    identity = crypto.Identity.generate()
    now = int(time.time() * 1000)
    frame = crypto.Frame(
        kind=crypto.Kind.MSG,
        src=identity.node_id,
        id=os.urandom(16),
        ts=now,
        exp=now + 60_000,
        hops=8,
        dst=identity.node_id,
        body=os.urandom(body),
    )
    envelope = frame.seal(identity)
    number = max(200, int(seconds * 4000))
    return number / timeit.timeit(lambda: crypto.Frame.open(envelope, now=now), number=number)


async def measure(
    a: Node, dst: crypto.NodeId, frames: int, concurrency: int, body: bytes
) -> tuple[float, int]:
    await a.send(dst, b"warm up")
    requests_before = a.statistics.send_requests
    remaining = frames

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await a.send(dst, body)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    elapsed = time.perf_counter() - start
    return frames / elapsed, a.statistics.send_requests - requests_before


async def one_hop(frames: int, concurrency: int, body: bytes) -> tuple[float, int]:
    """Frames/s from one node to another in this process, ``concurrency`` in flight."""
    with tempfile.TemporaryDirectory() as tmp:
        config = NodeConfig(listen="127.0.0.1:0")
        async with (
            Node.open(Path(tmp) / "a", config=config, rng=random.Random(1)) as a,
            Node.open(Path(tmp) / "b", config=config, rng=random.Random(2)) as b,
        ):
            await a.add_peer(b.address_token())
            return await measure(a, b.node_id, frames, concurrency, body)


async def send_to(token: str, frames: int, concurrency: int, body: bytes) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        config = NodeConfig(listen="127.0.0.1:0")
        async with Node.open(Path(tmp) / "a", config=config, rng=random.Random(1)) as a:
            address = await a.add_peer(token)
            return await measure(a, address.node, frames, concurrency, body)


def one_hop_to_process(frames: int, concurrency: int, body: bytes) -> tuple[float, int]:
    """The same, with the receiver a `ptth run` process of its own."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "node", "--data-dir", f"{tmp}/b", "run"]
        receiver = subprocess.Popen(
            [*command, "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert receiver.stdout is not None
            for line in receiver.stdout:  # its last line once it is serving: the token
                if line.startswith("address "):
                    token = line.split(None, 1)[1].strip()
                    break
            else:
                raise RuntimeError("the receiver process ended early")
            return trio.run(send_to, token, frames, concurrency, body)
        finally:
            receiver.send_signal(signal.SIGINT)
            receiver.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000, help="frames per measurement")
    parser.add_argument("--body", type=int, default=100, help="body size in bytes")
    args = parser.parse_args()
    body = os.urandom(args.body)

    verify = verify_rate()
    opens = open_rate(args.body)
    print(f"Ed25519 verify            {verify:9.0f} /s")
    print(f"frame open (decode+verify) {opens:8.0f} /s   {opens / verify:5.2f} x verify")

    def in_one_process(frames: int, batch: int, body: bytes) -> tuple[float, int]:
        return trio.run(one_hop, frames, batch, body)

    for where, run in (("one process", in_one_process), ("two processes", one_hop_to_process)):
        for batch in (1, 100):
            frames = args.frames if batch > 1 else max(200, args.frames // 5)
            rate, requests = run(frames, batch, body)
            print(
                f"one hop, batch {batch:<3} {where:<13} {rate:7.0f} frames/s   "
                f"{rate / verify:5.2f} x verify   ({frames} frames in {requests} requests)"
            )


if __name__ == "__main__":
    main()
