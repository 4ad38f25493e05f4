"""Allowances: how often each sender may make this node do costly work (token buckets).

A sender's allowance holds at most ``burst`` units and gains one every ``refill_ms``;
each piece of work takes one unit, and work asked past the allowance is refused before
it is done (a tree offer's chain check, a DHT message's). Keyed by sender; a sender
whose allowance has filled up again is forgotten (:meth:`Allowances.prune`), so many
senders that come and go do not grow the table for long. ``key`` None is one allowance
shared by everyone.
"""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["Allowances"]


class Allowances:
    """Token buckets per key (see the module docstring); times in ms."""

    def __init__(self, *, burst: int, refill_ms: int) -> None:
        if burst < 1 or refill_ms < 1:
            raise ValueError(f"burst and refill_ms must be at least 1, got {burst}, {refill_ms}")
        self.burst = burst
        self.refill_ms = refill_ms
        self._held: dict[Hashable, tuple[float, int]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def take(self, key: Hashable, now: int) -> bool:
        """Take one unit of ``key``'s allowance at ``now``; False when it is spent."""
        tokens, at = self._held.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0, now - at) / self.refill_ms)
        if tokens < 1:
            self._held[key] = (tokens, now)
            return False
        self._held[key] = (tokens - 1, now)
        return True

    def forget(self, key: Hashable) -> None:
        self._held.pop(key, None)

    def prune(self, now: int) -> None:
        """Forget the keys whose allowance is full again by ``now``."""
        full = [
            key
            for key, (tokens, at) in self._held.items()
            if tokens + max(0, now - at) / self.refill_ms >= self.burst
        ]
        for key in full:
            del self._held[key]
