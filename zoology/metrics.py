"""Metric names: ``<split>/<quantity>`` overall and ``<split>/<key>=<value>/<quantity>`` per slice.

A slice is one ``key = value`` pair of a task's ``slices()`` (e.g. ``num_kv_pairs = 8``):
every segment of a split is scored overall and under each of its slices, segments sharing a
slice pooled. Training, config validation and reports all build and read names here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

QUANTITIES = ("accuracy", "loss")
SPLITS = ("train", "valid", "test")


@attrs.frozen
class Metric:
    split: str
    quantity: str
    slice: tuple[str, str] | None = None  # (key, value as written)

    def __str__(self) -> str:
        middle = f"/{self.slice[0]}={self.slice[1]}" if self.slice else ""
        return f"{self.split}{middle}/{self.quantity}"

    @property
    def lower_is_better(self) -> bool:
        return self.quantity == "loss"


def name(split: str, quantity: str, key: str | None = None, value: Any = None) -> str:
    """``name("valid", "accuracy", "num_kv_pairs", 8)`` → ``valid/num_kv_pairs=8/accuracy``."""
    return str(Metric(split, quantity, None if key is None else (key, str(value))))


def parse(text: str) -> Metric | None:
    """The parts of a metric name, or None if ``text`` is not one."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or parts[0] not in SPLITS or parts[-1] not in QUANTITIES:
        return None
    if len(parts) == 2:
        return Metric(parts[0], parts[1])
    key, eq, value = parts[1].partition("=")
    return Metric(parts[0], parts[2], (key, value)) if eq and key else None


def slice_groups(split: str, slices: Iterable[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Per slice name prefix (``valid/num_kv_pairs=8``) the indices of the segments in it."""
    groups: dict[str, list[int]] = {}
    for i, segment_slices in enumerate(slices):
        for key, value in segment_slices.items():
            groups.setdefault(f"{split}/{key}={value}", []).append(i)
    return dict(sorted(groups.items()))


def reported(split: str, slices: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every metric name evaluation reports for a split whose segments have these slices."""
    prefixes = [split, *slice_groups(split, slices)]
    return [f"{p}/{q}" for p in prefixes for q in QUANTITIES]


def twin(metric: str, split: str) -> str:
    """The same metric on another split: ``twin("test/accuracy", "valid")`` → ``valid/accuracy``."""
    return split + "/" + metric.split("/", 1)[1]


def per_slice(metrics: Mapping[str, Any], metric: str, key: str) -> dict[str, float]:
    """From reported ``metrics``, the values of ``metric``'s split and quantity for each
    value of slice ``key`` (value as written → number)."""
    want = parse(metric)
    out = {}
    for text, value in metrics.items():
        m = parse(text)
        if want and m and m.slice and m.slice[0] == key and (m.split, m.quantity) == (want.split, want.quantity) \
                and isinstance(value, (int, float)):
            out[m.slice[1]] = float(value)
    return out
