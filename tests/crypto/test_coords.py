"""Signed tree coordinates (crypto._coords): chains of grants, their refusals, distance.

A chain verifies only as its signers made it: every grant signed by the node above it,
at the next depth, in the same tree, bound to the grant above, with no node twice and
none expired; sizes are refused before any signature is checked. Distance is checked
against walking parent pointers over random trees.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import (
    DIFFERENT_TREES,
    MAX_COORD_CHAIN_SIZE,
    MAX_GRANT_LIFETIME_MS,
    MAX_TREE_DEPTH,
    BadSignature,
    CoordChain,
    Coordinates,
    CryptoError,
    Expired,
    Identity,
    Malformed,
    NodeId,
    Purpose,
    TooLarge,
    WrongPurpose,
    grant_coordinates,
    root_statement,
    seal,
)
from crypto._cbor import encode
from crypto._coords import MAX_GRANT_SIZE

NOW = 1_700_000_000_000  # ms since the epoch
LIFETIME = 60_000
IDS = [Identity(hashlib.sha256(b"coords %d" % i).digest()) for i in range(MAX_TREE_DEPTH + 2)]
A, B, C, D = IDS[:4]


def line(
    identities: list[Identity], *, now: int = NOW, lifetimes: list[int] | None = None
) -> Coordinates:
    """The coordinates of the last of ``identities``, each granted a place by the one
    before it, the first the root."""
    lifetimes = lifetimes or [LIFETIME] * len(identities)
    statement = root_statement(identities[0], now=now, lifetime_ms=lifetimes[0])
    coordinates = CoordChain((statement,)).verify(now=now)
    for parent, child, lifetime in zip(identities, identities[1:], lifetimes[1:], strict=False):
        grant = grant_coordinates(parent, child.node_id, coordinates, now=now, lifetime_ms=lifetime)
        coordinates = coordinates.below(grant, now=now)
    return coordinates


def chain_of(coordinates: Coordinates) -> CoordChain:
    assert coordinates.chain is not None
    return coordinates.chain


def payload(
    root: Identity,
    child: Identity,
    depth: int,
    above: bytes | None,
    *,
    ts: int = NOW,
    exp: int = NOW + LIFETIME,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "root": root.node_id.raw,
        "ts": ts,
        "child": child.node_id.raw,
        "depth": depth,
        "exp": exp,
    }
    if above is not None:
        fields["up"] = hashlib.sha256(above).digest()
    return fields


def forged(signer: Identity, fields: dict[str, Any], purpose: Purpose = Purpose.COORD) -> bytes:
    return seal(signer, purpose, fields)


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_a_chain_round_trips_through_its_wire_form(depth: int) -> None:
    made = line(IDS[: depth + 1])
    data = chain_of(made).encode()
    parsed = CoordChain.parse(data, now=NOW)
    assert parsed == made
    assert parsed.path == tuple(identity.node_id for identity in IDS[: depth + 1])
    assert (parsed.root, parsed.node, parsed.depth, parsed.ts) == (
        A.node_id,
        IDS[depth].node_id,
        depth,
        NOW,
    )
    assert chain_of(parsed) == chain_of(made) == CoordChain.decode(data)
    assert len(chain_of(parsed).grants) == depth + 1


@pytest.mark.parametrize("depth", [1, 2, 5, MAX_TREE_DEPTH])
def test_coordinates_made_below_are_those_the_checking_constructor_makes(depth: int) -> None:
    # below() makes them without __post_init__'s checks of the whole path (it checked
    # what the new level adds): the same fields, the same behaviour, still frozen.
    made = line(IDS[: depth + 1])
    same = Coordinates(made.path, made.ts, made.exp, made.chain)
    assert (made.path, made.ts, made.exp, made.chain) == (
        same.path,
        same.ts,
        same.exp,
        same.chain,
    )
    assert made == same
    assert hash(made) == hash(same)
    assert repr(made) == repr(same)
    assert type(made.path) is tuple
    assert all(type(node) is NodeId for node in made.path)
    with pytest.raises(AttributeError):
        made.ts = 0  # type: ignore[misc]


@given(lifetimes=st.lists(st.integers(1, 10 * LIFETIME), min_size=1, max_size=6))
@settings(max_examples=25, deadline=None)
def test_coordinates_last_until_their_first_grant_expires(lifetimes: list[int]) -> None:
    made = line(IDS[: len(lifetimes)], lifetimes=lifetimes)
    assert made.exp == NOW + min(lifetimes)
    assert CoordChain.parse(chain_of(made).encode(), now=NOW + min(lifetimes) - 1) == made
    with pytest.raises(Expired, match="expired 0 ms ago"):
        CoordChain.parse(chain_of(made).encode(), now=NOW + min(lifetimes))


def test_the_deepest_chain_allowed_verifies_and_goes_no_deeper() -> None:
    deepest = line(IDS[: MAX_TREE_DEPTH + 1])
    assert deepest.depth == MAX_TREE_DEPTH
    data = chain_of(deepest).encode()
    assert len(data) <= MAX_COORD_CHAIN_SIZE
    assert CoordChain.parse(data, now=NOW) == deepest
    with pytest.raises(TooLarge, match=f"depth {MAX_TREE_DEPTH}, the deepest allowed"):
        grant_coordinates(
            IDS[MAX_TREE_DEPTH], IDS[-1].node_id, deepest, now=NOW, lifetime_ms=LIFETIME
        )
    # A grant made by hand for depth 33 is refused before its signature is checked.
    beyond = forged(IDS[MAX_TREE_DEPTH], payload(A, IDS[-1], MAX_TREE_DEPTH + 1, b""))
    with pytest.raises(TooLarge, match=f"limit {MAX_TREE_DEPTH}"):
        deepest.below(beyond, now=NOW)


# -- refusals ------------------------------------------------------------------------------


def test_a_forged_signature_is_refused_naming_the_grant() -> None:
    grants = list(chain_of(line([A, B, C])).grants)
    grants[1] = grants[1][:-1] + bytes([grants[1][-1] ^ 1])
    with pytest.raises(BadSignature, match="grant 1: signature does not verify"):
        CoordChain(tuple(grants)).verify(now=NOW)


@given(data=st.data())
@settings(max_examples=200, deadline=None)
def test_any_flipped_byte_is_refused(data: st.DataObject) -> None:
    wire = chain_of(line([A, B, C])).encode()
    at = data.draw(st.integers(0, len(wire) - 1))
    mask = data.draw(st.integers(1, 255))
    flipped = wire[:at] + bytes([wire[at] ^ mask]) + wire[at + 1 :]
    with pytest.raises(CryptoError):
        CoordChain.parse(flipped, now=NOW)


@given(garbage=st.binary(max_size=600))
@settings(max_examples=200)
def test_arbitrary_bytes_raise_only_our_errors(garbage: bytes) -> None:
    with pytest.raises(CryptoError):
        CoordChain.parse(garbage, now=NOW)


def test_a_grant_signed_by_another_than_the_node_above_is_refused() -> None:
    top = line([A, B])
    # C signs B's place below A: the grant is well-formed and its signature verifies.
    statement = chain_of(top).grants[0]
    usurped = forged(C, payload(A, B, 1, statement))
    with pytest.raises(Malformed, match=r"grant 1 .* is signed by .*, but the node above it is"):
        CoordChain((statement, usurped)).verify(now=NOW)


def test_a_node_cannot_grant_itself_a_place() -> None:
    statement = chain_of(line([A])).grants[0]
    myself = forged(B, payload(A, B, 1, statement))
    with pytest.raises(Malformed, match="signed by"):
        CoordChain((statement, myself)).verify(now=NOW)


def test_a_skipped_depth_is_refused() -> None:
    top = line([A, B])
    skipped = forged(B, payload(A, C, 3, chain_of(top).grants[-1]))
    with pytest.raises(Malformed, match="is at depth 3, expected 2"):
        top.below(skipped, now=NOW)


def test_a_loop_is_refused() -> None:
    top = line([A, B, C])
    back_to_b = forged(C, payload(A, B, 3, chain_of(top).grants[-1]))
    with pytest.raises(Malformed, match="already on the path above"):
        CoordChain((*chain_of(top).grants, back_to_b)).verify(now=NOW)
    with pytest.raises(Malformed, match="loop"):
        grant_coordinates(C, B.node_id, top, now=NOW, lifetime_ms=LIFETIME)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"ts": NOW - 1}, "for the tree of"),
        ({"root": B.node_id.raw}, "for the tree of"),
    ],
)
def test_a_grant_for_another_tree_is_refused(change: dict[str, Any], words: str) -> None:
    top = line([A, B])
    fields = payload(A, C, 2, chain_of(top).grants[-1]) | change
    with pytest.raises(Malformed, match=words):
        top.below(forged(B, fields), now=NOW)


def test_a_grant_spliced_onto_another_chain_of_its_parent_is_refused() -> None:
    # B holds two places in the same tree (two grants from A); a grant B made under the
    # first does not extend the second.
    first = line([A, B])
    second = line([A, B], lifetimes=[LIFETIME, LIFETIME - 1])
    assert first.path == second.path
    grant = grant_coordinates(B, C.node_id, first, now=NOW, lifetime_ms=LIFETIME)
    assert first.below(grant, now=NOW).node == C.node_id
    with pytest.raises(Malformed, match="not bound to the grant above it"):
        second.below(grant, now=NOW)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        (payload(A, B, 0, None), "both must be its signer"),
        (payload(B, A, 0, None), "both must be its signer"),
        (payload(A, A, 1, b"x"), "at depth 1, expected 0"),
        (payload(A, A, 0, None) | {"up": bytes(32)}, "must have an up exactly when below 0"),
        (payload(A, A, 0, None, exp=NOW + MAX_GRANT_LIFETIME_MS + 1), "limit 86400000"),
        (payload(A, A, 0, None, exp=NOW), "expired 0 ms ago"),
    ],
)
def test_a_bad_root_statement_is_refused(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(CryptoError, match=words):
        CoordChain((forged(A, fields),)).verify(now=NOW)


def test_an_expired_grant_anywhere_is_refused_naming_it() -> None:
    made = line([A, B, C], lifetimes=[LIFETIME, 10, LIFETIME])
    with pytest.raises(Expired, match=r"grant 1 \(depth 1, .*\) expired 5 ms ago"):
        CoordChain.parse(chain_of(made).encode(), now=NOW + 15)


def test_a_grant_below_expired_coordinates_is_refused() -> None:
    top = line([A, B], lifetimes=[10, LIFETIME])
    grant = grant_coordinates(B, C.node_id, top, now=NOW, lifetime_ms=LIFETIME)
    with pytest.raises(Expired, match=r"the chain above grant 2 .* expired 5 ms ago"):
        top.below(grant, now=NOW + 15)


def test_a_grant_for_another_purpose_is_refused() -> None:
    statement = forged(A, payload(A, A, 0, None), Purpose.ADDRESS)
    with pytest.raises(WrongPurpose, match="grant 0: envelope is for 'ptth/addr'"):
        CoordChain((statement,)).verify(now=NOW)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"extra": 1}, "unknown keys"),
        ({"depth": True}, "depth is not an integer"),
        ({"ts": -1}, "outside 0"),
        ({"root": b"short"}, "root is not a 32-byte node id"),
        ({"child": "text"}, "child is not a 32-byte node id"),
        ({"up": b"short"}, "up is not a 32-byte digest"),
    ],
)
def test_a_grant_of_the_wrong_shape_is_refused(change: dict[str, Any], words: str) -> None:
    top = line([A, B])
    fields = payload(A, C, 2, chain_of(top).grants[-1]) | change
    with pytest.raises(Malformed, match=words):
        top.below(forged(B, fields), now=NOW)


@pytest.mark.parametrize(
    ("grant", "error", "words"),
    [
        ("text", Malformed, "grant 2 is a str, expected bytes"),
        (b"\x00" * (MAX_GRANT_SIZE + 1), TooLarge, f"grant 2 is {MAX_GRANT_SIZE + 1} bytes"),
        (None, TooLarge, f"grant 2 is at depth 40, limit {MAX_TREE_DEPTH}"),
    ],
)
def test_a_grant_handed_to_below_is_bounded_first(
    grant: Any, error: type[CryptoError], words: str
) -> None:
    top = line([A, B])
    if grant is None:
        grant = forged(B, payload(A, C, 40, chain_of(top).grants[-1]))
    with pytest.raises(error, match=words):
        top.below(grant, now=NOW)


def test_a_grant_lacking_a_key_is_refused() -> None:
    fields = payload(A, A, 0, None)
    del fields["exp"]
    with pytest.raises(Malformed, match="grant 0 lacks exp"):
        CoordChain((forged(A, fields),)).verify(now=NOW)


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"\x80", Malformed, "empty"),
        (encode({"a": 1}), Malformed, "is a dict, expected an array"),
        (encode([1]), Malformed, "grant 0 is a int, expected a byte string"),
        (encode([b"\x00" * (MAX_GRANT_SIZE + 1)]), TooLarge, f"limit {MAX_GRANT_SIZE}"),
        (encode([b""] * (MAX_TREE_DEPTH + 2)), TooLarge, f"has {MAX_TREE_DEPTH + 2} grants"),
        (b"\x40" * (MAX_COORD_CHAIN_SIZE + 1), TooLarge, f"limit {MAX_COORD_CHAIN_SIZE}"),
        ("text", Malformed, "is bytes, got str"),
    ],
)
def test_a_chain_of_the_wrong_shape_or_size_is_refused_before_any_signature(
    data: Any, error: type[CryptoError], words: str
) -> None:
    with pytest.raises(error, match=words):
        CoordChain.decode(data)


def test_verify_refuses_chains_it_was_handed_too_short_or_too_long() -> None:
    with pytest.raises(Malformed, match="empty"):
        CoordChain(()).verify(now=NOW)
    statement = chain_of(line([A])).grants[0]
    with pytest.raises(TooLarge, match="limit 33"):
        CoordChain((statement,) * (MAX_TREE_DEPTH + 2)).verify(now=NOW)


# -- making grants -------------------------------------------------------------------------


def test_granting_needs_our_own_verified_unexpired_coordinates() -> None:
    top = line([A, B])
    with pytest.raises(Malformed, match="only verified coordinates"):
        grant_coordinates(
            B, C.node_id, Coordinates(top.path, top.ts, top.exp), now=NOW, lifetime_ms=1
        )
    with pytest.raises(Malformed, match="cannot be extended by"):
        grant_coordinates(C, D.node_id, top, now=NOW, lifetime_ms=LIFETIME)
    with pytest.raises(Expired, match="expired 0 ms ago"):
        grant_coordinates(B, C.node_id, top, now=top.exp, lifetime_ms=LIFETIME)
    with pytest.raises(Malformed, match="without their chain"):
        Coordinates(top.path, top.ts, top.exp).below(b"", now=NOW)


@pytest.mark.parametrize("lifetime", [0, -1, MAX_GRANT_LIFETIME_MS + 1])
def test_a_lifetime_out_of_range_is_refused(lifetime: int) -> None:
    with pytest.raises(Malformed, match="lifetime"):
        root_statement(A, now=NOW, lifetime_ms=lifetime)
    with pytest.raises(Malformed, match="lifetime"):
        grant_coordinates(A, B.node_id, line([A]), now=NOW, lifetime_ms=lifetime)


@pytest.mark.parametrize(
    ("path", "error", "words"),
    [
        ((), Malformed, "non-empty"),
        ((A.node_id, B.node_id, A.node_id), Malformed, "twice"),
        (tuple(i.node_id for i in IDS[: MAX_TREE_DEPTH + 2]), TooLarge, "depth 33"),
        (("x",), Malformed, "node ids only"),
    ],
)
def test_coordinates_refuse_an_impossible_path(
    path: tuple[Any, ...], error: type[CryptoError], words: str
) -> None:
    with pytest.raises(error, match=words):
        Coordinates(path, NOW, NOW + 1)


# -- distance ------------------------------------------------------------------------------


def node(index: int) -> NodeId:
    return NodeId(index.to_bytes(32, "big"))


@st.composite
def trees(draw: st.DrawFn) -> list[int]:
    """A random rooted tree as parent pointers: node 0 is the root, node i's parent is
    one of the nodes before it."""
    size = draw(st.integers(1, 40))
    return [-1] + [draw(st.integers(0, i - 1)) for i in range(1, size)]


def coordinates_in(parents: list[int]) -> list[Coordinates]:
    paths: list[tuple[NodeId, ...]] = []
    for index, parent in enumerate(parents):
        paths.append((node(index),) if parent < 0 else paths[parent] + (node(index),))
    return [Coordinates(path, NOW, NOW + 1) for path in paths]


def walked(parents: list[int], a: int, b: int) -> int:
    """Hops from ``a`` to ``b`` walking parent pointers (the oracle)."""
    ancestors = {a: 0}
    hops, x = 0, a
    while parents[x] >= 0:
        x, hops = parents[x], hops + 1
        ancestors[x] = hops
    hops, y = 0, b
    while y not in ancestors:
        y, hops = parents[y], hops + 1
    return hops + ancestors[y]


@given(parents=trees(), data=st.data())
def test_distance_is_hops_over_tree_links(parents: list[int], data: st.DataObject) -> None:
    coordinates = coordinates_in(parents)
    indices = st.integers(0, len(parents) - 1)
    a, b, c = data.draw(indices), data.draw(indices), data.draw(indices)
    ab = coordinates[a].distance(coordinates[b])
    assert ab == walked(parents, a, b)
    assert ab == coordinates[b].distance(coordinates[a])
    assert (ab == 0) == (a == b)
    assert coordinates[a].distance(coordinates[c]) <= ab + coordinates[b].distance(coordinates[c])


@given(parents=trees(), data=st.data())
def test_hops_below_a_node_are_its_depth_subtracted_on_the_path_and_none_off_it(
    parents: list[int], data: st.DataObject
) -> None:
    coordinates = coordinates_in(parents)
    indices = st.integers(0, len(parents) - 1)
    a, b = data.draw(indices), data.draw(indices)
    place = coordinates[a]
    if node(b) in place.path:
        assert place.hops_below(node(b)) == place.depth - coordinates[b].depth
        assert place.path[place.depth - (place.hops_below(node(b)) or 0)] == node(b)
    else:
        assert place.hops_below(node(b)) is None
    assert place.hops_below(node(a)) == 0


@given(parents=trees(), other=trees(), data=st.data())
def test_nodes_in_different_trees_are_further_apart_than_any_in_one(
    parents: list[int], other: list[int], data: st.DataObject
) -> None:
    mine = coordinates_in(parents)
    shift = len(parents)
    theirs = [
        Coordinates(tuple(node(shift + n.raw[-1]) for n in c.path), NOW, NOW + 1)
        for c in coordinates_in(other)
    ]
    a = data.draw(st.sampled_from(mine))
    b = data.draw(st.sampled_from(theirs))
    assert a.distance(b) == b.distance(a) == DIFFERENT_TREES
    assert all(a.distance(x) < DIFFERENT_TREES for x in mine)
