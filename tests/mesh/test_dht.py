"""Kademlia (mesh._dht): k-buckets and their probe/eviction flow, the lookup state machine,
stored records.

Plain calls with ``now`` in ms. Properties check bucket placement and ``nearest`` against
a brute-force sort. Lookups run over simulated networks of 200 to 1000 nodes built here:
each node has its own :class:`mesh.Contacts`, and a loop answers every query from the
queried node's table, so a lookup's answer can be compared with the true k nearest.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

import crypto
from mesh import (
    Contacts,
    Lookup,
    MeshError,
    Probe,
    Records,
    StoreFull,
    bucket_index,
    xor_distance,
)
from mesh._dht import DEFAULT_ALPHA, DEFAULT_K, DEFAULT_PROBE_INTERVAL_MS, MAX_FAILURES

K = DEFAULT_K
INTERVAL = DEFAULT_PROBE_INTERVAL_MS
T0 = 1_700_000_000_000

ids = st.binary(min_size=32, max_size=32).map(crypto.NodeId)


def nid(n: int) -> crypto.NodeId:
    return crypto.NodeId(n.to_bytes(32, "big"))


SELF = nid(0)  # with our id 0, node n lies in bucket 256 - n.bit_length()


def in_bucket(index: int, low: int = 0, *, self_id: crypto.NodeId = SELF) -> crypto.NodeId:
    """An id sharing exactly ``index`` leading bits with ``self_id`` (``low`` varies it)."""
    offset = (1 << (255 - index)) | (low % (1 << (255 - index)))
    return crypto.NodeId((int.from_bytes(self_id.raw, "big") ^ offset).to_bytes(32, "big"))


def shared_prefix(a: crypto.NodeId, b: crypto.NodeId) -> int:
    bits_a = "".join(f"{byte:08b}" for byte in a.raw)
    bits_b = "".join(f"{byte:08b}" for byte in b.raw)
    return next(i for i in range(256) if bits_a[i] != bits_b[i])


def by_distance(nodes: Iterable[crypto.NodeId], target: crypto.NodeId) -> list[crypto.NodeId]:
    return sorted(nodes, key=lambda node: xor_distance(node, target))


def full_bucket(contacts: Contacts, index: int, now: int = T0) -> list[crypto.NodeId]:
    members = [in_bucket(index, low) for low in range(contacts.k)]
    for node in members:
        assert contacts.seen(node, now) is None
    return members


# --- contacts: buckets ---------------------------------------------------------------


@given(ids, ids)
def test_bucket_index_is_the_number_of_shared_leading_bits(
    a: crypto.NodeId, b: crypto.NodeId
) -> None:
    if a == b:
        with pytest.raises(ValueError, match="own id"):
            bucket_index(a, b)
    else:
        assert bucket_index(a, b) == shared_prefix(a, b)
        assert xor_distance(a, b) == xor_distance(b, a) > 0


@given(ids, st.lists(ids, max_size=300))
def test_contacts_sit_in_the_bucket_of_their_shared_prefix(
    self_id: crypto.NodeId, nodes: list[crypto.NodeId]
) -> None:
    contacts = Contacts(self_id, k=3)
    for now, node in enumerate(nodes):
        contacts.seen(node, now)
    held = 0
    for index in range(256):
        bucket = contacts.bucket(index)
        assert len(bucket) <= 3
        assert all(bucket_index(self_id, c.node) == index for c in bucket)
        held += len(bucket)
    assert held == len(contacts) <= 256 * 3
    assert self_id not in contacts
    # Nobody was probed (all heard of within the probe interval): in each bucket, the
    # first three offered stay.
    for index in range(256):
        offered = [n for n in nodes if n != self_id and bucket_index(self_id, n) == index]
        first = list(dict.fromkeys(offered))[:3]
        assert {c.node for c in contacts.bucket(index)} == set(first)


def test_own_id_is_never_a_contact() -> None:
    contacts = Contacts(SELF)
    assert contacts.seen(SELF, T0) is None
    assert len(contacts) == 0
    assert SELF not in contacts
    contacts.remove(SELF)
    contacts.probe_answered(SELF, T0)
    assert contacts.nearest(SELF, K) == []


def test_seen_moves_a_contact_to_the_tail_and_keeps_its_info() -> None:
    contacts = Contacts(SELF)
    a, b, c = in_bucket(3, 1), in_bucket(3, 2), in_bucket(3, 3)
    contacts.seen(a, T0, b"coords-a")
    contacts.seen(b, T0 + 1)
    contacts.seen(c, T0 + 2)
    contacts.seen(a, T0 + 3)  # no info: what was kept stays
    assert [x.node for x in contacts.bucket(3)] == [b, c, a]
    held = contacts.get(a)
    assert held is not None
    assert (held.info, held.added, held.seen) == (b"coords-a", T0, T0 + 3)
    contacts.seen(a, T0 + 4, b"coords-a2")
    held = contacts.get(a)
    assert held is not None
    assert held.info == b"coords-a2"
    assert contacts.get(in_bucket(3, 4)) is None
    assert [x.node for x in contacts] == [b, c, a]


def test_full_bucket_probes_its_oldest_and_keeps_it_if_it_answers() -> None:
    contacts = Contacts(SELF)
    members = full_bucket(contacts, 5)
    newcomer = in_bucket(5, 100)
    later = T0 + INTERVAL
    assert contacts.seen(newcomer, later) == Probe(members[0])
    assert newcomer not in contacts
    contacts.probe_answered(members[0], later + 1)
    assert [c.node for c in contacts.bucket(5)] == [*members[1:], members[0]]
    # The pending newcomer was dropped: a failure now leaves room, and nobody takes it.
    contacts.probe_failed(members[1])
    assert newcomer not in contacts
    assert len(contacts) == K - 1


def test_failed_probe_evicts_the_oldest_for_the_pending_newcomer() -> None:
    contacts = Contacts(SELF)
    members = full_bucket(contacts, 5)
    first, second = in_bucket(5, 100), in_bucket(5, 101)
    later = T0 + INTERVAL
    assert contacts.seen(first, later, b"first") == Probe(members[0])
    # One probe at a time per bucket; the latest newcomer is the one pending.
    assert contacts.seen(second, later + 1, b"second") is None
    # Another contact answering (a probe of its own) leaves the newcomer pending.
    contacts.probe_answered(members[3], later + 2)
    contacts.probe_failed(members[0])
    rest = [m for m in members[1:] if m != members[3]]
    assert [c.node for c in contacts.bucket(5)] == [*rest, members[3], second]
    taken = contacts.get(second)
    assert taken is not None
    assert taken.info == b"second"
    assert first not in contacts
    assert len(contacts) == K


def test_no_probe_while_the_oldest_is_fresh_and_one_per_interval() -> None:
    contacts = Contacts(SELF)
    members = full_bucket(contacts, 7)
    assert contacts.seen(in_bucket(7, 100), T0 + INTERVAL - 1) is None  # heard of lately
    assert contacts.seen(in_bucket(7, 101), T0 + INTERVAL) == Probe(members[0])
    assert contacts.seen(in_bucket(7, 102), T0 + 2 * INTERVAL - 1) is None  # probe in flight
    # The caller never reported on the probe: it is asked for again.
    assert contacts.seen(in_bucket(7, 103), T0 + 2 * INTERVAL) == Probe(members[0])
    assert [c.node for c in contacts.bucket(7)] == members


def test_hearing_from_the_probed_contact_answers_the_probe() -> None:
    contacts = Contacts(SELF)
    members = full_bucket(contacts, 7)
    assert contacts.seen(in_bucket(7, 100), T0 + INTERVAL) == Probe(members[0])
    assert contacts.seen(members[0], T0 + INTERVAL + 5) is None
    contacts.probe_failed(members[1])  # the newcomer was dropped with the answer
    assert in_bucket(7, 100) not in contacts
    assert [c.node for c in contacts.bucket(7)] == [*members[2:], members[0]]


def test_remove_makes_room_for_the_pending_newcomer() -> None:
    contacts = Contacts(SELF)
    members = full_bucket(contacts, 2)
    newcomer = in_bucket(2, 100)
    assert contacts.seen(newcomer, T0 + INTERVAL) == Probe(members[0])
    contacts.remove(members[3])
    assert contacts.bucket(2)[-1].node == newcomer
    # The probe of members[0] is still out; it fails and leaves room, nobody pending.
    contacts.probe_failed(members[0])
    assert len(contacts.bucket(2)) == K - 1
    # Removing a pending newcomer forgets it.
    contacts.seen(in_bucket(2, 200), T0 + INTERVAL)
    other = in_bucket(2, 201)
    assert contacts.seen(other, T0 + 2 * INTERVAL) == Probe(members[1])
    contacts.remove(other)
    contacts.probe_failed(members[1])
    assert other not in contacts
    contacts.remove(in_bucket(9, 1))  # unknown: nothing happens
    contacts.probe_answered(in_bucket(9, 1), T0)
    assert len(contacts) == K - 1


def test_a_contact_goes_after_missing_a_few_queries_in_a_row() -> None:
    # One lost query or answer does not cost a live contact; a dead one goes after
    # MAX_FAILURES, and anything heard from it in between starts the count again.
    contacts = Contacts(SELF)
    members = full_bucket(contacts, 4)
    target = members[2]
    for _ in range(MAX_FAILURES - 1):
        assert contacts.failed(target) is False
    held = contacts.get(target)
    assert held is not None
    assert held.failures == MAX_FAILURES - 1
    assert [c.node for c in contacts.bucket(4)] == members  # where it was
    contacts.seen(target, T0 + 1)
    held = contacts.get(target)
    assert held is not None
    assert held.failures == 0
    for _ in range(MAX_FAILURES - 1):
        assert contacts.failed(target) is False
    contacts.probe_answered(target, T0 + 2)  # an answer clears the count too
    for _ in range(MAX_FAILURES - 1):
        assert contacts.failed(target) is False
    assert contacts.failed(target) is True
    assert target not in contacts
    assert len(contacts) == K - 1
    assert contacts.failed(target) is False  # unknown now: ignored
    assert contacts.failed(in_bucket(9, 1)) is False


def test_a_contact_that_misses_a_query_gives_way_to_a_waiting_newcomer() -> None:
    contacts = Contacts(SELF)
    members = full_bucket(contacts, 6)
    newcomer = in_bucket(6, 100)
    assert contacts.seen(newcomer, T0 + INTERVAL) == Probe(members[0])
    assert contacts.failed(members[5]) is True  # someone waits: at once
    assert [c.node for c in contacts.bucket(6)] == [*members[:5], *members[6:], newcomer]


def test_sybil_flood_does_not_evict_live_contacts() -> None:
    contacts = Contacts(SELF)
    live = {index: full_bucket(contacts, index) for index in (0, 1, 2, 40)}
    before = {index: [c.node for c in contacts.bucket(index)] for index in live}
    rng = random.Random(7)
    probes = 0
    now = T0
    # Ten thousand fresh identities a second for ten minutes of virtual time, aimed at
    # the buckets that hold live contacts; the live ones answer every probe.
    for step in range(6000):
        now = T0 + step * 100
        index = rng.choice(sorted(live))
        probe = contacts.seen(in_bucket(index, rng.getrandbits(64) + K), now)
        if probe is not None:
            probes += 1
            assert probe.node in live[index]
            contacts.probe_answered(probe.node, now)
    assert {i: sorted(c.node.raw for c in contacts.bucket(i)) for i in live} == {
        i: sorted(n.raw for n in nodes) for i, nodes in before.items()
    }
    assert len(contacts) == 4 * K
    # Each contact is probed at most once per interval.
    assert 0 < probes <= len(live) * K * ((now - T0) // INTERVAL + 1)


# --- contacts: nearest and refresh ------------------------------------------------------


@given(ids, st.lists(ids, max_size=200), ids, st.integers(-1, 40), st.data())
def test_nearest_is_a_brute_force_sort_of_the_contacts(
    self_id: crypto.NodeId,
    nodes: list[crypto.NodeId],
    target: crypto.NodeId,
    n: int,
    data: st.DataObject,
) -> None:
    contacts = Contacts(self_id, k=4)
    for now, node in enumerate(nodes):
        probe = contacts.seen(node, now * INTERVAL)
        if probe is not None and now % 2:
            contacts.probe_failed(probe.node)
    held = [c.node for c in contacts]
    exclude = data.draw(st.lists(st.sampled_from(held), max_size=5)) if held else []
    expected = by_distance([h for h in held if h not in exclude], target)[: max(n, 0)]
    assert contacts.nearest(target, n, exclude=exclude) == expected


def test_stale_buckets_name_ranges_untouched_for_refresh_ms_up_to_the_deepest() -> None:
    contacts = Contacts(SELF, rng=random.Random(3))
    assert contacts.stale_buckets(T0, 3_600_000) == []  # join first: look up our own id
    contacts.seen(in_bucket(0), T0)
    contacts.seen(in_bucket(4), T0 + 5)
    # Buckets never touched count as touched when the first contact came (the join):
    # none is stale for an hour.
    assert contacts.stale_buckets(T0 + 3_599_999, 3_600_000) == []
    stale = contacts.stale_buckets(T0 + 3_600_000, 3_600_000)
    assert [index for index, _ in stale] == [0, 1, 2, 3]
    for index, target in stale:
        assert bucket_index(SELF, target) == index
    contacts.touch(stale[1][1], T0 + 3_600_000)
    contacts.touch(SELF, T0 + 3_600_000)  # no bucket of its own: nothing happens
    assert [index for index, _ in contacts.stale_buckets(T0 + 3_600_004, 3_600_000)] == [
        0,
        2,
        3,
    ]
    later = contacts.stale_buckets(T0 + 3_600_005, 3_600_000)
    assert [index for index, _ in later] == [0, 2, 3, 4]
    # Random ids: two calls name different ones, a seeded rng the same ones again.
    again = Contacts(SELF, rng=random.Random(3))
    again.seen(in_bucket(0), T0)
    again.seen(in_bucket(4), T0 + 5)
    assert again.stale_buckets(T0 + 3_600_000, 3_600_000) == stale
    assert again.stale_buckets(T0 + 3_600_000, 3_600_000) != stale


def test_constructor_refuses_an_empty_bucket_size() -> None:
    with pytest.raises(ValueError, match="k must be at least 1"):
        Contacts(SELF, k=0)
    with pytest.raises(ValueError, match="alpha"):
        Lookup(SELF, [], alpha=0)


# --- lookup: the state machine ----------------------------------------------------------

TARGET = nid(0)


def near(n: int) -> crypto.NodeId:
    """A node at XOR distance ``n`` from TARGET."""
    return nid(n)


def test_lookup_queries_the_nearest_alpha_first_and_ends_when_k_nearest_answered() -> None:
    seeds = [near(d) for d in (50, 10, 40, 20, 30)]
    lookup = Lookup(TARGET, seeds, k=3, alpha=2)
    assert lookup.next_queries() == [near(10), near(20)]
    assert lookup.next_queries() == []  # two in flight already
    lookup.on_reply(near(10), [near(5), near(10), near(60)])
    assert lookup.next_queries() == [near(5)]
    lookup.on_reply(near(5), [])
    lookup.on_reply(near(20), [near(1)])
    assert not lookup.done
    assert lookup.next_queries() == [near(1)]
    lookup.on_reply(near(1), [near(5)])
    assert lookup.done
    assert lookup.result() == ([near(1), near(5), near(10)], None)
    assert lookup.queries == 4
    assert lookup.next_queries() == []


def test_lookup_ignores_replies_it_did_not_ask_for() -> None:
    lookup = Lookup(TARGET, [near(10), near(20)], k=2, alpha=1)
    assert lookup.next_queries() == [near(10)]
    lookup.on_reply(near(20), [near(1)])  # known but not asked
    lookup.on_reply(near(99), [near(1)])  # a stranger
    lookup.on_failure(near(20))
    assert lookup.result() == ([], None)
    lookup.on_reply(near(10), [])
    lookup.on_reply(near(10), [near(2)])  # a second reply from the same node
    assert lookup.next_queries() == [near(20)]
    lookup.on_reply(near(20), [])
    assert lookup.done
    assert lookup.result() == ([near(10), near(20)], None)


def test_lookup_takes_a_late_reply_from_a_node_whose_query_failed_only() -> None:
    lookup = Lookup(TARGET, [near(10), near(20), near(30)], k=2, alpha=2)
    assert lookup.next_queries() == [near(10), near(20)]
    lookup.on_late_reply(near(10), [near(1)])  # still in flight: not late
    lookup.on_late_reply(near(30), [near(1)])  # never asked
    lookup.on_late_reply(near(99), [near(1)])  # a stranger
    lookup.on_failure(near(10))
    assert lookup.next_queries() == [near(30)]
    lookup.on_late_reply(near(10), [near(1)])  # failed, answered since: taken
    assert lookup.next_queries() == []  # (20 and 30 in flight: near(1) waits its turn)
    lookup.on_late_reply(near(10), [near(2)])  # once
    lookup.on_reply(near(20), [])
    assert lookup.next_queries() == [near(1)]
    lookup.on_reply(near(1), [])
    assert lookup.done
    assert lookup.result() == ([near(1), near(10)], None)
    assert lookup.queries == 4


@pytest.mark.parametrize(
    ("seeds", "silent", "missed"),
    [
        ((1, 20, 30), (), False),
        ((1, 20, 30), (1,), True),  # the result is 20 and 30: 1 is nearer
        ((20, 30), (30,), False),  # 20 offers 1: the result is 1 and 20, 30 farther
    ],
)
def test_a_lookup_tells_whether_a_node_nearer_than_its_result_failed(
    seeds: tuple[int, ...], silent: tuple[int, ...], missed: bool
) -> None:
    offers = {near(20): [near(1)]}
    lookup = Lookup(TARGET, [near(d) for d in seeds], k=2, alpha=3)
    while not lookup.done:
        for node in lookup.next_queries():
            if node in [near(d) for d in silent]:
                lookup.on_failure(node)
            else:
                lookup.on_reply(node, offers.get(node, []))
    assert len(lookup.result()[0]) == 2
    assert lookup.missed() is missed


def test_lookup_takes_only_the_k_nearest_contacts_of_a_reply() -> None:
    lookup = Lookup(TARGET, [near(1000)], k=3, alpha=3)
    assert lookup.next_queries() == [near(1000)]
    lookup.on_reply(near(1000), [near(d) for d in range(100, 110)] + [near(100)] * 5)
    assert lookup.next_queries() == [near(100), near(101), near(102)]
    for d in (100, 101, 102):
        lookup.on_reply(near(d), [near(d + 50)])
    assert lookup.done
    assert lookup.result()[0] == [near(100), near(101), near(102)]
    assert lookup.queries == 4  # 103..109 were never taken in


def test_lookup_never_queries_itself_and_queries_the_target_like_any_node() -> None:
    me = near(3)
    lookup = Lookup(TARGET, [me, near(8)], k=2, alpha=3, self_id=me)
    assert lookup.next_queries() == [near(8)]
    lookup.on_reply(near(8), [me, TARGET, near(8)])
    assert lookup.next_queries() == [TARGET]
    lookup.on_reply(TARGET, [me])
    assert lookup.done
    assert lookup.result() == ([TARGET, near(8)], None)


def test_failed_nodes_are_left_out_and_the_next_nearest_asked() -> None:
    lookup = Lookup(TARGET, [near(d) for d in (1, 2, 3, 4)], k=2, alpha=2)
    assert lookup.next_queries() == [near(1), near(2)]
    lookup.on_failure(near(1))
    lookup.on_failure(near(1))  # reported twice: once counts
    assert lookup.next_queries() == [near(3)]
    lookup.on_reply(near(2), [near(1)])  # a failed node named again is not asked again
    lookup.on_reply(near(3), [])
    assert lookup.done
    assert lookup.result() == ([near(2), near(3)], None)


def test_find_value_ends_at_the_first_value_and_ignores_late_replies() -> None:
    lookup = Lookup(TARGET, [near(1), near(2), near(3)], k=3, alpha=3, find_value=True)
    assert lookup.next_queries() == [near(1), near(2), near(3)]
    lookup.on_reply(near(1), [near(9)])
    lookup.on_reply(near(2), [], b"coords")
    assert lookup.done
    assert lookup.value_from == near(2)
    lookup.on_reply(near(3), [], b"other")
    assert lookup.result() == ([near(1), near(2)], b"coords")
    # Without find_value, a value in a reply is not looked at.
    plain = Lookup(TARGET, [near(1)], k=1)
    assert plain.next_queries() == [near(1)]
    plain.on_reply(near(1), [], b"coords")
    assert plain.result() == ([near(1)], None)
    assert plain.value_from is None


def test_a_lookup_counts_nodes_asked_before_as_answered() -> None:
    # A publication's recheck: its holders answered last time; only others are asked.
    lookup = Lookup(TARGET, [near(5), near(40)], k=3, alpha=3, answered=[near(10), near(20)])
    assert lookup.next_queries() == [near(5)]  # near(40) is not among the 3 nearest
    lookup.on_reply(near(5), [near(1)])
    assert lookup.next_queries() == [near(1)]
    lookup.on_reply(near(1), [])
    assert lookup.done
    assert lookup.result() == ([near(1), near(5), near(10)], None)
    assert lookup.queries == 2
    # Nothing nearer than the nodes asked before: done at once, nobody asked.
    again = Lookup(TARGET, [near(40)], k=2, answered=[near(10), near(20)])
    assert again.done
    assert again.result() == ([near(10), near(20)], None)
    assert again.queries == 0


def test_a_lookup_without_seeds_is_done_at_once() -> None:
    lookup = Lookup(TARGET, [])
    assert lookup.done
    assert lookup.next_queries() == []
    assert lookup.result() == ([], None)


def test_nodes_handing_out_ever_nearer_ids_cannot_keep_a_lookup_going() -> None:
    far = 1 << 200
    lookup = Lookup(TARGET, [near(far)], k=2, alpha=1, max_queries=30)
    while not lookup.done:
        (asked,) = lookup.next_queries()
        d = xor_distance(asked, TARGET)
        lookup.on_reply(asked, [near(d // 2), near(d // 2 + 1)])  # always nearer ones
    assert lookup.queries == 30
    found, _ = lookup.result()
    assert len(found) == 2


@given(
    st.lists(st.integers(1, 2**16), max_size=8),
    st.lists(
        st.tuples(
            st.sampled_from(["reply", "fail", "next"]),
            st.integers(0, 2**16),
            st.lists(st.integers(0, 2**16), max_size=12),
        ),
        max_size=60,
    ),
)
def test_lookup_holds_its_invariants_whatever_it_is_told(
    seeds: list[int], events: list[tuple[str, int, list[int]]]
) -> None:
    me = near(7)
    lookup = Lookup(TARGET, [near(s) for s in seeds], k=3, alpha=2, self_id=me, max_queries=20)
    asked: set[crypto.NodeId] = set()
    answered: set[crypto.NodeId] = set()
    in_flight: set[crypto.NodeId] = set()
    for kind, who, contacts in events:
        if kind == "next":
            batch = lookup.next_queries()
            assert len(batch) == len(set(batch))
            assert not set(batch) & asked
            asked |= set(batch)
            in_flight |= set(batch)
            assert len(in_flight) <= 2
            continue
        node = near(who) if who % 2 or not in_flight else sorted(in_flight)[who % len(in_flight)]
        if kind == "reply":
            if node in in_flight and not lookup.done:
                answered.add(node)
            lookup.on_reply(node, [near(c) for c in contacts])
        else:
            lookup.on_failure(node)
        in_flight.discard(node)
    assert me not in asked
    assert lookup.queries == len(asked) <= 20
    found, value = lookup.result()
    assert value is None
    assert found == by_distance(found, TARGET)
    assert set(found) <= answered
    assert len(found) <= 3


# --- lookup: over a simulated network ----------------------------------------------------


class Network:
    """Nodes with their own contact tables; queries answered from the queried node's.

    As in Kademlia, the node asked learns of the asker and the asker of each node that
    answers. Every node is alive unless listed in ``dead`` (its queries fail, and the
    asker drops it).
    """

    def __init__(self, size: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.ids = [crypto.NodeId(self.rng.randbytes(32)) for _ in range(size)]
        self.tables = {
            node: Contacts(node, rng=random.Random(self.rng.getrandbits(64))) for node in self.ids
        }
        self.dead: set[crypto.NodeId] = set()
        self.now = T0

    def see(self, who: crypto.NodeId, node: crypto.NodeId) -> None:
        self.now += 1
        table = self.tables[who]
        probe = table.seen(node, self.now)
        if probe is not None:
            if probe.node in self.dead:
                table.probe_failed(probe.node)
            else:
                table.probe_answered(probe.node, self.now)

    def lookup(
        self, source: crypto.NodeId, target: crypto.NodeId
    ) -> tuple[list[crypto.NodeId], int]:
        """The nodes found nearest ``target`` from ``source``, and the rounds it took."""
        table = self.tables[source]
        lookup = Lookup(target, table.nearest(target, K), self_id=source)
        rounds = 0
        while not lookup.done:
            batch = lookup.next_queries()
            assert batch, "a lookup that is not done has queries to send (answers are at once)"
            rounds += 1
            for node in batch:
                if node in self.dead:
                    lookup.on_failure(node)
                    table.remove(node)
                    continue
                self.see(node, source)
                reply = self.tables[node].nearest(target, K, exclude=[source])
                lookup.on_reply(node, reply)
                self.see(source, node)
        table.touch(target, self.now)
        return lookup.result()[0], rounds

    def truth(self, source: crypto.NodeId, target: crypto.NodeId) -> list[crypto.NodeId]:
        live = [n for n in self.ids if n != source and n not in self.dead]
        return by_distance(live, target)[:K]

    def join_all(self, first_contacts: int) -> None:
        """Each node hears of a few random others, then looks up its own id (Kademlia's
        join), which fills the buckets near it."""
        for node in self.ids:
            for other in self.rng.sample(self.ids, first_contacts):
                self.see(node, other)
        for node in self.ids:
            self.lookup(node, node)

    def trials(self, count: int) -> tuple[int, list[int]]:
        """Lookups from random live nodes of random ids: how many found exactly the true
        k nearest, and the rounds each took. Without dead nodes every lookup finds k
        nodes; with them, a few answers fall short (tables still list dead nodes, which
        take places in replies)."""
        live = [n for n in self.ids if n not in self.dead]
        exact = 0
        rounds: list[int] = []
        for _ in range(count):
            source = self.rng.choice(live)
            target = crypto.NodeId(self.rng.randbytes(32))
            found, taken = self.lookup(source, target)
            assert found == by_distance(found, target)
            assert len(found) == K or self.dead
            assert not set(found) & self.dead
            exact += found == self.truth(source, target)
            rounds.append(taken)
        return exact, rounds


def test_lookups_in_a_fully_populated_network_find_the_true_k_nearest() -> None:
    # Every node has heard of every other (in random order): each bucket holds as many
    # of its range as it can, and every lookup must be exact.
    network = Network(200, seed=1)
    for node in network.ids:
        others = [n for n in network.ids if n != node]
        network.rng.shuffle(others)
        for other in others:
            network.see(node, other)
    exact, rounds = network.trials(100)
    assert exact == 100
    assert max(rounds) <= math.log2(200)


@pytest.mark.parametrize("size", [500, 1000])
def test_lookups_in_a_joined_network_find_the_k_nearest_in_log_n_rounds(size: int) -> None:
    # Tables built by joins, not complete: the bound is statistical. At least 95% of
    # lookups find exactly the k nearest (seeded, so the run is the same every time).
    network = Network(size, seed=size)
    network.join_all(first_contacts=3)
    exact, rounds = network.trials(200)
    assert exact >= 0.95 * 200
    assert max(rounds) <= math.log2(size)
    assert sum(rounds) / len(rounds) <= math.log2(size) / 2 + K / DEFAULT_ALPHA


def test_lookups_route_around_dead_nodes() -> None:
    # A tenth of the nodes die after the tables were built: their queries fail, and
    # lookups still end with k live nodes, in most runs the true k nearest live ones.
    network = Network(1000, seed=4)
    network.join_all(first_contacts=10)
    network.dead = set(network.rng.sample(network.ids, 100))
    exact, rounds = network.trials(200)
    assert exact >= 0.8 * 200
    assert max(rounds) <= 2 * math.log2(1000)


def test_a_value_stored_at_the_k_nearest_is_found_from_anywhere() -> None:
    network = Network(300, seed=5)
    network.join_all(first_contacts=5)
    stores = {node: Records() for node in network.ids}
    owner = network.ids[0]
    holders, _ = network.lookup(owner, owner)
    for holder in holders:
        stores[holder].put(owner, b"signed coordinates", network.now, 3_600_000, origin=owner)
    for source in network.rng.sample(network.ids[1:], 20):
        lookup = Lookup(
            owner, network.tables[source].nearest(owner, K), self_id=source, find_value=True
        )
        while not lookup.done:
            for node in lookup.next_queries():
                record = stores[node].get(owner, network.now)
                value = None if record is None else record.value
                lookup.on_reply(node, network.tables[node].nearest(owner, K), value)
        _, value = lookup.result()
        assert value == b"signed coordinates"
        assert lookup.value_from in holders


# --- records --------------------------------------------------------------------------

KEY = nid(1)
OTHER_KEY = nid(2)
ORIGIN = nid(3)
HOUR = 3_600_000


def test_records_keep_the_newest_version_until_it_expires() -> None:
    records = Records()
    first = records.put(KEY, b"v1", T0, HOUR, version=1, origin=ORIGIN)
    assert (first.stored_at, first.expires, first.origin) == (T0, T0 + HOUR, ORIGIN)
    assert records.get(KEY, T0 + 1) == first
    newer = records.put(KEY, b"v2", T0 + 10, HOUR, version=2)
    assert (newer.value, newer.version, newer.expires) == (b"v2", 2, T0 + 10 + HOUR)
    assert newer.origin == ORIGIN  # still counted against the origin that added it
    with pytest.raises(crypto.Stale, match="version 1, older than the 2 held") as stale:
        records.put(KEY, b"v1", T0 + 20, HOUR, version=1)
    assert stale.value.status_hint == 409
    refreshed = records.put(KEY, b"v2", T0 + 30, HOUR, version=2)
    assert refreshed.expires == T0 + 30 + HOUR
    assert records.get(KEY, T0 + 30 + HOUR) is None
    assert len(records) == 0
    # Once lapsed, any version is taken.
    assert records.put(KEY, b"v0", T0 + 40 + HOUR, HOUR).version == 0


def test_records_refuse_bad_ttls_and_large_values_with_reasons() -> None:
    records = Records(max_value_size=10, max_ttl_ms=HOUR)
    with pytest.raises(MeshError, match="ttl must be positive, got 0 ms") as bad:
        records.put(KEY, b"v", T0, 0)
    assert bad.value.status_hint == 400
    with pytest.raises(crypto.TooLarge, match="11 bytes, limit 10") as large:
        records.put(KEY, b"x" * 11, T0, HOUR)
    assert large.value.status_hint == 413
    assert records.put(KEY, b"x" * 10, T0, 10 * HOUR).expires == T0 + HOUR
    assert len(records) == 1


def test_records_are_bounded_in_all_and_per_origin() -> None:
    records = Records(max_records=3, max_per_origin=2)
    records.put(nid(10), b"a", T0, HOUR, origin=ORIGIN)
    records.put(nid(11), b"b", T0, HOUR, origin=ORIGIN)
    with pytest.raises(StoreFull, match=f"2 records added by {ORIGIN}, limit 2 per origin"):
        records.put(nid(12), b"c", T0, HOUR, origin=ORIGIN)
    records.put(nid(11), b"b2", T0 + 1, HOUR, origin=ORIGIN)  # a refresh takes no room
    records.put(nid(12), b"c", T0, 2 * HOUR, origin=nid(4))
    with pytest.raises(StoreFull, match="holds 3 records for others, limit 3") as full:
        records.put(nid(13), b"d", T0 + 1, HOUR)
    assert full.value.status_hint == 429
    assert len(records) == 3
    # Lapsed records make room when the store is full, and give back their origin's share.
    records.put(nid(13), b"d", T0 + HOUR + 1, HOUR, origin=ORIGIN)
    assert sorted(r.key.raw for r in records) == sorted(k.raw for k in (nid(12), nid(13)))
    records.remove(nid(13))
    records.remove(nid(13))
    records.put(nid(14), b"e", T0 + HOUR + 2, HOUR, origin=ORIGIN)
    records.put(nid(15), b"f", T0 + HOUR + 2, HOUR, origin=ORIGIN)
    assert len(records) == 3


def test_expire_drops_what_lapsed() -> None:
    records = Records()
    records.put(KEY, b"a", T0, HOUR)
    records.put(OTHER_KEY, b"b", T0, 2 * HOUR)
    assert records.expire(T0 + HOUR - 1) == []
    assert records.expire(T0 + HOUR) == [KEY]
    assert records.expire(T0 + HOUR) == []
    assert records.expire(T0 + 2 * HOUR) == [OTHER_KEY]
    assert len(records) == 0


def test_republish_due_skips_records_stored_again_meanwhile() -> None:
    records = Records()
    records.put(KEY, b"a", T0, 3 * HOUR)
    records.put(OTHER_KEY, b"b", T0, 3 * HOUR)
    assert records.republish_due(T0 + HOUR - 1, HOUR) == []
    records.put(OTHER_KEY, b"b", T0 + HOUR - 1, 3 * HOUR)  # someone stored it again
    due = records.republish_due(T0 + HOUR, HOUR)
    assert [r.key for r in due] == [KEY]
    records.republished(KEY, T0 + HOUR)
    records.republished(nid(99), T0 + HOUR)  # unknown: nothing happens
    assert [r.key for r in records.republish_due(T0 + 2 * HOUR - 1, HOUR)] == [OTHER_KEY]
    assert records.republish_due(T0 + 4 * HOUR, HOUR) == []  # lapsed: not republished


@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),  # key
            st.integers(0, 3),  # origin (3: none)
            st.integers(0, 3),  # version
            st.integers(-1, 5),  # ttl in units of 100 ms
            st.integers(0, 3),  # time passing, in units of 100 ms
        ),
        max_size=60,
    )
)
def test_records_match_a_model_and_stay_within_bounds(
    ops: list[tuple[int, int, int, int, int]],
) -> None:
    records = Records(max_records=4, max_per_origin=2)
    # key -> (version, expires, origin)
    model: dict[int, tuple[int, int, crypto.NodeId | None]] = {}
    now = T0
    for key, origin_n, version, ttl, step in ops:
        now += step * 100
        model = {k: v for k, v in model.items() if v[1] > now}
        origin = None if origin_n == 3 else nid(100 + origin_n)
        try:
            records.put(nid(key), bytes([version]), now, ttl * 100, version=version, origin=origin)
        except (MeshError, crypto.CryptoError):
            refused = True
        else:
            refused = False
        held = model.get(key)
        if ttl <= 0:
            should_refuse = True
        elif held is not None:
            should_refuse = version < held[0]
        else:
            per_origin = sum(1 for v in model.values() if origin is not None and v[2] == origin)
            should_refuse = len(model) >= 4 or per_origin >= 2
        assert refused == should_refuse
        if not refused:
            model[key] = (version, now + ttl * 100, held[2] if held else origin)
        for k in range(6):
            record = records.get(nid(k), now)
            expected = model.get(k)
            if expected is None:
                assert record is None
            else:
                assert record is not None
                assert (record.version, record.expires, record.origin) == expected
        assert len(records) <= 4
