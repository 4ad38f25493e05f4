"""Text from the network, made safe to show on a terminal.

A message body, a publication's topic, a peer's display name or a drop reason comes
from other nodes, and a terminal obeys the control characters in what it is given: a
``\\r`` or an ANSI escape in a body printed raw can erase the ``from <id>`` before it
and show a forged sender; a bidi override can reverse what follows it. Every line the
CLI prints for a human goes through :func:`for_terminal`; ``--raw`` (the exact bytes,
for pipes) and ``--json`` (which escapes on its own) are for programs.
"""

from __future__ import annotations

import unicodedata
from typing import Final

__all__ = ["UNSAFE_CATEGORIES", "for_terminal"]

#: Unicode categories shown as escapes: controls (C0, DEL, C1), format characters
#: (bidi embeddings, overrides and isolates U+202A-202E, U+2066-2069, zero-width
#: characters, the BOM, tags), lone surrogates (which JSON can carry, and which no
#: encoding can write) and the line and paragraph separators U+2028, U+2029 (a new
#: line for some terminals). Letters, marks, symbols and spaces of any script stay.
UNSAFE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_NAMED: Final = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    if unicodedata.category(char) not in UNSAFE_CATEGORIES:
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def for_terminal(text: str) -> str:
    """``text`` with every character of :data:`UNSAFE_CATEGORIES` as a visible escape.

    ``\\n``, ``\\r`` and ``\\t`` by name, others as ``\\xHH`` (up to U+00FF), ``\\uHHHH``
    or ``\\UHHHHHHHH``, the way Python writes them; a backslash is doubled, so the
    result reads back to exactly ``text`` (a message that says ``\\x1b`` in plain
    characters shows as ``\\\\x1b``, apart from a real escape character).
    """
    if text.isprintable() and "\\" not in text:
        return text  # the usual case: nothing to look at character by character
    return "".join(map(_escape, text))
