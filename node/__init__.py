"""ptth's runtime: the HTTP server and client, the local API and the CLI (DESIGN.md §6).

It drives :mod:`mesh` with I/O; ``node.Node`` is the object users run and embed.
"""

from node._datadir import DataDir, PeerBook, default_data_dir
from node._errors import DeliveryFailed, NodeError, NotRunning, PeerUnknown, Rejected

__all__ = [
    "DataDir",
    "DeliveryFailed",
    "NodeError",
    "NotRunning",
    "PeerBook",
    "PeerUnknown",
    "Rejected",
    "default_data_dir",
]
