"""The XMPP stream parser and component protocol (mesh._xmpp): stanzas come out the same
in any fragmentation, what serialize writes parses back to the same tree, and every
declaration, entity trick and limit breach is an XmppStreamError with the RFC 6120
condition to send.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh._xmpp import (
    COMPONENT_NS,
    STREAM_NS,
    Authenticated,
    Component,
    Limits,
    RemoteStreamError,
    StanzaReceived,
    StreamClosed,
    StreamOpened,
    StreamParser,
    XmppStreamError,
    element,
    handshake_digest,
    parse_jid,
    serialize,
    stream_error,
)

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
    b"xmlns:stream='http://etherx.jabber.org/streams' id='s-1' from='ptth.example'>"
)
C = f"{{{COMPONENT_NS}}}"


def stanzas(parser: StreamParser, data: bytes, cuts: list[int]) -> list[ET.Element]:
    out: list[ET.Element] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        for event in parser.feed(data[start:cut]):
            if isinstance(event, StanzaReceived):
                out.append(event.element)
        start = max(start, cut)
    return out


def canonical(tree: ET.Element) -> bytes:
    return serialize(tree)


def refused(data: bytes, limits: Limits | None = None) -> XmppStreamError:
    parser = StreamParser(limits)
    with pytest.raises(XmppStreamError) as caught:
        parser.feed(data)
    # A failed parser stays failed.
    with pytest.raises(XmppStreamError):
        parser.feed(b"<x/>")
    return caught.value


# -- parsing and serialising ----------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)
NAMES = st.sampled_from(["message", "body", "x", "item", "presence"])


@st.composite
def trees(draw: st.DrawFn, depth: int = 0) -> ET.Element:
    ns = draw(st.sampled_from([COMPONENT_NS, "urn:example:a", "urn:example:b"]))
    made = ET.Element(f"{{{ns}}}{draw(NAMES)}")
    for key in draw(st.lists(st.sampled_from(["to", "from", "id", "type"]), unique=True)):
        made.set(key, draw(TEXT))
    made.text = draw(st.none() | TEXT.filter(bool))
    if depth < 3:
        for child in draw(st.lists(trees(depth + 1), max_size=3)):
            child.tail = draw(st.none() | TEXT.filter(bool))
            made.append(child)
    return made


@given(st.lists(trees(), min_size=1, max_size=4), st.lists(st.integers(0, 4000), max_size=30))
def test_stanzas_round_trip_in_any_fragmentation(trees_: list[ET.Element], cuts: list[int]) -> None:
    data = HEADER + b" ".join(serialize(tree) for tree in trees_) + b"</stream:stream>"
    whole = stanzas(StreamParser(), data, [])
    pieces = stanzas(StreamParser(), data, [cut % (len(data) + 1) for cut in cuts])
    assert [canonical(t) for t in pieces] == [canonical(t) for t in whole]
    assert len(whole) == len(trees_)
    # Serialising what was parsed gives the same bytes as serialising the original:
    # escaping is undone exactly (up to what XML cannot carry, replaced alike).
    for parsed, original in zip(whole, trees_, strict=True):
        assert canonical(parsed) == canonical(original)


def test_a_stanza_one_byte_at_a_time() -> None:
    data = (
        HEADER
        + b"<message to='news@ptth.example' from='alice@x/r'><body>a &amp; b &lt; &#x263A;"
        + "é".encode()
        + b"</body><x xmlns='urn:x'/></message> \n\t"
    )
    parser = StreamParser()
    events = [event for i in range(len(data)) for event in parser.feed(data[i : i + 1])]
    assert isinstance(events[0], StreamOpened)
    assert events[0].attributes == {"id": "s-1", "from": "ptth.example"}
    assert isinstance(events[1], StanzaReceived)
    message = events[1].element
    assert message.tag == C + "message"
    assert message.get("to") == "news@ptth.example"
    body = message.find(C + "body")
    assert body is not None
    assert body.text == "a & b < \u263aé"
    assert message.find("{urn:x}x") is not None
    assert parser.feed(b"</stream:stream>") == [StreamClosed()]
    assert parser.closed


def test_serialize_escapes_and_replaces_what_xml_cannot_carry() -> None:
    message = element("message", {"to": "a'\"<&>\n@b", "id": None}, "x<&>\x00\x1by")
    data = serialize(message)
    assert data == (
        b'<message to="a&apos;&quot;&lt;&amp;&gt;&#10;@b">x&lt;&amp;&gt;\xef\xbf\xbd\xef\xbf\xbdy'
        b"</message>"
    )
    nested = element("message")
    nested.append(element("ptth", {"a": "1"}, ns="urn:ptth:xmpp:0"))
    assert serialize(nested) == b'<message><ptth xmlns="urn:ptth:xmpp:0" a="1"/></message>'


def test_white_space_keep_alives_never_reach_the_size_limit() -> None:
    parser = StreamParser(Limits(max_stanza=300))
    parser.feed(HEADER)
    for _ in range(100):
        assert parser.feed(b" " * 50) == []
    assert len(parser.feed(b"<iq/>")) == 1


# -- refusals -----------------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<stream:stream xmlns:stream='http://etherx.jabber.org/streams'><x>&lol3;</x>"""

EXTERNAL = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<stream:stream xmlns:stream='http://etherx.jabber.org/streams'><x>&xxe;</x>"""


@pytest.mark.parametrize(
    ("data", "condition", "words"),
    [
        (BILLION_LAUGHS, "restricted-xml", "document type declaration"),
        (EXTERNAL, "restricted-xml", "document type declaration"),
        (HEADER + b"<x>&lol;</x>", "not-well-formed", "undefined entity"),
        (HEADER + b"<!DOCTYPE x>", "not-well-formed", ""),
        (HEADER + b"<!-- hi --><x/>", "restricted-xml", "comment"),
        (HEADER + b"<?pi data?>", "restricted-xml", "processing instruction"),
        (b"<?xml version='1.0' encoding='ISO-8859-1'?><a/>", "unsupported-encoding", "UTF-8"),
        (b"<a xmlns='jabber:client'/>", "invalid-namespace", "<stream:stream>"),
        (HEADER + b"hello<x/>", "bad-format", "text between stanzas"),
        (HEADER + b"<x><y></x>", "not-well-formed", "mismatched tag"),
        (HEADER + b"<x>\xff</x>", "not-well-formed", ""),
        (HEADER + b"</stream:stream><x/>", "not-well-formed", "after"),
    ],
)
def test_what_xmpp_forbids_is_refused(data: bytes, condition: str, words: str) -> None:
    error = refused(data)
    assert error.condition == condition
    assert words in error.text


def test_depth_attribute_text_and_size_limits() -> None:
    limits = Limits(max_depth=3, max_attributes=4, max_text=10, max_stanza=400)
    assert len(stanzas(StreamParser(limits), HEADER + b"<a><b><c/></b></a>", [])) == 1
    deep = refused(HEADER + b"<a><b><c><d/></c></b></a>", limits)
    assert (deep.condition, deep.text) == ("policy-violation", "elements nested over 3 deep")
    attributes = refused(HEADER + b"<a v='1' w='1' x='1' y='1' z='1'/>", limits)
    assert attributes.condition == "policy-violation"
    assert "attributes" in attributes.text
    namespaces = refused(HEADER + b"<a xmlns:p='u:1' xmlns:q='u:2' x='1' y='1' z='1'/>", limits)
    assert namespaces.condition == "policy-violation"
    text = refused(HEADER + b"<a>01234567890</a>", limits)
    assert text.condition == "policy-violation"
    assert "characters of text" in text.text
    # A stanza over the limit is refused as it arrives, whether it has events or is one
    # endless start tag (expat would buffer it whole), and so is an endless header.
    parser = StreamParser(limits)
    parser.feed(HEADER + b"<a>")
    fed = 0

    def feed_children() -> None:
        nonlocal fed
        while fed < 1000:
            parser.feed(b"<b/>")
            fed += 4

    with pytest.raises(XmppStreamError, match="stanza over 400 bytes"):
        feed_children()
    assert fed < 400
    tag = refused(HEADER + b"<a x='" + b"y" * 500, limits)
    assert tag.condition == "policy-violation"
    header = refused(b"<stream:stream xmlns:stream='" + b"u" * 500, limits)
    assert header.text == "stream header over 400 bytes (the limit)"


def test_a_huge_input_is_refused_within_a_chunk_of_the_limit() -> None:
    parser = StreamParser(Limits(max_stanza=10_000))
    parser.feed(HEADER)
    with pytest.raises(XmppStreamError, match="policy-violation"):
        parser.feed(b"<a>" + b"x" * 50_000_000)


# -- the component protocol ---------------------------------------------------------------------


def test_handshake_digest_is_xep_0114s() -> None:
    # XEP-0114's example: stream id 3BF96D32, secret 'test'.
    assert handshake_digest("3BF96D32", "test") == hashlib.sha1(b"3BF96D32test").hexdigest()
    assert handshake_digest("id-é", "sécret") == hashlib.sha1("id-ésécret".encode()).hexdigest()


def test_component_handshake_then_stanzas() -> None:
    component = Component("ptth.example", "s3cret")
    opening = component.open()
    assert b"to='ptth.example'" in opening
    assert b"jabber:component:accept" in opening
    events = component.receive(HEADER[:40])
    assert events == []
    assert component.data_to_send() == b""
    events = component.receive(HEADER[40:])
    assert isinstance(events[0], StreamOpened)
    digest = hashlib.sha1(b"s-1s3cret").hexdigest()
    assert component.data_to_send() == f"<handshake>{digest}</handshake>".encode()
    assert component.data_to_send() == b""
    events = component.receive(b"<handshake/><message from='a@b' to='t@ptth.example'/>")
    assert events[0] == Authenticated()
    assert component.authenticated
    assert isinstance(events[1], StanzaReceived)


def test_component_refusals() -> None:
    component = Component("ptth.example", "wrong")
    component.receive(HEADER)
    events = component.receive(
        b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>bad secret</text>"
        b"</stream:error></stream:stream>"
    )
    assert events == [RemoteStreamError("not-authorized", "bad secret"), StreamClosed()]
    early = Component("ptth.example", "s")
    early.receive(HEADER)
    with pytest.raises(XmppStreamError, match="not-authorized"):
        early.receive(b"<message/>")
    no_id = Component("ptth.example", "s")
    with pytest.raises(XmppStreamError, match="invalid-id"):
        no_id.receive(f"<stream:stream xmlns:stream='{STREAM_NS}'>".encode())


def test_stream_error_bytes() -> None:
    assert stream_error("policy-violation", "too <big>") == (
        b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>".replace(
            b"'", b'"'
        )
        + b'<text xmlns="urn:ietf:params:xml:ns:xmpp-streams">too &lt;big&gt;</text>'
        b"</stream:error></stream:stream>"
    )
    assert b"<undefined-condition " in stream_error("<bad>")


def test_parse_jid() -> None:
    jid = parse_jid("news.tech@ptth.example/r/1")
    assert (jid.local, jid.domain, jid.resource) == ("news.tech", "ptth.example", "r/1")
    assert jid.bare == "news.tech@ptth.example"
    assert str(jid) == "news.tech@ptth.example/r/1"
    assert parse_jid("ptth.example").bare == "ptth.example"
    for bad in ["", "@x", "a@", "a@b/", "x" * 1024 + "@b"]:
        with pytest.raises(ValueError, match="JID"):
            parse_jid(bad)
