"""Capabilities, delegation chains and revocations (crypto._capability).

The properties of issue 14's Proof: a delegated capability is never wider than its
parent (random chains and caveats, and forged children that try), a tampered link
anywhere in a chain is refused, expired and revoked links (and their descendants) are
refused, and verification needs no network.
"""

from __future__ import annotations

import base64
import itertools
import socket
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import crypto
import mesh
from crypto import (
    CAPABILITY_TOKEN_PREFIX,
    MAX_CHAIN_DEPTH,
    BadSignature,
    Capability,
    CapabilityExpired,
    CapabilityRefused,
    Caveats,
    CryptoError,
    Identity,
    Malformed,
    ObjectKind,
    Operation,
    Revocation,
    RevocationSet,
    Revoked,
    Target,
    TooLarge,
    WrongPurpose,
    _envelope,
    delegate,
    grant,
    parse_capability,
    pattern_covers,
    verify,
)
from crypto._capability import MAX_CAPABILITY_TOKEN_LENGTH

NOW = 1_700_000_000_000
HOUR = 3_600_000
OWNER = Identity(bytes(range(32)))
PEOPLE = [Identity(bytes([n]) * 32) for n in range(1, 6)]
STRANGER = Identity(bytes([99]) * 32)
WORDS = ["a", "b", "c"]


def ids() -> Any:
    counter = iter(range(1, 10**9))
    return lambda: next(counter).to_bytes(16, "big")


def root(
    subject: Identity | None = PEOPLE[0],
    pattern: str = "news.#",
    ops: tuple[str, ...] = ("publish", "subscribe"),
    caveats: Caveats | None = None,
    cap_id: bytes = b"\x01" * 16,
) -> Capability:
    return grant(
        OWNER,
        Target.topic(OWNER.node_id, pattern),
        ops,
        subject=None if subject is None else subject.node_id,
        now=NOW,
        cap_id=cap_id,
        caveats=caveats,
    )


def use(
    capability: Capability | bytes | str,
    *,
    topic: str = "news.tech",
    operation: str = "publish",
    presenter: Identity | None = PEOPLE[0],
    now: int = NOW,
    revoked: RevocationSet | None = None,
) -> crypto.VerifiedCapability:
    return verify(
        capability,
        now=now,
        owner=OWNER.node_id,
        operation=operation,
        target=Target.topic(OWNER.node_id, topic),
        presenter=None if presenter is None else presenter.node_id,
        revoked=revoked,
    )


# -- topic patterns: pattern_covers is sound ------------------------------------------

PATTERN_WORDS = st.sampled_from([*WORDS, "*", "#"])
PATTERNS = st.lists(PATTERN_WORDS, min_size=1, max_size=5).map(".".join)
TOPIC_WORDS = st.sampled_from([*WORDS, "d"])


@st.composite
def topic_matching(draw: st.DrawFn, pattern: str) -> str | None:
    """A topic ``pattern`` matches (wildcards filled in with random words), if any."""
    words: list[str] = []
    for word in pattern.split("."):
        if word == "*":
            words.append(draw(TOPIC_WORDS))
        elif word == "#":
            words += draw(st.lists(TOPIC_WORDS, max_size=2))
        else:
            words.append(word)
    return ".".join(words) if words else None


@st.composite
def generalised(draw: st.DrawFn, specific: str) -> str:
    """A pattern made from ``specific`` by widening: words become ``*`` (a literal or
    ``*``) or are swallowed by a ``#``, and ``#`` are put in."""
    words: list[str] = []
    for word in specific.split("."):
        choice = draw(st.sampled_from(["keep", "star", "hash", "insert"]))
        if choice == "star" and word != "#":
            words.append("*")
        elif choice == "hash":
            if not words or words[-1] != "#":
                words.append("#")
        elif choice == "insert":
            words += ["#", word]
        else:
            words.append(word)
    return ".".join(words)


@given(PATTERNS, st.data())
def test_covers_recognises_widened_patterns_and_is_sound(specific: str, data: Any) -> None:
    general = data.draw(generalised(specific), label="general")
    assert pattern_covers(general, specific)
    topic = data.draw(topic_matching(specific), label="topic")
    if topic is not None:
        assert mesh.matches(specific, topic)
        assert mesh.matches(general, topic), (general, specific, topic)


@given(PATTERNS, PATTERNS, st.data())
def test_covers_is_sound_against_the_matcher(general: str, specific: str, data: Any) -> None:
    topic = data.draw(topic_matching(specific), label="topic")
    if topic is not None and pattern_covers(general, specific):
        assert mesh.matches(general, topic), (general, specific, topic)


@given(PATTERNS, PATTERNS, st.lists(TOPIC_WORDS, min_size=1, max_size=6).map(".".join))
def test_covers_is_sound_on_random_topics(general: str, specific: str, topic: str) -> None:
    if pattern_covers(general, specific) and mesh.matches(specific, topic):
        assert mesh.matches(general, topic)


@given(PATTERNS, PATTERNS)
def test_covers_never_claims_what_the_exact_decision_denies(general: str, specific: str) -> None:
    if pattern_covers(general, specific):
        assert mesh.covers(general, specific)
    assert pattern_covers(general, general)


@pytest.mark.parametrize(
    ("general", "specific", "expected"),
    [
        ("#", "a.b.c", True),
        ("#", "#", True),
        ("a.#", "a", True),
        ("a.#", "a.*.#", True),
        ("a.*", "a.b", True),
        ("a.*", "a.*", True),
        ("a.*", "a.#", False),  # a.# matches a and a.b.c
        ("a.b", "a.*", False),
        ("a.#.c", "a.b.c", True),
        ("a.#", "b.#", False),
        ("*.#", "#", False),  # sound, not complete: equivalent, not recognised
    ],
)
def test_covers_examples(general: str, specific: str, expected: bool) -> None:
    assert pattern_covers(general, specific) is expected


# -- the shape of a capability ------------------------------------------------------


def test_a_root_round_trips_through_its_token() -> None:
    capability = root(caveats=Caveats(exp=NOW + HOUR, uses=3, rate=10))
    assert capability.token.startswith(CAPABILITY_TOKEN_PREFIX)
    again = parse_capability(f"  {capability.token}\n")
    assert again == capability
    assert again.depth == 1
    assert again.owner == OWNER.node_id
    assert again.to_payload()["id"] == b"\x01" * 16
    assert use(capability.token).capability == capability


def test_objects_of_each_kind() -> None:
    node = OWNER.node_id
    for target, ops in [
        (Target.inbox(node), ["send"]),
        (Target.relay(node), ["attach", "store"]),
        (Target.named(node, "printer.queue"), ["call"]),
    ]:
        capability = grant(OWNER, target, ops, subject=None, now=NOW, cap_id=b"\x02" * 16)
        assert capability.target == target
        for op in ops:
            assert verify(
                capability.token,
                now=NOW,
                owner=node,
                operation=op,
                target=target,
                presenter=None,
            ).operation == Operation(op)


@pytest.mark.parametrize(
    ("kind", "pattern", "name", "ops", "message"),
    [
        (ObjectKind.INBOX, None, None, ["publish"], "a inbox has no operation publish"),
        (ObjectKind.TOPIC, None, None, ["publish"], "a topic object has a pattern"),
        (ObjectKind.OBJECT, None, "bad name!", ["call"], "object name"),
        (ObjectKind.TOPIC, "a.**", None, ["publish"], r"pattern 'a\.\*\*'"),
    ],
)
def test_bad_objects_are_refused(
    kind: ObjectKind, pattern: str | None, name: str | None, ops: list[str], message: str
) -> None:
    with pytest.raises(Malformed, match=message):
        grant(
            OWNER,
            Target(kind, OWNER.node_id, pattern, name),
            ops,
            subject=None,
            now=NOW,
            cap_id=b"\x01" * 16,
        )


def test_a_secure_name_is_designated_by_its_owner_only() -> None:
    other = PEOPLE[1].node_id
    with pytest.raises(Malformed, match="secure name"):
        Target.topic(OWNER.node_id, f"~{other.text}.#")
    assert Target.topic(other, f"~{other.text}.#").pattern is not None


def test_a_root_not_signed_by_the_owner_is_refused() -> None:
    payload = root().to_payload()
    envelope = _envelope.seal(STRANGER, _envelope.Purpose.CAPABILITY, payload)
    with pytest.raises(CapabilityRefused, match="not by the object's owner") as caught:
        Capability.open(envelope)
    assert caught.value.link == 1


def test_a_root_of_another_owner_is_refused_by_the_verifier() -> None:
    mine = grant(
        STRANGER,
        Target.topic(STRANGER.node_id, "news.#"),
        ["publish"],
        subject=None,
        now=NOW,
        cap_id=b"\x03" * 16,
    )
    with pytest.raises(CapabilityRefused, match="root is issued by"):
        verify(
            mine,
            now=NOW,
            owner=OWNER.node_id,
            operation="publish",
            target=Target.topic(STRANGER.node_id, "news.x"),
            presenter=None,
        )


def test_use_is_checked_against_subject_operation_and_object() -> None:
    capability = root()
    assert use(capability).presenter == PEOPLE[0].node_id
    with pytest.raises(CapabilityRefused, match="presented by an unauthenticated holder"):
        use(capability, presenter=None)
    with pytest.raises(CapabilityRefused, match="presented by"):
        use(capability, presenter=PEOPLE[1])
    with pytest.raises(CapabilityRefused, match=r"not topics 'sport\.x'"):
        use(capability, topic="sport.x")
    inbox_only = grant(
        OWNER, Target.inbox(OWNER.node_id), ["send"], subject=None, now=NOW, cap_id=b"\x04" * 16
    )
    with pytest.raises(CapabilityRefused, match="allows send, not publish"):
        use(inbox_only)
    with pytest.raises(Malformed, match="operation 'fly'"):
        use(capability, operation="fly")


def test_bearer_capabilities_serve_anyone() -> None:
    capability = root(subject=None)
    assert use(capability, presenter=None).presenter is None
    assert use(capability, presenter=STRANGER).presenter == STRANGER.node_id


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("ptth:abc", Malformed, "must start with 'ptthcap:'"),
        ("ptthcap:", Malformed, "outside base64url"),
        ("ptthcap:ab+/", Malformed, "outside base64url"),
        ("ptthcap:a", Malformed, "truncated"),
        ("ptthcap:AAAA", Malformed, "capability token"),
        ("ptthcap:" + "A" * MAX_CAPABILITY_TOKEN_LENGTH, TooLarge, "limit"),
    ],
)
def test_bad_tokens_are_refused(text: str, error: type[CryptoError], message: str) -> None:
    with pytest.raises(error, match=message):
        parse_capability(text)


def test_an_address_is_not_a_capability() -> None:
    address = crypto.sign_address(OWNER, seq=1, endpoints=["http://h:1"], exp=NOW + HOUR)
    token = CAPABILITY_TOKEN_PREFIX + address.token.removeprefix(crypto.TOKEN_PREFIX)
    with pytest.raises(WrongPurpose, match="capability token"):
        parse_capability(token)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ops": ["subscribe", "publish"]}, "sorted"),
        ({"ops": []}, "non-empty"),
        ({"id": b"short"}, "id is not 16 bytes"),
        ({"sub": None}, "null sub"),
        ({"extra": 1}, "unknown keys"),
        ({"uses": 0}, "uses is 0"),
        ({"exp": NOW, "nbf": NOW}, "expires"),
        ({"quota": 5}, "quota but does not allow store"),
        ({"up": "text"}, "not a byte string"),
    ],
)
def test_bad_payloads_are_refused(change: dict[str, Any], message: str) -> None:
    payload = {**root().to_payload(), **change}
    envelope = _envelope.seal(OWNER, _envelope.Purpose.CAPABILITY, payload)
    with pytest.raises(Malformed, match=message):
        Capability.open(envelope)


# -- random chains: a child is never wider ------------------------------------------

ALL_PATTERNS = st.lists(PATTERN_WORDS, min_size=1, max_size=4).map(".".join)
TIMES = st.one_of(st.none(), st.integers(NOW - HOUR, NOW + 10 * HOUR))
LIMITS = st.one_of(st.none(), st.integers(1, 20))


@st.composite
def caveats(draw: st.DrawFn) -> Caveats:
    nbf, exp = draw(TIMES), draw(TIMES)
    if nbf is not None and exp is not None and exp <= nbf:
        exp = nbf + 1
    return Caveats(nbf=nbf, exp=exp, uses=draw(LIMITS), rate=draw(LIMITS))


@st.composite
def chains(draw: st.DrawFn) -> tuple[Capability, list[Identity | None]]:
    """A chain grown by random delegations, each kept only if it was allowed; also who
    holds each link (None: anyone)."""
    new_id = ids()
    holder = draw(st.sampled_from([*PEOPLE, None]))
    capability = grant(
        OWNER,
        Target.topic(OWNER.node_id, draw(ALL_PATTERNS)),
        draw(st.sets(st.sampled_from(["publish", "subscribe"]), min_size=1)),
        subject=None if holder is None else holder.node_id,
        now=NOW,
        cap_id=new_id(),
        caveats=draw(caveats()),
    )
    holders = [holder]
    for _ in range(draw(st.integers(0, MAX_CHAIN_DEPTH - 1))):
        signer = holders[-1] if holders[-1] is not None else draw(st.sampled_from(PEOPLE))
        if draw(st.booleans()):
            signer = draw(st.sampled_from([*PEOPLE, STRANGER]))  # may not be allowed to
        subject = draw(st.sampled_from([*PEOPLE, None]))
        try:
            child = delegate(
                signer,
                capability,
                subject=None if subject is None else subject.node_id,
                now=NOW,
                cap_id=new_id(),
                target=draw(
                    st.one_of(
                        st.none(),
                        ALL_PATTERNS.map(lambda p: Target.topic(OWNER.node_id, p)),
                    )
                ),
                ops=draw(
                    st.one_of(
                        st.none(), st.sets(st.sampled_from(["publish", "subscribe"]), min_size=1)
                    )
                ),
                caveats=draw(st.one_of(st.none(), caveats())),
            )
        except CapabilityRefused:
            continue
        assert child.parent == capability
        capability = child
        holders.append(subject)
    return capability, holders


def assert_no_wider(child: Capability, parent: Capability) -> None:
    assert child.ops <= parent.ops
    assert child.target.kind == parent.target.kind
    assert child.target.node == parent.target.node
    assert child.target.pattern is not None
    assert parent.target.pattern is not None
    assert mesh.covers(parent.target.pattern, child.target.pattern)
    for name in ("exp", "uses", "rate", "quota"):
        limit = getattr(parent.caveats, name)
        if limit is not None:
            assert getattr(child.caveats, name) is not None
            assert getattr(child.caveats, name) <= limit
    if parent.caveats.nbf is not None:
        assert child.caveats.nbf is not None
        assert child.caveats.nbf >= parent.caveats.nbf


@given(chains(), st.data())
def test_a_delegated_capability_is_never_wider_than_its_parent(
    made: tuple[Capability, list[Identity | None]], data: Any
) -> None:
    leaf, holders = made
    chain = leaf.chain
    assert len(chain) == len(holders) <= MAX_CHAIN_DEPTH
    for parent, child in itertools.pairwise(chain):
        assert_no_wider(child, parent)
        if parent.subject is not None:
            assert child.issuer == parent.subject
    # And in use: whatever the leaf allows, every link above it allows.
    assert leaf.target.pattern is not None
    topic = data.draw(topic_matching(leaf.target.pattern))
    assume(topic is not None)
    op = data.draw(st.sampled_from(sorted(leaf.ops)))
    now = data.draw(st.integers(NOW - 2 * HOUR, NOW + 11 * HOUR))
    presenter = holders[-1] if holders[-1] is not None else STRANGER
    try:
        use(leaf, topic=topic, operation=op, presenter=presenter, now=now)
    except CapabilityExpired:
        return
    for link in chain:
        assert op in link.ops
        assert link.target.pattern is not None
        assert mesh.matches(link.target.pattern, topic)
        assert link.caveats.exp is None or now < link.caveats.exp
        assert link.caveats.nbf is None or now >= link.caveats.nbf


WIDENINGS: list[tuple[dict[str, Any], str]] = [
    ({"ops": ["publish", "subscribe"]}, "operations subscribe are not allowed"),
    ({"obj": {"k": "topic", "node": OWNER.node_id.raw, "pat": "#"}}, "is not within"),
    ({"obj": {"k": "topic", "node": OWNER.node_id.raw, "pat": "news.*.#"}}, "is not within"),
    ({"exp": NOW + 5 * HOUR}, "after its parent"),
    ({"uses": 4}, "uses"),
    ({"uses": None}, "uses"),
    ({"rate": None}, "rate"),
    ({"nbf": NOW - HOUR}, "valid before its parent"),
]


@pytest.mark.parametrize(("change", "message"), WIDENINGS)
def test_a_forged_wider_child_is_refused_by_every_verifier(
    change: dict[str, Any], message: str
) -> None:
    parent = root(
        ops=("publish",),
        pattern="news.*",
        caveats=Caveats(nbf=NOW - 1, exp=NOW + HOUR, uses=3, rate=5),
    )
    child = delegate(PEOPLE[0], parent, subject=PEOPLE[1].node_id, now=NOW, cap_id=b"\x09" * 16)
    payload = {**child.to_payload(), **change}
    payload = {key: value for key, value in payload.items() if value is not None}
    envelope = _envelope.seal(PEOPLE[0], _envelope.Purpose.CAPABILITY, payload)
    with pytest.raises(CapabilityRefused, match=message) as caught:
        Capability.open(envelope)
    assert caught.value.link == 2


def test_only_the_subject_may_delegate_and_anyone_may_delegate_a_bearer() -> None:
    with pytest.raises(CapabilityRefused, match="its parent is for"):
        delegate(STRANGER, root(), subject=None, now=NOW, cap_id=b"\x09" * 16)
    bearer = root(subject=None)
    child = delegate(STRANGER, bearer, subject=PEOPLE[2].node_id, now=NOW, cap_id=b"\x09" * 16)
    assert use(child, presenter=PEOPLE[2]).capability == child


def test_a_child_may_not_reuse_an_id_above_it() -> None:
    parent = root()
    with pytest.raises(CapabilityRefused, match="reuses the id"):
        delegate(PEOPLE[0], parent, subject=None, now=NOW, cap_id=parent.id)


def linear_chain(depth: int) -> tuple[Capability, list[Identity]]:
    """OWNER -> PEOPLE[0] -> PEOPLE[1] -> ... (``depth`` links), each for the next."""
    new_id = ids()
    people = [PEOPLE[n % len(PEOPLE)] for n in range(depth)]
    capability = root(subject=people[0], cap_id=new_id(), caveats=Caveats(exp=NOW + HOUR))
    for number in range(1, depth):
        capability = delegate(
            people[number - 1],
            capability,
            subject=people[number].node_id,
            now=NOW,
            cap_id=new_id(),
            caveats=Caveats(exp=NOW + HOUR - number),
        )
    return capability, people


def test_chains_deeper_than_the_limit_are_refused() -> None:
    capability, people = linear_chain(MAX_CHAIN_DEPTH)
    assert use(capability, presenter=people[-1]).capability.depth == MAX_CHAIN_DEPTH
    with pytest.raises(Malformed, match=f"deeper than {MAX_CHAIN_DEPTH}"):
        delegate(people[-1], capability, subject=None, now=NOW, cap_id=b"\xff" * 16)


def test_oversized_capabilities_are_refused_before_decoding() -> None:
    with pytest.raises(TooLarge, match="limit"):
        Capability.open(b"\x00" * (crypto.MAX_CAPABILITY_SIZE + 1))


# -- tampering -------------------------------------------------------------------------


def resign(chain: tuple[Capability, ...], signers: list[Identity], index: int, bad: bytes) -> bytes:
    """The chain with link ``index``'s envelope replaced by ``bad`` and every link
    below it signed again by its own (honest) signer over the new parent."""
    envelope = bad
    for number in range(index + 1, len(chain)):
        payload = {**chain[number].to_payload(), "up": envelope}
        envelope = _envelope.seal(signers[number], _envelope.Purpose.CAPABILITY, payload)
    return envelope


@given(st.integers(1, MAX_CHAIN_DEPTH), st.data())
def test_a_tampered_link_anywhere_is_refused(depth: int, data: Any) -> None:
    capability, people = linear_chain(depth)
    signers = [OWNER, *people[:-1]]
    chain = capability.chain
    index = data.draw(st.integers(0, depth - 1), label="tampered link")
    original = chain[index].envelope
    # Re-signing as such changes nothing: only the flipped bit can make it fail.
    assert use(resign(chain, signers, index, original), presenter=people[-1])
    position = data.draw(st.integers(0, len(original) - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    flipped = bytearray(original)
    flipped[position] ^= 1 << bit
    forged = resign(chain, signers, index, bytes(flipped))
    with pytest.raises(CryptoError):
        use(forged, presenter=people[-1])


@given(st.integers(1, MAX_CHAIN_DEPTH), st.data())
def test_a_link_re_signed_by_another_key_is_refused(depth: int, data: Any) -> None:
    capability, people = linear_chain(depth)
    signers = [OWNER, *people[:-1]]
    chain = capability.chain
    index = data.draw(st.integers(0, depth - 1), label="replaced link")
    # The attacker widens the link and signs it with a key of its own.
    payload = {**chain[index].to_payload(), "ops": ["publish", "subscribe"]}
    payload.pop("exp")
    forged_link = _envelope.seal(STRANGER, _envelope.Purpose.CAPABILITY, payload)
    forged = resign(chain, signers, index, forged_link)
    with pytest.raises(CapabilityRefused) as caught:
        use(forged, presenter=people[-1])
    assert caught.value.link == index + 1


def test_a_bad_signature_deep_in_the_chain_names_it() -> None:
    capability, people = linear_chain(3)
    chain = capability.chain
    bad = bytearray(chain[0].envelope)
    bad[-1] ^= 1
    forged = resign(chain, [OWNER, *people[:-1]], 0, bytes(bad))
    with pytest.raises(BadSignature, match="ancestor 2 up"):
        Capability.open(forged)


# -- time and revocation -------------------------------------------------------------


@given(st.integers(1, MAX_CHAIN_DEPTH), st.integers(0, 2 * HOUR))
def test_expired_chains_are_refused(depth: int, later: int) -> None:
    capability, people = linear_chain(depth)
    now = NOW + later
    first_expired = min(link.caveats.exp or 2**62 for link in capability.chain)
    if now < first_expired:
        assert use(capability, presenter=people[-1], now=now)
    else:
        with pytest.raises(CapabilityExpired, match="expired at"):
            use(capability, presenter=people[-1], now=now)


def test_not_valid_yet_is_refused() -> None:
    capability = root(caveats=Caveats(nbf=NOW + HOUR))
    with pytest.raises(CapabilityExpired, match="not valid before") as caught:
        use(capability)
    assert caught.value.link == 1
    assert use(capability, now=NOW + HOUR)


@given(st.integers(1, MAX_CHAIN_DEPTH), st.data())
def test_a_revoked_link_refuses_it_and_every_descendant(depth: int, data: Any) -> None:
    capability, people = linear_chain(depth)
    signers = [OWNER, *people[:-1]]
    chain = capability.chain
    index = data.draw(st.integers(0, depth - 1), label="revoked link")
    revoked = RevocationSet([Revocation.sign(signers[index], chain[index].id, now=NOW)])
    # The revoked link and every link below it are refused, those above it are not.
    for number, link in enumerate(chain):
        holder = people[number]
        if number >= index:
            with pytest.raises(Revoked, match="revoked by its issuer") as caught:
                use(link, presenter=holder, revoked=revoked)
            assert caught.value.link == index + 1
        else:
            assert use(link, presenter=holder, revoked=revoked)


def test_revocations_by_others_change_nothing_but_a_named_revoker_counts() -> None:
    capability = root()
    by_stranger = RevocationSet([Revocation.sign(STRANGER, capability.id, now=NOW)])
    assert use(capability, revoked=by_stranger)
    watched = grant(
        OWNER,
        Target.topic(OWNER.node_id, "news.#"),
        ["publish"],
        subject=PEOPLE[0].node_id,
        now=NOW,
        cap_id=b"\x05" * 16,
        revoker=STRANGER.node_id,
    )
    revocation = Revocation.sign(STRANGER, watched.id, now=NOW)
    with pytest.raises(Revoked, match="by its revoker"):
        use(watched, revoked=RevocationSet([revocation]))
    # A child keeps its parent's revoker: it may not drop it.
    payload = {
        **delegate(PEOPLE[0], watched, subject=None, now=NOW, cap_id=b"\x06" * 16).to_payload()
    }
    payload.pop("rev")
    with pytest.raises(CapabilityRefused, match="revoker"):
        Capability.open(_envelope.seal(PEOPLE[0], _envelope.Purpose.CAPABILITY, payload))


def test_revocations_round_trip_and_refuse_bad_payloads() -> None:
    revocation = Revocation.sign(OWNER, b"\x07" * 16, now=NOW)
    assert Revocation.open(revocation.envelope) == revocation
    assert revocation.id_text == "07" * 16
    with pytest.raises(Malformed, match="16 bytes"):
        Revocation.sign(OWNER, b"short", now=NOW)
    bad = _envelope.seal(OWNER, _envelope.Purpose.REVOCATION, {"cap": b"\x07" * 16})
    with pytest.raises(Malformed, match="exactly the keys"):
        Revocation.open(bad)
    with pytest.raises(WrongPurpose):
        Revocation.open(root().envelope)
    with pytest.raises(WrongPurpose):
        Capability.open(revocation.envelope)
    held = RevocationSet([revocation, revocation])
    assert len(held) == 1


# -- offline ---------------------------------------------------------------------------


def test_verification_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    capability, people = linear_chain(MAX_CHAIN_DEPTH)
    token = capability.token
    revoked = RevocationSet([Revocation.sign(STRANGER, capability.id, now=NOW)])

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("verification tried to use the network")

    for name in ("socket", "create_connection", "getaddrinfo", "gethostbyname"):
        monkeypatch.setattr(socket, name, no_network)
    assert use(token, presenter=people[-1], revoked=revoked).capability.depth == MAX_CHAIN_DEPTH


def test_a_token_is_base64url_of_the_envelope() -> None:
    capability = root()
    body = capability.token.removeprefix(CAPABILITY_TOKEN_PREFIX)
    assert base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)) == capability.envelope
