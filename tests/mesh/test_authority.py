"""Capability enforcement, sans-IO (mesh._authority, and the router's use of it): what
each enforcement point refuses and why, uses and rates counted once per frame by the
owner only, revocations learned once, flooded on and greeted with, and pattern overlap.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

import crypto
import mesh
from mesh._topics import matches

NOW = 1_700_000_000_000
OWNER = crypto.Identity(bytes(range(32)))
HOLDER = crypto.Identity(bytes([7]) * 32)
THIRD = crypto.Identity(bytes([9]) * 32)
RELAY = crypto.Identity(bytes([11]) * 32)
FEED = f"~{OWNER.node_id.text}.feed"


def cap_id(number: int) -> bytes:
    return number.to_bytes(16, "big")


def publish_cap(
    pattern: str = f"{FEED}.#",
    *,
    subject: crypto.NodeId | None = HOLDER.node_id,
    caveats: crypto.Caveats | None = None,
    number: int = 1,
    ops: tuple[str, ...] = ("publish",),
) -> crypto.Capability:
    return crypto.grant(
        OWNER,
        crypto.Target.topic(OWNER.node_id, pattern),
        ops,
        subject=subject,
        now=NOW,
        cap_id=cap_id(number),
        caveats=caveats,
    )


def pub(
    src: crypto.Identity, topic: str, cap: crypto.Capability | None, *, number: int = 1
) -> crypto.Frame:
    return crypto.Frame(
        kind=crypto.Kind.PUB,
        src=src.node_id,
        id=cap_id(1000 + number),
        ts=NOW,
        exp=NOW + 60_000,
        hops=8,
        topic=topic,
        body=b"post",
        cap=None if cap is None else cap.envelope,
    )


# -- publishing under a secure name ---------------------------------------------------


def test_a_secure_name_is_published_by_its_owner_or_a_holder_of_its_capability() -> None:
    relay = mesh.Authority(RELAY.node_id)
    assert relay.publication_refusal(pub(OWNER, f"{FEED}.x", None), NOW) is None
    words = relay.publication_refusal(pub(HOLDER, f"{FEED}.x", None), NOW)
    assert words == (
        f"topic '{FEED}.x' is {OWNER.node_id.short}'s secure name; only it, or a holder of "
        f"its capability, may publish there, not {HOLDER.node_id.short}"
    )
    assert relay.publication_refusal(pub(HOLDER, f"{FEED}.x", publish_cap()), NOW) is None


@pytest.mark.parametrize(
    ("cap", "src", "topic", "expected"),
    [
        pytest.param(
            publish_cap(subject=THIRD.node_id), HOLDER, f"{FEED}.x",
            "presented by", id="another subject",
        ),
        pytest.param(publish_cap(f"{FEED}.a"), HOLDER, f"{FEED}.b", "not topics", id="other topic"),
        pytest.param(
            publish_cap(ops=("subscribe",)), HOLDER, f"{FEED}.x", "allows subscribe, not publish",
            id="other operation",
        ),
        pytest.param(
            publish_cap(caveats=crypto.Caveats(exp=NOW - 1)), HOLDER, f"{FEED}.x", "expired at",
            id="expired",
        ),
    ],
)  # fmt: skip
def test_a_capability_that_does_not_fit_is_refused_with_its_reason(
    cap: crypto.Capability, src: crypto.Identity, topic: str, expected: str
) -> None:
    words = mesh.Authority(RELAY.node_id).publication_refusal(pub(src, topic, cap), NOW)
    assert words is not None
    assert words.startswith(f"publishing on {topic!r}: ")
    assert expected in words


def test_a_capability_from_someone_else_is_no_authority_over_a_secure_name() -> None:
    # THIRD grants a capability on a topic that is not its own: crypto refuses to make it.
    with pytest.raises(crypto.CapabilityRefused, match="not by the object's owner"):
        crypto.grant(
            THIRD,
            crypto.Target.topic(OWNER.node_id, f"{FEED}.#"),
            ["publish"],
            subject=None,
            now=NOW,
            cap_id=cap_id(5),
        )
    # A root signed by THIRD for its own topics is no authority over OWNER's.
    own = crypto.grant(
        THIRD,
        crypto.Target.topic(THIRD.node_id, f"~{THIRD.node_id.text}.#"),
        ["publish"],
        subject=None,
        now=NOW,
        cap_id=cap_id(6),
    )
    words = mesh.Authority(RELAY.node_id).publication_refusal(pub(HOLDER, f"{FEED}.x", own), NOW)
    assert words is not None
    assert "capability's root is issued by" in words


def test_garbage_in_the_cap_field_is_refused_not_raised() -> None:
    frame = pub(HOLDER, f"{FEED}.x", None)
    frame = crypto.Frame.from_payload({**frame.to_payload(), "cap": b"\xa1\x01\x02"})
    words = mesh.Authority(RELAY.node_id).publication_refusal(frame, NOW)
    assert words is not None
    assert "the capability presented is bad" in words


# -- requirements of the node's own ---------------------------------------------------


def own_cap(
    target: crypto.Target, ops: tuple[str, ...], *, caveats: crypto.Caveats | None = None
) -> crypto.Capability:
    return crypto.grant(
        RELAY, target, ops, subject=HOLDER.node_id, now=NOW, cap_id=cap_id(7), caveats=caveats
    )


def test_publishing_on_a_required_pattern_needs_a_capability_from_this_node() -> None:
    authority = mesh.Authority(RELAY.node_id, requirements=mesh.Requirements(publish=("alerts.#",)))
    assert authority.publication_refusal(pub(HOLDER, "news.x", None), NOW) is None
    words = authority.publication_refusal(pub(HOLDER, "alerts.fire", None), NOW)
    assert words == (
        f"publishing on 'alerts.fire' needs a capability from {RELAY.node_id.text} (publish "
        f"on topics 'alerts.fire' of {RELAY.node_id.text}); none was presented"
    )
    cap = own_cap(crypto.Target.topic(RELAY.node_id, "alerts.#"), ("publish",))
    assert authority.publication_refusal(pub(HOLDER, "alerts.fire", cap), NOW) is None
    # This node's own publications need nothing.
    assert authority.publication_refusal(pub(RELAY, "alerts.fire", None), NOW) is None


def test_a_subscription_reaching_into_a_required_pattern_needs_a_capability() -> None:
    authority = mesh.Authority(
        RELAY.node_id, requirements=mesh.Requirements(subscribe=("secret.#",))
    )

    def sub(pattern: str, cap: crypto.Capability | None) -> crypto.Frame:
        return crypto.Frame(
            kind=crypto.Kind.SUB,
            src=HOLDER.node_id,
            id=cap_id(77),
            ts=NOW,
            exp=NOW + 60_000,
            hops=8,
            pat=pattern,
            cap=None if cap is None else cap.envelope,
        )

    assert authority.subscription_refusal(sub("news.#", None), NOW) is None
    for pattern in ("secret.plans", "#", "*.plans", "secret"):
        words = authority.subscription_refusal(sub(pattern, None), NOW)
        assert words is not None
        assert words.startswith(f"subscribing to {pattern!r} needs")
    cap = own_cap(crypto.Target.topic(RELAY.node_id, "secret.#"), ("subscribe",))
    assert authority.subscription_refusal(sub("secret.plans", cap), NOW) is None
    # "#" reaches into secret.# but the capability covers only secret.#: refused.
    words = authority.subscription_refusal(sub("#", cap), NOW)
    assert words is not None
    assert "not topics '#'" in words


def test_the_inbox_takes_only_holders_when_required() -> None:
    authority = mesh.Authority(RELAY.node_id, requirements=mesh.Requirements(send=True))

    def msg(cap: crypto.Capability | None, number: int) -> crypto.Frame:
        return crypto.Frame(
            kind=crypto.Kind.MSG,
            src=HOLDER.node_id,
            id=cap_id(number),
            ts=NOW,
            exp=NOW + 60_000,
            hops=8,
            dst=RELAY.node_id,
            body=b"hi",
            cap=None if cap is None else cap.envelope,
        )

    words = authority.inbox_refusal(msg(None, 1), NOW)
    assert words is not None
    assert "none was presented" in words
    cap = own_cap(crypto.Target.inbox(RELAY.node_id), ("send",), caveats=crypto.Caveats(uses=2))
    assert authority.inbox_refusal(msg(cap, 1), NOW) is None
    assert authority.inbox_refusal(msg(cap, 1), NOW) is None  # the same frame again: one use
    assert authority.inbox_refusal(msg(cap, 2), NOW) is None
    words = authority.inbox_refusal(msg(cap, 3), NOW)
    assert words is not None
    assert "has been used its 2 times" in words
    assert mesh.Authority(RELAY.node_id).inbox_refusal(msg(None, 1), NOW) is None  # off


def test_a_rate_is_counted_per_minute_by_the_owner_only() -> None:
    cap = publish_cap(caveats=crypto.Caveats(rate=2))
    owner = mesh.Authority(OWNER.node_id)
    relay = mesh.Authority(RELAY.node_id)
    for number in range(5):  # a relay checks the chain, not the count
        assert relay.publication_refusal(pub(HOLDER, f"{FEED}.x", cap, number=number), NOW) is None
    assert owner.publication_refusal(pub(HOLDER, f"{FEED}.x", cap, number=1), NOW) is None
    assert owner.publication_refusal(pub(HOLDER, f"{FEED}.x", cap, number=2), NOW) is None
    words = owner.publication_refusal(pub(HOLDER, f"{FEED}.x", cap, number=3), NOW + 59_999)
    assert words is not None
    assert "allows 2 uses a minute" in words
    assert owner.publication_refusal(pub(HOLDER, f"{FEED}.x", cap, number=3), NOW + 60_000) is None


def test_a_refused_use_counts_on_no_link() -> None:
    parent = publish_cap(subject=HOLDER.node_id, caveats=crypto.Caveats(uses=3))
    child = crypto.delegate(
        HOLDER,
        parent,
        subject=THIRD.node_id,
        now=NOW,
        cap_id=cap_id(2),
        caveats=crypto.Caveats(uses=1),
    )
    owner = mesh.Authority(OWNER.node_id)
    assert owner.publication_refusal(pub(THIRD, f"{FEED}.x", child, number=1), NOW) is None
    assert owner.publication_refusal(pub(THIRD, f"{FEED}.x", child, number=2), NOW) is not None
    # The parent was charged once (the child's refused use was not counted on it).
    for number in (3, 4):
        assert (
            owner.publication_refusal(pub(HOLDER, f"{FEED}.x", parent, number=number), NOW) is None
        )
    assert owner.publication_refusal(pub(HOLDER, f"{FEED}.x", parent, number=5), NOW) is not None


# -- revocations ----------------------------------------------------------------------


def test_a_revoked_parent_kills_its_descendants() -> None:
    parent = publish_cap()
    child = crypto.delegate(HOLDER, parent, subject=THIRD.node_id, now=NOW, cap_id=cap_id(2))
    relay = mesh.Authority(RELAY.node_id)
    assert relay.publication_refusal(pub(THIRD, f"{FEED}.x", child), NOW) is None
    revocation = crypto.Revocation.sign(OWNER, parent.id, now=NOW)
    assert relay.learn(revocation) is mesh.Learned.NEWS
    assert relay.learn(revocation) is mesh.Learned.STALE  # known: no news
    words = relay.publication_refusal(pub(THIRD, f"{FEED}.x", child), NOW)
    assert words is not None
    assert "capability link 1 of 2" in words
    assert "was revoked by its issuer" in words
    # A revocation by someone who may not revoke it changes nothing.
    other = mesh.Authority(RELAY.node_id)
    assert other.learn(crypto.Revocation.sign(THIRD, parent.id, now=NOW)) is mesh.Learned.NEWS
    assert other.publication_refusal(pub(THIRD, f"{FEED}.x", child), NOW) is None


def rev_frame(signer: crypto.Identity, revocation: crypto.Revocation, number: int) -> mesh.Admitted:
    frame = crypto.Frame(
        kind=crypto.Kind.REV,
        src=signer.node_id,
        id=cap_id(500 + number),
        ts=NOW,
        exp=NOW + 60_000,
        hops=4,
        body=revocation.envelope,
    )
    return mesh.Admitted(frame, frame.seal(signer), 1)


def router(local: crypto.Identity, *neighbours: crypto.Identity) -> mesh.Router:
    result = mesh.Router(local.node_id, rng=random.Random(1))
    for node in neighbours:
        result.add_neighbour(node.node_id, mesh.Role.PEER, NOW)
    return result


def test_a_revocation_is_flooded_on_once_and_greeted_with() -> None:
    relay = router(RELAY, OWNER, HOLDER, THIRD)
    revocation = crypto.Revocation.sign(OWNER, cap_id(1), now=NOW)
    result, learned, actions = relay.on_revocation(
        rev_frame(OWNER, revocation, 1), OWNER.node_id, NOW
    )
    assert result.outcome is mesh.Outcome.ACCEPTED
    assert learned == revocation
    (flood,) = actions
    assert isinstance(flood, mesh.Flood)
    assert set(flood.to) == {HOLDER.node_id, THIRD.node_id}  # not back to the sender
    # The same revocation again (another copy, another frame): a duplicate, not flooded.
    again = relay.on_revocation(rev_frame(HOLDER, revocation, 2), HOLDER.node_id, NOW)
    assert again[0].outcome is mesh.Outcome.DUPLICATE
    assert again[1:] == (None, [])
    # A neighbour met later hears of it.
    greeting = relay.greeting(THIRD.node_id, NOW)
    assert flood.wire in greeting


def test_revocations_are_bounded_per_signer_and_in_all_and_taken_from_neighbours_only() -> None:
    relay = mesh.Router(
        RELAY.node_id,
        rng=random.Random(1),
        authority=mesh.Authority(RELAY.node_id, max_revocations=5, max_per_signer=3),
    )
    relay.add_neighbour(HOLDER.node_id, mesh.Role.PEER, NOW)
    flooder, other = crypto.Identity.generate(), crypto.Identity.generate()
    results = [
        relay.on_revocation(
            rev_frame(HOLDER, crypto.Revocation.sign(signer, cap_id(n), now=NOW), n),
            HOLDER.node_id,
            NOW,
        )[0]
        for n, signer in enumerate([flooder] * 4 + [other] * 3)
    ]
    codes = [r.code for r in results]
    full = mesh.Reason.STORE_FULL
    assert codes == [None, None, None, full, None, None, full]  # 3 by one; 5 in all
    assert "the limit" in results[3].words
    # The node's own are taken regardless.
    own = crypto.Revocation.sign(RELAY, cap_id(99), now=NOW)
    relay.own_revocation(own, rev_frame(RELAY, own, 99).envelope)
    assert relay.authority.knows(own)
    # A stranger's rev frame is refused.
    stranger = relay.on_revocation(
        rev_frame(THIRD, crypto.Revocation.sign(THIRD, cap_id(7), now=NOW), 7), THIRD.node_id, NOW
    )[0]
    assert stranger.code is mesh.Reason.POLICY


def test_a_rev_frame_whose_body_is_no_revocation_is_rejected() -> None:
    relay = router(RELAY, OWNER)
    frame = crypto.Frame(
        kind=crypto.Kind.REV,
        src=OWNER.node_id,
        id=cap_id(9),
        ts=NOW,
        exp=NOW + 60_000,
        hops=4,
        body=b"not a revocation",
    )
    result, learned, actions = relay.on_revocation(
        mesh.Admitted(frame, frame.seal(OWNER), 1), OWNER.node_id, NOW
    )
    assert result.outcome is mesh.Outcome.REJECTED
    assert result.code is mesh.Reason.MALFORMED
    assert (learned, actions) == (None, [])


def test_the_router_refuses_a_publication_with_a_revoked_capability_and_tells_its_origin() -> None:
    relay = router(RELAY, HOLDER)
    cap = publish_cap()
    frame = pub(HOLDER, f"{FEED}.x", cap)
    admitted = mesh.Admitted(frame, frame.seal(HOLDER), 1)
    assert isinstance(relay.classify(admitted, HOLDER.node_id, NOW), mesh.Fanout)
    relay.authority.learn(crypto.Revocation.sign(OWNER, cap.id, now=NOW))
    refused = relay.classify(admitted, HOLDER.node_id, NOW)
    assert isinstance(refused, mesh.Result)
    assert refused.code is mesh.Reason.FORBIDDEN
    (notice,) = relay.refused(admitted, refused, NOW)
    assert isinstance(notice, mesh.Notify)
    assert notice.origin == HOLDER.node_id
    assert notice.why.startswith("forbidden: publishing on")


def test_calls_and_replies_are_not_held_to_the_inbox_requirement() -> None:
    relay = mesh.Router(
        RELAY.node_id,
        rng=random.Random(1),
        authority=mesh.Authority(RELAY.node_id, requirements=mesh.Requirements(send=True)),
    )
    for ct, expected in ((None, mesh.Result), (mesh.CALL_CONTENT_TYPE, mesh.Deliver)):
        frame = crypto.Frame(
            kind=crypto.Kind.MSG,
            src=HOLDER.node_id,
            id=cap_id(3),
            ts=NOW,
            exp=NOW + 60_000,
            hops=8,
            dst=RELAY.node_id,
            body=b"x",
            ct=ct,
        )
        decision = relay.classify(mesh.Admitted(frame, frame.seal(HOLDER), 1), HOLDER.node_id, NOW)
        assert isinstance(decision, expected)


# -- the wallet -------------------------------------------------------------------------


def test_the_wallet_offers_the_first_capability_that_fits() -> None:
    wallet = mesh.Wallet(HOLDER.node_id)
    narrow = publish_cap(f"{FEED}.a", number=1)
    wide = publish_cap(f"{FEED}.#", number=2)
    someone_elses = publish_cap(subject=THIRD.node_id, number=3)
    for cap in (someone_elses, narrow, wide, narrow):
        wallet.add(cap)
    assert len(wallet) == 3
    assert wallet.choose_topic(crypto.Operation.PUBLISH, f"{FEED}.a") == narrow
    assert wallet.choose_topic(crypto.Operation.PUBLISH, f"{FEED}.b") == wide
    assert wallet.choose_topic(crypto.Operation.SUBSCRIBE, f"{FEED}.b") is None
    assert wallet.choose(crypto.Operation.PUBLISH, crypto.Target.topic(OWNER.node_id, FEED)) == wide


# -- pattern overlap ----------------------------------------------------------------------

WORDS = st.sampled_from(["a", "b", "c"])
PATTERN = st.lists(WORDS | st.sampled_from(["*", "#"]), min_size=1, max_size=4).map(".".join)


@given(PATTERN, PATTERN)
def test_overlap_is_exactly_whether_some_topic_matches_both(first: str, second: str) -> None:
    # Every topic of up to 6 words over the patterns' literals and one other word.
    alphabet = ["a", "b", "c", "z"]
    topics = [[word] for word in alphabet]
    found = False
    for _ in range(6):
        if any(matches(first, ".".join(t)) and matches(second, ".".join(t)) for t in topics):
            found = True
            break
        topics = [[*t, word] for t in topics for word in alphabet]
    assert mesh.overlaps(first, second) == found
    assert mesh.overlaps(second, first) == found


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("#", "#", True),
        ("a.#", "b.#", False),
        ("a.*", "a", False),
        ("a.#", "a", True),
        ("*.b", "a.*", True),
        ("a.b.c", "a.b.c", True),
        ("a.b", "a.c", False),
    ],
)
def test_overlap_examples(first: str, second: str, expected: bool) -> None:
    assert mesh.overlaps(first, second) is expected
