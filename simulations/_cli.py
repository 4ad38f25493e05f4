"""``python -m simulations``: run a scenario and print its report.

::

    python -m simulations run SCENARIO [--nodes N] [--seed S] [--duration 1h]
                              [--fidelity full|engine] [--verify each|once]
                              [--signatures ed25519|stand-in]
                              [--stores memory|disk] [--json]
    python -m simulations list

Bad input is one line on stderr and exit status 2; a run whose applications saw
duplicates (messages or posts), or that lost a post (undelivered, unexpired, held by no
running node, though its author knew the follower when it posted: a post made before a
follow reached its author never goes to that follower, and is counted apart), prints
its report and exits with 1. Long runs print a
progress line on stderr every few seconds of wall time (``--quiet`` turns it off).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import NoReturn, TextIO

import trio

from node import NodeError
from node._errors import leaves
from simulations._engine import Fidelity
from simulations._errors import SimulationError
from simulations._report import format_duration, parse_duration
from simulations._scenarios import SCENARIOS, Progress, run_scenario
from simulations._simulation import Signatures, Stores

__all__ = ["main"]

PROG = "python -m simulations"
#: Wall seconds between progress lines.
PROGRESS_EVERY = 2.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not the usage: the usage is one ``--help`` away."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of nodes (1 or more)")
    return int(text)


def _hops(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hops")
    return int(text)


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer seed") from None


def _scenario_list() -> str:
    width = max(len(name) for name in SCENARIOS)
    return "\n".join(
        f"  {name:<{width}}  {scenario.summary}" for name, scenario in SCENARIOS.items()
    )


def _parser() -> argparse.ArgumentParser:
    epilog = f"scenarios:\n{_scenario_list()}"
    parser = _Parser(
        prog=PROG,
        description="Run real ptth nodes on a simulated network in virtual time.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("list", help="list the scenarios")
    run = commands.add_parser(
        "run",
        help="run a scenario and print its report",
        description="Run a scenario and print its report.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("scenario", metavar="SCENARIO", choices=list(SCENARIOS))
    run.add_argument(
        "--nodes", type=_count, metavar="N", help="how many nodes (default: the scenario's, 10)"
    )
    run.add_argument(
        "--seed", type=_seed, default=0, metavar="S", help="fixes every random choice (0)"
    )
    run.add_argument(
        "--duration",
        type=_duration,
        metavar="D",
        default=600.0,
        help="virtual time to simulate: 90s, 10m, 1h, 1h30m (10m)",
    )
    run.add_argument(
        "--fidelity",
        choices=[level.value for level in Fidelity],
        default=Fidelity.FULL.value,
        help="full: every byte through HTTP; engine: frames handed between the nodes' "
        "meshes over the same network model, much faster (full)",
    )
    run.add_argument(
        "--verify",
        choices=["each", "once"],
        default="each",
        help="each: every node verifies every signature it is shown, as real nodes do; "
        "once: a signature that verified is not verified again in this run (the same "
        "outcome, faster) (each)",
    )
    run.add_argument(
        "--signatures",
        choices=[kind.value for kind in Signatures],
        default=Signatures.ED25519.value,
        help="ed25519: nodes sign as real nodes do; stand-in: a keyed hash in its place, "
        "checked the same way (the same report, faster; nothing is authenticated) "
        "(ed25519)",
    )
    run.add_argument(
        "--stores",
        choices=[kind.value for kind in Stores],
        default=Stores.MEMORY.value,
        help="memory: each node's SQLite store in memory, kept across its restarts "
        "(the same report, faster); disk: a real node's store file (memory)",
    )
    run.add_argument(
        "--tree",
        action="store_true",
        help="nodes build a spanning tree and route greedily by its coordinates where "
        "they know no route (ptth run --tree)",
    )
    run.add_argument(
        "--announce-radius",
        type=_hops,
        metavar="HOPS",
        help="with --tree: how many hops announces go (default: as far as flooding takes them)",
    )
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.add_argument(
        "--data-dir", metavar="DIR", help="where the nodes' directories go (a temporary one)"
    )
    return parser


class _ProgressLine:
    """Prints where a run is, at most every :data:`PROGRESS_EVERY` wall seconds."""

    def __init__(self, scenario: str, out: TextIO) -> None:
        self.scenario = scenario
        self.out = out
        self.last = time.perf_counter()

    def __call__(self, progress: Progress) -> None:
        now = time.perf_counter()
        if now - self.last < PROGRESS_EVERY:
            return
        self.last = now
        percent = 100 * progress.virtual / progress.duration
        print(
            f"{self.scenario}: {percent:3.0f}% ({format_duration(progress.virtual)} of "
            f"{format_duration(progress.duration)} virtual, {progress.wall:.0f} s wall), "
            f"{progress.sent} sent, {progress.delivered} delivered",
            file=self.out,
            flush=True,
        )


def _expected(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The first of ``group``'s errors if all are errors a run may meet (a node that
    cannot start, a directory gone), leaving aside the cancellations they caused;
    None otherwise."""
    errors = [leaf for leaf in leaves(group) if not isinstance(leaf, trio.Cancelled)]
    if errors and all(isinstance(leaf, SimulationError | NodeError | OSError) for leaf in errors):
        return errors[0]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "list":
        print(_scenario_list())
        return 0
    progress = None if args.quiet else _ProgressLine(args.scenario, sys.stderr)
    try:
        report = run_scenario(
            args.scenario,
            nodes=args.nodes,
            seed=args.seed,
            duration=args.duration,
            data_dir=args.data_dir,
            progress=progress,
            fidelity=args.fidelity,
            verify_once=args.verify == "once",
            signatures=args.signatures,
            stores=args.stores,
            tree=args.tree,
            announce_radius=args.announce_radius,
        )
    except (SimulationError, NodeError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:  # trio's nurseries wrap what a node's task raised
        known = _expected(group)
        if known is None:
            raise  # a bug: its traceback is worth seeing
        print(f"{PROG}: error: {known}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(report.to_json() if args.json else report.to_text())
    return 1 if report.failed else 0
