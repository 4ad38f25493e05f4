"""A node's data directory: its identity, its own address record, its peers.

Layout (every file written atomically: a temporary file, fsync, rename)::

    DIR/identity.key         Ed25519 seed, mode 0600 (crypto.Identity)
    DIR/address.token        the last address record this node signed
    DIR/peers/<node-id>.token  one verified address token per peer
    DIR/policy.json          the block and allow lists (``ptth block``, ``ptth allow``)

The CLI and a running node share the directory; a peer added by the CLI is seen by the
node the next time it looks a peer up, without a restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import platformdirs

import crypto
from node._errors import NodeError

__all__ = ["DataDir", "PeerBook", "default_data_dir"]

DATA_DIR_ENV: Final = "PTTH_DATA_DIR"
_IDENTITY: Final = "identity.key"
_ADDRESS: Final = "address.token"
_PEERS: Final = "peers"
_POLICY: Final = "policy.json"


def default_data_dir() -> Path:
    """``$PTTH_DATA_DIR`` if set, else the per-user data directory for ptth."""
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(platformdirs.user_data_dir("ptth", appauthor=False))


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so readers see the old file or the new, never half."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


class PeerBook:
    """Verified address records of the peers this node knows, one file each."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Verified records by node, with the (mtime, size) of the file they came from:
        # a lookup per frame sent must not re-read and re-verify the file.
        self._cache: dict[crypto.NodeId, tuple[tuple[int, int], crypto.SignedAddress]] = {}

    def _path(self, node: crypto.NodeId) -> Path:
        return self.directory / f"{node.text}.token"

    def get(self, node: crypto.NodeId, *, now: int) -> crypto.SignedAddress | None:
        """The stored record for ``node``, or None if unknown or expired.

        Another process (the CLI) may change the file at any time; a change is noticed
        at the next lookup.
        """
        address = self._held(node)
        return address if address is not None and address.record.exp > now else None

    def _held(self, node: crypto.NodeId) -> crypto.SignedAddress | None:
        """The stored record, expired or not (an old seq must never come back)."""
        path = self._path(node)
        try:
            info = path.stat()
        except FileNotFoundError:
            self._cache.pop(node, None)
            return None
        version = (info.st_mtime_ns, info.st_size)
        cached = self._cache.get(node)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            address = crypto.parse_token(path.read_text(encoding="ascii"), now=0)
        except FileNotFoundError:
            return None
        self._cache[node] = (version, address)
        return address

    def add(self, address: crypto.SignedAddress, *, now: int) -> bool:
        """Store ``address``; return False if the same record was already stored.

        Raises :class:`crypto.Stale` if a record with a higher or equal seq is held.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        held = self._held(address.node)
        if held is not None and held.envelope == address.envelope:
            return False
        if held is not None:
            address.check_replaces(held)
        write_atomically(self._path(address.node), (address.token + "\n").encode("ascii"))
        return True

    def remove(self, node: crypto.NodeId) -> None:
        """Forget ``node``. Raises :class:`NodeError` if it is not a known peer."""
        try:
            self._path(node).unlink()
        except FileNotFoundError:
            raise NodeError(f"{node.text} is not a known peer") from None

    def __iter__(self) -> Iterator[crypto.SignedAddress]:
        """Every stored record (expired ones too), in the order of their ids' text.

        A file unchanged since it was last read (mtime, size) is not read and verified
        again: the mesh walks the peers at every tick."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.token")):
            try:
                node = crypto.NodeId.parse(path.stem)
            except crypto.Malformed:  # not named by us: read it as it is
                yield crypto.parse_token(path.read_text(encoding="ascii"), now=0)
                continue
            address = self._held(node)
            if address is not None:  # else removed meanwhile
                yield address


class DataDir:
    """One node's data directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.peers = PeerBook(path / _PEERS)

    @property
    def identity_path(self) -> Path:
        return self.path / _IDENTITY

    def init(self) -> tuple[crypto.Identity, bool]:
        """Load the identity, creating it (and the directory) if absent.

        Returns the identity and whether it was created now. Never overwrites a key.
        Raises :class:`crypto.KeyFileError` for an unusable key file.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise NodeError(f"cannot create data directory {self.path}: {exc.strerror}") from exc
        if not self.identity_path.exists():
            identity = crypto.Identity.generate()
            try:
                identity.save(self.identity_path)
            except crypto.KeyFileError:
                if not self.identity_path.exists():
                    raise
                # Another process created it between our check and our save: use theirs.
            else:
                return identity, True
        return crypto.Identity.load(self.identity_path), False

    def identity(self) -> crypto.Identity:
        """Load the identity. Raises :class:`NodeError` if the directory has none."""
        if not self.identity_path.exists():
            raise NodeError(
                f"no identity in {self.path}: run 'ptth init --data-dir {self.path}' first"
            )
        return crypto.Identity.load(self.identity_path)

    def own_address(self) -> crypto.SignedAddress | None:
        """The last address record this node signed (expired or not), if any."""
        try:
            text = (self.path / _ADDRESS).read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        return crypto.parse_token(text, now=0)

    def sign_address(
        self,
        identity: crypto.Identity,
        endpoints: list[str] | tuple[str, ...],
        *,
        exp: int,
        name: str | None = None,
    ) -> crypto.SignedAddress:
        """Sign a new address record with seq one higher than the last; store and return it."""
        previous = self.own_address()
        seq = 1 if previous is None else previous.record.seq + 1
        address = crypto.sign_address(identity, seq=seq, endpoints=endpoints, exp=exp, name=name)
        write_atomically(self.path / _ADDRESS, (address.token + "\n").encode("ascii"))
        return address

    def policy_lists(self) -> dict[str, Any]:
        """The block and allow lists as :meth:`mesh.Policy.lists` wrote them ({} if none).

        Raises :class:`NodeError` if the file cannot be read or is not a JSON object."""
        path = self.path / _POLICY
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise NodeError(
                f"cannot read {path}: {exc}; fix or remove it (it holds the block and allow lists)"
            ) from exc
        if not isinstance(value, dict):
            raise NodeError(f"{path} is not a JSON object; fix or remove it")
        return value

    def save_policy_lists(self, lists: dict[str, list[str]]) -> None:
        write_atomically(
            self.path / _POLICY, (json.dumps(lists, indent=1) + "\n").encode("utf-8"), mode=0o600
        )
