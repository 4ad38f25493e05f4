"""Topic matching for publish/subscribe: AMQP topic-exchange patterns, sans-IO.

A topic is a sequence of dot-separated words (``news.tech.ai``; the first word may be a
secure name ``~<node-id>``), checked by :func:`crypto.validate_topic`. A pattern is a
topic whose words may also be wildcards (:func:`crypto.validate_pattern`), with the
rules of AMQP 0-9-1's topic exchange:

* a literal word matches exactly that word (case-sensitive: ``News`` is not ``news``);
* ``*`` matches exactly one word, never none: ``a.*`` matches ``a.b`` but not ``a``;
* ``#`` matches zero or more words: ``a.#`` matches ``a``, ``a.b`` and ``a.b.c``;
  ``a.#.b`` matches ``a.b``; ``#`` matches every topic; ``#.#`` is the same as ``#``.

A topic has at least one word (the empty string is not a topic), so ``*.#`` and ``#``
match the same topics.

Three tools:

* :func:`matches` is the reference matcher: a pattern against one topic, by simulating
  the pattern as a non-deterministic automaton over the topic's words (the set of
  pattern positions reachable after each word; ``#`` may be skipped or stay), in
  O(pattern words x topic words).
* :func:`covers` decides pattern containment exactly: every topic ``specific`` matches,
  ``general`` matches too (a subscriber holding ``news.#`` need not also advertise
  ``news.tech``). It explores the product of ``specific``'s automaton with the subset
  construction of ``general``'s, over the only words that can make a difference:
  ``general``'s literals and one word that is none of them.
* :class:`TopicTrie` holds many (pattern, key) entries and finds every key whose
  pattern matches a topic without looking at the other patterns: a trie whose nodes are
  keyed by word, with ``*`` and ``#`` as children like any word. Matching walks the
  topic through the trie; at a ``#`` node it may stay (absorbing one more word) or go on
  to the children, so one topic can reach a node by many paths (``#.#.#`` against a
  32-word topic has thousands). The walk remembers each (node, word index) state it has
  visited and never expands one twice, so its work is bounded by
  (trie nodes reachable) x (topic words + 1), whatever the number of ``#``.

Nothing here keeps module-level state; nothing reads a clock.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable, Iterator
from typing import Final, Generic, TypeVar

import crypto

__all__ = ["COVERS_STATE_LIMIT", "TopicTrie", "covers", "matches", "overlaps"]

#: Most states :func:`covers` explores before answering False ("not known to cover").
#: Containment of such patterns is coNP-complete in general (``#.a.*.*.*...`` has a
#: subset automaton with 2^(number of ``*``) states), and patterns come from strangers'
#: ``sub`` frames; every pair of patterns of ordinary shape is decided long before this.
COVERS_STATE_LIMIT: Final = 4_096

_ONE: Final = "*"
_ANY: Final = "#"
_WILDCARDS: Final = frozenset({_ONE, _ANY})

K = TypeVar("K", bound=Hashable)


def matches(pattern: str, topic: str) -> bool:
    """True if ``pattern`` matches ``topic`` (AMQP rules, see the module docstring).

    Raises :class:`crypto.Malformed` if ``pattern`` is not a valid pattern or ``topic``
    not a valid topic (wildcards in a topic are refused).
    """
    words = crypto.validate_topic(topic).split(".")
    return _match_words(crypto.validate_pattern(pattern).split("."), words)


def _match_words(pattern: list[str], words: list[str]) -> bool:
    """:func:`matches` on words already split and validated."""
    states = frozenset(_closure(pattern, {0}))
    for word in words:
        states = _step(pattern, states, word)
        if not states:
            return False
    return len(pattern) in states


def _closure(pattern: list[str], states: set[int]) -> set[int]:
    """``states`` plus every position reached by skipping ``#`` (matching no word)."""
    if not states:
        return states
    end = len(pattern)
    closed = set(states)
    for index in range(min(states), end):
        if index in closed and pattern[index] == _ANY:
            closed.add(index + 1)
    return closed


def _step(pattern: list[str], states: frozenset[int], word: str | None) -> frozenset[int]:
    """The positions of ``pattern`` reached from ``states`` by one ``word``.

    ``word`` None stands for a word that is none of the pattern's literals.
    """
    end = len(pattern)
    following: set[int] = set()
    for index in states:
        if index == end:
            continue
        token = pattern[index]
        if token == _ANY:
            following.add(index)  # ``#`` takes this word and may take more
        elif token in (_ONE, word):
            following.add(index + 1)
    return frozenset(_closure(pattern, following))


def covers(general: str, specific: str, *, limit: int = COVERS_STATE_LIMIT) -> bool:
    """True iff every topic that ``specific`` matches is matched by ``general``.

    Exact (topics are sequences of one or more words; the limits on a topic's length,
    32 words and 255 characters, are not taken into account: a pattern that covers
    another only because longer topics are invalid is reported as not covering it).
    Answers False without deciding (the safe answer for aggregating interests: the
    caller advertises both) if the search passes ``limit`` states, which takes
    adversarial patterns such as ``#.b.#.a.*.*.*.*.*.*.*.*.*.*`` (each state costs some
    microseconds: well under a second at the default limit). The search is
    breadth-first, so a topic that tells them apart is found after exploring only the
    states of shorter topics.

    Raises :class:`crypto.Malformed` if either is not a valid pattern.
    """
    big = crypto.validate_pattern(general).split(".")
    small = crypto.validate_pattern(specific).split(".")
    if big == small:
        return True
    final = len(big)
    # Words ``big`` tells apart: its literals, and one word that is none of them (None):
    # every other word goes through ``big``'s automaton exactly as that one does. (Where
    # a wildcard of ``small`` takes a word, that other word misses at least as much of
    # ``big`` as a literal would, so a secure name is never needed past the first word.)
    alphabet: list[str | None] = [*sorted({w for w in big if w not in _WILDCARDS}), None]
    start = frozenset(_closure(big, {0}))
    # A state: (position in ``small``, positions ``big`` may be at, some word read yet).
    # ``small`` is a non-deterministic automaton too: at a ``#`` it may move on without
    # a word or read any word and stay. A topic ``small`` matches and ``big`` does not
    # is a path to a state with ``small`` at its end, a word read, ``final`` not held.
    seen: set[tuple[int, frozenset[int], bool]] = set()
    queue: collections.deque[tuple[int, frozenset[int], bool]] = collections.deque()
    queue.append((0, start, False))
    while queue:
        state = queue.popleft()
        if state in seen:
            continue
        if len(seen) >= limit:
            return False
        seen.add(state)
        position, held, nonempty = state
        at_end = position == len(small)
        if not held and (nonempty or not at_end):
            # ``big`` is out of moves, and ``small`` can still end on a non-empty topic
            # (from any position every token can match at least one word).
            return False
        if at_end:
            if nonempty and final not in held:
                return False
            continue
        token = small[position]
        if token == _ANY:
            queue.append((position + 1, held, nonempty))
            queue.extend((position, _step(big, held, word), True) for word in alphabet)
        elif token == _ONE:
            queue.extend((position + 1, _step(big, held, word), True) for word in alphabet)
        else:
            queue.append((position + 1, _step(big, held, token), True))
    return True


def overlaps(first: str, second: str) -> bool:
    """True iff some topic matches both patterns (a subscription to one can receive
    publications the other designates).

    A search over pairs of positions, one in each pattern, reading one topic word at a
    time: O(words x words) states. A topic has at least one word, so two patterns that
    agree only on the empty sequence (``#`` and ``#``: never) still overlap when both
    can take a word. Raises :class:`crypto.Malformed` if either is not a valid pattern.
    """
    a = crypto.validate_pattern(first).split(".")
    b = crypto.validate_pattern(second).split(".")
    seen: set[tuple[int, int, bool]] = set()
    stack = [(0, 0, False)]
    while stack:
        state = stack.pop()
        if state in seen:
            continue
        seen.add(state)
        i, j, nonempty = state
        if i == len(a) and j == len(b):
            if nonempty:
                return True
            continue
        # A ``#`` may end its run without reading a word.
        if i < len(a) and a[i] == _ANY:
            stack.append((i + 1, j, nonempty))
        if j < len(b) and b[j] == _ANY:
            stack.append((i, j + 1, nonempty))
        if i < len(a) and j < len(b):
            x, y = a[i], b[j]
            if x in _WILDCARDS or y in _WILDCARDS or x == y:
                # One word both take: a ``#`` stays where it is, the rest move on.
                stack.append((i if x == _ANY else i + 1, j if y == _ANY else j + 1, True))
    return False


class _Node(Generic[K]):
    """One trie node: children by word (``*`` and ``#`` among them), keys ending here."""

    __slots__ = ("absorbs", "children", "keys", "repeats")

    def __init__(self, *, absorbs: bool, repeats: bool) -> None:
        self.children: dict[str, _Node[K]] = {}
        self.keys: set[K] = set()
        #: The node of a ``#``: it may take any number of words.
        self.absorbs = absorbs
        #: A ``#`` node or below one: the walk may reach it at one word index by
        #: several paths, so visits are remembered.
        self.repeats = repeats


class TopicTrie(Generic[K]):
    """(pattern, key) entries; :meth:`match` finds the keys whose pattern matches a topic.

    Keys are any hashable values (the same key may be held under several patterns, and
    a pattern under several keys). See the module docstring for how matching works.
    """

    def __init__(self) -> None:
        self._root: _Node[K] = _Node(absorbs=False, repeats=False)
        #: Each pattern held, with the node its path ends at.
        self._ends: dict[str, _Node[K]] = {}
        self._count = 0

    def __len__(self) -> int:
        """The number of (pattern, key) entries."""
        return self._count

    def __contains__(self, entry: object) -> bool:
        """True if ``entry`` is a (pattern, key) pair held (a bad pattern is never held)."""
        if not isinstance(entry, tuple) or len(entry) != 2:
            return False
        pattern, key = entry
        if not isinstance(pattern, str):
            return False
        node = self._ends.get(pattern)
        if node is None:
            return False
        try:
            return key in node.keys
        except TypeError:  # an unhashable key is never held
            return False

    def patterns(self) -> list[str]:
        """Every pattern held under at least one key, sorted."""
        return sorted(self._ends)

    def add(self, pattern: str, key: K) -> bool:
        """Hold ``key`` under ``pattern``; True if it was not held already.

        Raises :class:`crypto.Malformed` if ``pattern`` is not a valid pattern.
        """
        node = self._ends.get(pattern)
        if node is None:
            node = self._root
            for word in crypto.validate_pattern(pattern).split("."):
                child = node.children.get(word)
                if child is None:
                    absorbs = word == _ANY
                    child = _Node[K](absorbs=absorbs, repeats=node.repeats or absorbs)
                    node.children[word] = child
                node = child
            self._ends[pattern] = node
        if key in node.keys:
            return False
        node.keys.add(key)
        self._count += 1
        return True

    def remove(self, pattern: str, key: K) -> bool:
        """Drop ``key`` from ``pattern``; True if it was held. Empty nodes are pruned.

        Raises :class:`crypto.Malformed` if ``pattern`` is not a valid pattern.
        """
        words = crypto.validate_pattern(pattern).split(".")
        end = self._ends.get(pattern)
        if end is None or key not in end.keys:
            return False
        end.keys.discard(key)
        self._count -= 1
        if end.keys:
            return True
        del self._ends[pattern]
        path: list[tuple[_Node[K], str]] = []
        node = self._root
        for word in words:
            path.append((node, word))
            node = node.children[word]
        for parent, word in reversed(path):
            child = parent.children[word]
            if child.keys or child.children:
                break
            del parent.children[word]
        return True

    def match(self, topic: str) -> set[K]:
        """Every key held under a pattern that matches ``topic`` (each key once).

        Raises :class:`crypto.Malformed` if ``topic`` is not a valid topic.
        """
        words = crypto.validate_topic(topic).split(".")
        size = len(words)
        found: set[K] = set()
        visited: set[tuple[_Node[K], int]] = set()
        # A state (node, index): the path to ``node`` has matched words[:index]. At a
        # ``#`` node the ``#`` may take words[index] too, staying at the node.
        pending: list[tuple[_Node[K], int]] = [(self._root, 0)]
        while pending:
            state = pending.pop()
            node, index = state
            if node.repeats:
                if state in visited:
                    continue
                visited.add(state)
            children = node.children
            if index == size:
                if node.keys:
                    found |= node.keys
                child = children.get(_ANY)
                if child is not None:
                    pending.append((child, size))
                continue
            if node.absorbs:
                pending.append((node, index + 1))
            word = words[index]
            child = children.get(word)
            if child is not None:
                pending.append((child, index + 1))
            child = children.get(_ONE)
            if child is not None:
                pending.append((child, index + 1))
            child = children.get(_ANY)
            if child is not None:
                pending.append((child, index))
        return found

    def _nodes(self) -> Iterator[_Node[K]]:
        """Every node, root first (for tests: an emptied trie has only its root)."""
        stack = [self._root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())
