"""Expand a ``[sweep]`` table into one raw experiment per grid point, with readable ids."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from zoology.errors import ConfigError


def _label(key: str, value: Any) -> str:
    short = key.split(".")[-1]
    if isinstance(value, dict):
        return str(value.get("label") or value.get("name") or value.get("task") or short)
    if isinstance(value, float):
        value = f"{value:g}"
    return f"{short}{value}"


def expand(raw: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """Every combination of the sweep axes (dotted key → list of values) applied to ``raw``."""
    from zoology.config import set_path

    raw = dict(raw)
    sweep = raw.pop("sweep", None)
    if sweep is None:
        return [raw]
    if not isinstance(sweep, dict) or not sweep:
        raise ConfigError(source, [("sweep", "must be a table of dotted key = [values]")])
    bad = [(f"sweep.{k}", "must be a non-empty array of values") for k, v in sweep.items()
           if not isinstance(v, list) or not v]
    if bad:
        raise ConfigError(source, bad)
    runs = []
    for combo in itertools.product(*sweep.values()):
        run = copy.deepcopy(raw)
        for key, value in zip(sweep, combo):
            value = copy.deepcopy(value)
            if isinstance(value, dict):
                value.pop("label", None)
            set_path(run, key, value)
        run["run_id"] = "-".join(_label(k, v) for k, v in zip(sweep, combo))
        runs.append(run)
    return runs
