"""Plain-text tables for the terminal: the one formatter every command prints with.

A table wider than its limit is narrowed from its widest columns (the descriptions, the
error messages), each cut cell ending in "…"; ``--json`` keeps the full data. Commands
limit tables to the terminal's width when stdout is a terminal, to ``--width N`` when
given, and not at all when the output goes to a pipe or a file (:func:`output_width`).
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

GAP = "  "
MIN_WIDTH = 12  # a narrowed column keeps at least this much (or its header, if longer)


def output_width(option: int | None = None) -> int | None:
    """The width tables get: ``option`` (``--width``; 0 = no limit), else the terminal's
    columns when stdout is a terminal, else None (no limit)."""
    if option is not None:
        return option or None
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def _fit(widths: list[int], header: Sequence[str], limit: int) -> list[int]:
    """Column widths whose row fits ``limit``: the longest column (the last of equals) gives
    up what is needed, down to its floor, then the next longest, and so on."""
    widths = list(widths)
    floors = [max(len(h), min(w, MIN_WIDTH)) for w, h in zip(widths, header)]
    excess = sum(widths) + len(GAP) * (len(widths) - 1) - limit
    for i in sorted(range(len(widths)), key=lambda j: (widths[j], j), reverse=True):
        if excess <= 0:
            break
        cut = min(excess, widths[i] - floors[i])
        widths[i] -= cut
        excess -= cut
    return widths  # wider than limit only when every column is at its floor: the terminal wraps


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], width: int | None = None,
                 wrap: bool = False) -> str:
    """Left-aligned columns under a header and a rule; cells are printed with ``str`` on one
    line each. ``width``: the most characters a line may take (None: no limit); a cell too
    long for its narrowed column is cut with "…", or with ``wrap`` continued on the lines
    below (for tables without a ``--json`` form, such as ``zoology show``'s)."""
    cells = [[" ".join(str(c).split("\n")) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    if width is not None:
        widths = _fit(widths, header, width)
    fmt = GAP.join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    for row in cells:
        if not wrap:
            lines.append(fmt.format(*(_cut(c, w) for c, w in zip(row, widths))))
            continue
        parts = [textwrap.wrap(c, w, break_on_hyphens=False) or [""] if len(c) > w else [c]
                 for c, w in zip(row, widths)]
        for k in range(max(len(p) for p in parts)):
            lines.append(fmt.format(*(p[k] if k < len(p) else "" for p in parts)))
    return "\n".join(line.rstrip() for line in lines)
