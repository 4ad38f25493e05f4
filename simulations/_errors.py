"""The exceptions of the simulator.

::

    SimulationError         the simulation cannot do what was asked; the message says what
    ├── NotVirtualTime      a simulation was opened under a real clock
    └── NodeDown            the node asked for is crashed or stopped

Errors of the nodes themselves (:class:`node.NodeError`, :class:`crypto.CryptoError`,
...) pass through unchanged: a simulation runs real nodes.
"""

from __future__ import annotations

import enum
from typing import TypeVar

__all__ = ["NodeDown", "NotVirtualTime", "SimulationError", "one_of"]

_E = TypeVar("_E", bound=enum.StrEnum)


class SimulationError(Exception):
    """Base of the simulator's errors (the caller's mistake, or the scenario's)."""


class NotVirtualTime(SimulationError):
    """The trio run does not use ``trio.testing.MockClock``: an hour would take an hour."""


class NodeDown(SimulationError):
    """The simulated node is not running (it crashed or was stopped)."""


def one_of(kind: type[_E], value: _E | str, what: str) -> _E:
    """``value`` as a member of ``kind``. Raises :class:`SimulationError` saying
    ``what`` was given and naming the choices for anything else."""
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise SimulationError(f"{what} {value!r} is not one of {choices}") from None
