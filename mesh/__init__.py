"""ptth's messaging application as sans-IO logic (docs/architecture.md).

Frames on the wire and their per-frame results, admission of inbound frames, the
routing decisions (:class:`Router`: neighbours and their links, the routing table,
what to do with each frame), and the durable store. Nothing here imports trio, httpx or
h11, or reads the clock.
"""

from mesh._engine import (
    Action,
    Deliver,
    Fanout,
    Flood,
    Forward,
    ForwardPolicy,
    Greet,
    Notify,
    Reroute,
    Router,
    RouterConfig,
    Wake,
)
from mesh._errors import HopLimitExceeded, MeshError, NoRoute, StoreFull
from mesh._intake import Admitted, admit
from mesh._interests import Interest, Interests, Learned, secure_owner
from mesh._links import Link, Links, LinkState, Role
from mesh._routes import Route, RoutingTable
from mesh._store import (
    DEFAULT_MAX_INBOX_BYTES,
    InboxEntry,
    Intake,
    Outgoing,
    Queued,
    QueueStatistics,
    Quotas,
    Receipt,
    SavedSubscription,
    Store,
    StoreStatistics,
    Trace,
)
from mesh._topics import TopicTrie, covers, matches
from mesh._wire import (
    CONTENT_TYPE_FRAMES,
    CONTENT_TYPE_RESULTS,
    MAX_FRAMES_PER_REQUEST,
    MAX_SUBSCRIBERS_PER_COPY,
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
    "MAX_SUBSCRIBERS_PER_COPY",
    "Action",
    "Admitted",
    "Deliver",
    "Fanout",
    "Flood",
    "Forward",
    "ForwardPolicy",
    "Greet",
    "HopLimitExceeded",
    "InboxEntry",
    "Intake",
    "Interest",
    "Interests",
    "Learned",
    "Link",
    "LinkState",
    "Links",
    "MeshError",
    "NoRoute",
    "Notify",
    "Outcome",
    "Outgoing",
    "QueueStatistics",
    "Queued",
    "Quotas",
    "Reason",
    "Receipt",
    "Reroute",
    "Result",
    "Role",
    "Route",
    "Router",
    "RouterConfig",
    "RoutingTable",
    "SavedSubscription",
    "Store",
    "StoreFull",
    "StoreStatistics",
    "TopicTrie",
    "Trace",
    "Wake",
    "WireFrame",
    "admit",
    "covers",
    "decode_frames",
    "decode_results",
    "encode_frames",
    "encode_results",
    "matches",
    "secure_owner",
]
