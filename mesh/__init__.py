"""ptth's messaging application as sans-IO logic (DESIGN.md §1, §5).

Frames on the wire and their per-frame results, admission of inbound frames, and the
durable store. Nothing here imports trio, httpx or h11, or reads the clock.
"""

from mesh._errors import HopLimitExceeded, MeshError, NoRoute, StoreFull
from mesh._intake import Admitted, admit
from mesh._store import DEFAULT_MAX_INBOX_BYTES, InboxEntry, Store, StoreStatistics
from mesh._wire import (
    CONTENT_TYPE_FRAMES,
    CONTENT_TYPE_RESULTS,
    MAX_FRAMES_PER_REQUEST,
    Outcome,
    Reason,
    Result,
    WireFrame,
    decode_frames,
    decode_results,
    encode_frames,
    encode_results,
)

__all__ = [
    "CONTENT_TYPE_FRAMES",
    "CONTENT_TYPE_RESULTS",
    "DEFAULT_MAX_INBOX_BYTES",
    "MAX_FRAMES_PER_REQUEST",
    "Admitted",
    "HopLimitExceeded",
    "InboxEntry",
    "MeshError",
    "NoRoute",
    "Outcome",
    "Reason",
    "Result",
    "Store",
    "StoreFull",
    "StoreStatistics",
    "WireFrame",
    "admit",
    "decode_frames",
    "decode_results",
    "encode_frames",
    "encode_results",
]
