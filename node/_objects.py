"""Objects: named things on a node that others operate on over the mesh (docs/objects.md).

**Exposing.** ``node.expose(name, handler)`` makes object ``name`` of this node: each call
on it runs ``handler`` with a :class:`CallRequest` (who calls, the operation, the body,
the capability presented) and its :class:`Answer` (or bytes, or a raised
:class:`node.CallFailed`) is the reply. The command line and the local API expose
built-in kinds (:class:`ObjectSpec`): ``forward`` (a local web service: the operation
is an HTTP method and a path), ``inbox`` (``send``: into this node's inbox), ``topic``
(``publish``: this node publishes on one topic) and ``queue`` (``get``: the next
publication of a named durable subscription, acknowledged once the reply is in
custody). Those are kept in ``DIR/objects.json``: a restarted node exposes them again.
An object emits events as publications on ``~<node-id>.obj.<name>.<event>``.

**Who may call.** By default a ``call`` capability issued by this node for the object
(``ptth cap grant --op call --on NAME``), checked by :meth:`mesh.Authority.check`
(signatures, time, revocations, uses and rate); ``open=True`` lets anyone call. The
node itself always may.

**Calls** (:meth:`Objects.call`) are ``msg`` frames (mesh/_calls.py): in custody hop by
hop like any message, with the call's timeout as their lifetime. The runtime hands
calls and replies for this node to :meth:`Objects.received` once they are committed
(only their seen-set entry is stored: a copy again is a duplicate, so a handler never
runs twice for one call). A reply counts only from the node called, for a call still
waiting: anything else is ignored. A call to an object of this node runs here, with
no frame. A call frame dropped on the way (refused, expired) ends the call at once
with its drop receipt's reason.

**Bounds.** At most :data:`MAX_PENDING_CALLS` calls of ours wait for replies (past it,
:class:`node.CallFailed` 503 at once); at most :data:`MAX_RUNNING` handlers run at once
(past it a call is answered 503 at once); at most :data:`MAX_REFUSING` error replies are
being sent at once (past it a refused call gets no reply, counted: its caller times out).

**Capability URLs.** ``/c/<secret>`` on the node's public server (and through any relay
it is attached to, as ``/n/<node-id>/c/<secret>``) designates one object: holding the URL
is the authority. For a ``forward`` object ``/c/<secret>/<rest>`` is the web service's
``/<rest>`` (any method); for another, ``POST /c/<secret>`` with header
``ptth-operation: OP`` calls it (as this node itself: the visitor has no node id).
Only a digest of each secret is kept (``cap_urls`` in the store file): a URL is shown
once, when it is minted.

Delivery is at most once: a call taken (its seen-set entry committed) whose node stops
before its reply is in custody gets no reply; its caller times out and may call again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import re
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, TypeAlias

import httpx
import trio

import crypto
import mesh
from node._commit import RunBlocking
from node._datadir import DataDir, write_atomically
from node._errors import CallFailed, CallTimeout, NodeError
from node._mesh import MeshRuntime
from node._message import Published, Sent
from node._relay import HOP_BY_HOP_HEADERS
from node._server import Request, Response

__all__ = [
    "CAP_URL_PREFIX",
    "DEFAULT_CALL_TIMEOUT",
    "MAX_PENDING_CALLS",
    "MAX_REFUSING",
    "MAX_RUNNING",
    "OBJECTS_FILE",
    "Answer",
    "CallHandler",
    "CallRequest",
    "CapUrl",
    "Exposed",
    "NotFound",
    "ObjectSpec",
    "ObjectStatistics",
    "Objects",
    "ObjectsHost",
    "load_objects",
]

log = logging.getLogger("ptth.objects")

#: The path of capability URLs on a node's public server.
CAP_URL_PREFIX: Final = "/c/"
#: How long a call waits for its reply by default (s); also its frame's lifetime.
DEFAULT_CALL_TIMEOUT: Final = 30.0
#: Calls of ours waiting for replies at once: each holds an entry and a task.
MAX_PENDING_CALLS: Final = 1024
#: Handlers running at once; a call past it is answered 503 (busy) at once.
MAX_RUNNING: Final = 64
#: Error replies being sent at once; a refused call past it gets no reply (a flood of
#: bad calls costs a bounded number of tasks and store writes).
MAX_REFUSING: Final = 256
#: Built-in objects kept in the data directory (and so exposed again at start).
OBJECTS_FILE: Final = "objects.json"
MAX_SAVED_OBJECTS: Final = 1000
#: The most a forwarded web service may take to answer (s), within the call's time.
FORWARD_TIMEOUT: Final = 30.0
#: Bytes of randomness in a capability URL's secret (256 bits; at least 128 is the bar).
SECRET_BYTES: Final = 32
_SECRET: Final = re.compile(r"[A-Za-z0-9_-]{43}")
#: The built-in kinds and what each takes.
KINDS: Final = ("forward", "inbox", "topic", "queue")
_OPERATIONS: Final = {"inbox": "send", "topic": "publish", "queue": "get"}
#: ``METHOD[ /path[?query]]`` of a call on a ``forward`` object.
_FORWARD_OP: Final = re.compile(r"([A-Z]{1,16})(?: (/[^\s#]*))?")
#: What a path and query forwarded may hold (RFC 3986 pchar, '/', '?' and '%' escapes).
_URI_CHARS: Final = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*")
_CT: Final = re.compile(r"[!-~]+(?:; ?[!-~]+)*")
#: Headers that never cross the proxy of a capability URL (RFC 9110 §7.6.1, and those
#: the proxy sets itself or a visitor must not: ptth-*, checked apart).
_HOP_BY_HOP: Final = HOP_BY_HOP_HEADERS | {"content-encoding", "host"}


@dataclasses.dataclass(frozen=True)
class CallRequest:
    """One call, as a handler sees it.

    ``caller``: the node that called (the signer of the call frame; this node for its
    own calls and for calls through a capability URL, whose visitor has no node id).
    ``capability``: the one presented and verified (None for an open object and for
    this node's own calls). ``id``: the call frame's id; ``hops``: hops it made.
    """

    caller: crypto.NodeId
    object: str
    op: str
    body: bytes
    ct: str | None
    capability: crypto.VerifiedCapability | None
    id: bytes
    hops: int = 0
    #: Came through a capability URL.
    by_url: bool = False
    #: When the caller stops waiting (ms since the epoch).
    deadline: int = 0


@dataclasses.dataclass(frozen=True)
class Answer:
    """What a handler answers: ``status`` (200..599, as HTTP's), ``body`` of type
    ``ct``, and for an error ``why`` in words. A handler may return bytes instead (200)."""

    body: bytes = b""
    status: int = 200
    ct: str | None = None
    why: str | None = None
    #: Run once the reply is in custody (or answered here), with True; with False if
    #: it could not be sent: a queue acknowledges (or not) and lets the next get go.
    then: Callable[[bool], Awaitable[object]] | None = dataclasses.field(default=None, repr=False)


CallHandler = Callable[[CallRequest], Awaitable[Answer | bytes]]


class NotFound(NodeError):
    """What a request names is not here: an object, a subscription (404)."""


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    """A built-in object (``ptth expose``): its ``kind`` and what it stands for
    (``target``: the base URL of ``forward``, the topic of ``topic``, the subscription
    name of ``queue``, nothing for ``inbox``). Validated on construction: raises
    :class:`crypto.Malformed`."""

    name: str
    kind: str
    target: str | None = None
    open: bool = False

    def __post_init__(self) -> None:
        mesh.validate_object_name(self.name)
        if self.kind not in KINDS:
            raise crypto.Malformed(f"object kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if (self.target is None) != (self.kind == "inbox"):
            raise crypto.Malformed(
                "an inbox object stands for nothing else"
                if self.kind == "inbox"
                else f"a {self.kind} object needs its {_TARGET_WORDS[self.kind]}"
            )
        if self.kind == "forward":
            assert self.target is not None
            _base_url(self.target)
        elif self.kind == "topic":
            assert self.target is not None
            crypto.validate_topic(self.target)
        elif self.kind == "queue":
            assert self.target is not None
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.target):
                raise crypto.Malformed(f"subscription name {self.target[:80]!r} is not valid")
        if not isinstance(self.open, bool):
            raise crypto.Malformed("open must be true or false")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "target": self.target, "open": self.open}

    @classmethod
    def from_json(cls, value: Any) -> ObjectSpec:
        if not isinstance(value, dict) or set(value) - {"name", "kind", "target", "open"}:
            raise crypto.Malformed('an object is {"name", "kind", "target", "open"}, nothing else')
        return cls(value.get("name"), value.get("kind"), value.get("target"),  # type: ignore[arg-type]
                   value.get("open", False))  # fmt: skip

    def describe(self) -> str:
        """In words: ``forward to http://127.0.0.1:8000/``."""
        if self.kind == "forward":
            return f"forward to {self.target}"
        if self.kind == "topic":
            return f"publish on {self.target!r}"
        if self.kind == "queue":
            return f"get from subscription {self.target!r}"
        return "send to the inbox"


_TARGET_WORDS: Final = {"forward": "base URL", "topic": "topic", "queue": "subscription name"}


def _base_url(text: str) -> urllib.parse.SplitResult:
    """A ``forward`` object's base URL, checked: http(s), a host, no query or fragment."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise crypto.Malformed(f"forward URL {text[:120]!r} is not an http(s) URL with a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise crypto.Malformed(
            f"forward URL {text[:120]!r} may have no query, fragment or user: it is a base"
        )
    if not _URI_CHARS.fullmatch(parts.path):
        raise crypto.Malformed(f"forward URL {text[:120]!r} has characters a path may not")
    return parts


def _target_url(base: str, path: str) -> str:
    """The URL under ``base`` that ``path`` (``/rest?query``) names. Raises
    :class:`crypto.Malformed` for a path that would leave the base (``..``, escaped
    slashes) or holds characters a URL may not."""
    parts = _base_url(base)
    rest, _, query = path.partition("?")
    if not rest.startswith("/") or not _URI_CHARS.fullmatch(path):
        raise crypto.Malformed(f"path {path[:120]!r} is not /PATH[?QUERY] of URL characters")
    for segment in rest.split("/"):
        word = urllib.parse.unquote(segment)
        if word in (".", "..") or "/" in word or "\\" in word:
            raise crypto.Malformed(
                f"path {path[:120]!r} steps out of the object's base URL ({segment!r})"
            )
    url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}{rest}"
    if query:
        url += f"?{query}"
    # Belt and braces: whatever the path, the origin is the base's.
    built = httpx.URL(url)
    origin = httpx.URL(base)
    if (built.scheme, built.host, built.port) != (origin.scheme, origin.host, origin.port):
        raise crypto.Malformed(f"path {path[:120]!r} leaves the object's origin")
    return url


@dataclasses.dataclass
class ObjectStatistics:
    """Counters since start."""

    calls_received: int = 0
    calls_answered: int = 0
    #: Refused before a handler ran: bad calls, no such object, capability refused.
    calls_refused: int = 0
    #: Answered 503: too many handlers running.
    calls_busy: int = 0
    #: Refused calls that got no reply (too many error replies being sent).
    replies_dropped: int = 0
    #: Replies that could not be taken into custody (a full store).
    replies_lost: int = 0
    #: Replies to no call of ours, or from another node than the one called.
    replies_ignored: int = 0
    calls_made: int = 0
    calls_timed_out: int = 0
    url_requests: int = 0


#: (``mesh`` is an attribute of the host too: in its class body the module is this.)
_Trace: TypeAlias = mesh.Trace
_Store: TypeAlias = mesh.Store


class ObjectsHost(Protocol):
    """What :class:`Objects` needs of the node (``Node`` is one)."""

    node_id: crypto.NodeId
    identity: crypto.Identity
    clock: Callable[[], int]
    data: DataDir
    store: _Store
    mesh: MeshRuntime
    run_blocking: RunBlocking
    #: Runs the store's calls (its own thread).
    run_store: RunBlocking
    endpoints: tuple[str, ...]

    @property
    def http_client(self) -> httpx.AsyncClient: ...

    async def send_sealed(self, frames: Sequence[tuple[crypto.Frame, bytes]]) -> list[Sent]: ...

    async def publish(self, topic: str, body: bytes, *, ct: str | None = None) -> Published: ...

    async def trace(self, frame_id: bytes) -> _Trace | None: ...


class Exposed:
    """An object this node exposes (:meth:`Objects.expose`). ``with`` it to withdraw it
    when the block ends; :meth:`emit` publishes its events."""

    def __init__(
        self,
        objects: Objects,
        name: str,
        handler: CallHandler,
        *,
        open: bool,
        spec: ObjectSpec | None = None,
    ) -> None:
        self._objects = objects
        self.name = name
        self.handler = handler
        self.open = open
        #: The built-in object this is (None: one exposed by the embedding program).
        self.spec = spec

    @property
    def closed(self) -> bool:
        return self._objects._objects.get(self.name) is not self

    @property
    def events(self) -> str:
        """The pattern of every event of this object (to subscribe to)."""
        return mesh.events_pattern(self._objects.host.node_id, self.name)

    async def emit(self, event: str, body: bytes = b"", *, ct: str | None = None) -> Published:
        """Publish event ``event`` (one or more dot-separated words) of this object on
        ``~<node-id>.obj.<name>.<event>``; in custody when it returns. Raises
        :class:`crypto.Malformed` for a bad event name or body."""
        topic = mesh.event_topic(self._objects.host.node_id, self.name, event)
        return await self._objects.host.publish(topic, body, ct=ct)

    def close(self) -> None:
        """Withdraw the object (idempotent): calls from now on get 404; those running
        finish."""
        if not self.closed:
            del self._objects._objects[self.name]

    def __enter__(self) -> Exposed:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclasses.dataclass
class _Pending:
    """A call of ours waiting for its reply."""

    callee: crypto.NodeId
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    reply: mesh.Reply | None = None
    dropped: mesh.Trace | None = None


@dataclasses.dataclass(frozen=True)
class CapUrl:
    """A capability URL minted here: its id, object, when (ms), and the URLs (only
    when just minted: the secret is not kept)."""

    id: str
    object: str
    created: int
    revoked: int | None = None
    urls: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "revoked": self.revoked,
        }
        if self.urls:
            value["urls"] = list(self.urls)
        return value


def load_objects(path: Path) -> list[ObjectSpec]:
    """The built-in objects kept in ``path`` (``DIR/objects.json``; none if there is no
    such file). Raises :class:`NodeError` for a file that cannot be read or is bad."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise NodeError(f"cannot read {path}: {exc}; fix or remove it") from exc
    try:
        if not isinstance(value, dict) or not isinstance(value.get("objects"), list):
            raise crypto.Malformed('it is not {"objects": [...]}')
        return [ObjectSpec.from_json(item) for item in value["objects"]]
    except crypto.Malformed as exc:
        raise NodeError(f"{path}: {exc}; fix or remove it") from exc


class Objects:
    """The objects of one node, and its calls on others' (see the module docstring)."""

    def __init__(self, host: ObjectsHost) -> None:
        self.host = host
        self._objects: dict[str, Exposed] = {}
        self._pending: dict[bytes, _Pending] = {}
        self._running = 0
        self._refusing = 0
        self._queue_locks: dict[str, trio.Lock] = {}
        #: One change of objects.json at a time (each reads what the last one wrote).
        self._saving = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._closing = trio.Event()
        self.statistics = ObjectStatistics()
        # From the start and for good: calls and replies never go to the inbox, also
        # before serve() and after it (then a call is dropped: its caller times out).
        host.mesh.on_call = self.received
        #: The built-in objects kept in ``objects.json``, exposed by :meth:`serve`
        #: (``Node.open`` reads them before anything starts: a bad file stops it there).
        self.saved: list[ObjectSpec] = []

    # -- life -------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Expose the saved built-in objects and take calls until :meth:`shutdown` (then
        return once the handlers running have answered) or cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for spec in self.saved:
                self._objects[spec.name] = self._builtin(spec)
            try:
                task_status.started()
                await self._closing.wait()
            finally:
                self._nursery = None
                for pending in self._pending.values():
                    pending.done.set()

    def shutdown(self) -> None:
        """Take no more calls: :meth:`serve` returns once the handlers running are done
        (calls of ours still waiting end with :class:`NodeError`)."""
        self._closing.set()
        for pending in self._pending.values():
            pending.done.set()

    def _path(self) -> Path:
        return self.host.data.path / OBJECTS_FILE

    def _save(self, specs: Sequence[ObjectSpec]) -> None:
        data = json.dumps({"objects": [spec.to_json() for spec in specs]}, indent=1) + "\n"
        write_atomically(self._path(), data.encode("utf-8"), mode=0o600)

    # -- exposing ---------------------------------------------------------------------

    def expose(self, name: str, handler: CallHandler, *, open: bool = False) -> Exposed:
        """Expose object ``name``: each call runs ``handler`` (see the module docstring).
        Raises :class:`crypto.Malformed` for a bad name and :class:`NodeError` if an
        object of that name is exposed already."""
        mesh.validate_object_name(name)
        if name in self._objects:
            raise NodeError(f"object {name!r} is exposed already")
        exposed = Exposed(self, name, handler, open=open)
        self._objects[name] = exposed
        return exposed

    def get(self, name: str) -> Exposed | None:
        """The object exposed under ``name``, if any."""
        return self._objects.get(name)

    def __iter__(self) -> Iterator[Exposed]:
        """The objects exposed now."""
        return iter(list(self._objects.values()))

    async def expose_builtin(self, spec: ObjectSpec) -> Exposed:
        """Expose a built-in object and keep it in ``objects.json``. Raises
        :class:`NodeError` if the name is taken or the file cannot be written (then
        nothing changed), :class:`NotFound` if the queue's subscription is unknown."""
        async with self._saving:
            return await self._expose_builtin(spec)

    async def _expose_builtin(self, spec: ObjectSpec) -> Exposed:
        if spec.name in self._objects:
            raise NodeError(f"object {spec.name!r} is exposed already")
        if spec.kind == "queue":
            names = {
                saved.name for saved in await self.host.run_store(self.host.store.subscriptions)
            }
            if spec.target not in names:
                raise NotFound(
                    f"no named subscription {spec.target!r} here: make one first with "
                    f"'ptth subscribe PATTERN --name {spec.target}'"
                )
        saved = [item.spec for item in self._objects.values() if item.spec is not None]
        if len(saved) >= MAX_SAVED_OBJECTS:
            raise NodeError(f"this node keeps {len(saved)} objects already, the limit")
        await self._write([*saved, spec])
        exposed = self._builtin(spec)
        self._objects[spec.name] = exposed
        log.info("exposed object %s: %s", spec.name, spec.describe())
        return exposed

    async def remove(self, name: str) -> bool:
        """Withdraw object ``name`` for good: a built-in one leaves ``objects.json``, and
        the capability URLs of the name are revoked (an object exposed again under it
        later is not reached by them). False if there was none."""
        async with self._saving:
            return await self._remove(name)

    async def _remove(self, name: str) -> bool:
        exposed = self._objects.get(name)
        if exposed is None:
            return False
        if exposed.spec is not None:
            kept = [
                o.spec for o in self._objects.values() if o.spec is not None and o is not exposed
            ]
            await self._write(kept)
        exposed.close()
        book = self.host.mesh.book
        if book is not None:
            now = self.host.clock()
            await self.host.run_blocking(lambda: book.revoke_urls_of(name, now=now))
        log.info("removed object %s", name)
        return True

    async def _write(self, specs: Sequence[ObjectSpec]) -> None:
        try:
            await self.host.run_blocking(functools.partial(self._save, specs))
        except OSError as exc:
            raise NodeError(
                f"cannot save {self._path()}: {exc.strerror or exc}; nothing changed"
            ) from exc

    def _builtin(self, spec: ObjectSpec) -> Exposed:
        handlers: dict[str, CallHandler] = {
            "forward": functools.partial(self._forward_call, spec),
            "inbox": functools.partial(self._inbox_call, spec),
            "topic": functools.partial(self._topic_call, spec),
            "queue": functools.partial(self._queue_call, spec),
        }
        return Exposed(self, spec.name, handlers[spec.kind], open=spec.open, spec=spec)

    # -- calling ----------------------------------------------------------------------

    async def call(
        self,
        target: crypto.NodeId,
        name: str,
        operation: str,
        body: bytes = b"",
        *,
        cap: crypto.Capability | str | bytes | None = None,
        # The call frame's lifetime too, not only a bound on the wait (so not ASYNC109's
        # "use trio.fail_after"): the callee does not answer a caller that gave up.
        timeout: float = DEFAULT_CALL_TIMEOUT,  # noqa: ASYNC109
        ct: str | None = None,
    ) -> mesh.Reply:
        """Call ``operation`` on object ``name`` of node ``target``; return its 2xx reply.

        ``cap``: the capability to present (a token, one opened, or its envelope); by
        default the first one held (``--cap``, :meth:`Node.hold`) that allows calling
        it. ``timeout`` bounds the whole call and is the call frame's lifetime.

        Raises :class:`CallFailed` for an error reply (``status`` and ``why``: 400 a bad
        call, 403 the capability refused, 404 no such object, 5xx the object failed, or
        whatever status a forwarded web service answered), also when the call frame was
        dropped on the way (502, the drop's reason) or too many calls of ours wait
        (503); :class:`CallTimeout` (504) when no reply came in time;
        :class:`crypto.Malformed` for a bad name, operation, body, content type or
        token; :class:`mesh.StoreFull` when this node's store takes no more.
        """
        call = mesh.Call(name, operation, body, ct)
        if not 0 < timeout <= crypto.MAX_LIFETIME_MS / 1000 or math.isnan(timeout):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        where = f"{target.short}/{name}"
        self.statistics.calls_made += 1
        if target == self.host.node_id:
            return await self._call_here(call, timeout, where)
        if self._nursery is None:
            raise NodeError("node is not running")
        envelope = _envelope(cap)
        if envelope is None:
            held = self.host.mesh.wallet.choose(
                crypto.Operation.CALL, crypto.Target.named(target, name)
            )
            envelope = None if held is None else held.envelope
        if len(self._pending) >= MAX_PENDING_CALLS:
            raise CallFailed(
                503,
                f"this node has {len(self._pending)} calls waiting for replies, its limit: "
                "try again when some are answered",
                where=where,
            )
        runtime = self.host.mesh
        now = self.host.clock()
        frame = crypto.Frame(
            kind=crypto.Kind.MSG,
            src=self.host.node_id,
            id=runtime.new_id(),
            ts=now,
            exp=now + max(1, int(timeout * 1000)),
            hops=runtime.config.hops,
            dst=target,
            body=call.encode(),
            ct=mesh.CALL_CONTENT_TYPE,
            cap=envelope,
        )
        pending = self._pending[frame.id] = _Pending(target)
        try:
            # Watched from before it is sent: a drop receipt cannot slip by.
            with trio.move_on_after(timeout) as scope, runtime.watching(frame.id) as settled:
                await self.host.send_sealed([(frame, frame.seal(self.host.identity))])
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_drop, frame.id, settled, pending)
                    await pending.done.wait()
                    nursery.cancel_scope.cancel()
        finally:
            del self._pending[frame.id]
        if pending.reply is not None:
            reply = pending.reply
            if not reply.ok:
                raise CallFailed(reply.status, reply.why or "(no reason given)", reply=reply,
                                 where=where)  # fmt: skip
            return reply
        if pending.dropped is not None:
            trace = pending.dropped
            by = trace.by.short if trace.by is not None else "?"
            raise CallFailed(502, f"the call was dropped by {by}: {trace.why}", where=where)
        if scope.cancelled_caught:
            self.statistics.calls_timed_out += 1
            raise CallTimeout(
                f"no reply from {target.short} within {timeout:g} s (the call may or may "
                "not have run)",
                where=where,
            )
        raise NodeError(f"node stopped before {where} replied")

    async def _watch_drop(self, frame_id: bytes, settled: trio.Event, pending: _Pending) -> None:
        """Set ``pending`` done if the call frame is dropped on the way (a drop receipt,
        or a drop here: either settles its trace)."""
        await settled.wait()
        while True:
            with self.host.mesh.watching(frame_id) as settled:
                trace = await self.host.trace(frame_id)
                if trace is not None and trace.state == "dropped":
                    pending.dropped = trace
                    pending.done.set()
                    return
                await settled.wait()

    async def _call_here(self, call: mesh.Call, seconds: float, where: str) -> mesh.Reply:
        """A call on one of this node's own objects: run here, no frame."""
        runtime = self.host.mesh
        call_id = runtime.new_id()
        now = self.host.clock()
        request = CallRequest(
            caller=self.host.node_id,
            object=call.obj,
            op=call.op,
            body=call.body,
            ct=call.ct,
            capability=None,
            id=call_id,
            deadline=now + int(seconds * 1000),
        )
        with trio.move_on_after(seconds):
            reply = await self._run(request, here=True)
            if not reply.ok:
                raise CallFailed(reply.status, reply.why or "(no reason given)", reply=reply,
                                 where=where)  # fmt: skip
            return reply
        self.statistics.calls_timed_out += 1
        raise CallTimeout(f"no answer here within {seconds:g} s", where=where)

    # -- taking calls and replies -----------------------------------------------------

    def received(self, admitted: mesh.Admitted, now: int) -> None:
        """A call or a reply for this node, committed (the runtime's ``on_call``)."""
        frame = admitted.frame
        if frame.ct == mesh.REPLY_CONTENT_TYPE:
            self._take_reply(frame)
            return
        self.statistics.calls_received += 1
        if self._nursery is None:  # not serving (yet, or any more)
            self.statistics.replies_dropped += 1
            log.info("dropped a call from %s: not taking calls now", frame.src.short)
            return
        if self._closing.is_set():
            self._refuse(frame, 503, f"{self.host.node_id.short} is shutting down", now)
            return
        try:
            call = mesh.Call.decode(frame.body or b"")
        except crypto.Malformed as exc:
            self._refuse(frame, 400, f"bad call: {exc}", now)
            return
        exposed = self._objects.get(call.obj)
        if exposed is None:
            self._refuse(frame, 404, f"no object {call.obj!r} on {self.host.node_id.short}", now)
            return
        verified = None
        if not exposed.open and frame.src != self.host.node_id:
            try:
                verified = self.host.mesh.router.authority.check(
                    frame.cap,
                    now=now,
                    owner=self.host.node_id,
                    operation=crypto.Operation.CALL,
                    target=crypto.Target.named(self.host.node_id, call.obj),
                    presenter=frame.src,
                    use=frame.id,
                    what=f"calling {call.obj!r}",
                )
            except crypto.CryptoError as exc:
                self._refuse(frame, 403, str(exc), now)
                return
        if self._running >= MAX_RUNNING:
            self.statistics.calls_busy += 1
            self._refuse(
                frame,
                503,
                f"{self.host.node_id.short} is busy: {self._running} calls running, its "
                "limit; try again later",
                now,
                count=False,
            )
            return
        request = CallRequest(
            caller=frame.src,
            object=call.obj,
            op=call.op,
            body=call.body,
            ct=call.ct,
            capability=verified,
            id=frame.id,
            hops=admitted.hops,
            deadline=frame.exp,
        )
        assert self._nursery is not None  # on_call is set while serving only
        self._running += 1
        self._nursery.start_soon(self._answer_call, frame, request)

    def _take_reply(self, frame: crypto.Frame) -> None:
        try:
            reply = mesh.Reply.decode(frame.body or b"")
        except crypto.Malformed as exc:
            self.statistics.replies_ignored += 1
            log.info("ignored a bad reply from %s: %s", frame.src.short, exc)
            return
        pending = self._pending.get(reply.re)
        if pending is None or pending.callee != frame.src or pending.done.is_set():
            # Late (the call timed out), or not from the node called: a forgery.
            self.statistics.replies_ignored += 1
            log.info("ignored a reply from %s to no call of ours waiting for it", frame.src.short)
            return
        pending.reply = reply
        pending.done.set()

    def _refuse(
        self, frame: crypto.Frame, status: int, why: str, now: int, *, count: bool = True
    ) -> None:
        if count:
            self.statistics.calls_refused += 1
        log.info("refused a call from %s: %d %s", frame.src.short, status, why)
        if self._refusing >= MAX_REFUSING or self._nursery is None:
            self.statistics.replies_dropped += 1
            return
        self._refusing += 1
        reply = mesh.Reply.error(frame.id, status, why)
        self._nursery.start_soon(self._send_refusal, frame, reply)

    async def _send_refusal(self, frame: crypto.Frame, reply: mesh.Reply) -> None:
        try:
            await self._send_reply(frame, reply)
        finally:
            self._refusing -= 1

    async def _answer_call(self, frame: crypto.Frame, request: CallRequest) -> None:
        try:
            answer = await self._answer(request)
            sent = False
            try:
                sent = await self._send_reply(frame, _reply(frame.id, answer))
            finally:
                if answer.then is not None:
                    with trio.CancelScope(shield=True):
                        await answer.then(sent)
        finally:
            self._running -= 1

    async def _send_reply(self, call: crypto.Frame, reply: mesh.Reply) -> bool:
        """Take ``reply`` to ``call`` into custody; False if it could not be (the caller
        has given up, or the store is full)."""
        now = self.host.clock()
        if call.exp <= now:
            log.info("no reply to %s's call: it gave up waiting", call.src.short)
            return False
        runtime = self.host.mesh
        frame = crypto.Frame(
            kind=crypto.Kind.MSG,
            src=self.host.node_id,
            id=runtime.new_id(),
            ts=now,
            exp=call.exp,
            hops=runtime.config.hops,
            dst=call.src,
            body=reply.encode(),
            ct=mesh.REPLY_CONTENT_TYPE,
        )
        try:
            await self.host.send_sealed([(frame, frame.seal(self.host.identity))])
        except (mesh.MeshError, NodeError) as exc:
            self.statistics.replies_lost += 1
            log.warning("could not reply to %s: %s", call.src.short, exc)
            return False
        self.statistics.calls_answered += 1
        return True

    async def _run(self, request: CallRequest, *, here: bool = False) -> mesh.Reply:
        """Run a call made here or through a capability URL, within the handler bound."""
        exposed = self._objects.get(request.object)
        if exposed is None:
            return mesh.Reply.error(
                request.id, 404, f"no object {request.object!r} on {self.host.node_id.short}"
            )
        if self._running >= MAX_RUNNING:
            self.statistics.calls_busy += 1
            return mesh.Reply.error(
                request.id, 503, f"{self.host.node_id.short} is busy: {self._running} calls "
                "running, its limit; try again later",
            )  # fmt: skip
        self._running += 1
        try:
            answer = await self._answer(request)
            if answer.then is not None:
                await answer.then(True)  # answered here: the caller has it
        finally:
            self._running -= 1
        return _reply(request.id, answer)

    async def _answer(self, request: CallRequest) -> Answer:
        """Run the object's handler: its answer, or the error it came to."""
        exposed = self._objects.get(request.object)
        if exposed is None:  # withdrawn meanwhile
            return Answer(status=404, why=f"object {request.object!r} was withdrawn")
        try:
            result = await exposed.handler(request)
        except CallFailed as exc:
            return Answer(status=exc.status, why=exc.why)
        except Exception:
            # The boundary to an application's code: its failure is this call's 500,
            # logged here, not the end of the node (nor the words of its exception,
            # which may say more than the caller should know).
            log.exception("the handler of object %r failed", request.object)
            return Answer(
                status=500, why=f"the handler of object {request.object!r} failed; see its log"
            )
        if isinstance(result, bytes):
            return Answer(result)
        if not isinstance(result, Answer):
            log.error("the handler of object %r returned %r", request.object, type(result))
            return Answer(status=500, why=f"the handler of object {request.object!r} failed")
        return result

    # -- the built-in kinds -----------------------------------------------------------

    @staticmethod
    def _check_op(spec: ObjectSpec, request: CallRequest) -> None:
        expected = _OPERATIONS[spec.kind]
        if request.op != expected:
            raise CallFailed(
                400,
                f"object {spec.name!r} ({spec.describe()}) takes operation {expected!r}, "
                f"not {request.op[:80]!r}",
            )

    async def _forward_call(self, spec: ObjectSpec, request: CallRequest) -> Answer:
        found = _FORWARD_OP.fullmatch(request.op)
        if found is None:
            raise CallFailed(
                400,
                f"object {spec.name!r} forwards to a web service: the operation is an HTTP "
                f"method and a path, e.g. 'GET /' or 'POST /items?x=1', not {request.op[:80]!r}",
            )
        method, path = found[1], found[2] or "/"
        assert spec.target is not None
        try:
            url = _target_url(spec.target, path)
        except crypto.Malformed as exc:
            raise CallFailed(400, str(exc)) from exc
        headers = [("via", f"1.1 ptth-{self.host.node_id.short}")]
        if not request.by_url:
            headers.append(("ptth-caller", request.caller.text))
        if request.ct is not None:
            headers.append(("content-type", request.ct))
        left = (request.deadline - self.host.clock()) / 1000 if request.deadline else math.inf
        status, fields, body = await self._fetch(
            spec, method, url, headers, request.body, min(FORWARD_TIMEOUT, max(left, 0.001))
        )
        ct = next((v for k, v in fields if k == "content-type"), None)
        if ct is not None and (len(ct) > 127 or not _CT.fullmatch(ct)):
            ct = None
        why = None
        if not 200 <= status < 300:
            why = f"the web service of object {spec.name!r} answered {status}"
        return Answer(body, status=status, ct=ct, why=why)

    async def _fetch(
        self,
        spec: ObjectSpec,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        seconds: float,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request to a ``forward`` object's web service: status, headers (lower
        case, hop-by-hop ones left out), body. Raises :class:`CallFailed` 502 or 504."""
        try:
            async with self.host.http_client.stream(
                method, url, headers=headers, content=body, timeout=seconds
            ) as response:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > mesh.MAX_CALL_BODY:
                        raise CallFailed(
                            502,
                            f"the web service of object {spec.name!r} answered more than "
                            f"{mesh.MAX_CALL_BODY} bytes, the limit",
                        )
                    chunks.append(chunk)
                status = response.status_code
                fields = [
                    (k.lower(), v)
                    for k, v in response.headers.multi_items()
                    if k.lower() not in _HOP_BY_HOP
                ]
        except httpx.TimeoutException as exc:
            raise CallFailed(
                504,
                f"the web service of object {spec.name!r} did not answer within {seconds:.3g} s",
            ) from exc
        except httpx.HTTPError as exc:
            raise CallFailed(
                502,
                f"cannot reach the web service of object {spec.name!r}: "
                f"{exc or type(exc).__name__}",
            ) from exc
        if not 200 <= status <= 599:
            raise CallFailed(502, f"the web service of object {spec.name!r} answered {status}")
        return status, fields, b"".join(chunks)

    async def _inbox_call(self, spec: ObjectSpec, request: CallRequest) -> Answer:
        self._check_op(spec, request)
        now = self.host.clock()
        runtime = self.host.mesh
        frame = crypto.Frame(
            kind=crypto.Kind.MSG,
            src=request.caller,
            id=runtime.new_id(),
            ts=now,
            exp=now + int(runtime.config.frame_ttl * 1000),
            hops=runtime.config.hops,
            dst=self.host.node_id,
            body=request.body,
            ct=request.ct,
        )
        # An inbox row keeps an envelope, which nothing reads back: ours over the message
        # when we are its origin; none for another caller (its call frame's signature
        # vouched for the body, and we cannot sign in its name).
        envelope = frame.seal(self.host.identity) if frame.src == self.host.node_id else b""
        intake = mesh.Intake(mesh.Admitted(frame, envelope, request.hops), mesh.Deliver(), None)
        try:
            (result,) = await self.host.run_store(lambda: self.host.store.accept([intake], now=now))
        except mesh.MeshError as exc:
            raise CallFailed(503, f"the inbox takes nothing now: {exc}") from exc
        if result.outcome is mesh.Outcome.REJECTED:
            raise CallFailed(503, f"the inbox takes nothing now: {result.words}")
        runtime.inbox_grew()  # wake inbox readers (as a delivery does)
        return Answer(frame.id.hex().encode("ascii"), ct="text/plain")

    async def _topic_call(self, spec: ObjectSpec, request: CallRequest) -> Answer:
        self._check_op(spec, request)
        assert spec.target is not None
        try:
            published = await self.host.publish(spec.target, request.body, ct=request.ct)
        except crypto.Malformed as exc:
            raise CallFailed(400, str(exc)) from exc
        except (mesh.MeshError, NodeError) as exc:
            raise CallFailed(503, f"not published: {exc}") from exc
        return Answer(published.id.hex().encode("ascii"), ct="text/plain")

    async def _queue_call(self, spec: ObjectSpec, request: CallRequest) -> Answer:
        self._check_op(spec, request)
        name = spec.target
        assert name is not None
        store = self.host.store
        # One get at a time per queue: two must not be handed the same publication.
        lock = self._queue_locks.setdefault(name, trio.Lock())
        await lock.acquire()
        try:
            entries = await self.host.run_store(lambda: store.subscription_pending(name, limit=1))
        except BaseException:
            lock.release()
            raise
        if not entries:
            lock.release()
            return Answer(status=204)
        entry = entries[0]

        async def acknowledge(sent: bool) -> None:
            try:
                if sent:
                    await self.host.run_store(lambda: store.ack_subscription(name, [entry.seq]))
            finally:
                lock.release()

        # Held until the reply is in custody (then acknowledged) or could not be sent
        # (then it stays for the next get).
        return Answer(entry.body, ct=entry.ct, then=acknowledge)

    # -- capability URLs --------------------------------------------------------------

    def _book(self) -> mesh.CapabilityBook:
        book = self.host.mesh.book
        if book is None:
            raise NodeError("this node keeps no capability book (no store file)")
        return book

    async def mint_url(self, name: str) -> CapUrl:
        """A new capability URL for object ``name``: its id and its URLs (the relay
        forms first). Raises :class:`NodeError` if no such object is exposed, or past
        :data:`mesh.MAX_CAP_URLS`."""
        if name not in self._objects:
            raise NotFound(f"no object {name!r} is exposed here")
        secret = secrets.token_urlsafe(SECRET_BYTES)
        url_id = secrets.token_hex(8)
        now = self.host.clock()
        book = self._book()
        try:
            await self.host.run_blocking(lambda: book.add_url(url_id, secret, name, now=now))
        except mesh.MeshError as exc:
            raise NodeError(str(exc)) from exc
        urls = tuple(
            f"{endpoint.rstrip('/')}{CAP_URL_PREFIX}{secret}" for endpoint in self.host.endpoints
        )
        log.info("minted capability URL %s for object %s", url_id, name)
        return CapUrl(url_id, name, now, urls=urls)

    async def urls(self) -> list[CapUrl]:
        """Every capability URL minted here, oldest first (without their secrets)."""
        book = self._book()
        rows = await self.host.run_blocking(book.urls)
        return [CapUrl(row.id, row.object, row.created, row.revoked) for row in rows]

    async def revoke_url(self, url_id: str) -> bool:
        """Revoke capability URL ``url_id``: from now on it is 404. False if unknown
        (or revoked before)."""
        book = self._book()
        now = self.host.clock()
        revoked: bool = await self.host.run_blocking(lambda: book.revoke_url(url_id, now=now))
        if revoked:
            log.info("revoked capability URL %s", url_id)
        return revoked

    async def handle_url(self, request: Request) -> Response:
        """``/c/<secret>[/<rest>]`` on the public server (see the module docstring)."""
        self.statistics.url_requests += 1
        secret, slash, rest = request.path[len(CAP_URL_PREFIX) :].partition("/")
        unknown = Response.text(404, "no such capability URL (unknown, or revoked)")
        if not _SECRET.fullmatch(secret) or self.host.mesh.book is None:
            return unknown
        book = self.host.mesh.book
        entry = await self.host.run_blocking(lambda: book.url(secret))
        if entry is None:
            return unknown
        exposed = self._objects.get(entry.object)
        if exposed is None:
            return Response.text(
                404, f"this capability URL's object {entry.object!r} is not exposed now"
            )
        if exposed.spec is not None and exposed.spec.kind == "forward":
            return await self._proxy(exposed.spec, request, "/" + rest if slash else "/")
        if slash:
            return Response.text(404, f"object {entry.object!r} has no resources below it")
        if request.method != "POST":
            return Response.text(
                405, "call the object with POST and header ptth-operation: OP", [("allow", "POST")]
            )
        op = request.header("ptth-operation")
        if op is None:
            return Response.text(400, "say which operation with header ptth-operation: OP")
        content_type = request.header("content-type")
        try:
            call = mesh.Call(entry.object, op.strip(), request.body, content_type)
        except crypto.Malformed as exc:
            status = 413 if isinstance(exc, crypto.TooLarge) else 400
            return Response.text(status, f"bad call: {exc}")
        now = self.host.clock()
        reply = await self._run(
            CallRequest(
                caller=self.host.node_id,
                object=call.obj,
                op=call.op,
                body=call.body,
                ct=call.ct,
                capability=None,
                id=self.host.mesh.new_id(),
                by_url=True,
                deadline=now + int(FORWARD_TIMEOUT * 1000),
            )
        )
        return _response(reply)

    async def _proxy(self, spec: ObjectSpec, request: Request, path: str) -> Response:
        """A request through a capability URL to a ``forward`` object's web service."""
        assert spec.target is not None
        query = request.query
        try:
            url = _target_url(spec.target, path + (f"?{query}" if query else ""))
        except crypto.Malformed as exc:
            return Response.text(400, str(exc))
        named = {
            token.strip().lower()
            for token in (request.header("connection") or "").split(",")
            if token.strip()
        }
        headers = [
            (name, value)
            for name, value in request.headers
            if name not in _HOP_BY_HOP and name not in named and not name.startswith("ptth-")
        ]
        headers.append(("via", f"1.1 ptth-{self.host.node_id.short}"))
        if self._running >= MAX_RUNNING:
            self.statistics.calls_busy += 1
            return Response.text(503, "this node is busy; try again later", [("retry-after", "1")])
        self._running += 1
        try:
            status, fields, body = await self._fetch(
                spec, request.method, url, headers, request.body, FORWARD_TIMEOUT
            )
        except CallFailed as exc:
            return Response.text(exc.status, exc.why)
        finally:
            self._running -= 1
        fields.append(("via", f"1.1 ptth-{self.host.node_id.short}"))
        return Response(status, fields, body)


def _envelope(cap: crypto.Capability | str | bytes | None) -> bytes | None:
    if cap is None or isinstance(cap, bytes):
        return cap
    if isinstance(cap, str):
        return crypto.parse_capability(cap).envelope
    return cap.envelope


def _reply(call_id: bytes, answer: Answer) -> mesh.Reply:
    """The reply carrying ``answer`` (a 500 if the handler answered what no reply can)."""
    why = None if answer.why is None else answer.why[: crypto.MAX_WHY_LENGTH]
    try:
        return mesh.Reply(call_id, answer.status, answer.body, answer.ct, why)
    except crypto.Malformed as exc:
        log.error("a handler answered what no reply can carry: %s", exc)
        return mesh.Reply.error(call_id, 500, f"the object's answer cannot be sent: {exc}")


def _response(reply: mesh.Reply) -> Response:
    """A reply as the answer to an HTTP request (capability URLs): its ``why`` (from
    whoever answered) in header ``ptth-why``, its control characters escaped."""
    extra = [] if reply.why is None else [("ptth-why", _header_text(reply.why))]
    if reply.why is not None and not reply.body:
        return Response.text(reply.status, reply.why, extra)
    headers = [("content-type", reply.ct)] if reply.ct else []
    return Response(reply.status, [*headers, *extra], reply.body)


def _header_text(words: str) -> str:
    """``words`` as a header value: printable ASCII, anything else escaped."""
    return "".join(c if " " <= c <= "~" else f"\\u{ord(c):04x}" for c in words).strip()
