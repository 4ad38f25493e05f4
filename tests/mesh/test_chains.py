"""Coordinate chains verified once per node (mesh._chains.VerifiedChains): shared by
the router, its DHT and its tree; a hit is refused whenever parsing at that ``now``
would refuse the chain; bounded, the oldest verified forgotten first.

Chains read are counted by wrapping :meth:`crypto.CoordChain.decode` (a chain not
remembered whole is decoded once, then checked from its deepest grant remembered);
signatures checked by :attr:`VerifiedChains.grants_checked`.
"""

from __future__ import annotations

import pytest

import crypto
from mesh import Offer, Result, Role, VerifiedChains, admit, offer_body, verifying_chains_once
from mesh._chains import DEFAULT_MAX_CHAINS
from mesh._wire import ACCEPTED
from tests.mesh.test_engine_greedy import chain_of, classify, line, msg
from tests.mesh.test_engine_tree import crd, identity, router

NOW = 1_700_000_000_000
HOUR = 3600 * 1000


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The chains :meth:`crypto.CoordChain.decode` is called with, in order: those read
    because they were not remembered whole."""
    seen: list[bytes] = []
    decode = crypto.CoordChain.decode.__func__  # type: ignore[attr-defined]

    def counting(cls: type[crypto.CoordChain], data: bytes) -> crypto.CoordChain:
        seen.append(data)
        chain: crypto.CoordChain = decode(cls, data)
        return chain

    monkeypatch.setattr(crypto.CoordChain, "decode", classmethod(counting))
    return seen


def statement(n: int, *, now: int = NOW, lifetime_ms: int = HOUR) -> bytes:
    """A root statement of identity ``n`` (a one-grant chain), in its wire form."""
    identity = crypto.Identity(bytes([n]) * 32)
    grant = crypto.root_statement(identity, now=now, lifetime_ms=lifetime_ms)
    return crypto.CoordChain((grant,)).encode()


def below(n: int, *, now: int = NOW, lifetime_ms: int = HOUR) -> bytes:
    """A two-grant chain: identity ``n + 1`` placed below root ``n``."""
    root = crypto.Identity(bytes([n]) * 32)
    child = crypto.Identity(bytes([n + 1]) * 32)
    above = crypto.CoordChain(
        (crypto.root_statement(root, now=now, lifetime_ms=lifetime_ms),)
    ).verify(now=now)
    grant = crypto.grant_coordinates(root, child.node_id, above, now=now, lifetime_ms=lifetime_ms)
    assert above.chain is not None
    return crypto.CoordChain((*above.chain.grants, grant)).encode()


# -- the cache itself ---------------------------------------------------------------------


def test_a_chain_is_parsed_once_and_its_coordinates_kept_without_their_grants(
    parses: list[bytes],
) -> None:
    chains = VerifiedChains()
    chain = below(1)
    first = chains.verify(chain, NOW)
    again = chains.verify(chain, NOW + 1000)
    assert parses == [chain]
    assert again is first
    assert first == crypto.CoordChain.parse(chain, now=NOW)  # path, ts and exp
    assert first.chain is None  # the grants are in the wire bytes, not held twice
    assert first.depth == 1
    assert len(chains) == 1
    # Paths in one tree share their node ids: the root's statement alone, here.
    root = chains.verify(statement(1), NOW)
    assert root.path[0] is first.path[0]


def test_a_remembered_chain_is_refused_once_expired_and_forgotten(parses: list[bytes]) -> None:
    chains = VerifiedChains()
    chain = below(1, lifetime_ms=HOUR)
    exp = chains.verify(chain, NOW).exp
    assert chains.verify(chain, exp - 1).exp == exp
    with pytest.raises(crypto.Expired):
        chains.verify(chain, exp)
    assert len(chains) == 0
    with pytest.raises(crypto.Expired):  # parsed again, refused as before
        chains.verify(chain, exp + 1)
    assert parses == [chain, chain]


def test_a_hit_at_an_earlier_now_is_parsed_again_not_taken(parses: list[bytes]) -> None:
    """A grant valid for more than MAX_GRANT_LIFETIME_MS after ``now`` is refused: one
    that verified at t may be refused at an earlier time, so that is not a hit."""
    chains = VerifiedChains()
    longest = crypto.MAX_GRANT_LIFETIME_MS
    chain = statement(1, now=NOW, lifetime_ms=longest)
    chains.verify(chain, NOW)
    with pytest.raises(crypto.Malformed, match="limit"):
        crypto.CoordChain.parse(chain, now=NOW - 1)
    with pytest.raises(crypto.Malformed, match="limit"):
        chains.verify(chain, NOW - 1)
    assert len(parses) == 3
    # Still remembered as verified at NOW: later times are hits.
    chains.verify(chain, NOW + 1)
    assert len(parses) == 3


def test_the_bound_holds_and_the_oldest_verified_go_first(parses: list[bytes]) -> None:
    chains = VerifiedChains(max_chains=3)
    made = [statement(n) for n in range(1, 6)]
    for chain in made:
        chains.verify(chain, NOW)
    assert len(chains) == 3
    assert len(parses) == 5
    for chain in made[2:]:  # the three newest: hits
        chains.verify(chain, NOW)
    assert len(parses) == 5
    chains.verify(made[0], NOW)  # forgotten: parsed again, and made[2] goes
    assert parses[-1] == made[0]
    assert len(parses) == 6
    assert len(chains) == 3
    with pytest.raises(ValueError, match="max_chains"):
        VerifiedChains(max_chains=0)
    assert VerifiedChains().max_chains == DEFAULT_MAX_CHAINS


def test_forged_or_altered_chains_are_refused_and_not_remembered(parses: list[bytes]) -> None:
    chains = VerifiedChains()
    chain = below(1)
    chains.verify(chain, NOW)
    altered = bytearray(chain)
    altered[-5] ^= 1
    for bad in (bytes(altered), chain + b"\x00", b"\xa0", chain[:-1]):
        with pytest.raises(crypto.CryptoError):
            chains.verify(bad, NOW)
        with pytest.raises(crypto.CryptoError):  # every time, not remembered
            chains.verify(bad, NOW + 1)
    assert len(chains) == 1
    # A chain spliced from another tree's grants: refused as parsing refuses it.
    other = crypto.CoordChain.decode(below(3))
    mine = crypto.CoordChain.decode(chain)
    spliced = crypto.CoordChain((mine.grants[0], other.grants[1])).encode()
    with pytest.raises(crypto.Malformed):
        chains.verify(spliced, NOW)
    assert len(chains) == 1


# -- grants shared by chains of one tree ----------------------------------------------------


def tree_chains(*, now: int = NOW, lifetime_ms: int = HOUR) -> dict[str, crypto.Coordinates]:
    """Root 1 with child 2, which has children 3 and 4: each node's verified
    coordinates (with their chains), by name; "2'" is 2 granted its place again (the
    same place, another grant), and 5 a child of 2 in that place."""
    ids = {n: crypto.Identity(bytes([n]) * 32) for n in (1, 2, 3, 4, 5)}
    by_id = {identity.node_id: identity for identity in ids.values()}
    root = crypto.CoordChain(
        (crypto.root_statement(ids[1], now=now, lifetime_ms=lifetime_ms),)
    ).verify(now=now)

    def place(parent: crypto.Coordinates, child: int, *, at: int = now) -> crypto.Coordinates:
        signer = by_id[parent.node]
        grant = crypto.grant_coordinates(
            signer, ids[child].node_id, parent, now=at, lifetime_ms=lifetime_ms
        )
        return parent.below(grant, now=now)

    two = place(root, 2)
    again = place(root, 2, at=now + 1)
    return {
        "1": root,
        "2": two,
        "3": place(two, 3),
        "4": place(two, 4),
        "2'": again,
        "5": place(again, 5),
    }


def wire(coordinates: crypto.Coordinates) -> bytes:
    assert coordinates.chain is not None
    return coordinates.chain.encode()


def test_a_chain_sharing_upper_grants_is_checked_below_them_only() -> None:
    made = tree_chains()
    chains = VerifiedChains()
    three = chains.verify(wire(made["3"]), NOW)
    assert chains.grants_checked == 3  # the root statement, 2's grant, 3's
    four = chains.verify(wire(made["4"]), NOW + 1)
    assert chains.grants_checked == 4  # 4's grant alone
    assert four == made["4"]  # path, ts and exp, as parsing gives them
    assert four.chain is None
    assert four.path[:2] == three.path[:2]
    # A chain that is a prefix of one verified is verified already, grant by grant.
    assert chains.verify(wire(made["2"]), NOW + 2) == made["2"]
    assert chains.grants_checked == 4
    # parse() (for coordinates that must carry their chain) takes the upper grants too
    # (a chain's last grant is not kept: 4's is checked again).
    parsed = chains.parse(wire(made["4"]), NOW + 3)
    assert chains.grants_checked == 5
    assert parsed == made["4"]
    assert parsed.chain == made["4"].chain


def test_in_a_simulation_a_chain_one_node_verified_is_verified_at_every_node() -> None:
    made = tree_chains()
    three = wire(made["3"])
    one, other, elsewhere = VerifiedChains(), VerifiedChains(), VerifiedChains()
    elsewhere.verify(three, NOW)  # outside the block: shares nothing
    with verifying_chains_once():
        assert one.verify(three, NOW) == made["3"]
        assert one.grants_checked == 3
        assert other.verify(three, NOW + 1) == made["3"]
        assert other.grants_checked == 0  # taken as verified: the same bytes
        assert len(other) == 0  # and not held by this node: the simulation holds it
        assert other.verify(three, NOW + 2) == made["3"]
        assert other.grants_checked == 0
        # At an earlier now (a clock stepped back) it is checked again, as at one node.
        later = VerifiedChains()
        assert later.verify(three, NOW - 1) == made["3"]
        assert later.grants_checked == 3
        # Its expiry is checked at each node.
        with pytest.raises(crypto.Expired):
            VerifiedChains().verify(three, made["3"].exp)
        # A chain that does not verify is refused at every node, never shared.
        forged = bytearray(three)
        forged[-5] ^= 1
        for chains in (one, VerifiedChains()):
            with pytest.raises(crypto.CryptoError):
                chains.verify(bytes(forged), NOW + 2)
    after = VerifiedChains()
    after.verify(three, NOW + 3)
    assert after.grants_checked == 3


def test_in_a_simulation_a_chain_parsed_at_one_node_parses_unchecked_at_others() -> None:
    """parse() (coordinates with their chain, for a tree offer) takes a chain another
    node verified as verified too, and still gives its chain, to be extended."""
    made = tree_chains()
    three = wire(made["3"])
    with verifying_chains_once():
        one, other = VerifiedChains(), VerifiedChains()
        assert one.parse(three, NOW) == made["3"]
        assert one.grants_checked == 3
        parsed = other.parse(three, NOW + 1)
        assert other.grants_checked == 0
        assert parsed == made["3"]
        assert parsed.chain == made["3"].chain
        # Verified by verify() at one node counts for parse() at another, and back.
        five = wire(made["5"])
        one.verify(five, NOW)
        assert other.parse(five, NOW + 1).chain == made["5"].chain
        assert VerifiedChains().verify(wire(made["4"]), NOW) == made["4"]
        fresh = VerifiedChains()
        assert fresh.parse(wire(made["4"]), NOW + 1).chain == made["4"].chain
        assert other.grants_checked == 0
        assert fresh.grants_checked == 0
        # Expired, or at an earlier now: checked again, and refused as parsing refuses.
        with pytest.raises(crypto.Expired):
            VerifiedChains().parse(three, made["3"].exp)
        earlier = VerifiedChains()
        assert earlier.parse(three, NOW - 1) == made["3"]
        assert earlier.grants_checked == 3
        forged = bytearray(three)
        forged[-5] ^= 1
        with pytest.raises(crypto.CryptoError):
            VerifiedChains().parse(bytes(forged), NOW + 2)
    outside = VerifiedChains()
    outside.parse(three, NOW + 3)
    assert outside.grants_checked == 3


def test_in_a_simulation_nodes_keep_one_bytes_object_per_chain() -> None:
    """Chains held by many nodes of one process take their memory once there; a real
    node keeps the bytes it was given."""
    three = wire(tree_chains()["3"])
    copy = bytes(bytearray(three))
    assert copy == three
    assert copy is not three
    assert VerifiedChains().kept(copy) is copy  # outside the block: its own
    with verifying_chains_once():
        one, other = VerifiedChains(), VerifiedChains()
        assert one.kept(three) is three
        assert other.kept(copy) is three  # the first kept, for every node
        assert other.kept(bytes(bytearray(three))) is three
    assert VerifiedChains().kept(copy) is copy


def test_routers_in_a_simulation_share_the_chains_they_hold() -> None:
    with verifying_chains_once():
        ids, routers, _, now = line("abcde")
        e = ids["e"].node_id
        coords = chain_of(routers["e"])
        envelope = msg(ids["a"], e, now)
        for before, name, after in ("abc", "bcd"):
            alike = bytes(bytearray(coords))  # as decoded from each node's own frame
            got = classify(routers[name], envelope, ids[before].node_id, now, alike)
            assert got == ids[after].node_id
        assert routers["b"]._coordinates[e][1] is routers["c"]._coordinates[e][1]


def test_a_remembered_grant_under_other_upper_grants_is_refused() -> None:
    """3's grant is bound (``up``) to 2's first grant: under 2's other grant (valid,
    and remembered too, as 5's upper grant) it is refused as parsing refuses it."""
    made = tree_chains()
    chains = VerifiedChains()
    chains.verify(wire(made["3"]), NOW)
    chains.verify(wire(made["5"]), NOW)
    checked = chains.grants_checked
    assert made["3"].chain is not None
    assert made["2'"].chain is not None
    spliced = crypto.CoordChain((*made["2'"].chain.grants, made["3"].chain.grants[-1])).encode()
    with pytest.raises(crypto.Malformed, match="not bound"):
        crypto.CoordChain.parse(spliced, now=NOW)
    for _ in range(2):
        with pytest.raises(crypto.Malformed, match="not bound"):
            chains.verify(spliced, NOW)
    assert chains.grants_checked == checked + 2  # 3's grant, once each time
    # A forged grant below remembered ones: its signature is checked, and it is refused.
    assert made["4"].chain is not None
    assert made["2"].chain is not None
    grant = bytearray(made["4"].chain.grants[-1])
    grant[-3] ^= 1
    forged = crypto.CoordChain((*made["2"].chain.grants, bytes(grant))).encode()
    with pytest.raises(crypto.CryptoError):
        chains.verify(forged, NOW)
    assert len(chains) == 2


def test_remembered_grants_are_refused_once_expired_and_at_an_earlier_now() -> None:
    made = tree_chains(lifetime_ms=HOUR)
    chains = VerifiedChains()
    chains.verify(wire(made["3"]), NOW)
    exp = made["4"].exp
    with pytest.raises(crypto.Expired):
        chains.verify(wire(made["4"]), exp)
    checked = chains.grants_checked
    # At an earlier time than they were verified at, upper grants are checked again.
    assert chains.verify(wire(made["4"]), NOW - 1) == made["4"]
    assert chains.grants_checked == checked + 3


def test_grants_remembered_are_bounded_and_expired_ones_forgotten() -> None:
    chains = VerifiedChains(max_chains=2)
    for n in range(1, 12, 2):
        chains.verify(below(n), NOW)
    assert len(chains) == 2
    assert len(chains._grants) == 4  # the root statements of the last four
    # What expired goes as new ones come, the bound not reached.
    roomy = VerifiedChains()
    roomy.verify(below(1, lifetime_ms=1000), NOW)
    assert len(roomy._grants) == 1
    roomy.verify(below(3), NOW + 1000)
    assert len(roomy._grants) == 1
    assert len(roomy) == 1


# -- shared by the router, its DHT and its tree -------------------------------------------


def test_a_chain_learned_by_the_router_is_not_parsed_again_by_its_dht(
    parses: list[bytes],
) -> None:
    ids, routers, _, now = line("abcde")
    b, e = routers["b"], ids["e"].node_id
    assert b.dht is not None
    assert b.dht.chains is b.chains
    coords = chain_of(routers["e"])
    parses.clear()
    # A frame for e comes with e's chain: the router checks it, and routes by it ...
    assert classify(b, msg(ids["a"], e, now), ids["a"].node_id, now, coords) == ids["c"].node_id
    assert parses == [coords]
    # ... and its DHT, shown the same chain, takes it as verified.
    b.dht.introduce(coords, now + 1)
    assert parses == [coords]
    # The router holds the wire chain once, and the coordinates without their grants.
    held, wire, _, _ = b._coordinates[e]
    assert wire == coords
    assert held.chain is None


def test_a_chain_verified_by_the_dht_is_not_parsed_again_by_the_router(
    parses: list[bytes],
) -> None:
    ids, routers, _, now = line("abcde")
    b, e = routers["b"], ids["e"].node_id
    assert b.dht is not None
    coords = chain_of(routers["e"])
    parses.clear()
    b.dht.introduce(coords, now)
    assert classify(b, msg(ids["a"], e, now), ids["a"].node_id, now, coords) == ids["c"].node_id
    assert parses == [coords]
    assert b.coordinates_of(e, now) == coords


def test_a_neighbours_offer_is_parsed_once_for_the_tree_and_the_dht(
    parses: list[bytes],
) -> None:
    ids, routers, _, now = line("ab")
    b = routers["b"]
    newcomer = identity(9)
    n = router(newcomer)
    b.add_neighbour(newcomer.node_id, Role.PEER, now)
    offers = [
        action
        for action in n.add_neighbour(ids["b"].node_id, Role.PEER, now)
        if isinstance(action, Offer)
    ]
    (offer,) = offers
    parses.clear()
    body = offer_body(offer.chain, offer.grant)
    admitted = admit(crd(newcomer, ids["b"].node_id, body, ts=now), now=now)
    assert not isinstance(admitted, Result)
    result, _ = b.on_offer(admitted, newcomer.node_id, now)
    assert result == ACCEPTED
    assert parses == [offer.chain]  # by the tree; the DHT's introduce was a hit
    assert b.dht is not None
    assert b.dht.contacts.get(newcomer.node_id) is not None


def test_a_cached_chain_is_refused_by_router_and_dht_once_expired(
    parses: list[bytes],
) -> None:
    ids, routers, _, now = line("abcde")
    b, e = routers["b"], ids["e"].node_id
    assert b.dht is not None
    assert routers["e"].tree is not None
    assert routers["e"].tree.coordinates is not None
    coords = chain_of(routers["e"])
    exp = routers["e"].tree.coordinates.exp
    assert classify(b, msg(ids["a"], e, now), ids["a"].node_id, now, coords) is not None
    assert b.coordinates_of(e, exp - 1) == coords
    assert b.coordinates_of(e, exp) is None
    with pytest.raises(crypto.Expired):
        b.dht.introduce(coords, exp)
    b.chains.verify(coords, now)  # remembered again (verified at an earlier time) ...
    b._coordinates.clear()  # (the same chain held again is taken as it is)
    assert b._learn(e, coords, exp, checker=None) is False  # ... and refused at exp
    assert b._learn(e, coords, exp + 5, checker=None) is False
    assert b.coordinates_of(e, exp) is None


def test_the_memory_a_simulation_shares_can_be_resized_as_it_goes() -> None:
    made = tree_chains()
    three, four = wire(made["3"]), wire(made["4"])

    def checks(chain: bytes) -> int:
        """The grants a node new to ``chain`` checks to verify it."""
        node = VerifiedChains()
        node.verify(chain, NOW)
        return node.grants_checked

    with verifying_chains_once(limit=1) as shared:
        assert checks(three) == 3
        assert checks(four) == 3  # past the limit of 1: three's is forgotten
        assert checks(three) == 3
        shared.limit = 2  # as a simulation does when it gains nodes
        assert checks(four) == 3
        assert (checks(three), checks(four)) == (0, 0)  # both held now
