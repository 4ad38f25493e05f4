"""How the mesh's costs grow with the number of nodes N: per node, traffic and state.

For each node count (``--nodes``, default 100 300 1000), in a fresh process (so that its
memory figure is its own), this runs a simulation scenario (``--scenario``, default
``chirp``: the ``mesh`` scenario's network, a random low-degree graph with a third of
the nodes NATed behind relays, 1% segment loss and churn, where users also follow each
other and post over publish/subscribe; ``mesh`` is the same network without follows,
plus a partition healed later) through the public ``simulations`` API
(``SCENARIOS[name].play`` on ``open_simulation``), at ``--fidelity engine`` by default
(frames handed from mesh to mesh; ``full`` runs every byte through HTTP), for
``--duration`` of virtual time (default 40m). Per node it measures:

* announce frames received (and sent) per hour, and interest frames (``sub`` and
  ``unsub``) received per hour: the node's counters (``SimNode.statistics``, summed
  over its restarts) over the window from ``--warmup`` (default 10m) to the end, scaled
  to an hour. The warm-up (start-up, peering, greetings, the follows spreading) is left
  out. Nodes announce every 10 minutes in these scenarios, and sign their interests
  again every half lease (30 minutes), so the default window (30 minutes) holds three
  announce rounds and one round of interests signed again;
* routing-table entries at the end: the destinations a node knows a route to, and the
  routes it holds (a destination can have a candidate through several neighbours);
* interest-table entries at the end: the (subscriber, pattern) interests a node holds,
  withdrawn ones (tombstones) included;
* resident memory per node: the process's RSS growth from before the simulation opened
  to its end, divided by N (the nodes, the simulated network and the scenario's ledger;
  below a few hundred nodes, what the first node loads weighs in). The stores live on
  tmpfs when there is one, outside the process: their size per node is given apart
  (JSON only); with ``--stores memory`` they are in the process, and counted in it (a
  node on disk holds about six open files: 10,000 nodes need ``--stores memory`` where
  the system allows 20,000);
* the run's wall seconds (set-up included);
* the floor of that memory: in another fresh process, as many nodes (at most
  :data:`IDLE_NODES`) with the same settings but no neighbour and no traffic, a
  virtual minute after they started (their tasks running, their stores open and
  empty): RSS growth per node ("idle KiB"). What a node costs before it knows anything
  or holds anything; ``--no-idle`` leaves it out.

Traffic figures and table sizes are given as the median and the maximum over nodes
(the nodes up at the end; the scenarios bring every crashed node back before then).
The table sizes are read from each node's router (``node.mesh.router.table`` and
``.interests``): the node offers no accessor for them.

By default announces and interests are flooded, so every node learns a route to every
node and holds every subscriber's patterns: each cost per node is expected to grow as N.
With ``--tree`` (and ``--announce-radius 2``) nodes build a spanning tree, keep routes
only to the nodes a few hops away, find the others' coordinates in a DHT and route
greedily (docs/routing-at-scale.md), and an interest in another node's secure name (a
follow) goes to that node alone instead of to every node: the median node's routes,
interests and control traffic stay nearly flat. A plot of each cost against N
(log-log, a dotted line of slope 1 through the first point) goes to ``--plot``
(default scale.png, in the current directory; needs matplotlib: ``pip install -e
'.[bench]'``; without it the table is still printed).
``--label`` names this run's rows (say, the routing design measured); ``--json`` prints
one JSON document, and ``--compare FILE`` adds the rows of documents saved earlier to
the table and the plot, so that two designs can be set side by side. ``--nodes`` with
no count and ``--compare`` redraws only.

Wall time: flooding grows about as N squared (every node takes in every node's
announces and interests): on the 2-core development machine at engine fidelity, with
another simulation running, 100 nodes took 6 minutes and 300 nodes 42 (N^1.8). With
``--tree --announce-radius 2`` (``mesh``, 40 virtual minutes, seed 1, stand-in
signatures, a quiet machine, 2026-12-06) 300 nodes took 240 s and 1,000 nodes 1,176 s;
its first virtual minutes (every node looking up and publishing in the DHT at once)
cost most, and grow faster than N (the ``mesh`` scenario's first minute: 43 s at 1,000
nodes, 258 s at 3,000). Memory (the whole process's peak: nodes, SQLite stores, the
network and the ledger) was about 0.9 MB a node at 1,000 nodes and 1.3 MB at 3,000
(``mesh``, 10 virtual minutes, seed 0, 2026-12-06); at 10,000 nodes, 1.27 MB a node
over 3 virtual minutes, which took 3,672 s of wall time (the start alone: a 40-minute
row at 10,000 nodes takes many hours).

Usage: python benchmarks/scale.py [--nodes 100 300 1000] [--scenario chirp|mesh]
       [--duration 40m] [--warmup 10m] [--fidelity engine|full] [--seed 1]
       [--tree [--announce-radius HOPS]] [--signatures ed25519|stand-in]
       [--verify each|once] [--stores disk|memory]
       [--no-idle] [--label NAME] [--plot scale.png] [--compare OLD.json ...] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, where benchmarks/mesh.py
# would shadow the mesh package: put the repository's root there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import contextlib
import dataclasses
import functools
import importlib
import json
import os
import re
import resource
import statistics
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from typing import IO, Any, Final

import trio

from node import NodeConfig, NodeStatistics
from simulations import (
    SCENARIOS,
    Fidelity,
    Signatures,
    SimNode,
    Simulation,
    Stores,
    VirtualClock,
    collecting_seldom,
    deterministic_scheduling,
    format_duration,
    open_simulation,
)

#: Idle nodes measured for a row's memory floor, at most (their memory per node does
#: not grow with their number: none knows of another).
IDLE_NODES: Final = 1000
#: How long idle nodes run before they are measured, virtual seconds: every task of
#: theirs started, the first ticks and announces done.
IDLE_SETTLE: Final = 60.0

#: The scenarios whose network this measures (the other scenarios are not meshes).
MESH_SCENARIOS: Final = ("chirp", "mesh")
MATPLOTLIB_HINT: Final = "`pip install -e '.[bench]'` (or `pip install matplotlib`)"

#: The per-node figures: (key, column heading, the plot's title and unit).
COSTS: Final = (
    (
        "control_received_per_hour",
        "control in/h",
        "control frames received (announces, interests, tree offers, DHT)",
        "per hour",
    ),
    ("announces_received_per_hour", "announces in/h", "announce frames received", "per hour"),
    ("interests_received_per_hour", "interests in/h", "interest frames received", "per hour"),
    ("routes_known", "destinations", "routing table: destinations", "entries"),
    ("interests_held", "interests held", "interest table: (subscriber, pattern)", "entries"),
    (
        "coordinates_held",
        "coordinates",
        "greedy routing: other nodes' coordinates held",
        "entries",
    ),
)
#: Also measured per node (in the JSON, not the table or the plot).
MORE: Final = (
    "announces_sent_per_hour",
    "tree_offers_received_per_hour",
    "dht_received_per_hour",
    "route_candidates",
    "neighbours",
    "store_kib_per_node",
)
#: How the scenario's messages fared (the report's figures; the JSON only, but the
#: delivery ratio and duplicates, in the table).
DELIVERY: Final = (
    "sent",
    "delivered",
    "delivery_ratio",
    "duplicates",
    "latency_p50",
    "latency_p99",
    "hops_mean",
)
#: The control frames counted in "control in/h".
CONTROL: Final = (
    "announces_received",
    "interests_received",
    "tree_offers_received",
    "dht_received",
)


# -- measuring, in a process of its own ----------------------------------------------


def rss_bytes() -> int:
    """This process's resident set size now (Linux), else its peak."""
    with contextlib.suppress(OSError):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def tree_bytes(root: Path) -> int:
    """The size of the files under ``root``."""
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


#: File descriptors a node holds with its store on disk (the database, its journal and
#: shared memory, the lock): measured, a 20,000 limit ran out at 3,331 nodes.
FILES_PER_NODE: Final = 6


def raise_file_limit() -> None:
    # Each node holds a few descriptors (its store's files, its lock).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, mean and maximum of per-node values (zeros for no node)."""
    if not values:
        return {"median": 0.0, "mean": 0.0, "max": 0.0}
    return {
        "median": float(statistics.median(values)),
        "mean": float(statistics.fmean(values)),
        "max": float(max(values)),
    }


@dataclasses.dataclass(frozen=True)
class Run:
    """One measurement: what to run."""

    scenario: str
    nodes: int
    duration: float
    warmup: float
    fidelity: str
    seed: int
    #: The routing design: flooded announces (False), or the tree with announces going
    #: ``announce_radius`` hops (None: as far as flooding takes them).
    tree: bool = False
    announce_radius: int | None = None
    #: What the nodes sign with: "ed25519", or "stand-in" (crypto.standing_in: the
    #: same figures, sooner).
    signatures: str = "ed25519"
    #: Where the nodes keep their SQLite stores: "disk" (files on tmpfs, apart from the
    #: process's memory) or "memory" (in the process: counted in its memory figure).
    stores: str = "disk"
    #: Whether each signature and chain is checked once per simulation rather than at
    #: every node ("once": the same figures, sooner; as ``simulations run --verify``).
    verify: str = "each"
    #: Measure idle nodes instead of the scenario (:func:`measure_idle`).
    idle: bool = False


def simulation(run: Run, data_dir: Path) -> contextlib.AbstractAsyncContextManager[Simulation]:
    """A simulation with ``run``'s settings, its nodes' stores under ``data_dir``."""
    # As run_scenario: a crash never loses the disk.
    config = NodeConfig(
        store_sync=False, store_lean=True, tree=run.tree, announce_radius=run.announce_radius
    )
    return open_simulation(
        seed=run.seed,
        data_dir=data_dir,
        config=config,
        fidelity=run.fidelity,
        signatures=run.signatures,
        stores=run.stores,
        verify_once=run.verify == "once",
    )


async def measure(run: Run, data_dir: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    scenario = SCENARIOS[run.scenario]
    before = rss_bytes()
    started = time.perf_counter()
    baseline: dict[str, NodeStatistics] = {}
    async with simulation(run, data_dir) as sim:

        async def take_baseline() -> None:
            await sim.advance_to(run.warmup)
            baseline.update({name: node.statistics for name, node in sim.nodes.items()})
            progress(f"warm-up over ({len(sim.nodes)} nodes)")

        async def tick() -> None:
            for step in range(1, 10):
                await sim.advance_to(run.duration * step / 10)
                delivered = sim.ledger.deliveries - sim.ledger.duplicates
                progress(
                    f"{10 * step}% of the virtual time ({format_duration(sim.now)} of "
                    f"{format_duration(run.duration)}, {time.perf_counter() - started:,.0f} s"
                    f" wall): {len(sim.ledger.messages):,} sent, {delivered:,} delivered"
                )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(take_baseline)
            nursery.start_soon(tick)
            await scenario.play(sim, nodes=run.nodes, duration=run.duration)
            nursery.cancel_scope.cancel()
        window = sim.now - run.warmup
        result = per_node(sim, baseline, window)
        report = sim.report(scenario=run.scenario)
        result.update({key: getattr(report, key) for key in DELIVERY})
        if report.chirp is not None:
            result.update(
                posts_delivery_ratio=report.chirp.delivery_ratio,
                posts_duplicates=report.chirp.duplicates,
                posts_lost=report.chirp.lost,
                posts_unsent=report.chirp.unsent,
            )
        result.update(
            kib_per_node=(rss_bytes() - before) / run.nodes / 1024,
            store_kib_per_node=tree_bytes(data_dir) / run.nodes / 1024,
            natted=sum(node.nat for node in sim.nodes.values()),
            window_s=window,
        )
    result["wall_s"] = time.perf_counter() - started
    return result


async def measure_idle(run: Run, data_dir: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    """The memory floor of :func:`measure`: ``run.nodes`` nodes with the same settings,
    none peered, none sending, :data:`IDLE_SETTLE` s after they started."""
    before = rss_bytes()
    started = time.perf_counter()
    async with simulation(run, data_dir) as sim:
        await sim.add_nodes(run.nodes)
        await sim.advance(IDLE_SETTLE)
        progress("idle nodes measured")
        result = {
            "kib_per_node": (rss_bytes() - before) / run.nodes / 1024,
            "store_kib_per_node": tree_bytes(data_dir) / run.nodes / 1024,
            "nodes_up": sum(node.up for node in sim.nodes.values()),
        }
    result["wall_s"] = time.perf_counter() - started
    return result


def per_node(sim: Simulation, baseline: dict[str, NodeStatistics], window: float) -> dict[str, Any]:
    """Each cost's spread over the nodes up now; rates over the last ``window`` s."""
    hours = window / 3600
    zero = NodeStatistics()
    rates: dict[str, list[float]] = {
        "announces_received_per_hour": [],
        "announces_sent_per_hour": [],
        "interests_received_per_hour": [],
        "tree_offers_received_per_hour": [],
        "dht_received_per_hour": [],
    }
    control: list[float] = []
    tables: dict[str, list[float]] = {
        "routes_known": [],
        "route_candidates": [],
        "interests_held": [],
        "coordinates_held": [],
        "neighbours": [],
    }
    up: list[SimNode] = [node for node in sim.nodes.values() if node.up]
    for sim_node in up:
        now, then = sim_node.statistics, baseline.get(sim_node.name, zero)
        for key in rates:
            counter = key.removesuffix("_per_hour")
            rates[key].append((getattr(now, counter) - getattr(then, counter)) / hours)
        control.append(sum(getattr(now, c) - getattr(then, c) for c in CONTROL) / hours)
        # No accessor for the tables' sizes: read them off the node's router.
        router = sim_node.node.mesh.router
        tables["routes_known"].append(len(router.table))
        tables["route_candidates"].append(len(router.table.all_routes()))
        tables["interests_held"].append(len(router.interests))
        tables["coordinates_held"].append(router.coordinates_held)
        tables["neighbours"].append(len(router.links))
    figures = {**rates, "control_received_per_hour": control, **tables}
    return {key: spread(values) for key, values in figures.items()} | {"nodes_up": len(up)}


def one(run: Run) -> dict[str, Any]:
    """Measure ``run`` in this process (it should be a fresh one)."""
    raise_file_limit()
    shm = Path("/dev/shm")
    scratch = shm if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None

    def progress(text: str) -> None:
        print(f"scale: {run.nodes} nodes: {text}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="ptth-scale-", dir=scratch) as data_dir:
        clock = VirtualClock()
        how = measure_idle if run.idle else measure
        main = functools.partial(how, run, Path(data_dir), progress)
        # As run_scenario: the same seed gives the same figures; the collector runs seldom.
        with deterministic_scheduling(run.seed), collecting_seldom():
            result = trio.run(main, clock=clock)
    return {**dataclasses.asdict(run), **result}


def spawn(run: Run) -> dict[str, Any]:
    """Measure ``run`` in a fresh Python process. Raises RuntimeError if it fails."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(vars(run))]
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{run.nodes} nodes: the measuring process failed ({done.returncode})")
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return row


# -- the table and the plot -------------------------------------------------------------


def table(rows: Sequence[dict[str, Any]], out: IO[str]) -> None:
    """One line per row: N, wall time, then each cost's median and max over nodes."""
    heads = ["label", "N", "NATed", "wall s", "delivered"]
    heads += [f"{heading} med/max" for _, heading, _, _ in COSTS]
    heads += ["KiB/node", "idle KiB"]
    lines = [heads]
    for row in rows:
        cells = [
            str(row["label"]),
            f"{row['nodes']:,}",
            f"{row['natted']:,}",
            f"{row['wall_s']:,.0f}",
            _ratio(row),
        ]
        for key, _, _, _ in COSTS:
            if key in row:
                cells.append(f"{row[key]['median']:,.0f} / {row[key]['max']:,.0f}")
            else:  # a row saved before this figure was measured
                cells.append("-")
        cells.append(f"{row['kib_per_node']:,.0f}")
        idle = row.get("idle_kib_per_node")  # (not in rows saved before it was measured)
        cells.append("-" if idle is None else f"{idle:,.0f}")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(heads))]
    for line in lines:
        print(
            "  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)), file=out
        )


def plot(rows: Sequence[dict[str, Any]], path: Path) -> str | None:
    """Draw each cost against N (log-log), one line per label, to ``path`` (PNG).

    Returns None, or why nothing was drawn (matplotlib missing).
    """
    try:
        # Imported by name: matplotlib is optional (the bench extra), and type-checking
        # this file must not need it.
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return f"matplotlib is missing: {MATPLOTLIB_HINT}"
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")
    # (title, unit, each row's (solid, dashed) values, what the dashed line is)
    figures: list[tuple[str, str, Callable[[dict[str, Any]], tuple[float, float | None]], str]] = [
        (f"{title} (per node)", unit, functools.partial(_median_max, key), "max")
        for key, _, title, unit in COSTS
    ]
    figures.append(("memory per node: RSS growth / N (dashed: idle nodes)", "KiB", _memory, "idle"))
    figures.append(("wall time of the run (set-up included)", "seconds", _wall, "max"))
    figure, axes = pyplot.subplots(2, 4, figsize=(17, 7.5), layout="constrained")
    for spare in list(axes.flat)[len(figures) :]:
        spare.set_visible(False)
    labels = list(dict.fromkeys(str(row["label"]) for row in rows))
    colours = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, (title, unit, value, dashed) in zip(axes.flat, figures, strict=False):
        drawn = False
        for index, label in enumerate(labels):
            mine = sorted((row for row in rows if row["label"] == label), key=_count)
            counts = [row["nodes"] for row in mine]
            values = [value(row) for row in mine]
            colour = colours[index % len(colours)]
            # A log scale shows no zero: those points are left out.
            medians = [(n, v[0]) for n, v in zip(counts, values, strict=True) if v[0] > 0]
            highs = [(n, v[1]) for n, v in zip(counts, values, strict=True) if v[1]]
            drawn = drawn or bool(medians or highs)
            if medians:
                axis.plot(*zip(*medians, strict=True), "o-", color=colour, label=label)
                first, low = medians[0]
                linear = [low * n / first for n, _ in medians]
                axis.plot([n for n, _ in medians], linear, ":", color="grey", linewidth=1)
            if highs:
                axis.plot(
                    *zip(*highs, strict=True),
                    "^--",
                    color=colour,
                    alpha=0.5,
                    label=f"{label} {dashed}",
                )
        # Titles wrapped to the panel's width; a cost that is zero at every N (no
        # publish/subscribe in the mesh scenario) is said so, not drawn as empty axes.
        axis.set_title(textwrap.fill(title, 42), fontsize="medium")
        if not drawn:
            axis.text(0.5, 0.5, "zero at every N", ha="center", va="center")
            axis.set_axis_off()
            continue
        axis.set_xscale("log")
        axis.set_yscale("log")
        counts = sorted({row["nodes"] for row in rows})
        axis.set_xticks(counts, labels=[f"{count:,}" for count in counts])
        axis.set_xticks([], minor=True)
        axis.set_xlabel("nodes (N)")
        axis.set_ylabel(unit)
        axis.grid(True, which="both", alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")
    figure.suptitle("ptth mesh: cost per node against N (solid: median; dashed: max; dotted: ∝ N)")
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return None


def _ratio(row: dict[str, Any]) -> str:
    """Messages delivered of those that did not expire, and duplicates if any."""
    ratio = row.get("delivery_ratio")
    if ratio is None:
        return "-"
    dups = row.get("duplicates", 0)
    return f"{100 * ratio:.2f}%" + (f" ({dups} dup)" if dups else "")


def _count(row: dict[str, Any]) -> int:
    count: int = row["nodes"]
    return count


def _median_max(key: str, row: dict[str, Any]) -> tuple[float, float | None]:
    if key not in row:  # a row saved before this figure was measured
        return 0.0, None
    return row[key]["median"], row[key]["max"]


def _memory(row: dict[str, Any]) -> tuple[float, float | None]:
    return row["kib_per_node"], row.get("idle_kib_per_node")


def _wall(row: dict[str, Any]) -> tuple[float, float | None]:
    return row["wall_s"], None


# -- the command line -------------------------------------------------------------------


_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)([smh]?)")
_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600}


def duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``20m`` or ``1.5h``."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"not a positive duration: {text!r} (say 90s, 20m, 1h)")
    return float(match[1]) * _UNITS[match[2]]


def node_count(text: str) -> int:
    value = int(text)
    if value < 4:  # the mesh scenarios' least
        raise argparse.ArgumentTypeError(f"must be at least 4 nodes, not {value}")
    return value


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--nodes",
        type=node_count,
        nargs="*",
        default=[100, 300, 1000],
        help="node counts, one run each (10000 takes days); none: only --compare",
    )
    parser.add_argument("--scenario", choices=MESH_SCENARIOS, default="chirp")
    parser.add_argument("--duration", type=duration, default=2400.0, help="virtual (40m)")
    parser.add_argument(
        "--warmup", type=duration, default=600.0, help="virtual time left out first (10m)"
    )
    parser.add_argument(
        "--fidelity", choices=[level.value for level in Fidelity], default=Fidelity.ENGINE.value
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--tree",
        action="store_true",
        help="nodes build the tree and route greedily where they know no route (--tree)",
    )
    parser.add_argument(
        "--announce-radius",
        type=int,
        metavar="HOPS",
        help="with --tree: how far announces go (default: the hop limit)",
    )
    parser.add_argument(
        "--signatures",
        choices=[kind.value for kind in Signatures],
        default=Signatures.ED25519.value,
        help="stand-in: nodes sign with a keyed hash in place of Ed25519 (the same "
        "figures, sooner; simulations only)",
    )
    parser.add_argument(
        "--stores",
        choices=[where.value for where in Stores],
        default=Stores.DISK.value,
        help="the nodes' SQLite stores: files on tmpfs (disk, the default: their size "
        "is given apart) or in the process's memory (counted in KiB/node)",
    )
    parser.add_argument(
        "--verify",
        choices=["each", "once"],
        default="each",
        help="once: each signature and chain checked at the first node only, remembered "
        "for the others (the same figures, sooner; simulations only)",
    )
    parser.add_argument(
        "--label",
        help="names this run's rows (the routing design measured; default: flood, tree, or "
        "tree-rHOPS with --announce-radius)",
    )
    parser.add_argument("--plot", type=Path, default=Path("scale.png"), help="PNG to write")
    parser.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        default=[],
        metavar="JSON",
        help="earlier --json output whose rows join the table and the plot",
    )
    parser.add_argument(
        "--no-idle",
        dest="idle",
        action="store_false",
        help="leave out the memory floor (idle nodes with the same settings)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    too_many = [count for count in args.nodes if count * FILES_PER_NODE > hard]
    if args.stores == Stores.DISK.value and hard != resource.RLIM_INFINITY and too_many:
        parser.error(
            f"{max(too_many):,} nodes with their stores on disk need about "
            f"{max(too_many) * FILES_PER_NODE:,} open files, more than this system "
            f"allows ({hard:,}): use --stores memory"
        )
    if args.warmup >= args.duration:
        parser.error(
            f"--warmup ({args.warmup:g} s) must end before --duration ({args.duration:g} s)"
        )
    if args.announce_radius is not None and not args.tree:
        parser.error("--announce-radius needs --tree")
    if not args.nodes and not args.compare:
        parser.error("nothing to do: give --nodes counts or --compare files")
    if args.label is None:
        radius = "" if args.announce_radius is None else f"-r{args.announce_radius}"
        args.label = f"tree{radius}" if args.tree else "flood"
    return args


def load(path: Path) -> list[dict[str, Any]]:
    """The rows of a document ``--json`` printed. Raises SystemExit naming the file."""
    try:
        document = json.loads(path.read_text())
        rows: list[dict[str, Any]] = document["rows"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(
            f"scale.py: {path}: not a --json document of this benchmark ({error})"
        ) from None
    return rows


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    args = parse(argv)
    if args.one is not None:
        print(json.dumps(one(Run(**json.loads(args.one)))))
        return 0
    out = out or sys.stdout
    rows = [row for path in args.compare for row in load(path)]
    for count in args.nodes:
        run = Run(
            args.scenario,
            count,
            args.duration,
            args.warmup,
            args.fidelity,
            args.seed,
            tree=args.tree,
            announce_radius=args.announce_radius,
            signatures=args.signatures,
            stores=args.stores,
            verify=args.verify,
        )
        try:
            row = {"label": args.label, **spawn(run)}
            if args.idle:
                idle = spawn(dataclasses.replace(run, idle=True, nodes=min(count, IDLE_NODES)))
                row.update(idle_nodes=idle["nodes"], idle_kib_per_node=idle["kib_per_node"])
            rows.append(row)
        except RuntimeError as error:
            print(f"scale.py: {error}", file=sys.stderr)
            return 1
        if not args.json:
            print(f"scale: {count} nodes measured in {rows[-1]['wall_s']:,.0f} s", file=sys.stderr)
    missing = plot(rows, args.plot)
    if args.json:
        document = {
            "benchmark": "scale",
            "rows": rows,
            "plot": None if missing else str(args.plot),
            "plot_missing": missing,
        }
        json.dump(document, out, indent=2)
        print(file=out)
        return 0
    runs = {
        f"the {row['window_s']:g} s after a {row['warmup']:g} s warm-up ({row['scenario']}, "
        f"{row['fidelity']} fidelity)"
        for row in rows
    }
    window = runs.pop() if len(runs) == 1 else "each run's window (see --json)"
    print(
        f"Per node, median / max over nodes: frames received per hour over {window}; "
        "table entries at the end; memory: RSS growth / N (idle: of as many nodes, at "
        f"most {IDLE_NODES:,}, with the same settings, none peered, none sending).",
        file=out,
    )
    table(rows, out)
    if missing:
        print(f"plot not written: {missing}", file=out)
    else:
        print(f"plot: {args.plot}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
