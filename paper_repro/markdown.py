"""Markdown tables: the one writer behind every table the package and its benchmarks print.

A table is a header, an alignment line and a line per row, each cell as the caller formatted it
(this writer escapes nothing: a cell that may hold ``|`` is escaped by the code that knows it
may). ``head`` and ``row`` are the pieces, for a table printed a row at a time as each row is
measured; ``table`` is the whole table at once.

This module imports nothing but the standard library: the results layer and the benchmarks
read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

_RULES = {"l": "---", "r": "---:"}


def row(cells: Sequence[str]) -> str:
    """One table line: ``| a | b |``."""
    return "| " + " | ".join(cells) + " |"


def head(header: Sequence[str], align: str | None = None) -> tuple[str, str]:
    """The header line and the alignment line under it. ``align`` has a letter per column, ``l``
    (left) or ``r`` (right: numbers), as LaTeX's column types; every column left by default."""
    align = "l" * len(header) if align is None else align
    if len(align) != len(header) or set(align) - set(_RULES):
        raise ValueError(f"align {align!r} does not give l or r for each of {len(header)} columns")
    return row(header), "|" + "|".join(_RULES[a] for a in align) + "|"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str | None = None) -> str:
    """The whole table, its lines joined by newlines, without a final one (a caller puts it
    among its own lines)."""
    return "\n".join([*head(header, align), *map(row, rows)])
