"""Request latency direct vs through a relay (Reverse HTTP), measured in the same run.

Three nodes on loopback TCP in this process: a relay R, a node N attached to R (PTTH
Upgrade, pool of 2), a sender S. For each path, sequentially:

* ``GET /ptth/v1/address`` with a plain httpx client (one HTTP exchange), and
* ``node.send`` of a 100-byte message (a signed frames POST and its signed receipt),

first straight to N's own listener, then through R's ``/n/<id>/`` URL. Prints p50 and
p95 in milliseconds and the relay/direct ratio.

Usage: python benchmarks/relay.py [--requests N] [--mode upgrade|long-poll]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import trio

import crypto
from node import Node, NodeConfig


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.95)] * 1000


async def timed(count: int, action: object) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        await action()  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
    return samples


async def run(requests: int, mode: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = NodeConfig(listen="127.0.0.1:0")
        async with Node.open(Path(tmp) / "relay", config=base, rng=random.Random(1)) as relay:
            attached_config = NodeConfig(
                listen="127.0.0.1:0", relays=(relay.address_token(),), relay_mode=mode
            )
            async with (
                Node.open(Path(tmp) / "n", config=attached_config, rng=random.Random(2)) as n,
                Node.open(Path(tmp) / "s", config=base, rng=random.Random(3)) as s,
            ):
                await n.links[0].wait_connected(2)
                relay_url, direct_url = n.endpoints
                results = {}
                async with httpx.AsyncClient() as client:
                    for path, url in (("direct", direct_url), ("relay", relay_url)):
                        exp = n.clock() + 3600_000
                        seq = n.address.record.seq + (1 if path == "direct" else 2)  # type: ignore[union-attr]
                        only = crypto.sign_address(n.identity, seq=seq, endpoints=[url], exp=exp)
                        s.data.peers.add(only, now=n.clock())
                        await s.send(n.node_id, b"warm up")
                        await client.get(url + "/ptth/v1/address")
                        gets = await timed(
                            requests, lambda url=url: client.get(url + "/ptth/v1/address")
                        )
                        sends = await timed(requests, lambda: s.send(n.node_id, b"x" * 100))
                        results[path] = (percentiles(gets), percentiles(sends))
        print(f"relay mode {mode}, {requests} sequential requests per figure, loopback TCP")
        for what, index in (("GET /ptth/v1/address", 0), ("send (frames POST)  ", 1)):
            direct = results["direct"][index]
            relayed = results["relay"][index]
            print(
                f"{what}  direct p50 {direct[0]:6.2f} ms p95 {direct[1]:6.2f} ms   "
                f"relay p50 {relayed[0]:6.2f} ms p95 {relayed[1]:6.2f} ms   "
                f"relay/direct {relayed[0] / direct[0]:4.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--mode", choices=["upgrade", "long-poll"], default="upgrade")
    args = parser.parse_args()
    trio.run(run, args.requests, args.mode)


if __name__ == "__main__":
    main()
