"""The exceptions of the node runtime.

::

    NodeError               something the runtime cannot do; the message says what
    ├── NotRunning          no node is running for a data directory (CLI -> local API)
    ├── PeerUnknown         no address is known for a node id
    ├── DeliveryFailed      a frame was refused or could not be handed on
    │   └── Rejected        the next hop refused the frame (reason code + words)
    ├── Replayed            an idempotency key was used before: nothing new was taken
    └── CallFailed          a call on an object got no 2xx reply (``status``, ``why``)
        └── CallTimeout     no reply came within the call's timeout (504)

Errors of the layers below (:class:`crypto.CryptoError`, :class:`mesh.MeshError`) pass
through unchanged; the CLI prints any of them as one line.
"""

from __future__ import annotations

import mesh

__all__ = [
    "CallFailed",
    "CallTimeout",
    "DeliveryFailed",
    "NodeError",
    "NotRunning",
    "PeerUnknown",
    "Rejected",
    "Replayed",
    "leaves",
]


class NodeError(Exception):
    """Base of the runtime's errors."""


class NotRunning(NodeError):
    """No node is running for the data directory (or its local API does not answer)."""


class PeerUnknown(NodeError):
    """No address is known for the node id asked for."""


class DeliveryFailed(NodeError):
    """A frame could not be handed to the next hop (after retries, or refused)."""


class Rejected(DeliveryFailed):
    """The next hop refused the frame; ``code`` is its reason code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code


class Replayed(NodeError):
    """A call carried an idempotency key this node recorded before (within
    :data:`mesh.IDEMPOTENCY_WINDOW_MS`): nothing was taken this time, and ``record``
    holds the first call's fingerprint and answer."""

    def __init__(self, record: mesh.Idempotent) -> None:
        super().__init__(f"idempotency key {record.key!r} was used before")
        self.record = record


class CallFailed(NodeError):
    """A call on an object (:meth:`node.Node.call`) did not succeed: ``status`` as
    HTTP's (400 a bad call, 403 the capability refused, 404 no such object, 500 its
    handler failed, 502/504 the web service behind it, or the call dropped on the way,
    503 too busy), ``why`` in words, ``reply`` the whole reply if one came (its body
    may say more). ``where``: ``<node>/<object>``, for the message.

    A handler raises it to answer an error: ``raise CallFailed(400, "no such item")``.
    """

    def __init__(
        self, status: int, why: str, *, reply: mesh.Reply | None = None, where: str = ""
    ) -> None:
        super().__init__(f"{where + ': ' if where else ''}{status} {why}")
        self.status = status
        self.why = why
        self.reply = reply


class CallTimeout(CallFailed):
    """No reply came within the call's timeout (the call may or may not have run)."""

    def __init__(self, why: str, *, where: str = "") -> None:
        super().__init__(504, why, where=where)


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions in ``exc``: itself, or those of an exception group (trio's
    nurseries raise them), however deeply nested, in order."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]
