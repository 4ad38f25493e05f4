"""The STOMP codec and session state (mesh._stomp): frames round-trip through bytes in
any fragmentation, every frame of the spec decodes as written, escaping follows the
version, every limit and every malformed input is a StompError with words, and the
session negotiates, authenticates, tracks acknowledgements per ack mode and buffers
transactions.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

import crypto
from mesh._stomp import (
    CLIENT_COMMANDS,
    SERVER_COMMANDS,
    Ack,
    AckMode,
    Action,
    Close,
    Decoder,
    Destination,
    Frame,
    Limits,
    Nack,
    Reply,
    Send,
    Session,
    SessionLimits,
    StompError,
    Subscribe,
    Unsubscribe,
    encode,
    negotiate_heartbeat,
    parse_destination,
)

LOCAL = crypto.Identity.generate().node_id
OTHER = crypto.Identity.generate().node_id
_WITH_BODY = {"SEND", "MESSAGE", "ERROR"}


def feed(decoder: Decoder, data: bytes) -> list[Frame]:
    """``decoder.feed(data)``, going on past CONNECT frames (where feed stops)."""
    frames = decoder.feed(data)
    while frames and frames[-1].command in ("CONNECT", "STOMP"):
        more = decoder.feed(b"")
        if not more:
            break
        frames += more
    return frames


def decode_all(data: bytes, *, version: str = "1.2", limits: Limits | None = None) -> list[Frame]:
    return feed(Decoder(limits, version=version), data)


def decode_bytewise(data: bytes, *, version: str = "1.2") -> list[Frame]:
    decoder = Decoder(version=version)
    frames: list[Frame] = []
    for index in range(len(data)):
        frames += feed(decoder, data[index : index + 1])
    return frames


def refused(data: bytes, *, version: str = "1.2", limits: Limits | None = None) -> StompError:
    with pytest.raises(StompError) as caught:
        decode_all(data, version=version, limits=limits)
    return caught.value


# -- strategies ------------------------------------------------------------------------------

NAMES_12 = st.text(min_size=1, max_size=12).filter(lambda s: "\0" not in s)
VALUES_12 = st.text(max_size=20).filter(lambda s: "\0" not in s)
# 1.0 (and CONNECT, CONNECTED): no escaping, so no line breaks, and no ':' in names; a
# value may not end in a CR (it would read as the end of its line).
NAMES_10 = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n:\0"), min_size=1, max_size=12
)
VALUES_10 = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\0"), max_size=20)
# 1.1 escapes everything but CR.
VALUES_11 = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\0"), max_size=20)


@st.composite
def frames(draw: st.DrawFn, version: str) -> Frame:
    command = draw(st.sampled_from(sorted(CLIENT_COMMANDS | SERVER_COMMANDS)))
    raw = version == "1.0" or command in ("CONNECT", "CONNECTED")
    names = NAMES_10 if raw else NAMES_12.filter(lambda s: "\r" not in s or version == "1.2")
    values = VALUES_10 if raw else (VALUES_12 if version == "1.2" else VALUES_11)
    headers = draw(
        st.lists(
            st.tuples(names.filter(lambda s: s != "content-length"), values),
            max_size=6,
        )
    )
    body = draw(st.binary(max_size=300)) if command in _WITH_BODY else b""
    return Frame(command, tuple(headers), body)


def expected(frame: Frame) -> Frame:
    """What decoding ``encode(frame)`` gives: a content-length where a body may be."""
    if frame.command in _WITH_BODY:
        return Frame(
            frame.command, (*frame.headers, ("content-length", str(len(frame.body)))), frame.body
        )
    return frame


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
@given(data=st.data())
def test_frames_round_trip_in_any_fragmentation(version: str, data: st.DataObject) -> None:
    batch = data.draw(st.lists(frames(version), min_size=1, max_size=4))
    eols = data.draw(
        st.lists(
            st.sampled_from([b"", b"\n", b"\r\n", b"\n\n"]),
            min_size=len(batch),
            max_size=len(batch),
        )
    )
    stream = b"".join(eol + encode(frame, version) for eol, frame in zip(eols, batch, strict=True))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = Decoder(version=version)
    decoded: list[Frame] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        decoded += feed(decoder, stream[start:cut])
        start = cut
    assert decoded == [expected(frame) for frame in batch]
    assert decoder.buffered == 0
    assert decoder.heartbeats == b"".join(eols).count(b"\n")


@given(st.binary(max_size=400))
def test_any_bytes_give_frames_or_a_stomp_error(data: bytes) -> None:
    decoder = Decoder(Limits(max_headers=4, max_header_line=64, max_body=100, max_frame=200))
    failed: StompError | None = None
    try:
        for frame in feed(decoder, data):
            assert frame.command in CLIENT_COMMANDS | SERVER_COMMANDS
            assert len(frame.body) <= 100
    except StompError as exc:
        failed = exc
    if failed is not None:
        assert failed.message
        with pytest.raises(StompError):
            decoder.feed(b"")  # broken for good: the stream cannot be resynchronised


# -- every frame of the spec, as the spec writes it --------------------------------------------

SPEC_FRAMES = [
    (
        b"CONNECT\naccept-version:1.2\nhost:stomp.github.org\n\n\0",
        Frame("CONNECT", (("accept-version", "1.2"), ("host", "stomp.github.org"))),
    ),
    (
        b"STOMP\naccept-version:1.0,1.1,2.0\nhost:stomp.github.org\n\n\0",
        Frame("STOMP", (("accept-version", "1.0,1.1,2.0"), ("host", "stomp.github.org"))),
    ),
    (b"CONNECTED\nversion:1.2\n\n\0", Frame("CONNECTED", (("version", "1.2"),))),
    (
        b"SEND\ndestination:/queue/a\ncontent-type:text/plain\n\nhello queue a\n\0",
        Frame(
            "SEND",
            (("destination", "/queue/a"), ("content-type", "text/plain")),
            b"hello queue a\n",
        ),
    ),
    (
        b"SUBSCRIBE\nid:0\ndestination:/queue/foo\nack:client\n\n\0",
        Frame("SUBSCRIBE", (("id", "0"), ("destination", "/queue/foo"), ("ack", "client"))),
    ),
    (b"UNSUBSCRIBE\nid:0\n\n\0", Frame("UNSUBSCRIBE", (("id", "0"),))),
    (
        b"ACK\nid:12345\ntransaction:tx1\n\n\0",
        Frame("ACK", (("id", "12345"), ("transaction", "tx1"))),
    ),
    (b"NACK\nid:12345\n\n\0", Frame("NACK", (("id", "12345"),))),
    (b"BEGIN\ntransaction:tx1\n\n\0", Frame("BEGIN", (("transaction", "tx1"),))),
    (b"COMMIT\ntransaction:tx1\n\n\0", Frame("COMMIT", (("transaction", "tx1"),))),
    (b"ABORT\ntransaction:tx1\n\n\0", Frame("ABORT", (("transaction", "tx1"),))),
    (b"DISCONNECT\nreceipt:77\n\n\0", Frame("DISCONNECT", (("receipt", "77"),))),
    (b"RECEIPT\nreceipt-id:77\n\n\0", Frame("RECEIPT", (("receipt-id", "77"),))),
    (
        b"MESSAGE\nsubscription:0\nmessage-id:007\ndestination:/queue/a\n"
        b"content-type:text/plain\n\nhello queue a\0",
        Frame(
            "MESSAGE",
            (
                ("subscription", "0"),
                ("message-id", "007"),
                ("destination", "/queue/a"),
                ("content-type", "text/plain"),
            ),
            b"hello queue a",
        ),
    ),
    (
        b"ERROR\nversion:1.2,2.1\ncontent-type:text/plain\n\nSupported protocol versions are "
        b"1.2 2.1\0",
        Frame(
            "ERROR",
            (("version", "1.2,2.1"), ("content-type", "text/plain")),
            b"Supported protocol versions are 1.2 2.1",
        ),
    ),
]


@pytest.mark.parametrize(("data", "frame"), SPEC_FRAMES, ids=[f.command for _, f in SPEC_FRAMES])
def test_every_frame_of_the_spec_decodes_as_written(data: bytes, frame: Frame) -> None:
    assert decode_all(data) == [frame]
    assert decode_bytewise(data) == [frame]
    assert decode_all(data.replace(b"\n", b"\r\n")) == [
        Frame(frame.command, frame.headers, frame.body.replace(b"\n", b"\r\n"))
    ]


def test_repeated_headers_are_kept_and_the_first_wins() -> None:
    (frame,) = decode_all(b"MESSAGE\nfoo:World\nfoo:Hello\n\n\0")
    assert frame.headers == (("foo", "World"), ("foo", "Hello"))
    assert frame.header("foo") == "World"
    assert frame.header("bar") is None


def test_headers_are_never_trimmed() -> None:
    (frame,) = decode_all(b"SEND\ndestination: /topic/a \n\n\0")
    assert frame.header("destination") == " /topic/a "


# -- escaping -------------------------------------------------------------------------------


def test_escapes_by_version() -> None:
    data = b"SEND\nk\\c:a\\r\\n\\c\\\\b\n\n\0"
    assert decode_all(data, version="1.2")[0].headers == (("k:", "a\r\n:\\b"),)
    assert decode_all(data, version="1.0")[0].headers == (("k\\c", "a\\r\\n\\c\\\\b"),)
    error = refused(data, version="1.1")  # \r is not a 1.1 escape
    assert error.message == "malformed frame received"
    assert "'\\\\r'" in error.detail
    assert "STOMP 1.1" in error.detail


def test_connect_and_connected_are_never_unescaped() -> None:
    data = b"CONNECT\nlogin:a\\nb\npasscode:c:d\n\n\0"
    assert decode_all(data)[0].headers == (("login", "a\\nb"), ("passcode", "c:d"))
    assert encode(Frame("CONNECTED", (("server", "a\\b"),))) == b"CONNECTED\nserver:a\\b\n\n\0"
    with pytest.raises(ValueError, match="cannot be written unescaped"):
        encode(Frame("CONNECTED", (("server", "a\nb"),)))


def test_undefined_escape_is_fatal() -> None:
    error = refused(b"SEND\ndestination:/topic/a\\tb\n\n\0")
    assert error.message == "malformed frame received"
    assert "undefined escape sequence '\\\\t'" in error.detail
    assert "undefined escape" in refused(b"SEND\ndestination:/topic/a\\\n\n\0").detail


def test_encoding_escapes_and_counts_the_body() -> None:
    frame = Frame("MESSAGE", (("a:b", "x\ny\r\\"), ("content-length", "99")), b"a\0b")
    assert encode(frame) == b"MESSAGE\na\\cb:x\\ny\\r\\\\\ncontent-length:3\n\na\0b\0"
    assert encode(frame, "1.1") == b"MESSAGE\na\\cb:x\\ny\r\\\\\ncontent-length:3\n\na\0b\0"
    assert encode(Frame("RECEIPT", (("receipt-id", "1"),))) == b"RECEIPT\nreceipt-id:1\n\n\0"
    with pytest.raises(ValueError, match="has no body"):
        encode(Frame("RECEIPT", (), b"x"))


# -- bodies, heart-beats, fragmentation -------------------------------------------------------


def test_content_length_reads_nuls_in_the_body() -> None:
    data = b"SEND\ndestination:/topic/a\ncontent-length:5\n\n\0a\0b\0\0\n"
    (frame,) = decode_bytewise(data)
    assert frame.body == b"\0a\0b\0"
    error = refused(b"SEND\ncontent-length:2\n\nabc\0")
    assert "content-length 2 is not followed by a NUL" in error.detail


def test_without_content_length_the_body_ends_at_the_first_nul() -> None:
    decoder = Decoder()
    assert decoder.feed(b"SEND\n\nab\0") == [Frame("SEND", (), b"ab")]
    with pytest.raises(StompError, match="unknown command"):
        decoder.feed(b"cd\n\n\0")  # what followed the NUL: no frame


def test_a_command_line_that_can_be_no_command_is_refused_before_its_end() -> None:
    decoder = Decoder()
    assert decoder.feed(b"SUBSCR") == []  # maybe SUBSCRIBE
    assert decoder.feed(b"IBE\r") == []
    with pytest.raises(StompError) as caught:
        Decoder().feed(b"GET / HTTP/1.1")
    assert caught.value.message == "unknown command"
    assert "'GET / HTTP/1.1' is the start of no STOMP command" in caught.value.detail


def test_heart_beats_between_frames_are_counted_and_skipped() -> None:
    decoder = Decoder()
    assert decoder.feed(b"\n\r\n\n") == []
    assert decoder.feed(b"\r") == []  # maybe the start of an EOL
    assert decoder.feed(b"\nRECEIPT\nreceipt-id:1\n\n\0\r\n") == [
        Frame("RECEIPT", (("receipt-id", "1"),))
    ]
    assert decoder.heartbeats == 5
    assert decoder.buffered == 0


def test_a_connect_frame_stops_the_decoder_until_fed_again() -> None:
    decoder = Decoder(version="1.2")
    frames = decoder.feed(b"CONNECT\naccept-version:1.0\n\n\0SEND\nk:a\\nb\n\n\0")
    assert [frame.command for frame in frames] == ["CONNECT"]
    decoder.version = "1.0"  # what the session agreed: nothing is escaped
    assert decoder.feed(b"") == [Frame("SEND", (("k", "a\\nb"),))]


# -- limits and malformed input -----------------------------------------------------------------

SMALL = Limits(max_headers=3, max_header_line=20, max_body=10, max_frame=60)


def test_too_many_headers() -> None:
    error = refused(b"SEND\na:1\nb:2\nc:3\nd:4\n\n\0", limits=SMALL)
    assert (error.message, error.detail) == (
        "too many headers",
        "a frame may have at most 3 headers",
    )


def test_a_header_line_too_long_is_refused_before_its_end_arrives() -> None:
    decoder = Decoder(SMALL)
    decoder.feed(b"SEND\n")
    with pytest.raises(StompError) as caught:
        decoder.feed(b"x" * 30)  # no end of line yet
    assert caught.value.message == "header line too long"
    assert "at most 20 bytes" in caught.value.detail
    assert refused(b"SEND\n" + b"k:" + b"v" * 19 + b"\n\n\0", limits=SMALL).message == (
        "header line too long"
    )


def test_a_body_too_large_is_refused_from_its_content_length() -> None:
    error = refused(b"SEND\ncontent-length:11\n\n", limits=SMALL)
    assert error.message == "body too large"
    assert "at most 10 bytes" in error.detail
    assert "this one has 11" in error.detail


def test_a_body_without_a_nul_is_refused_past_the_limit() -> None:
    decoder = Decoder(SMALL)
    decoder.feed(b"SEND\n\n" + b"x" * 10)
    with pytest.raises(StompError) as caught:
        decoder.feed(b"x")
    assert caught.value.message == "body too large"


def test_a_frame_too_large_is_refused() -> None:
    limits = Limits(max_headers=10, max_header_line=20, max_body=40, max_frame=50)
    head = b"SEND\n" + b"a:1234567890\n" * 3 + b"\n"
    error = refused(head + b"x" * 20 + b"\0", limits=limits)
    assert error.message == "frame too large"
    assert "at most 50 bytes" in error.detail


@pytest.mark.parametrize(
    ("data", "message", "words"),
    [
        (b"HELLO\n\n\0", "unknown command", "'HELLO' is not a STOMP command"),
        (b"send\n\n\0", "unknown command", "'send' is not a STOMP command"),
        (b"SEND\nnocolon\n\n\0", "malformed frame received", "has no ':'"),
        (b"SEND\n:value\n\n\0", "malformed frame received", "empty name"),
        (b"SEND\nk:\xff\n\n\0", "malformed frame received", "must be UTF-8"),
        (b"SEND\ncontent-length:-1\n\n\0", "malformed frame received", "not a number"),
        (b"SEND\ncontent-length: 1\n\nx\0", "malformed frame received", "not a number"),
        (b"SUBSCRIBE\nid:1\n\nbody\0", "malformed frame received", "SUBSCRIBE frame has no body"),
        (b"ACK\ncontent-length:1\n\nx\0", "malformed frame received", "ACK frame has no body"),
        (b"\rSEND\n\n\0", "unknown command", "is not a STOMP command"),
    ],
)
def test_malformed_input_is_a_stomp_error_with_words(data: bytes, message: str, words: str) -> None:
    error = refused(data)
    assert error.message == message
    assert words in error.detail


# -- destinations ------------------------------------------------------------------------------


def test_destinations() -> None:
    assert parse_destination("/topic/news.tech", subscribe=False, local=LOCAL) == Destination(
        "topic", "news.tech"
    )
    assert parse_destination("/topic/news.#", subscribe=True, local=LOCAL).name == "news.#"
    assert parse_destination("/queue/feed", subscribe=True, local=LOCAL).text == "/queue/feed"
    assert parse_destination("/node/me", subscribe=True, local=LOCAL).name == LOCAL.text
    assert parse_destination(f"/node/{LOCAL.text}", subscribe=True, local=LOCAL).kind == "node"
    assert parse_destination(f"/node/{OTHER.text}", subscribe=False, local=LOCAL).name == OTHER.text
    cases = [
        ("/exchange/x", False, "unknown destination"),
        ("topic", False, "unknown destination"),
        ("/topic/news.#", False, "bad destination"),  # a pattern is no topic to publish to
        ("/topic/a b", True, "bad destination"),
        ("/queue/feed", False, "cannot send to a queue"),
        ("/queue/a/b", True, "bad destination"),
        ("/node/me", False, "cannot send to this node"),
        ("/node/nonsense", False, "bad destination"),
        (f"/node/{OTHER.text}", True, "cannot read another node's inbox"),
    ]
    for text, subscribe, message in cases:
        with pytest.raises(StompError) as caught:
            parse_destination(text, subscribe=subscribe, local=LOCAL)
        assert caught.value.message == message, text


# -- the session: connecting ---------------------------------------------------------------------


def connect(session: Session, *headers: tuple[str, str]) -> list[Action]:
    return list(session.receive(Frame("CONNECT", headers)))


def connected(version: str = "1.2", limits: SessionLimits | None = None) -> Session:
    session = Session(local=LOCAL, limits=limits)
    (reply,) = connect(session, ("accept-version", version), ("host", "h"))
    assert isinstance(reply, Reply)
    assert reply.frame.command == "CONNECTED"
    return session


def error_of(actions: Sequence[Action]) -> Frame:
    assert isinstance(actions[-1], Close)
    assert actions[-1].error
    reply = actions[-2]
    assert isinstance(reply, Reply)
    assert reply.frame.command == "ERROR"
    return reply.frame


def test_version_negotiation() -> None:
    session = Session(local=LOCAL, heartbeat=(5000, 6000), server="ptth/1", session="s1")
    (reply,) = connect(session, ("accept-version", "1.0,1.1,2.0"), ("host", "h"))
    assert isinstance(reply, Reply)
    assert reply.frame.headers == (
        ("version", "1.1"),
        ("heart-beat", "5000,6000"),
        ("session", "s1"),
        ("server", "ptth/1"),
    )
    assert session.version == "1.1"
    assert session.host == "h"
    legacy = Session(local=LOCAL)
    (reply,) = connect(legacy)  # no accept-version: 1.0 (and no host needed)
    assert legacy.version == "1.0"
    assert isinstance(reply, Reply)
    assert reply.frame.header("version") is None
    again = connect(connected(), ("accept-version", "1.2"))
    assert error_of(again).header("message") == "already connected"


def test_no_common_version_is_an_error_naming_ours() -> None:
    session = Session(local=LOCAL)
    frame = error_of(connect(session, ("accept-version", "2.0,2.1")))
    assert frame.header("version") == "1.0,1.1,1.2"
    assert frame.body == b"Supported protocol versions are 1.0 1.1 1.2"
    assert session.closed
    assert session.receive(Frame("SEND", (("destination", "/topic/a"),))) == []


@given(
    st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
    st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
)
def test_heart_beat_negotiation(client: tuple[int, int], server: tuple[int, int]) -> None:
    outgoing, incoming = negotiate_heartbeat(client, server)
    (cx, cy), (sx, sy) = client, server
    assert outgoing == (0 if 0 in (sx, cy) else max(sx, cy))
    assert incoming == (0 if 0 in (cx, sy) else max(cx, sy))


def test_heart_beat_header() -> None:
    session = Session(local=LOCAL, heartbeat=(1000, 2000))
    connect(session, ("accept-version", "1.2"), ("heart-beat", "500,3000"))
    assert session.heartbeat == (3000, 2000)  # (server to client, client to server)
    bad = Session(local=LOCAL)
    frame = error_of(connect(bad, ("accept-version", "1.2"), ("heart-beat", "1, 2")))
    assert frame.header("message") == "bad heart-beat header"


def test_login_checked_against_the_users() -> None:
    users = {"alice": "s3cret"}
    good = Session(local=LOCAL, users=users)
    connect(good, ("accept-version", "1.2"), ("login", "alice"), ("passcode", "s3cret"))
    assert good.connected
    assert good.login == "alice"
    for headers in (
        (("login", "alice"), ("passcode", "wrong")),
        (("login", "bob"), ("passcode", "s3cret")),
        (("login", "alice"),),
        (),
    ):
        session = Session(local=LOCAL, users=users)
        frame = error_of(connect(session, ("accept-version", "1.2"), *headers))
        assert frame.header("message") == "access refused"
        assert b"stomp.users" in frame.body
        assert not session.connected
    anyone = Session(local=LOCAL)  # no users: nobody is asked
    connect(anyone, ("accept-version", "1.2"), ("login", "x"), ("passcode", "y"))
    assert anyone.connected


def test_frames_before_connect_and_server_frames_are_errors() -> None:
    frame = error_of(Session(local=LOCAL).receive(Frame("SEND", (("receipt", "r"),))))
    assert frame.header("message") == "not connected"
    assert frame.header("receipt-id") == "r"
    frame = error_of(connected().receive(Frame("MESSAGE")))
    assert frame.header("message") == "unexpected frame"


def test_receipts_and_disconnect() -> None:
    session = connected()
    actions = session.receive(Frame("BEGIN", (("transaction", "t"), ("receipt", "b"))))
    assert actions == [Reply(Frame("RECEIPT", (("receipt-id", "b"),)))]
    actions = session.receive(Frame("DISCONNECT", (("receipt", "77"),)))
    assert actions == [Reply(Frame("RECEIPT", (("receipt-id", "77"),))), Close()]
    assert session.closed


# -- SEND, SUBSCRIBE ----------------------------------------------------------------------


def test_send() -> None:
    session = connected()
    frame = Frame(
        "SEND",
        (("destination", "/topic/a.b"), ("content-type", "text/plain"), ("receipt", "r")),
        b"hi",
    )
    assert session.receive(frame) == [
        Send(Destination("topic", "a.b"), b"hi", "text/plain", "r"),
        Reply(Frame("RECEIPT", (("receipt-id", "r"),))),
    ]
    bad = connected().receive(Frame("SEND", (("destination", "/topic/a"), ("content-type", "a b"))))
    assert error_of(bad).header("message") == "bad content-type"
    assert error_of(connected().receive(Frame("SEND"))).header("message") == (
        "missing destination header"
    )


def subscribe(session: Session, sid: str, ack: str = "auto", **more: str) -> list[Action]:
    headers = [("id", sid), ("destination", more.pop("destination", "/topic/a.#")), ("ack", ack)]
    headers += list(more.items())
    return list(session.receive(Frame("SUBSCRIBE", tuple(headers))))


def test_subscribe_and_unsubscribe() -> None:
    session = connected()
    (action,) = subscribe(session, "s", "client", **{"prefetch-count": "5"})
    assert action == Subscribe("s", Destination("topic", "a.#"), AckMode.CLIENT, (), 5, None)
    (action,) = subscribe(
        session, "q", destination="/queue/feed", pattern="news.#, weather.*.paris,news.#"
    )
    assert isinstance(action, Subscribe)
    assert action.patterns == ("news.#", "weather.*.paris")
    assert action.prefetch == SessionLimits().default_prefetch
    assert session.receive(Frame("UNSUBSCRIBE", (("id", "q"),))) == [Unsubscribe("q", ())]
    for sid, ack, more, message in [
        ("s", "auto", {}, "duplicate subscription id"),
        ("t", "sometimes", {}, "bad ack header"),
        ("t", "auto", {"pattern": "x"}, "unexpected pattern header"),
        ("t", "auto", {"destination": "/queue/q", "pattern": "a..b"}, "bad pattern header"),
        ("t", "client", {"prefetch-count": "0"}, "bad prefetch-count header"),
    ]:
        other = connected()
        subscribe(other, "s")
        assert error_of(subscribe(other, sid, ack, **more)).header("message") == message
    assert error_of(connected().receive(Frame("SUBSCRIBE", (("destination", "/topic/a"),)))).header(
        "message"
    ) == ("missing id header")
    assert error_of(connected().receive(Frame("UNSUBSCRIBE", (("id", "x"),)))).header(
        "message"
    ) == ("no such subscription")
    full = connected(limits=SessionLimits(max_subscriptions=1))
    subscribe(full, "1")
    assert error_of(subscribe(full, "2")).header("message") == "too many subscriptions"


def deliver(session: Session, sid: str, count: int) -> list[str]:
    """Send ``count`` messages to ``sid``; return their ack ids."""
    tags = []
    for number in range(count):
        frame = session.message(
            sid,
            message_id=f"m{sid}{number}",
            destination="/topic/a.b",
            body=b"x",
            content_type=None,
            key=f"{sid}{number}",
        )
        assert frame.header("subscription") == sid
        assert frame.header("content-type") == "application/octet-stream"
        tag = frame.header("ack")
        assert tag is not None
        tags.append(tag)
    return tags


def test_client_acks_are_cumulative() -> None:
    session = connected()
    subscribe(session, "c", "client")
    tags = deliver(session, "c", 4)
    assert session.unacked("c") == 4
    assert session.receive(Frame("ACK", (("id", tags[2]),))) == [Ack("c", ("c0", "c1", "c2"))]
    assert session.unacked("c") == 1
    assert session.receive(Frame("ACK", (("id", tags[1]),))) == []  # covered already
    assert session.receive(Frame("NACK", (("id", tags[3]),))) == [Nack("c", ("c3",))]
    assert session.unacked("c") == 0


def test_client_individual_acks_one() -> None:
    session = connected()
    subscribe(session, "i", "client-individual")
    tags = deliver(session, "i", 3)
    assert session.receive(Frame("ACK", (("id", tags[1]),))) == [Ack("i", ("i1",))]
    assert session.receive(Frame("NACK", (("id", tags[2]),))) == [Nack("i", ("i2",))]
    assert session.unsettled() == {"i": (Destination("topic", "a.#"), ("i0",))}
    assert session.receive(Frame("UNSUBSCRIBE", (("id", "i"),))) == [Unsubscribe("i", ("i0",))]


def test_auto_messages_need_no_ack_and_unknown_ids_are_errors() -> None:
    session = connected()
    subscribe(session, "a")
    frame = session.message(
        "a", message_id="m", destination="/t", body=b"", content_type="text/plain", key=1
    )
    assert frame.header("ack") is None
    assert session.unacked("a") == 0
    assert error_of(session.receive(Frame("ACK", (("id", "9"),)))).header("message") == (
        "no such message"
    )


def test_acks_in_stomp_1_1_and_1_0() -> None:
    session = connected("1.1")
    subscribe(session, "s", "client-individual")
    frame = session.message(
        "s", message_id="m1", destination="/t", body=b"", content_type=None, key=1
    )
    assert frame.header("ack") is None  # 1.1 acknowledges by subscription and message-id
    ack = Frame("ACK", (("subscription", "s"), ("message-id", "m1")))
    assert session.receive(ack) == [Ack("s", (1,))]
    missing = connected("1.1")
    assert error_of(missing.receive(Frame("ACK", (("message-id", "m1"),)))).header("message") == (
        "missing subscription header"
    )
    legacy = connected("1.0")
    subscribe(legacy, "s", "client")
    legacy.message("s", message_id="m2", destination="/t", body=b"", content_type=None, key=2)
    assert legacy.receive(Frame("ACK", (("message-id", "m2"),))) == [Ack("s", (2,))]
    assert error_of(legacy.receive(Frame("NACK", (("message-id", "m2"),)))).header("message") == (
        "unknown command"
    )


# -- transactions ----------------------------------------------------------------------


def send_frame(body: bytes, transaction: str | None = None, receipt: str | None = None) -> Frame:
    headers = [("destination", "/topic/t")]
    if transaction is not None:
        headers.append(("transaction", transaction))
    if receipt is not None:
        headers.append(("receipt", receipt))
    return Frame("SEND", tuple(headers), body)


def test_a_transaction_buffers_until_commit() -> None:
    session = connected()
    subscribe(session, "c", "client-individual")
    tags = deliver(session, "c", 2)
    assert session.receive(Frame("BEGIN", (("transaction", "t1"),))) == []
    assert session.receive(send_frame(b"one", "t1")) == []
    assert session.receive(Frame("ACK", (("id", tags[0]), ("transaction", "t1")))) == []
    assert session.receive(send_frame(b"two", "t1", receipt="r2")) == [
        Reply(Frame("RECEIPT", (("receipt-id", "r2"),)))
    ]
    assert session.unacked("c") == 2  # nothing acknowledged before COMMIT
    actions = session.receive(Frame("COMMIT", (("transaction", "t1"), ("receipt", "c"))))
    topic = Destination("topic", "t")
    assert actions == [
        Send(topic, b"one", None, None),
        Ack("c", ("c0",)),
        Send(topic, b"two", None, "r2"),
        Reply(Frame("RECEIPT", (("receipt-id", "c"),))),
    ]
    assert session.unacked("c") == 1


def test_abort_drops_the_transaction() -> None:
    session = connected()
    subscribe(session, "c", "client")
    tags = deliver(session, "c", 1)
    session.receive(Frame("BEGIN", (("transaction", "t"),)))
    session.receive(send_frame(b"x", "t"))
    session.receive(Frame("NACK", (("id", tags[0]), ("transaction", "t"))))
    assert session.receive(Frame("ABORT", (("transaction", "t"),))) == []
    assert session.unacked("c") == 1
    commit = session.receive(Frame("COMMIT", (("transaction", "t"),)))
    assert error_of(commit).header("message") == "no such transaction"


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([Frame("BEGIN")], "missing transaction header"),
        ([Frame("BEGIN", (("transaction", "t"),))] * 2, "transaction already begun"),
        ([send_frame(b"x", "nope")], "no such transaction"),
        (
            [Frame("BEGIN", (("transaction", "t"),)), send_frame(b"12345", "t")],
            "transaction too large",
        ),
        (
            [
                Frame("BEGIN", (("transaction", "t"),)),
                Frame("ACK", (("id", "5"), ("transaction", "t"))),
            ],
            "no such message",
        ),
        (
            [Frame("BEGIN", (("transaction", t),)) for t in "abc"],
            "too many transactions",
        ),
    ],
)
def test_transaction_errors(frames: list[Frame], message: str) -> None:
    session = connected(limits=SessionLimits(max_transactions=2, max_transaction_bytes=4))
    actions: list[Action] = []
    for frame in frames:
        actions = list(session.receive(frame))
    assert error_of(actions).header("message") == message


def test_a_transaction_holds_a_bounded_number_of_frames() -> None:
    session = connected(limits=SessionLimits(max_transaction_frames=2))
    session.receive(Frame("BEGIN", (("transaction", "t"),)))
    assert session.receive(send_frame(b"", "t")) == []
    assert session.receive(send_frame(b"", "t")) == []
    assert error_of(session.receive(send_frame(b"", "t"))).header("message") == (
        "transaction too large"
    )


def test_errors_carry_the_receipt_of_the_frame_and_fit_one_line() -> None:
    session = connected("1.0")
    actions = session.error("two\nlines", "detail", receipt="r9")
    frame = error_of(actions)
    assert frame.header("message") == "two lines"
    assert frame.header("receipt-id") == "r9"
    assert frame.body == b"detail"
    assert encode(frame, "1.0").startswith(b"ERROR\nmessage:two lines\n")


HEADER_NAMES = st.sampled_from(
    [
        "destination",
        "id",
        "ack",
        "receipt",
        "transaction",
        "subscription",
        "message-id",
        "content-type",
        "pattern",
        "prefetch-count",
        "heart-beat",
        "accept-version",
    ]
)
HEADER_VALUES = st.one_of(
    st.sampled_from(["/topic/a.b", "/queue/q", "/node/me", "client", "1", "t", "1.2", "x"]),
    st.text(max_size=12),
)


@given(
    st.lists(
        st.builds(
            Frame,
            st.sampled_from(sorted(CLIENT_COMMANDS | SERVER_COMMANDS)),
            st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=5).map(tuple),
            st.binary(max_size=8),
        ),
        max_size=12,
    )
)
def test_any_frames_get_actions_and_an_error_closes(frames: list[Frame]) -> None:
    session = Session(local=LOCAL)
    for frame in [Frame("CONNECT", (("accept-version", "1.2"),)), *frames]:
        actions = session.receive(frame)
        for index, action in enumerate(actions):
            if isinstance(action, Reply) and action.frame.command == "ERROR":
                assert action.frame.header("message")
                assert actions[index + 1 :] == [Close(error=True)]
                assert session.closed
            if isinstance(action, Reply):
                assert encode(action.frame).endswith(b"\0")  # every reply can be written
        if session.closed:
            assert session.receive(frame) == []
