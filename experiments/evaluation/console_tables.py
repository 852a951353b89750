"""Console tables that fit the terminal: wide when they fit, one row per (name, metric) when they do not.

A wide table of names and intervals (``0.872 [0.836, 0.908]``) is unreadable once the console is narrower
than it: rich then cuts the names (``all_b…``) and wraps each interval over several lines. :func:`fitted_table`
builds the wide table, measures the width it needs with every cell on one line, and when that is more than
the console's width folds it into a long table: the key columns, then ``metric | value``, one row per key
and column; when even that is too wide, into two columns, each key on a row of its own above its metrics.
Names and values are never cut: a value stays on one line, and a name too long even for two columns folds
onto a second line rather than ending in an ellipsis.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

#: Width used to measure a table with every cell on one line.
_UNLIMITED = 100_000


def natural_width(table: Table) -> int:
    """The width ``table`` needs with no cell wrapped or cut."""
    return Console(width=_UNLIMITED, file=io.StringIO()).measure(table).maximum


def wide_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], keys: int = 1) -> Table:
    """One row per entry: the first ``keys`` columns left-aligned (names), the others right-aligned (values)."""
    table = Table(title=title)
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i < keys else "right", no_wrap=i >= keys)
    for row in rows:
        table.add_row(*row)
    return table


def long_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], keys: int = 1,
               column_label: str = "metric") -> Table:
    """The same cells, one row per (key, column): ``<key headers> | <column_label> | value``.

    Each key is written on the first row of its group only; a section line separates the groups.
    """
    table = Table(title=title)
    for header in headers[:keys]:
        table.add_column(header, overflow="fold")
    table.add_column(column_label, overflow="fold")
    table.add_column("value", justify="right", no_wrap=True, min_width=_longest(rows, keys))
    for n, row in enumerate(rows):
        for j, (header, cell) in enumerate(zip(headers[keys:], row[keys:])):
            names = list(row[:keys]) if j == 0 else [""] * keys
            table.add_row(*names, header, cell, end_section=j == len(headers) - keys - 1 and n < len(rows) - 1)
    return table


def grouped_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], keys: int = 1,
                  column_label: str = "metric") -> Table:
    """:func:`long_table` in two columns, for a console too narrow for three: each key on a row of its own,
    then one indented row per column under it (``<key headers> / <column_label> | value``)."""
    table = Table(title=title)
    table.add_column(" / ".join([*headers[:keys], column_label]), overflow="fold")
    table.add_column("value", justify="right", no_wrap=True, min_width=_longest(rows, keys))
    for n, row in enumerate(rows):
        table.add_row(" · ".join(row[:keys]), "", style="bold")
        for j, (header, cell) in enumerate(zip(headers[keys:], row[keys:])):
            table.add_row(f"  {header}", cell, end_section=j == len(headers) - keys - 1 and n < len(rows) - 1)
    return table


def _longest(rows: Sequence[Sequence[str]], keys: int) -> int:
    return max((len(cell) for row in rows for cell in row[keys:]), default=0)


def fitted_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], width: int, keys: int = 1,
                 column_label: str = "metric") -> Table:
    """:func:`wide_table` when it fits in ``width`` columns, else :func:`long_table` when that fits, else
    :func:`grouped_table`."""
    for build in (wide_table, long_table):
        table = build(title, headers, rows, keys) if build is wide_table else \
            build(title, headers, rows, keys, column_label)
        if natural_width(table) <= width:
            return table
    return grouped_table(title, headers, rows, keys, column_label)


def print_fitted(console: Console, title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], keys: int = 1,
                 column_label: str = "metric") -> Table:
    """Print :func:`fitted_table` at ``console``'s width; returns the table printed."""
    table = fitted_table(title, headers, rows, console.width, keys, column_label)
    console.print(table)
    return table
