"""Runs the mutation fuzzer over targets and reports, per target, what it found.

For each target: its seeds are run first (each must be accepted: a refused seed is
reported, as it means the corpus or the decoder is wrong), then ``inputs`` mutated
inputs. An exception outside the target's ``allowed`` errors is a crash, told apart from
others by its type and the file and line it was raised at; the first input of each
distinct crash is saved to the output directory as hex, with its traceback. An input
that runs longer than ``timeout`` seconds is stopped (SIGALRM) and counted as a
:class:`~fuzz._targets.Hang` crash.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import multiprocessing
import os
import random
import resource
import signal
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Final

from fuzz._mutate import Mutator
from fuzz._targets import TARGETS, Hang, Outcome, Target

__all__ = ["Crash", "Report", "replay", "run_target", "run_targets"]

#: Inputs handed to a batch target (one trio.run) at a time.
_BATCH: Final = 500
_PROJECT_ROOT: Final = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Crash:
    """One distinct crash: its key (type and place), how often, and the saved input."""

    key: str
    count: int
    path: Path
    summary: str


@dataclasses.dataclass
class Report:
    """What fuzzing one target found."""

    target: str
    inputs: int
    accepted: int
    refused: int
    crashes: dict[str, Crash]
    seconds: float
    max_seconds: float
    peak_rss_kb: int
    #: "worker": ``peak_rss_kb`` is this target's own process; "process": the peak of
    #: the process that ran every target so far (sequential run).
    rss_scope: str
    refused_seeds: list[str] = dataclasses.field(default_factory=list)

    @property
    def mean_us(self) -> float:
        return self.seconds / self.inputs * 1e6 if self.inputs else 0.0


def _location(exc: BaseException) -> str:
    """``file:line`` where ``exc`` was raised (the innermost frame), relative when ours."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    frame = frames[-1]
    path = Path(frame.filename)
    try:
        shown = str(path.resolve().relative_to(_PROJECT_ROOT))
    except ValueError:
        shown = "/".join(path.parts[-2:])
    return f"{shown}:{frame.lineno}"


def crash_key(exc: BaseException) -> str:
    if isinstance(exc, Hang):
        return "Hang"
    return f"{type(exc).__name__} at {_location(exc)}"


def _save(out: Path, target: Target, data: bytes, exc: BaseException, key: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(data).hexdigest()[:12]  # noqa: S324 - a file name, not security
    path = out / f"{target.name}-{type(exc).__name__}-{digest}.txt"
    text = "".join(traceback.format_exception(exc))
    path.write_text(
        f"# target: {target.name}\n"
        f"# crash: {key}\n"
        f"# reproduce: python -m fuzz --replay {path}\n"
        f"input: {data.hex()}\n"
        f"{text}",
        encoding="utf-8",
    )
    return path


class _Alarm:
    """Stops one input after ``timeout`` seconds by raising :class:`Hang` (SIGALRM).

    Only in the main thread (where Python runs signal handlers); elsewhere a no-op,
    and slow inputs show only in the max time.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.active = timeout > 0 and _in_main_thread() and hasattr(signal, "setitimer")
        if self.active:
            signal.signal(signal.SIGALRM, self._fire)

    def _fire(self, signum: int, frame: FrameType | None) -> None:
        raise Hang(f"one input ran over {self.timeout:g} s")

    def start(self) -> None:
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, self.timeout)

    def stop(self) -> None:
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _outcomes(target: Target, inputs: Sequence[bytes], alarm: _Alarm) -> Iterator[Outcome]:
    if target.batch is not None:
        for start in range(0, len(inputs), _BATCH):
            yield from target.batch(inputs[start : start + _BATCH])
        return
    check = target.check
    clock = time.perf_counter
    for data in inputs:
        failure: BaseException | None = None
        started = clock()
        alarm.start()
        try:
            check(data)
        except Exception as exc:  # a crash or a refusal: the caller tells which
            failure = exc
        finally:
            alarm.stop()
        yield failure, clock() - started


def _inputs(target: Target, seeds: list[bytes], count: int, seed: int) -> Iterator[list[bytes]]:
    """The mutated inputs, in chunks (they are made as they are needed)."""
    mutator = Mutator(
        seeds, random.Random(f"{seed}:{target.name}"), words=target.words, cbor=target.cbor
    )
    made = 0
    while made < count:
        size = min(_BATCH, count - made)
        yield [mutator.mutate() for _ in range(size)]
        made += size


def run_target(
    name: str,
    inputs: int,
    *,
    seed: int = 0,
    out: Path = Path("fuzz-crashes"),
    timeout: float = 10.0,
    rss_scope: str = "process",
) -> Report:
    """Fuzz target ``name`` with its seeds and ``inputs`` mutated inputs."""
    target = TARGETS[name]
    seeds = target.seeds()
    alarm = _Alarm(timeout)
    report = Report(name, 0, 0, 0, {}, 0.0, 0.0, 0, rss_scope)

    def account(chunk: Sequence[bytes], outcomes: Iterator[Outcome], *, seeding: bool) -> None:
        for data, (failure, seconds) in zip(chunk, outcomes, strict=False):
            report.inputs += 1
            report.seconds += seconds
            report.max_seconds = max(report.max_seconds, seconds)
            if failure is None:
                report.accepted += 1
                continue
            if not target.is_crash(failure):
                report.refused += 1
                if seeding:
                    report.refused_seeds.append(f"{type(failure).__name__}: {failure}")
                continue
            key = crash_key(failure)
            crash = report.crashes.get(key)
            if crash is None:
                path = _save(out, target, data, failure, key)
                summary = f"{type(failure).__name__}: {str(failure)[:160]}"
                report.crashes[key] = Crash(key, 1, path, summary)
            else:
                crash.count += 1

    account(seeds, _outcomes(target, seeds, alarm), seeding=True)
    for chunk in _inputs(target, seeds, inputs, seed):
        account(chunk, _outcomes(target, chunk, alarm), seeding=False)
    report.peak_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return report


def _worker(name: str, inputs: int, seed: int, out: str, timeout: float) -> Report:
    return run_target(name, inputs, seed=seed, out=Path(out), timeout=timeout, rss_scope="worker")


def target_inputs(name: str, inputs: int) -> int:
    """How many inputs ``name`` runs for ``--inputs``: its share of them (the server
    target's inputs are whole connections)."""
    return max(1, round(inputs * TARGETS[name].share))


def run_targets(
    names: Sequence[str],
    inputs: int,
    *,
    seed: int = 0,
    jobs: int = 1,
    out: Path = Path("fuzz-crashes"),
    timeout: float = 10.0,
) -> Iterator[Report]:
    """Fuzz each of ``names``; yields each report as it is done.

    With ``jobs`` > 1, each target runs in a fresh worker process (so its peak memory is
    its own); otherwise one after another in this process.
    """
    if jobs <= 1:
        for name in names:
            yield run_target(name, target_inputs(name, inputs), seed=seed, out=out, timeout=timeout)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, max_tasks_per_child=1
    ) as pool:
        futures = [
            pool.submit(_worker, name, target_inputs(name, inputs), seed, str(out), timeout)
            for name in names
        ]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()


def replay(path: Path) -> int:
    """Run a saved crash again; print what happens. Returns 1 if it still crashes."""
    lines = path.read_text(encoding="utf-8").splitlines()
    name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("# target:"))
    data = bytes.fromhex(
        next(line[len("input:") :].strip() for line in lines if line.startswith("input:"))
    )
    target = TARGETS[name]
    try:
        target.check(data)
    except Exception as exc:
        traceback.print_exception(exc, file=sys.stdout)
        crashed = target.is_crash(exc)
        print(f"{name}: {'CRASH' if crashed else 'refused (allowed)'}: {crash_key(exc)}")
        return 1 if crashed else 0
    print(f"{name}: accepted")
    return 0


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
