"""The exceptions of the node runtime.

::

    NodeError               something the runtime cannot do; the message says what
    ├── NotRunning          no node is running for a data directory (CLI -> local API)
    ├── PeerUnknown         no address is known for a node id
    ├── DeliveryFailed      a frame was refused or could not be handed on
    │   └── Rejected        the next hop refused the frame (reason code + words)
    └── Replayed            an idempotency key was used before: nothing new was taken

Errors of the layers below (:class:`crypto.CryptoError`, :class:`mesh.MeshError`) pass
through unchanged; the CLI prints any of them as one line.
"""

from __future__ import annotations

import mesh

__all__ = ["DeliveryFailed", "NodeError", "NotRunning", "PeerUnknown", "Rejected", "Replayed"]


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
