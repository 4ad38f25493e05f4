"""``python -m fuzz``: the mutation fuzzer over every decoder of network input.

    python -m fuzz [--inputs 1000000] [--targets a,b] [--seed N] [--jobs N] [--out DIR]
    python -m fuzz --list
    python -m fuzz --replay fuzz-crashes/FILE.txt

Exit status 1 if any target crashed (or a saved crash still crashes on --replay).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fuzz._harness import Report, replay, run_targets, target_inputs
from fuzz._targets import TARGETS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fuzz",
        description="Mutation-fuzz ptth's decoders of network input (see fuzz/__init__.py).",
    )
    parser.add_argument(
        "--inputs",
        type=int,
        default=1_000_000,
        help="mutated inputs per target (the server target runs 5%% of this: each of its "
        "inputs is a whole connection); default 1000000",
    )
    parser.add_argument(
        "--targets", default="", help="comma-separated target names (default: all; see --list)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="worker processes; > 1 runs each target in a fresh process (default 1)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("fuzz-crashes"),
        help="where crashing inputs are saved (default ./fuzz-crashes/)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds one input may run before it counts as a hang (default 10)",
    )
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument(
        "--replay", type=Path, nargs="+", metavar="FILE", help="run saved crashes again"
    )
    return parser


def _table(reports: Sequence[Report], jobs: int) -> str:
    header = (
        f"{'target':<15} {'inputs':>9} {'accepted':>9} {'refused':>9} {'crashes':>7} "
        f"{'mean µs':>9} {'max ms':>9} {'peak MB':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in reports:
        lines.append(
            f"{r.target:<15} {r.inputs:>9} {r.accepted:>9} {r.refused:>9} {len(r.crashes):>7} "
            f"{r.mean_us:>9.1f} {r.max_seconds * 1000:>9.2f} {r.peak_rss_kb / 1024:>8.1f}"
        )
    scope = (
        "peak MB: ru_maxrss of each target's own fresh worker process"
        if jobs > 1
        else "peak MB: ru_maxrss of this one process so far (targets ran in turn; run with "
        "--jobs 2+ for a per-target figure)"
    )
    lines.append(scope)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for target in TARGETS.values():
            print(f"{target.name:<15} {target.description}")
        return 0
    if args.replay:
        return max(replay(path) for path in args.replay)
    names = [name.strip() for name in args.targets.split(",") if name.strip()] or list(TARGETS)
    unknown = [name for name in names if name not in TARGETS]
    if unknown:
        print(f"unknown targets {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    if args.inputs < 0 or args.jobs < 1:
        print("--inputs must be >= 0 and --jobs >= 1", file=sys.stderr)
        return 2
    print(
        f"fuzzing {len(names)} targets, seed {args.seed}, "
        f"{args.inputs} inputs each ({target_inputs('server', args.inputs)} for server), "
        f"jobs {args.jobs}",
        flush=True,
    )
    reports: dict[str, Report] = {}
    for report in run_targets(
        names, args.inputs, seed=args.seed, jobs=args.jobs, out=args.out, timeout=args.timeout
    ):
        reports[report.target] = report
        crashes = sum(crash.count for crash in report.crashes.values())
        print(
            f"  {report.target}: {report.inputs} inputs, {len(report.crashes)} distinct crashes "
            f"({crashes} inputs), {report.seconds:.1f} s",
            flush=True,
        )
    ordered = [reports[name] for name in names]
    print()
    print(_table(ordered, args.jobs))
    failed = False
    for report in ordered:
        for seed_error in report.refused_seeds:
            print(f"warning: {report.target}: a seed was refused: {seed_error}")
        for crash in report.crashes.values():
            failed = True
            print(f"CRASH {report.target}: {crash.key} x{crash.count}: {crash.summary}")
            print(f"      saved: {crash.path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
