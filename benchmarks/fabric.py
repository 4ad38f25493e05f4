"""One-hop throughput of the fabric, against the Ed25519 verify rate of this machine.

Two real nodes on loopback TCP in this process (so both share one core for their
trio loops; the receiver verifies big batches in a worker thread). Prints:

* Ed25519 verifies/s (PyNaCl) and full frame opens/s (decode + verify + validate),
* frames/s one hop with batch size 1 (one send at a time, each waiting for its
  acknowledgement) and batch size 100 (100 sends in flight, so the sender batches),
  each as a ratio of the verify rate measured in the same run.

Usage: python benchmarks/fabric.py [--frames N] [--body BYTES]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
import timeit
from pathlib import Path

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


async def one_hop(frames: int, concurrency: int, body: bytes) -> tuple[float, int]:
    """Frames/s from one node to another with ``concurrency`` sends in flight."""
    with tempfile.TemporaryDirectory() as tmp:
        config = NodeConfig(listen="127.0.0.1:0")
        async with (
            Node.open(Path(tmp) / "a", config=config, rng=random.Random(1)) as a,
            Node.open(Path(tmp) / "b", config=config, rng=random.Random(2)) as b,
        ):
            now = a.clock()
            a.data.peers.add(crypto.parse_token(b.address_token(), now=now), now=now)
            await a.send(b.node_id, b"warm up")
            requests_before = a.statistics.send_requests
            remaining = frames

            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    await a.send(b.node_id, body)

            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(concurrency):
                    nursery.start_soon(worker)
            elapsed = time.perf_counter() - start
            return frames / elapsed, a.statistics.send_requests - requests_before


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
    for batch in (1, 100):
        frames = args.frames if batch > 1 else max(200, args.frames // 5)
        rate, requests = trio.run(one_hop, frames, batch, body)
        print(
            f"one hop, batch {batch:<3}        {rate:9.0f} frames/s   {rate / verify:5.2f} x verify"
            f"   ({frames} frames in {requests} requests)"
        )


if __name__ == "__main__":
    main()
