"""Admission policy: who may hand this node frames, and whose reach its application.

Two questions, asked at two places:

* **Who may hand us frames at all** (asked of the node that POSTs a batch, from the
  request's head, before its body is read): ``neighbours`` (the default: peers, relays
  and the nodes attached to this one) or ``open`` (any node that signs its request).
  A blocked node is refused either way.
* **Whose frames may reach the application** (asked of a frame's *origin*, however many
  hops it made): everyone but the blocked nodes (``anyone``, the default), or only the
  nodes on the allow-list (``allow-list``). A refused message is rejected with
  :attr:`Reason.BLOCKED`, so the hop before says so to its origin in a drop receipt; a
  refused publication is not delivered here (it still goes on to other subscribers).

And one trade-off an operator may make for speed: the **trusted** neighbours, whose
messages for other nodes this node passes on without checking their origin's signature
(:meth:`Policy.unverified_from`; docs/architecture.md, "Trusted neighbours"). Their
destination still checks it, and everything a node acts on itself (frames for it,
publications, announces, DHT and tree messages, interests) is checked whoever brings
it. The list is empty unless the operator fills it (``ptth trust NODE``).

:class:`Policy` holds the answers and the three lists; it is plain data that a node keeps
in its data directory (:meth:`Policy.lists` / :meth:`Policy.with_lists`).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from typing import Any, Final

import crypto

__all__ = ["MAX_POLICY_ENTRIES", "Admission", "InboxPolicy", "Policy"]

#: Most nodes on each list: a list is read on every frame and kept in memory.
MAX_POLICY_ENTRIES: Final = 100_000


class Admission(enum.StrEnum):
    """Who may hand this node frames."""

    NEIGHBOURS = "neighbours"
    OPEN = "open"


class InboxPolicy(enum.StrEnum):
    """Whose frames may reach this node's application."""

    ANYONE = "anyone"
    ALLOW_LIST = "allow-list"


@dataclasses.dataclass
class Policy:
    """This node's admission policy and its block, allow and trust lists."""

    admission: Admission = Admission.NEIGHBOURS
    inbox: InboxPolicy = InboxPolicy.ANYONE
    blocked: set[crypto.NodeId] = dataclasses.field(default_factory=set)
    allowed: set[crypto.NodeId] = dataclasses.field(default_factory=set)
    #: Neighbours whose messages for others are passed on unverified (see the module
    #: docstring).
    trusted: set[crypto.NodeId] = dataclasses.field(default_factory=set)

    def unverified_from(self, sender: crypto.NodeId) -> bool:
        """Whether messages ``sender`` hands us for other nodes go on without their
        origin's signature checked here: ``sender`` is trusted and not blocked."""
        return sender in self.trusted and sender not in self.blocked

    def sender_refusal(self, sender: crypto.NodeId, *, neighbour: bool) -> str | None:
        """Why ``sender`` may not hand us frames (None: it may)."""
        if sender in self.blocked:
            return f"node {sender.short} is blocked here"
        if self.admission is Admission.NEIGHBOURS and not neighbour:
            return (
                f"node {sender.short} is not a neighbour of this node: this node takes "
                "frames only from its peers, relays and attached nodes (peer with it, "
                "or run this node with --admission open)"
            )
        return None

    def inbox_refusal(self, origin: crypto.NodeId) -> str | None:
        """Why frames from ``origin`` may not reach the application (None: they may)."""
        if origin in self.blocked:
            return f"node {origin.short} is blocked at its destination"
        if self.inbox is InboxPolicy.ALLOW_LIST and origin not in self.allowed:
            return (
                f"the destination takes frames only from nodes it allows; {origin.short} is not one"
            )
        return None

    def block(self, node: crypto.NodeId) -> bool:
        """Block ``node``; return True if it was not blocked. Raises ValueError past
        :data:`MAX_POLICY_ENTRIES`."""
        return _add(self.blocked, node, "blocked")

    def unblock(self, node: crypto.NodeId) -> bool:
        if node not in self.blocked:
            return False
        self.blocked.discard(node)
        return True

    def allow(self, node: crypto.NodeId) -> bool:
        """Put ``node`` on the allow-list; return True if it was not on it."""
        return _add(self.allowed, node, "allowed")

    def unallow(self, node: crypto.NodeId) -> bool:
        if node not in self.allowed:
            return False
        self.allowed.discard(node)
        return True

    def trust(self, node: crypto.NodeId) -> bool:
        """Trust ``node`` (see :meth:`unverified_from`); return True if it was not
        trusted. Raises ValueError past :data:`MAX_POLICY_ENTRIES` nodes."""
        return _add(self.trusted, node, "trusted")

    def untrust(self, node: crypto.NodeId) -> bool:
        if node not in self.trusted:
            return False
        self.trusted.discard(node)
        return True

    def describe(self) -> dict[str, Any]:
        """The policy as JSON-ready data (ids sorted)."""
        return {
            "admission": self.admission.value,
            "inbox": self.inbox.value,
            **self.lists(),
        }

    def lists(self) -> dict[str, list[str]]:
        """The three lists, for keeping in a file."""
        return {
            "blocked": sorted(n.text for n in self.blocked),
            "allowed": sorted(n.text for n in self.allowed),
            "trusted": sorted(n.text for n in self.trusted),
        }

    def with_lists(self, data: Mapping[str, Any]) -> None:
        """Take the lists from what :meth:`lists` returned (read back from a file).

        Raises :class:`crypto.Malformed` if they are not lists of node ids."""
        self.blocked = _ids(data.get("blocked", []), "blocked")
        self.allowed = _ids(data.get("allowed", []), "allowed")
        self.trusted = _ids(data.get("trusted", []), "trusted")


def _add(nodes: set[crypto.NodeId], node: crypto.NodeId, what: str) -> bool:
    if node in nodes:
        return False
    if len(nodes) >= MAX_POLICY_ENTRIES:
        raise ValueError(f"{MAX_POLICY_ENTRIES} nodes are {what} already; remove some first")
    nodes.add(node)
    return True


def _ids(value: object, what: str) -> set[crypto.NodeId]:
    if not isinstance(value, list) or len(value) > MAX_POLICY_ENTRIES:
        raise crypto.Malformed(f"{what} must be a list of at most {MAX_POLICY_ENTRIES} node ids")
    nodes = set()
    for item in _strings(value, what):
        try:
            nodes.add(crypto.NodeId.parse(item))
        except crypto.Malformed as exc:
            raise crypto.Malformed(f"{what} holds {item[:60]!r}: {exc}") from exc
    return nodes


def _strings(values: Iterable[object], what: str) -> Iterable[str]:
    for item in values:
        if not isinstance(item, str):
            raise crypto.Malformed(f"{what} holds {item!r}, not a node id")
        yield item
