"""What a simulated node costs: wall time per simulated node-hour, memory per node.

For each node count (default 25 and 100), in a fresh process: start that many real
nodes on the simulated network (peered in a ring), then let an hour of virtual time
pass with the nodes idle, then (for counts up to ``--traffic-max``) another hour in
which every node sends a message to its ring neighbour every ``--interval`` seconds on
average. Prints, per count:

* set-up wall time per node, and resident memory per node (RSS growth while starting
  them, divided by the count: identity, SQLite store, HTTP server and client);
* wall seconds per simulated node-hour, idle and with the light traffic, and the
  traffic's messages per wall second;
* announce copies each node took in per hour (the routing upkeep).

Node directories go to /dev/shm when there is one (nodes fsync every commit).

Idle nodes still announce themselves (every 10 minutes by default) and flood each
other's announces, so an idle hour costs what the routing upkeep costs: on a ring each
node takes in about two copies of every node's announce six times an hour, so the cost
per node-hour grows with the count (and the whole run's with its square; 1000 nodes
take hours). The traffic figure adds what a node-hour of light use costs; the traffic
crosses one hop (ring neighbours).

Usage: python benchmarks/simulation.py [--nodes 25 100] [--hours 1] [--interval 300]
       [--traffic-max 100]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, where benchmarks/mesh.py
# would shadow the mesh package: take it off.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import contextlib
import json
import os
import resource
import subprocess
import tempfile
import time

import trio

from simulations import (
    Link,
    VirtualClock,
    collecting_seldom,
    generate_traffic,
    open_simulation,
    ring,
)


def rss_bytes() -> int:
    """This process's resident set size now (Linux), else its peak."""
    with contextlib.suppress(OSError):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def raise_file_limit() -> None:
    # Each node holds a few descriptors (its store's files, its lock).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def measure(
    data_dir: str, count: int, hours: float, interval: float, traffic: bool
) -> dict[str, float]:
    link = Link(latency=0.02, jitter=0.01, bandwidth=1.25e6)
    async with open_simulation(seed=1, data_dir=data_dir, link=link) as sim:
        before = rss_bytes()
        started = time.perf_counter()
        nodes = await sim.add_nodes(count)
        await sim.peer_all(ring(nodes))
        setup = time.perf_counter() - started
        memory = rss_bytes() - before

        started = time.perf_counter()
        await sim.advance(hours * 3600)
        idle = time.perf_counter() - started
        result = {
            "nodes": count,
            "setup_ms_per_node": 1000 * setup / count,
            "kib_per_node": memory / count / 1024,
            "idle_wall_s_per_node_hour": idle / (count * hours),
        }
        if traffic:
            started = time.perf_counter()
            until = sim.now + hours * 3600
            with trio.move_on_at(sim.start_time + until):
                await generate_traffic(sim, ring(nodes), interval=interval, until=until)
            await sim.advance_to(until)
            busy = time.perf_counter() - started
            report = sim.report()
            result.update(
                traffic_wall_s_per_node_hour=busy / (count * hours),
                traffic_messages=report.delivered,
                traffic_messages_per_wall_s=report.delivered / busy,
                traffic_duplicates=report.duplicates,
            )
        result["announces_received_per_node_hour"] = sim.report().announces_received / (
            count * sim.now / 3600
        )
        return result


def one(count: int, hours: float, interval: float, traffic: bool) -> None:
    raise_file_limit()
    shm = Path("/dev/shm")
    scratch = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="ptth-bench-", dir=scratch) as data_dir:
        clock = VirtualClock()
        with collecting_seldom():  # as run_scenario
            result = trio.run(measure, data_dir, count, hours, interval, traffic, clock=clock)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[25, 100])
    parser.add_argument("--hours", type=float, default=1.0, help="virtual hours per phase")
    parser.add_argument(
        "--interval", type=float, default=300.0, help="mean seconds between a node's messages"
    )
    parser.add_argument(
        "--traffic-max", type=int, default=100, help="largest node count to send traffic with"
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        one(args.one, args.hours, args.interval, args.one <= args.traffic_max)
        return
    print(
        f"{'nodes':>6} {'setup/node':>11} {'RSS/node':>9} {'idle wall/node-h':>17} "
        f"{'traffic wall/node-h':>20} {'msgs/wall s':>12} {'ann/node-h':>11}"
    )
    for count in args.nodes:
        argv = [
            sys.executable,
            __file__,
            "--one",
            str(count),
            "--hours",
            str(args.hours),
            "--interval",
            str(args.interval),
            "--traffic-max",
            str(args.traffic_max),
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{count} nodes failed:\n{done.stderr}")
        r = json.loads(done.stdout)
        traffic = r.get("traffic_wall_s_per_node_hour")
        rate = r.get("traffic_messages_per_wall_s")
        idle = f"{r['idle_wall_s_per_node_hour'] * 1e3:.1f} ms"
        busy = "-" if traffic is None else f"{traffic * 1e3:.1f} ms"
        print(
            f"{count:>6} {r['setup_ms_per_node']:>8.1f} ms {r['kib_per_node']:>5.0f} KiB "
            f"{idle:>17} {busy:>20} {'-' if rate is None else f'{rate:.0f}':>12} "
            f"{r['announces_received_per_node_hour']:>11.0f}"
        )


if __name__ == "__main__":
    main()
