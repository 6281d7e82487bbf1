"""Expand a ``[sweep]`` table into one raw experiment per point, with readable run ids.

    [sweep]
    "train.learning_rate" = [1e-4, 1e-3]          # a grid axis: every axis multiplies
    "model.sequence_mixer" = [                     # values may be whole tables; `label`
        { label = "attn", name = "attention" },    # names them in run ids
        { label = "hyena", name = "hyena" },
    ]
    [sweep.seq]                                    # a table is a tied axis: its keys vary
    "data.*.input_seq_len" = [64, 256]             # together (equal-length lists)
    "data.*.num_kv_pairs" = [4, 16]

Keys are dotted paths; a number selects an array item (``data.train.0.num_kv_pairs``) and
``*`` every item (``data.*.input_seq_len``: every train and test segment). Run ids are
folder names: characters other than letters, digits and ``._+=-`` become ``_``.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import attrs

from zoology.errors import ConfigError, UserError
from zoology.paths import assign
from zoology.runs import safe_name

MAX_REPLICATES = 1000  # more is a typo, not an experiment (train.replicates is checked against it)

# short names of common keys in run ids: attention-d64-lr1e-3-L256
SHORT = {"d_model": "d", "learning_rate": "lr", "input_seq_len": "L", "num_kv_pairs": "kv",
         "batch_size": "bs", "n_layers": "layers", "weight_decay": "wd", "seed": "seed"}


@attrs.frozen
class Point:
    """One run of a sweep: its raw experiment, id, and the values that vary (dotted key →
    value as written in [sweep]; ``labels``: the same keys → how the value reads in ids)."""

    raw: dict[str, Any]
    run_id: str
    values: dict[str, Any] = attrs.Factory(dict)
    labels: dict[str, str] = attrs.Factory(dict)


@attrs.frozen
class Axis:
    keys: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]  # one tuple per step, a value per key


def fmt(value: Any) -> str:
    """A value as it reads in a run id: 0.001 → 1e-3, tables by label or name."""
    if isinstance(value, dict):
        return str(value.get("label") or value.get("name") or value.get("task") or "table")
    if isinstance(value, list):
        return "+".join(fmt(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 0.01 or abs(value) >= 1e4):
            mantissa, exp = f"{value:.2e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"
        return f"{value:g}"
    return str(value)


def _unlabelled(value: Any) -> Any:
    """The value without the ``label`` keys that name tables (also tables inside an array,
    e.g. a per-layer mixer array) in run ids."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "label"}
    if isinstance(value, list):
        return [_unlabelled(v) for v in value]
    return value


def _label(key: str, value: Any) -> str:
    if isinstance(value, (dict, list)) and not isinstance(value, str):
        return fmt(value)
    name = key.split(".")[-1]
    return f"{SHORT.get(name, name)}{fmt(value)}"


def parse_axes(sweep: Any, source: str) -> list[Axis]:
    """The axes of a [sweep] table, checked: lists are grid axes, tables tied groups."""
    if not isinstance(sweep, dict) or not sweep:
        raise ConfigError(source, [("sweep", "must be a table of dotted key = [values] (or tables of those)")])
    axes, problems = [], []
    for key, spec in sweep.items():
        if isinstance(spec, list):
            if not spec:
                problems.append((f"sweep.{key}", "must list at least one value"))
            axes.append(Axis((key,), tuple((v,) for v in spec)))
        elif isinstance(spec, dict):
            lengths = {k: len(v) if isinstance(v, list) else None for k, v in spec.items()}
            bad = [k for k, n in lengths.items() if not n]
            if bad or not spec:
                problems += [(f"sweep.{key}.{k}", "must be a non-empty array") for k in bad] or \
                            [(f"sweep.{key}", "a tied axis needs at least one key")]
                continue
            if len(set(lengths.values())) > 1:
                got = ", ".join(f"{k}: {n}" for k, n in lengths.items())
                problems.append((f"sweep.{key}", f"tied keys must list the same number of values ({got})"))
                continue
            axes.append(Axis(tuple(spec), tuple(zip(*spec.values()))))
        else:
            problems.append((f"sweep.{key}", f"must be an array of values or a table of tied arrays, got {spec!r}"))
    if problems:
        raise ConfigError(source, problems)
    return axes


def expand(raw: dict[str, Any], source: str) -> list[Point]:
    """Every point of the sweep applied to ``raw`` (one point, id ``default``, without one)."""
    raw = dict(raw)
    sweep = raw.pop("sweep", None)
    if sweep is None:
        return replicate([Point(raw, raw.get("run_id", "default"))])
    axes = parse_axes(sweep, source)
    points = []
    for combo in itertools.product(*(axis.values for axis in axes)):
        run = copy.deepcopy(raw)
        values: dict[str, Any] = {}
        labels = []
        for axis, step in zip(axes, combo):
            for key, value in zip(axis.keys, step):
                values[key] = value
                try:
                    assign(run, key, _unlabelled(value))
                except UserError as exc:
                    raise ConfigError(source, [(f"sweep.{key}", str(exc))]) from None
            labels.append(_label(axis.keys[0], step[0]))
        points.append(Point(run, safe_name("-".join(labels)), values, {k: fmt(v) for k, v in values.items()}))
    _unique_ids(points)
    for p in points:
        p.raw["run_id"] = p.run_id
    return replicate(points)


def replicate(points: list[Point]) -> list[Point]:
    """Each point whose ``train.replicates`` is N > 1 becomes N points ``<id>-r0`` … that set
    ``train.replicate`` (a point that sets ``train.replicate`` itself, as a run directory's
    resolved config does, is one replicate already). Values the loader will reject are left
    for it to report."""
    out = []
    for p in points:
        train = p.raw.get("train")
        n = train.get("replicates", 1) if isinstance(train, dict) else 1
        if not isinstance(n, int) or isinstance(n, bool) or not 1 < n <= MAX_REPLICATES or "replicate" in train:
            out.append(p)
            continue
        for k in range(n):
            raw = copy.deepcopy(p.raw)
            raw["train"]["replicate"] = k
            raw["run_id"] = run_id = f"{p.run_id}-r{k}"
            out.append(Point(raw, run_id, {**p.values, "train.replicate": k},
                             {**p.labels, "train.replicate": f"r{k}"}))
    return out


def _unique_ids(points: list[Point]) -> None:
    """Tied axes are named by their first key; where ids collide, spell out every key."""
    ids = [p.run_id for p in points]
    if len(set(ids)) == len(ids):
        return
    for i, p in enumerate(points):
        full = safe_name("-".join(_label(k, v) for k, v in p.values.items()))
        object.__setattr__(points[i], "run_id", full)
    ids = [p.run_id for p in points]
    for i, p in enumerate(points):
        if ids.count(p.run_id) > 1:
            object.__setattr__(points[i], "run_id", f"{p.run_id}-{i}")
