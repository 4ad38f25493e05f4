"""Tables and units for the operator's views (``ptth status``, ``neighbours``, ``routes``,
``queues``, ``subscriptions``): rows in, lines of text out.

Pure functions, no I/O. Every cell goes through :func:`node._terminal.for_terminal`
before its width is measured (what came from the network cannot act on the terminal,
and the columns stay aligned around its escapes), so the lines :func:`render` returns
are printed as they are. Node ids are 52 characters: :func:`short_id` shows their first
10 (the short form the logs and the other commands use, and a prefix ``ptth queue
purge`` takes) unless the view is ``--wide``; a column with a ``limit`` cuts longer
cells the same way. Bytes are shown in binary units (:func:`human_bytes`), ages and
durations in two units at most (:func:`human_age`).
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Final

import crypto
from node._terminal import for_terminal

__all__ = [
    "SHORT_ID",
    "Column",
    "human_age",
    "human_bytes",
    "human_count",
    "human_rate",
    "render",
    "short_id",
]

#: Characters of a node id shown in a table that is not ``--wide`` (``NodeId.short``).
SHORT_ID: Final = 10
#: A node id's text form (crypto.NodeId.text).
_NODE_ID: Final = re.compile(f"[a-z2-7]{{{crypto.NODE_ID_TEXT_LENGTH}}}")
#: What a cut cell ends with.
_CUT: Final = "..."
#: Between two columns.
_GAP: Final = "  "
_BYTE_UNITS: Final = ("KiB", "MiB", "GiB", "TiB")


@dataclasses.dataclass(frozen=True)
class Column:
    """A column: its title, whether it is right-aligned (numbers), and the most
    characters a cell shows unless the table is wide (None: all of it)."""

    title: str
    right: bool = False
    limit: int | None = None


def _width(text: str) -> int:
    """Columns ``text`` takes on a terminal: wide (East Asian) characters two, combining
    marks none."""
    if text.isascii():
        return len(text)
    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def _cut(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` columns, ending with ``...`` if it was cut."""
    if _width(text) <= limit:
        return text
    keep = max(limit - len(_CUT), 1)
    out = ""
    for char in text:
        if _width(out + char) > keep:
            break
        out += char
    return out + _CUT


def _pad(text: str, width: int, *, right: bool) -> str:
    fill = " " * (width - _width(text))
    return fill + text if right else text + fill


def render(
    columns: Sequence[Column],
    rows: Iterable[Sequence[str]],
    *,
    wide: bool = False,
    indent: int = 0,
) -> list[str]:
    """The lines of a table: the titles, then a line per row, each column as wide as
    its widest cell, two spaces between columns, no spaces at the ends of lines.

    Each cell is made safe for a terminal (:func:`for_terminal`) and, unless ``wide``,
    cut to its column's ``limit``. Raises ValueError for a row without one cell per
    column (a bug of the caller's)."""
    cells: list[list[str]] = [[column.title for column in columns]]
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"a row of {len(row)} cells in a table of {len(columns)} columns")
        line = []
        for column, cell in zip(columns, row, strict=True):
            text = for_terminal(cell)
            if column.limit is not None and not wide:
                text = _cut(text, column.limit)
            line.append(text)
        cells.append(line)
    widths = [max(_width(line[i]) for line in cells) for i in range(len(columns))]
    margin = " " * indent
    return [
        margin
        + _GAP.join(
            _pad(text, width, right=column.right)
            for text, width, column in zip(line, widths, columns, strict=True)
        ).rstrip()
        for line in cells
    ]


def short_id(node_id: str | None, *, wide: bool = False) -> str:
    """A node id as a table shows it: its first :data:`SHORT_ID` characters, all of it
    if ``wide`` or if it is not a node id at all (nothing odd is hidden); ``-`` for
    none."""
    if not node_id:
        return "-"
    if wide or not _NODE_ID.fullmatch(node_id):
        return node_id
    return node_id[:SHORT_ID]


def human_bytes(count: float | None) -> str:
    """``812 B``, ``1.5 KiB``, ``12 MiB``, ``3.2 GiB``: binary units, a decimal below 10;
    ``-`` for none."""
    if count is None:
        return "-"
    if abs(count) < 1024:
        return f"{count:.0f} B"
    value = float(count)
    for unit in _BYTE_UNITS:
        value /= 1024
        if abs(value) < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{value:.1f} {unit}" if abs(value) < 10 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def human_age(seconds: float | None) -> str:
    """A duration in its two largest units: ``45s``, ``4m05s``, ``2h03m``, ``3d04h``; ``-``
    for none (a negative one, a clock's step back, is ``0s``)."""
    if seconds is None:
        return "-"
    whole = max(int(seconds), 0)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def human_count(count: int | None) -> str:
    """``1,234,567``; ``-`` for none."""
    return "-" if count is None else f"{count:,}"


def human_rate(per_second: float | None) -> str:
    """Events per second: ``0``, ``<0.001``, ``0.0042``, ``0.42``, ``3.5``, ``12``,
    ``1,234`` (two significant digits below 10); ``-`` for none or a negative rate (a
    counter that went back: the node restarted between two readings)."""
    if per_second is None or per_second < 0:
        return "-"
    if per_second == 0:
        return "0"
    if per_second < 0.001:
        return "<0.001"
    if per_second < 10:
        return f"{per_second:.2g}"
    return f"{per_second:,.0f}"
