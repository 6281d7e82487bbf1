"""Dotted key paths into nested TOML data: one grammar for ``--set``, ``[sweep]`` and reports.

A path is dot-separated parts: a table key, or a number selecting an array item
(``data.train.0.num_kv_pairs``; ``data.train[0].num_kv_pairs`` is read the same). ``*``
stands for every item of an array or every table/array value of a table, so
``data.*.input_seq_len`` names the length of every train and test segment; an array met
where a key is expected applies the rest of the path to each of its items.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import Any

from zoology.errors import UserError


def normalize(dotted: str) -> str:
    """``data.train[0].x`` → ``data.train.0.x``."""
    return re.sub(r"\[(\d+)\]", r".\1", dotted).strip(".")


def lookup(tree: Any, dotted: str) -> Any:
    """The value at a path without wildcards, or None where there is none."""
    node = tree
    for part in normalize(dotted).split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def assign(tree: dict[str, Any], dotted: str, value: Any) -> int:
    """Set the value at ``dotted`` (wildcards allowed), creating tables as needed; returns
    how many places were set. UserError for a path that cannot be followed."""
    parts = normalize(dotted).split(".")

    def visit(node: Any, i: int, where: str) -> int:
        part = parts[i]
        last = i == len(parts) - 1
        if isinstance(node, list) and not (part.isdigit() or part == "*"):
            return sum(visit(item, i, f"{where}.{j}") for j, item in enumerate(node))
        if part == "*":
            items = list(enumerate(node)) if isinstance(node, list) else \
                [(k, v) for k, v in node.items() if isinstance(v, (dict, list))] if isinstance(node, dict) else []
            if last or not items:
                raise UserError(f"{dotted}: '*' at {where or 'the top'} matches no table or array to descend into")
            return sum(visit(child, i + 1, f"{where}.{k}".lstrip(".")) for k, child in items)
        if isinstance(node, list):
            if int(part) >= len(node):
                raise UserError(f"{dotted}: {where or 'the top'} has no item {part} (it has {len(node)})")
            key: Any = int(part)
        elif isinstance(node, dict):
            key = part
        else:
            raise UserError(f"{dotted}: {where} is a value, not a table")
        if last:
            node[key] = copy.deepcopy(value)
            return 1
        if isinstance(node, dict) and key not in node:
            node[key] = {}
        return visit(node[key], i + 1, f"{where}.{part}".lstrip("."))

    return visit(tree, 0, "")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf as ``dotted.path → value``; arrays of tables get indices, arrays of plain
    values are one leaf (a tuple)."""
    if isinstance(tree, dict):
        items: Iterable[tuple[Any, Any]] = tree.items()
    elif isinstance(tree, list) and any(isinstance(v, (dict, list)) for v in tree):
        items = enumerate(tree)
    else:
        return {prefix: tuple(tree) if isinstance(tree, list) else tree}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def matches(pattern: str, path: str) -> bool:
    """Whether the flattened ``path`` (as :func:`flatten` gives it) lies at or under a place
    that ``pattern`` names, in the grammar :func:`assign` follows: ``*`` matches one part,
    and an array index met where the pattern names a key is passed over."""
    want, have = normalize(pattern).split("."), normalize(path).split(".")
    i = j = 0
    while i < len(want):
        if j == len(have):
            return False
        if want[i] in ("*", have[j]):
            i += 1
        elif not have[j].isdigit():
            return False
        j += 1
    return True


def drop_none(value: Any) -> Any:
    """The tree without None values (TOML has no null)."""
    if isinstance(value, dict):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_none(v) for v in value]
    return value
