"""Fuzzing of every decoder of network input: a mutation fuzzer and its targets.

``python -m fuzz`` (see :mod:`fuzz.__main__`) builds, per target, a seed corpus of valid
inputs with our own encoders (sealed frames, address tokens, signed requests, wrapped
messages, ...) and runs a seeded mutation fuzzer (:mod:`fuzz._mutate`) over it. A
target's decoder may refuse an input only with the errors its docstring names; any other
exception, a hang, or an accepted input whose round-trip property fails is a crash,
saved with its traceback. tests/test_fuzz.py runs the same targets under Hypothesis.

This package is a tool, not part of a node: it imports crypto, mesh and node, and
nothing imports it.
"""

from fuzz._harness import Crash, Report, replay, run_target, run_targets
from fuzz._mutate import Mutator, cbor_heads
from fuzz._targets import TARGETS, Hang, PropertyFailed, Target, split_message

__all__ = [
    "TARGETS",
    "Crash",
    "Hang",
    "Mutator",
    "PropertyFailed",
    "Report",
    "Target",
    "cbor_heads",
    "replay",
    "run_target",
    "run_targets",
    "split_message",
]
