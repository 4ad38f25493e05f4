"""The operator's own door: the local API on a Unix socket in the data directory.

The TCP listener is shared with everyone on the network, and its connection slots can
be taken by strangers (each address gets a fair share, but the operator's CLI on
loopback is one address among many). A Unix socket ``DIR/api.sock`` (mode 0600, so only
the node's user can connect) served by a server of its own never competes with them:
``ptth status`` answers while the public port is under attack.

Connections on it are named :data:`LOCAL_PEER`, which the local API counts as this
machine; the bearer token is still required.
"""

from __future__ import annotations

import logging
import os
import socket as stdlib_socket
from pathlib import Path
from typing import Final

import trio

from node._server import PrefixedStream

__all__ = ["LOCAL_PEER", "MAX_SOCKET_PATH", "open_unix_listener"]

log = logging.getLogger("ptth.node")

#: The peer name of a connection on the local socket.
LOCAL_PEER: Final = "local-socket"
#: Longest path a Unix socket can have (sun_path is 108 bytes on Linux, with its NUL).
MAX_SOCKET_PATH: Final = 107


class _LocalStream(PrefixedStream):
    """A connection on the local socket: no ``socket`` attribute, so the server names
    it by :attr:`peer_name`."""

    peer_name = LOCAL_PEER


class _LocalListener(trio.abc.Listener[trio.abc.Stream]):
    def __init__(self, listener: trio.SocketListener, path: Path) -> None:
        self.listener = listener
        self.path = path

    async def accept(self) -> trio.abc.Stream:
        stream = await self.listener.accept()
        return _LocalStream(stream, b"")

    async def aclose(self) -> None:
        await self.listener.aclose()
        await trio.Path(self.path).unlink(missing_ok=True)


async def open_unix_listener(path: Path) -> trio.abc.Listener[trio.abc.Stream] | None:
    """Listen on a Unix socket at ``path`` (replacing a stale one), mode 0600; None
    where that cannot be done (no ``AF_UNIX``, a path too long, an OS error: logged),
    since the TCP listener still serves the API."""
    family = getattr(stdlib_socket, "AF_UNIX", None)
    if family is None:
        return None
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        log.info("no local API socket: %s is longer than %d bytes", path, MAX_SOCKET_PATH)
        return None
    sock = trio.socket.socket(family, stdlib_socket.SOCK_STREAM)
    try:
        # The data directory is locked by this node: a socket file left there is a
        # crashed node's.
        await trio.Path(path).unlink(missing_ok=True)
        await sock.bind(os.fspath(path))
        # The data directory is 0700 already; the socket is the node user's alone too.
        await trio.Path(path).chmod(0o600)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        log.warning("no local API socket at %s: %s", path, exc.strerror or exc)
        return None
    return _LocalListener(trio.SocketListener(sock), path)
