"""Topic matching (mesh._topics): the AMQP rules, pattern containment, the trie.

``matches`` is checked against a table of the AMQP topic-exchange rules and, on random
patterns and topics, against a regular expression built from the pattern (an oracle
that shares no code with it). ``covers`` is checked against brute force (all pairs of
short patterns, and random longer ones) and for reflexivity and transitivity.
``TopicTrie`` is checked against a linear scan with ``matches`` after random adds and
removes, and for leaving no node behind once emptied.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crypto
from mesh._topics import COVERS_STATE_LIMIT, TopicTrie, covers, matches

SECURE = "~" + crypto.NodeId(bytes([7]) * 32).text
OTHER_SECURE = "~" + crypto.NodeId(bytes([8]) * 32).text

# (pattern, topic, matches?)
RULES = [
    # literals: exact, case-sensitive, whole words, same length
    ("a", "a", True),
    ("a", "b", False),
    ("a.b.c", "a.b.c", True),
    ("a.b.c", "a.b", False),
    ("a.b", "a.b.c", False),
    ("news", "News", False),
    ("ab", "a", False),
    ("a", "ab", False),
    # ``*``: exactly one word, never none, never two
    ("*", "a", True),
    ("*", "a.b", False),
    ("a.*", "a.b", True),
    ("a.*", "a", False),
    ("a.*", "a.b.c", False),
    ("*.b", "a.b", True),
    ("*.b", "b", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.b.b.c", False),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    ("news.*.tech", "news.eu.tech", True),
    ("news.*.tech", "news.tech", False),
    # ``#`` at the end: zero or more words
    ("a.#", "a", True),
    ("a.#", "a.b", True),
    ("a.#", "a.b.c.d", True),
    ("a.#", "b", False),
    ("a.#", "b.a", False),
    # ``#`` at the start
    ("#.z", "z", True),
    ("#.z", "a.z", True),
    ("#.z", "a.b.c.z", True),
    ("#.z", "z.a", False),
    # ``#`` in the middle
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.b.b", True),
    ("a.#.b", "a", False),
    ("a.#.b", "a.b.c", False),
    ("a.#.b.#.c", "a.b.c", True),
    ("a.#.b.#.c", "a.x.b.y.y.c", True),
    ("a.#.b.#.c", "a.c.b", False),
    # ``#`` alone and repeated
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("#.#", "a", True),
    ("#.#", "a.b.c", True),
    ("#.#.#", "a", True),
    ("#.a.#", "a", True),
    ("#.a.#", "x.a.y", True),
    ("#.a.#", "x.y", False),
    # ``*`` and ``#`` together
    ("*.#", "a", True),
    ("*.#", "a.b.c", True),
    ("#.*", "a", True),
    ("*.#.*", "a", False),
    ("*.#.*", "a.b", True),
    ("*.#.*", "a.b.c", True),
    ("#.*.*", "a", False),
    ("#.*.*", "a.b", True),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b", True),
    ("a.*.#", "a.b.c", True),
    # secure names: ``~<node-id>`` is a word like any other
    (f"{SECURE}.chirp", f"{SECURE}.chirp", True),
    (f"{SECURE}.chirp", f"{OTHER_SECURE}.chirp", False),
    (f"{SECURE}.#", f"{SECURE}.chirp", True),
    (f"{SECURE}.#", SECURE, True),
    (f"{SECURE}.#", "chirp", False),
    ("*.chirp", f"{SECURE}.chirp", True),
    ("*.chirp", f"{SECURE}.x.chirp", False),
    ("#.chirp", f"{SECURE}.x.chirp", True),
    ("#", f"{SECURE}.chirp", True),
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), RULES)
def test_amqp_rules(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected
    trie: TopicTrie[str] = TopicTrie()
    trie.add(pattern, "k")
    assert trie.match(topic) == ({"k"} if expected else set())


def oracle(pattern: str, topic: str) -> bool:
    """The AMQP rules as a regular expression over ".word" pieces (independent code)."""
    parts = []
    for token in pattern.split("."):
        if token == "#":
            parts.append(r"(?:\.[^.]+)*")
        elif token == "*":
            parts.append(r"\.[^.]+")
        else:
            parts.append(re.escape("." + token))
    return re.fullmatch("".join(parts), "." + topic) is not None


WORDS = ["a", "b", "c"]
word_lists = st.lists(st.sampled_from(WORDS), min_size=1, max_size=7)
topics = word_lists.map(".".join)
patterns = st.lists(st.sampled_from([*WORDS, "*", "#"]), min_size=1, max_size=5).map(".".join)


@given(patterns, topics)
def test_matches_agrees_with_a_regular_expression(pattern: str, topic: str) -> None:
    assert matches(pattern, topic) is oracle(pattern, topic)


@pytest.mark.parametrize(
    ("pattern", "topic"),
    [
        ("a.*", "a.*"),  # a topic has no wildcards
        ("a", "a.#"),
        ("a..b", "a.b"),
        ("a", ""),
        ("", "a"),
        ("a.b*", "a.b"),
        ("a", "a b"),
        ("a.~x", "a"),  # '~' only as a whole secure first word
        ("a", "x." + SECURE),  # a secure name only as the first word
        (".".join(["a"] * 33), "a"),  # more than 32 words
    ],
)
def test_malformed_input_is_refused(pattern: str, topic: str) -> None:
    with pytest.raises(crypto.Malformed):
        matches(pattern, topic)


@pytest.mark.parametrize("bad", ["a..b", "", "a.b*", "a. b", "a." + SECURE, ".".join(["a"] * 33)])
def test_every_entry_point_refuses_a_bad_pattern(bad: str) -> None:
    trie: TopicTrie[int] = TopicTrie()
    trie.add("a", 1)
    with pytest.raises(crypto.Malformed):
        matches(bad, "a")
    with pytest.raises(crypto.Malformed):
        covers(bad, "a")
    with pytest.raises(crypto.Malformed):
        covers("a", bad)
    with pytest.raises(crypto.Malformed):
        trie.add(bad, 1)
    with pytest.raises(crypto.Malformed):
        trie.remove(bad, 1)
    assert (bad, 1) not in trie
    assert len(trie) == 1
    assert trie.patterns() == ["a"]


@pytest.mark.parametrize("bad", ["a.*", "#", "a..b", "", "x." + SECURE])
def test_every_entry_point_refuses_a_bad_topic(bad: str) -> None:
    trie: TopicTrie[int] = TopicTrie()
    trie.add("#", 1)
    with pytest.raises(crypto.Malformed):
        matches("#", bad)
    with pytest.raises(crypto.Malformed):
        trie.match(bad)


# --- the trie ---------------------------------------------------------------------------


def test_trie_entries() -> None:
    trie: TopicTrie[tuple[str, int]] = TopicTrie()
    assert len(trie) == 0
    assert trie.add("a.#", ("x", 1)) is True
    assert trie.add("a.#", ("x", 1)) is False
    assert trie.add("a.#", ("y", 2)) is True
    assert trie.add("#", ("x", 1)) is True
    assert trie.add("a.*", ("x", 1)) is True
    assert len(trie) == 4
    assert ("a.#", ("x", 1)) in trie
    assert ("a.#", ("z", 3)) not in trie
    assert ("a.b", ("x", 1)) not in trie
    assert "a.#" not in trie  # an entry is a (pattern, key) pair
    assert ("a.#", ["unhashable"]) not in trie
    assert trie.patterns() == ["#", "a.#", "a.*"]
    # each key once, although ("x", 1) is reached by three patterns
    assert trie.match("a.b") == {("x", 1), ("y", 2)}
    assert trie.match("a") == {("x", 1), ("y", 2)}
    assert trie.match("b") == {("x", 1)}
    assert trie.remove("a.#", ("x", 1)) is True
    assert trie.remove("a.#", ("x", 1)) is False
    assert trie.remove("never.held", ("x", 1)) is False
    assert len(trie) == 3
    assert trie.patterns() == ["#", "a.#", "a.*"]
    assert trie.match("a.b") == {("x", 1), ("y", 2)}
    assert trie.remove("#", ("x", 1)) is True
    assert trie.match("a") == {("y", 2)}
    assert trie.patterns() == ["a.#", "a.*"]


def test_removal_prunes_only_what_is_empty() -> None:
    trie: TopicTrie[int] = TopicTrie()
    trie.add("a.b.c", 1)
    trie.add("a.b", 2)
    trie.add("a.#.d", 3)
    before = len(list(trie._nodes()))  # root, a, b, c, #, d
    assert before == 6
    trie.remove("a.b.c", 1)
    assert len(list(trie._nodes())) == 5  # c went; b still ends a.b
    assert trie.match("a.b") == {2}
    trie.remove("a.b", 2)
    assert len(list(trie._nodes())) == 4  # b went; a still leads to a.#.d
    assert trie.match("a.x.d") == {3}
    trie.remove("a.#.d", 3)
    assert list(trie._nodes()) == [trie._root]
    assert trie._root.children == {}


ALL_SHORT_TOPICS = [
    ".".join(words) for size in range(1, 5) for words in itertools.product(WORDS, repeat=size)
]


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.booleans(), patterns, st.integers(min_value=0, max_value=3)), max_size=40
    ),
    st.lists(topics, max_size=5),
)
def test_trie_agrees_with_a_linear_scan(
    operations: list[tuple[bool, str, int]], extra_topics: list[str]
) -> None:
    trie: TopicTrie[int] = TopicTrie()
    model: set[tuple[str, int]] = set()
    for adding, pattern, key in operations:
        if adding:
            assert trie.add(pattern, key) is ((pattern, key) not in model)
            model.add((pattern, key))
        else:
            assert trie.remove(pattern, key) is ((pattern, key) in model)
            model.discard((pattern, key))
        assert len(trie) == len(model)
    assert trie.patterns() == sorted({pattern for pattern, _ in model})
    for pattern, key in model:
        assert (pattern, key) in trie
    for topic in [*ALL_SHORT_TOPICS, *extra_topics]:
        assert trie.match(topic) == {key for pattern, key in model if matches(pattern, topic)}
    # Emptying it leaves the root alone, as new.
    for pattern, key in sorted(model):
        assert trie.remove(pattern, key) is True
    assert len(trie) == 0
    assert trie.patterns() == []
    assert list(trie._nodes()) == [trie._root]
    assert trie._root.keys == set()


def test_ten_thousand_patterns_against_a_32_word_topic() -> None:
    # Many '#' make many paths to each node; the walk must still visit each (node, word
    # index) once. No timing: only that it finishes with the right answer.
    rng = random.Random(1)
    vocabulary = [f"w{index}" for index in range(6)]
    trie: TopicTrie[int] = TopicTrie()
    entries: list[tuple[str, int]] = []
    for key in range(10_000):
        if key % 10 == 0:
            pattern = ".".join(["#"] * rng.randint(1, 32))
        else:
            tokens = rng.choices([*vocabulary, "*", "#", "#"], k=rng.randint(1, 12))
            pattern = ".".join(tokens)
        entries.append((pattern, key))
        trie.add(pattern, key)
    topic = ".".join(rng.choices(vocabulary, k=32))
    expected = {key for pattern, key in entries if matches(pattern, topic)}
    assert len(expected) > 1000  # the case is '#'-heavy, not trivially empty
    assert trie.match(topic) == expected
    assert trie.match(".".join(["w0"] * 32)) == {
        key for pattern, key in entries if matches(pattern, ".".join(["w0"] * 32))
    }


# --- covers -----------------------------------------------------------------------------

# (general, specific, general covers specific?)
CONTAINMENT = [
    ("news.#", "news.tech", True),
    ("news.#", "news", True),
    ("news.#", "news.*.tech", True),
    ("news.#", "news.#", True),
    ("news.tech", "news.#", False),
    ("news.*", "news.#", False),
    ("news.*", "news.tech", True),
    ("news.*", "news", False),
    ("#", "a.#.b", True),
    ("#", "*", True),
    ("*", "#", False),
    ("#.#", "#", True),
    ("#", "#.#", True),
    ("*.#", "#", True),  # every topic has a first word
    ("#.*", "#", True),
    ("*.*.#", "#", False),  # a one-word topic
    ("*.#", "#.*", True),  # a word-by-word alignment would say no
    ("#.*", "*.#", True),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.*.*.b", True),
    ("a.#.b", "a.#.b.#.b", True),
    ("a.*.b", "a.#.b", False),
    ("a.#", "a.*.#", True),
    ("a.*.#", "a.#", False),
    ("#.a.#", "x.a.y", True),
    ("#.a.#", "*.a", True),
    ("#.a.#", "#.*", False),
    ("*.*", "*.#.*", False),
    ("#.b.#.a.#", "#.a.*.b.#", False),
    ("a", "A", False),
    (f"{SECURE}.#", f"{SECURE}.chirp", True),
    (f"{SECURE}.#", f"{OTHER_SECURE}.chirp", False),
    ("*.chirp", f"{SECURE}.chirp", True),
    (f"{SECURE}.chirp", "*.chirp", False),
]


@pytest.mark.parametrize(("general", "specific", "expected"), CONTAINMENT)
def test_covers_table(general: str, specific: str, expected: bool) -> None:
    assert covers(general, specific) is expected


def test_covers_gives_up_safely_past_its_state_limit() -> None:
    # True, but deciding it takes many subsets of the general pattern's positions.
    general = "#.a." + ".".join(["*"] * 8)
    specific = "#.b.#.a." + ".".join(["*"] * 8)
    assert covers(general, specific, limit=10**6) is True
    assert covers(general, specific, limit=100) is False
    assert COVERS_STATE_LIMIT > 1000


def covering_candidates(general: list[str], specific: list[str]) -> Iterator[str]:
    """Topics that ``specific`` matches, one of which ``general`` misses if any is missed.

    Both patterns' literals are in {a, b}; the topics use the word c for the wildcards of
    ``specific``. Why that is enough (so the brute force below is complete):

    1. Only c. Let t be a topic ``specific`` matches and ``general`` does not. Put c in
       place of every word of t that a ``specific`` wildcard takes, giving t'.
       ``specific`` still matches t' (same alignment). c is none of ``general``'s
       literals, so in any alignment of ``general`` with t' each c is taken by a
       wildcard, which would take the original word too: if ``general`` matched t' it
       would match t. So t' is a counterexample as well.
    2. Short runs. In t', a maximal run of c's is what one group of consecutive
       wildcards of ``specific`` takes (its literals, a or b, end runs). Let P be the
       number of ``*`` in ``general``. Whether ``general`` matches u.c^r.v (u, v fixed)
       does not depend on r once r > P: cut any alignment at the run's ends (a ``#``
       across a cut is the same as ``#.#``, one on each side); the part of ``general``
       taking the run holds wildcards only, p <= P of them ``*`` and q ``#``, and takes
       c^r iff r == p or (q > 0 and r >= p): for r > P, iff q > 0. So in a shortest
       counterexample a run that holds any word taken by a ``#`` (which could give it
       back) is no longer than P + 1: one word fewer would be a shorter counterexample.
       A group of s ``*`` and some ``#`` takes s..max(s, P + 1) words; a group of
       ``*`` only takes exactly s.
    3. Topics are non-empty: the empty sequence is left out.
    """
    stars = general.count("*")
    pieces: list[list[list[str]]] = []  # for each piece of ``specific``: its word lists
    index = 0
    while index < len(specific):
        if specific[index] not in ("*", "#"):
            pieces.append([[specific[index]]])
            index += 1
            continue
        end = index
        while end < len(specific) and specific[end] in ("*", "#"):
            end += 1
        group = specific[index:end]
        fixed = group.count("*")
        longest = max(fixed, stars + 1) if "#" in group else fixed
        pieces.append([["c"] * size for size in range(fixed, longest + 1)])
        index = end
    for choice in itertools.product(*pieces):
        words = [word for piece in choice for word in piece]
        if words:
            yield ".".join(words)


def covers_by_brute_force(general: str, specific: str) -> bool:
    candidates = list(covering_candidates(general.split("."), specific.split(".")))
    assert all(matches(specific, topic) for topic in candidates)
    return all(matches(general, topic) for topic in candidates)


SMALL_PATTERNS = [
    ".".join(tokens)
    for size in range(1, 4)
    for tokens in itertools.product(["a", "b", "*", "#"], repeat=size)
]


def test_covers_on_every_pair_of_short_patterns() -> None:
    # All 84 patterns of 1..3 tokens over {a, b, *, #}: exact against brute force, and
    # the relation is reflexive and transitive.
    relation = {
        (general, specific): covers(general, specific)
        for general in SMALL_PATTERNS
        for specific in SMALL_PATTERNS
    }
    for (general, specific), covered in relation.items():
        assert covered is covers_by_brute_force(general, specific), (general, specific)
    for pattern in SMALL_PATTERNS:
        assert relation[pattern, pattern]
    covered_by = {
        pattern: [specific for specific in SMALL_PATTERNS if relation[pattern, specific]]
        for pattern in SMALL_PATTERNS
    }
    for general in SMALL_PATTERNS:
        for middle in covered_by[general]:
            for specific in covered_by[middle]:
                assert relation[general, specific], (general, middle, specific)
    assert sum(relation.values()) > len(SMALL_PATTERNS)  # not only the diagonal


short_patterns = st.lists(st.sampled_from(["a", "b", "*", "#"]), min_size=1, max_size=4).map(
    ".".join
)


@settings(max_examples=200)
@given(short_patterns, short_patterns)
def test_covers_agrees_with_brute_force(general: str, specific: str) -> None:
    covered = covers(general, specific)
    assert covered is covers_by_brute_force(general, specific)
    # And against every topic over {a, b, c} of 1..len(specific) + 2 words, with no
    # reasoning about which topics are enough: a cover misses none of them (this alone
    # is not complete, hence the candidates above).
    for size in range(1, len(specific.split(".")) + 3):
        for words in itertools.product(["a", "b", "c"], repeat=size):
            topic = ".".join(words)
            if matches(specific, topic) and not matches(general, topic):
                assert not covered, (general, specific, topic)


@given(short_patterns, short_patterns, short_patterns)
def test_covers_is_transitive(first: str, second: str, third: str) -> None:
    assert covers(first, first)
    if covers(first, second) and covers(second, third):
        assert covers(first, third)


@given(patterns)
def test_covers_by_hash_and_of_itself(pattern: str) -> None:
    assert covers("#", pattern)
    assert covers(pattern, pattern)
    assert covers(pattern + ".#", pattern)
    assert covers("#." + pattern, pattern)
