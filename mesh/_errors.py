"""The exceptions of the messaging layer.

::

    MeshError
    ├── NoRoute            no way to reach a destination (yet)
    ├── HopLimitExceeded   a frame has travelled as far as its origin allows
    └── StoreFull          the store is over its quota, or the disk is full (429 upstream)

Errors from :mod:`crypto` pass through unchanged.
"""

from __future__ import annotations

__all__ = ["HopLimitExceeded", "MeshError", "NoRoute", "StoreFull"]


class MeshError(Exception):
    """Base of the messaging layer's errors."""

    status_hint: int = 400


class NoRoute(MeshError):
    """No way to reach the destination is known."""


class HopLimitExceeded(MeshError):
    """The frame has used every hop its origin allowed."""


class StoreFull(MeshError):
    """The store cannot take more: over quota or out of disk. The sender should retry."""

    status_hint = 429
