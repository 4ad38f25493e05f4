"""Neighbours and the state of the link to each: up, backing off, down.

A node's neighbours are the nodes it exchanges frames with directly: peers added by
token, relays it is attached to, and nodes attached to it as their relay. A neighbour
may be all three at once; it stays a neighbour while any of its roles remains.

Each link is a small state machine, driven by what the forwarder saw::

    state         event                     next state
    ------------  ------------------------  ------------------------------------------
    UP            send failed               BACKING_OFF (next attempt after a delay)
    BACKING_OFF   send failed               BACKING_OFF, delay doubled (cap, jitter);
                                            DOWN once failing for ``down_after``
    DOWN          send failed               DOWN, delay doubled (cap, jitter)
    any           send succeeded            UP, delay reset
    any           heard from the neighbour  UP, delay reset (it is alive: try it now)

Routes through a DOWN neighbour are used only when no feasible route through a usable
neighbour is left (see :class:`mesh.RoutingTable`). Times are ms since the epoch, passed
in; jitter comes from the RNG the caller passes (a seeded one in simulations).
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Iterator
from typing import Final

import crypto

__all__ = ["Link", "LinkState", "Links", "Role"]

#: First retry delay after a failure, and the cap (ms); jitter keeps it within the cap.
DEFAULT_BACKOFF_INITIAL_MS: Final = 200
DEFAULT_BACKOFF_MAX_MS: Final = 30_000
#: A neighbour failing for this long is DOWN: routes avoid it while others exist.
DEFAULT_DOWN_AFTER_MS: Final = 20_000


class LinkState(enum.StrEnum):
    UP = "up"
    BACKING_OFF = "backing-off"
    DOWN = "down"


class Role(enum.StrEnum):
    """Why a node is a neighbour."""

    PEER = "peer"  # its token was added (ptth peer add)
    RELAY = "relay"  # this node is attached to it
    ATTACHED = "attached"  # it is attached to this node


@dataclasses.dataclass
class Link:
    """What this node knows of its link to one neighbour."""

    node: crypto.NodeId
    roles: set[Role]
    state: LinkState = LinkState.UP
    #: Current back-off delay (ms), and when the next attempt is due (ms, or None: now).
    delay: int = 0
    next_attempt: int | None = None
    #: When the current run of failures began, and when the link went down.
    failing_since: int | None = None
    down_since: int | None = None
    last_ok: int | None = None
    last_heard: int | None = None
    last_error: str | None = None
    failures: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "node": self.node.text,
            "roles": sorted(str(role) for role in self.roles),
            "state": str(self.state),
            "next_attempt": self.next_attempt,
            "down_since": self.down_since,
            "last_ok": self.last_ok,
            "last_heard": self.last_heard,
            "last_error": self.last_error,
            "failures": self.failures,
        }


class Links:
    """Every neighbour's link. ``rng`` draws the jitter of back-off delays."""

    def __init__(
        self,
        *,
        rng: random.Random,
        backoff_initial_ms: int = DEFAULT_BACKOFF_INITIAL_MS,
        backoff_max_ms: int = DEFAULT_BACKOFF_MAX_MS,
        down_after_ms: int = DEFAULT_DOWN_AFTER_MS,
    ) -> None:
        self.rng = rng
        self.backoff_initial_ms = backoff_initial_ms
        self.backoff_max_ms = backoff_max_ms
        self.down_after_ms = down_after_ms
        self._links: dict[crypto.NodeId, Link] = {}

    def __contains__(self, node: object) -> bool:
        return node in self._links

    def __iter__(self) -> Iterator[Link]:
        return iter(list(self._links.values()))

    def __len__(self) -> int:
        return len(self._links)

    def get(self, node: crypto.NodeId) -> Link | None:
        return self._links.get(node)

    def add(self, node: crypto.NodeId, role: Role) -> bool:
        """Give ``node`` the ``role``; return True if it was not a neighbour before."""
        link = self._links.get(node)
        if link is None:
            self._links[node] = Link(node, {role})
            return True
        link.roles.add(role)
        return False

    def remove(self, node: crypto.NodeId, role: Role) -> bool:
        """Take ``role`` from ``node``; return True if it is no longer a neighbour."""
        link = self._links.get(node)
        if link is None:
            return False
        link.roles.discard(role)
        if link.roles:
            return False
        del self._links[node]
        return True

    def usable(self, node: crypto.NodeId) -> bool:
        """A neighbour that is not DOWN."""
        link = self._links.get(node)
        return link is not None and link.state is not LinkState.DOWN

    def succeeded(self, node: crypto.NodeId, now: int) -> bool:
        """A send to ``node`` succeeded; return True if the link was DOWN (it came back)."""
        link = self._links.get(node)
        if link is None:
            return False
        was_down = link.state is LinkState.DOWN
        self._reset(link)
        link.last_ok = now
        return was_down

    def heard_from(self, node: crypto.NodeId, now: int) -> bool:
        """``node`` sent us something: it is alive. Return True if the link was not UP
        (so its forwarder should try again at once)."""
        link = self._links.get(node)
        if link is None:
            return False
        link.last_heard = now
        if link.state is LinkState.UP:
            return False
        self._reset(link)
        return True

    def _reset(self, link: Link) -> None:
        link.state = LinkState.UP
        link.delay = 0
        link.next_attempt = None
        link.failing_since = None
        link.down_since = None

    def failed(
        self, node: crypto.NodeId, now: int, problem: str, *, retry_after_ms: int | None = None
    ) -> tuple[int, bool]:
        """A send to ``node`` failed. Return (ms to wait before the next attempt, whether
        the link has just gone DOWN). ``retry_after_ms`` is the neighbour's own word
        (``Retry-After``): it replaces the computed delay (no jitter), up to ten times
        the cap."""
        link = self._links.get(node)
        if link is None:
            return self.backoff_max_ms, False
        link.failures += 1
        link.last_error = problem
        if link.failing_since is None:
            link.failing_since = now
        if retry_after_ms is not None:
            wait = min(max(retry_after_ms, 0), self.backoff_max_ms * 10)
        else:
            link.delay = (
                self.backoff_initial_ms
                if link.delay == 0
                else min(link.delay * 2, self.backoff_max_ms)
            )
            # Jitter x0.5..1.5, but never past the cap.
            wait = min(int(link.delay * self.rng.uniform(0.5, 1.5)), self.backoff_max_ms)
        link.next_attempt = now + wait
        went_down = False
        if link.state is not LinkState.DOWN and now - link.failing_since >= self.down_after_ms:
            link.state = LinkState.DOWN
            link.down_since = now
            went_down = True
        elif link.state is LinkState.UP:
            link.state = LinkState.BACKING_OFF
        return wait, went_down
