"""XMPP for the node's XMPP gateway, sans-IO (docs/architecture.md, "The XMPP gateway";
the protocols are RFC 6120, XMPP core, and XEP-0114, the Jabber component protocol).

Three parts, none doing I/O nor reading a clock:

* :class:`StreamParser`, an incremental XML stream parser: bytes in (any
  fragmentation, down to one byte at a time), out the stream header
  (:class:`StreamOpened`), each top-level element as an :mod:`xml.etree.ElementTree`
  element (:class:`StanzaReceived`) and the stream's end (:class:`StreamClosed`). It
  faces the network, so it is bounded and refuses what XMPP forbids (RFC 6120 11.1):
  no document type declaration (so no entity declarations: only the five predefined
  entities and character references exist, and the billion laughs and external
  entities cannot be written), no processing instructions, no comments, UTF-8 only;
  element depth, attributes (and namespace declarations) per element, text per
  element and bytes per stanza are bounded (:class:`Limits`), checked as the bytes
  arrive, so a peer cannot make the parser hold more than about one stanza's limit.
  Anything wrong raises :class:`XmppStreamError` whose ``condition`` is the RFC 6120
  stream error condition to send (``not-well-formed``, ``restricted-xml``,
  ``policy-violation``, ``unsupported-encoding``, ``invalid-namespace``,
  ``bad-format``).

  It is the standard library's expat with every declaration handler refusing, rather
  than ``defusedxml``: defusedxml also wraps expat and refuses the same things, but
  its incremental interface is ElementTree's ``XMLParser``, which has no hook for the
  depth, attribute and size bounds that must hold *while* a stanza arrives, nor for
  the stream's root element staying open for the whole connection.

* :func:`serialize`: an element to bytes, escaped (``&``, ``<``, ``>``, quotes and
  white space in attributes), with characters XML cannot carry replaced by U+FFFD, and
  ``xmlns`` written where an element's namespace differs from its parent's.

* :class:`Component`, one XEP-0114 connection's protocol state (the component side):
  :meth:`Component.open` is the stream header to send; fed the server's bytes
  (:meth:`Component.receive`), it answers the server's stream header with the
  handshake (SHA-1 of the stream id and the shared secret, :func:`handshake_digest`),
  reports :class:`Authenticated` when the server accepts it, then each stanza; a
  stream error from the server is :class:`RemoteStreamError`. :func:`stream_error` is
  what to send before closing on an error of ours.

JIDs: :func:`parse_jid` splits ``local@domain/resource`` (bounded, RFC 7622's 1023
bytes per part; no stringprep: the server has applied it to what it routes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import xml.etree.ElementTree as ET
from typing import Final, NoReturn, TypeAlias
from xml.parsers import expat

__all__ = [
    "COMPONENT_NS",
    "STANZAS_NS",
    "STREAMS_NS",
    "STREAM_NS",
    "Authenticated",
    "Component",
    "Event",
    "Jid",
    "Limits",
    "RemoteStreamError",
    "StanzaReceived",
    "StreamClosed",
    "StreamOpened",
    "StreamParser",
    "XmppStreamError",
    "element",
    "handshake_digest",
    "parse_jid",
    "serialize",
    "stream_error",
]

#: The stream root's namespace and the stream errors' namespace (RFC 6120).
STREAM_NS: Final = "http://etherx.jabber.org/streams"
STREAMS_NS: Final = "urn:ietf:params:xml:ns:xmpp-streams"
#: Stanza errors' conditions (RFC 6120 8.3).
STANZAS_NS: Final = "urn:ietf:params:xml:ns:xmpp-stanzas"
#: A component's content namespace (XEP-0114).
COMPONENT_NS: Final = "jabber:component:accept"
_XML_NS: Final = "http://www.w3.org/XML/1998/namespace"
#: What expat puts between a namespace URI and a local name.
_SEP: Final = "\x01"
#: Bytes handed to expat at once: how far past a limit a peer can push it.
_CHUNK: Final = 4096
_MAX_JID_PART: Final = 1023
#: Characters XML 1.0 cannot carry (RFC 6120 11.1 forbids them too).
_NOT_XML_CHAR: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class XmppStreamError(Exception):
    """A stream-level error: ``condition`` is the RFC 6120 condition (the name of the
    element inside ``<stream:error>``), ``text`` the words that go with it."""

    def __init__(self, condition: str, text: str = "") -> None:
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a stream may hold. Past any of them the parser raises
    :class:`XmppStreamError` (``policy-violation``)."""

    #: Element depth inside a stanza (the stanza itself is 1).
    max_depth: int = 16
    #: Attributes and namespace declarations of one element.
    max_attributes: int = 32
    #: Characters of text directly in one element (a message body: a ptth body
    #: fits, escaped or not).
    max_text: int = 256 * 1024
    #: Bytes of one stanza as received, and of the stream header.
    max_stanza: int = 1024 * 1024

    def __post_init__(self) -> None:
        if min(self.max_depth, self.max_attributes, self.max_text, self.max_stanza) < 1:
            raise ValueError(f"every XMPP limit must be at least 1: {self}")


@dataclasses.dataclass(frozen=True)
class StreamOpened:
    """The peer's stream header: its attributes (``id``, ``from``, ``to`` ...), names
    as ElementTree writes them (``{ns}name`` for a namespaced one)."""

    attributes: dict[str, str]


@dataclasses.dataclass(frozen=True)
class StanzaReceived:
    """A top-level element of the stream."""

    element: ET.Element


@dataclasses.dataclass(frozen=True)
class StreamClosed:
    """The peer closed its stream (``</stream:stream>``)."""


@dataclasses.dataclass(frozen=True)
class Authenticated:
    """The server accepted the component's handshake."""


@dataclasses.dataclass(frozen=True)
class RemoteStreamError:
    """The server sent a stream error (then closes)."""

    condition: str
    text: str


Event: TypeAlias = StreamOpened | StanzaReceived | StreamClosed | Authenticated | RemoteStreamError


def _name(raw: str) -> str:
    uri, sep, local = raw.rpartition(_SEP)
    return f"{{{uri}}}{local}" if sep else raw


class StreamParser:
    """The incremental, bounded XML stream parser (see the module docstring)."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        parser = expat.ParserCreate("UTF-8", _SEP)
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.buffer_text = False
        parser.ordered_attributes = False
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._text
        parser.StartNamespaceDeclHandler = self._namespace
        parser.XmlDeclHandler = self._declaration
        parser.StartDoctypeDeclHandler = self._doctype
        parser.EntityDeclHandler = self._entity
        parser.UnparsedEntityDeclHandler = self._unparsed_entity
        parser.NotationDeclHandler = self._notation
        parser.ExternalEntityRefHandler = self._external_entity
        parser.ProcessingInstructionHandler = self._processing_instruction
        parser.CommentHandler = self._comment
        parser.SkippedEntityHandler = self._skipped_entity
        parser.DefaultHandler = self._default
        self._parser = parser
        self._events: list[Event] = []
        self._stack: list[ET.Element] = []
        self._texts: list[list[str]] = []
        self._text_sizes: list[int] = []
        self._opened = False
        self._closed = False
        self._failed: XmppStreamError | None = None
        self._namespaces = 0
        #: Bytes handed to expat so far, and where the current stanza (or the gap
        #: between stanzas) began.
        self._fed = 0
        self._mark = 0

    @property
    def opened(self) -> bool:
        return self._opened

    @property
    def closed(self) -> bool:
        return self._closed

    def feed(self, data: bytes) -> list[Event]:
        """The events completed by ``data``. Raises :class:`XmppStreamError` for a
        stream that breaks a rule or a limit; after that (or after the stream ended)
        every call raises it again."""
        if self._failed is not None:
            raise self._failed
        if self._closed:
            if data.strip():
                self._fail("not-well-formed", "data after the end of the stream")
            return []
        try:
            for start in range(0, len(data), _CHUNK):
                chunk = data[start : start + _CHUNK]
                self._fed += len(chunk)
                self._parser.Parse(chunk, False)
                if self._closed:
                    break
                self._check_size()
        except expat.ExpatError as exc:
            self._failed = XmppStreamError("not-well-formed", expat.ErrorString(exc.code))
            raise self._failed from None
        except XmppStreamError as exc:
            self._failed = exc
            raise
        events, self._events = self._events, []
        return events

    def _check_size(self) -> None:
        if self._fed - self._mark > self.limits.max_stanza:
            what = "stream header" if not self._opened else "stanza"
            self._fail(
                "policy-violation", f"{what} over {self.limits.max_stanza} bytes (the limit)"
            )

    def _fail(self, condition: str, text: str) -> NoReturn:
        raise XmppStreamError(condition, text)

    # -- expat's handlers ---------------------------------------------------------------

    def _start(self, raw: str, attributes: dict[str, str]) -> None:
        if self._closed:
            self._fail("not-well-formed", "data after the end of the stream")
        if self._namespaces + len(attributes) > self.limits.max_attributes:
            self._fail(
                "policy-violation",
                f"an element with over {self.limits.max_attributes} attributes (the limit)",
            )
        self._namespaces = 0
        name = _name(raw)
        attrs = {_name(key): value for key, value in attributes.items()}
        if not self._opened:
            if name != f"{{{STREAM_NS}}}stream":
                self._fail(
                    "invalid-namespace", f"the stream must open with <stream:stream>, not {name}"
                )
            self._opened = True
            self._events.append(StreamOpened(attrs))
            self._mark = self._parser.CurrentByteIndex + 1
            return
        if len(self._stack) >= self.limits.max_depth:
            self._fail("policy-violation", f"elements nested over {self.limits.max_depth} deep")
        if not self._stack:
            self._mark = self._parser.CurrentByteIndex
            made = ET.Element(name, attrs)
        else:
            self._flush_text()
            made = ET.SubElement(self._stack[-1], name, attrs)
        self._stack.append(made)
        self._texts.append([])
        self._text_sizes.append(0)

    def _flush_text(self) -> None:
        """The text gathered in the innermost open element so far, before a new child:
        the tail of its last child, or its own text."""
        pending = self._texts[-1]
        if not pending:
            return
        text = "".join(pending)
        pending.clear()
        parent = self._stack[-1]
        if len(parent):
            last = parent[-1]
            last.tail = (last.tail or "") + text
        else:
            parent.text = (parent.text or "") + text

    def _end(self, raw: str) -> None:
        if not self._stack:
            self._closed = True
            self._events.append(StreamClosed())
            return
        self._flush_text()
        done = self._stack.pop()
        self._texts.pop()
        self._text_sizes.pop()
        if not self._stack:
            self._events.append(StanzaReceived(done))
            self._mark = self._parser.CurrentByteIndex

    def _text(self, data: str) -> None:
        if not self._stack:
            if data.strip():
                self._fail("bad-format", "text between stanzas")
            self._mark = self._parser.CurrentByteIndex + len(data)  # white space keep-alives
            return
        self._text_sizes[-1] += len(data)
        if self._text_sizes[-1] > self.limits.max_text:
            self._fail(
                "policy-violation", f"over {self.limits.max_text} characters of text in one element"
            )
        self._texts[-1].append(data)

    def _namespace(self, prefix: str | None, uri: str | None) -> None:
        self._namespaces += 1

    def _declaration(self, version: str | None, encoding: str | None, standalone: int) -> None:
        if version not in (None, "1.0"):
            self._fail("unsupported-version", f"XML version {version!r}: only 1.0")
        if encoding is not None and encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
            self._fail("unsupported-encoding", f"encoding {encoding!r}: XMPP is UTF-8 only")

    def _doctype(self, *args: object) -> None:
        self._fail("restricted-xml", "a document type declaration (DTD): XMPP forbids them")

    def _entity(self, *args: object) -> None:
        self._fail("restricted-xml", "an entity declaration: XMPP forbids them")

    def _unparsed_entity(self, *args: object) -> None:
        self._fail("restricted-xml", "an entity declaration: XMPP forbids them")

    def _notation(self, *args: object) -> None:
        self._fail("restricted-xml", "a notation declaration: XMPP forbids them")

    def _external_entity(self, *args: object) -> int:
        self._fail("restricted-xml", "an external entity: XMPP forbids them")

    def _processing_instruction(self, target: str, data: str) -> None:
        self._fail("restricted-xml", f"a processing instruction <?{target}: XMPP forbids them")

    def _comment(self, data: str) -> None:
        self._fail("restricted-xml", "a comment: XMPP forbids them")

    def _skipped_entity(self, name: str, is_parameter_entity: bool) -> None:
        self._fail(
            "restricted-xml", f"an entity reference &{name};: only the five predefined exist"
        )

    def _default(self, data: str) -> None:
        """Whatever has no handler of its own: ignorable (white space, the XML
        declaration's leftovers); anything with content is refused."""
        if data.startswith("<!"):
            self._fail("restricted-xml", "a markup declaration: XMPP forbids them")
        if data.startswith("&"):
            self._fail(
                "restricted-xml", f"an entity reference {data}: only the five predefined exist"
            )


# -- serialisation --------------------------------------------------------------------------


def _clean(text: str) -> str:
    return _NOT_XML_CHAR.sub("\ufffd", text)


def _escape_text(text: str) -> str:
    escaped = _clean(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return escaped.replace("\r", "&#13;")  # else XML reads it as a line end


def _escape_attribute(text: str) -> str:
    return (
        _escape_text(text)
        .replace('"', "&quot;")
        .replace("'", "&apos;")
        .replace("\t", "&#9;")
        .replace("\n", "&#10;")
    )


def _split(name: str) -> tuple[str, str]:
    if name.startswith("{"):
        uri, _, local = name[1:].partition("}")
        return uri, local
    return "", name


def _write(element: ET.Element, parent_ns: str, out: list[str]) -> None:
    uri, local = _split(element.tag if isinstance(element.tag, str) else str(element.tag))
    out.append("<" + local)
    if uri != parent_ns:
        out.append(f' xmlns="{_escape_attribute(uri)}"')
    for key, value in element.attrib.items():
        a_uri, a_local = _split(key)
        if a_uri == _XML_NS:
            a_local = "xml:" + a_local
        elif a_uri:
            raise ValueError(f"attribute {key!r}: only the xml: prefix is written")
        out.append(f' {a_local}="{_escape_attribute(value)}"')
    if element.text is None and not len(element):
        out.append("/>")
    else:
        out.append(">")
        if element.text:
            out.append(_escape_text(element.text))
        for child in element:
            _write(child, uri, out)
            if child.tail:
                out.append(_escape_text(child.tail))
        out.append(f"</{local}>")


def serialize(element: ET.Element, namespace: str = COMPONENT_NS) -> bytes:
    """``element`` as UTF-8 bytes for a stream whose default namespace is
    ``namespace`` (an element in another namespace gets its ``xmlns``)."""
    out: list[str] = []
    _write(element, namespace, out)
    return "".join(out).encode("utf-8")


def element(
    tag: str,
    attributes: dict[str, str | None] | None = None,
    text: str | None = None,
    *,
    ns: str = COMPONENT_NS,
) -> ET.Element:
    """An element ``{ns}tag`` with ``attributes`` (None values left out) and ``text``."""
    made = ET.Element(
        f"{{{ns}}}{tag}", {k: v for k, v in (attributes or {}).items() if v is not None}
    )
    made.text = text
    return made


# -- JIDs ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Jid:
    """``local@domain/resource``: ``local`` and ``resource`` may be empty."""

    local: str
    domain: str
    resource: str = ""

    @property
    def bare(self) -> str:
        return f"{self.local}@{self.domain}" if self.local else self.domain

    def __str__(self) -> str:
        return f"{self.bare}/{self.resource}" if self.resource else self.bare


def parse_jid(text: str) -> Jid:
    """Split a JID. Raises ValueError for an empty domain, an empty localpart before
    ``@``, an empty resource after ``/`` or a part over 1023 bytes."""
    bare, slash, resource = text.partition("/")
    local, at, domain = bare.rpartition("@")
    if not domain or (at and not local) or (slash and not resource):
        raise ValueError(f"not a JID: {text[:80]!r}")
    for part in (local, domain, resource):
        if len(part.encode("utf-8")) > _MAX_JID_PART:
            raise ValueError(f"a part of JID {text[:80]!r}... is over {_MAX_JID_PART} bytes")
    return Jid(local, domain, resource)


# -- the component protocol ------------------------------------------------------------------


def handshake_digest(stream_id: str, secret: str) -> str:
    """XEP-0114's handshake: hex SHA-1 of the stream id followed by the secret (UTF-8)."""
    digest = hashlib.sha1((stream_id + secret).encode())  # noqa: S324 - the protocol says SHA-1
    return digest.hexdigest()


def stream_error(condition: str, text: str = "") -> bytes:
    """A stream error and the end of our stream (RFC 6120 4.9), to send before closing."""
    text_part = f'<text xmlns="{STREAMS_NS}">{_escape_text(text)}</text>' if text else ""
    safe = condition if re.fullmatch(r"[a-z-]{1,40}", condition) else "undefined-condition"
    return (
        f'<stream:error><{safe} xmlns="{STREAMS_NS}"/>{text_part}</stream:error></stream:stream>'
    ).encode()


class Component:
    """One XEP-0114 connection, the component's side (see the module docstring)."""

    def __init__(self, domain: str, secret: str, limits: Limits | None = None) -> None:
        self.domain = domain
        self._secret = secret
        self._parser = StreamParser(limits)
        self._authenticated = False
        self._sent_handshake = False
        #: Bytes to send, gathered by :meth:`receive` (the handshake).
        self._outgoing: list[bytes] = []

    @property
    def authenticated(self) -> bool:
        return self._authenticated

    def open(self) -> bytes:
        """Our stream header, the first bytes to send."""
        return (
            "<?xml version='1.0'?>"
            f"<stream:stream xmlns='{COMPONENT_NS}' xmlns:stream='{STREAM_NS}' "
            f"to='{_escape_attribute(self.domain)}'>"
        ).encode()

    def data_to_send(self) -> bytes:
        """What the protocol itself has to send now (the handshake), once."""
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        return data

    def receive(self, data: bytes) -> list[Event]:
        """The events in the server's ``data``. Raises :class:`XmppStreamError` for a
        stream that breaks the rules, or a handshake refused otherwise than with a
        stream error."""
        events: list[Event] = []
        for event in self._parser.feed(data):
            if isinstance(event, StreamOpened):
                stream_id = event.attributes.get("id")
                if not stream_id:
                    raise XmppStreamError("invalid-id", "the server's stream header has no id")
                digest = handshake_digest(stream_id, self._secret)
                self._outgoing.append(f"<handshake>{digest}</handshake>".encode("ascii"))
                self._sent_handshake = True
                events.append(event)
            elif isinstance(event, StanzaReceived):
                tag = event.element.tag
                if tag == f"{{{STREAM_NS}}}error":
                    events.append(_remote_error(event.element))
                elif not self._authenticated:
                    if tag != f"{{{COMPONENT_NS}}}handshake":
                        raise XmppStreamError(
                            "not-authorized", f"a stanza ({_split(tag)[1]}) before the handshake"
                        )
                    self._authenticated = True
                    events.append(Authenticated())
                else:
                    events.append(event)
            else:
                events.append(event)
        return events


def _remote_error(error: ET.Element) -> RemoteStreamError:
    condition = "undefined-condition"
    text = ""
    for child in error:
        uri, local = _split(str(child.tag))
        if uri != STREAMS_NS:
            continue
        if local == "text":
            text = (child.text or "")[:500]
        else:
            condition = local[:40]
    return RemoteStreamError(condition, text)
