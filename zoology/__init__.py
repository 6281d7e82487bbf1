"""Zoology: understand and test sequence-mixer architectures on synthetic tasks."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from zoology.config import Experiment, MixerSpec, dump_experiment, load_experiment, load_experiments
from zoology.errors import ConfigError, FieldError, UserError
from zoology.hookspecs import hookimpl
from zoology.plugins import get_registry, load_registry
from zoology.results import load_runs
from zoology.tasks.base import IGNORE_INDEX, Segment, Task, at_least, between, param, token_dtype
from zoology.tasks.sampling import (
    distinct,
    first_occurrence,
    generator,
    shift_labels,
    successive_draws,
    weighted_distinct,
)


def get_task(name: str, **params: Any) -> Task:
    """A registered task by name, e.g. ``get_task("mqar", vocab_size=256, input_seq_len=64,
    num_examples=8)``; ``.generate(seed)`` then gives its Segment."""
    return get_registry().get("task", name).cls(**params)


__all__ = [
    "IGNORE_INDEX", "ConfigError", "Experiment", "FieldError", "MixerSpec", "Segment", "Task",
    "UserError", "at_least", "between", "distinct", "dump_experiment", "first_occurrence",
    "generator", "get_registry", "get_task", "hookimpl", "load_experiment", "load_experiments",
    "load_registry", "load_runs", "param", "shift_labels", "successive_draws", "token_dtype",
    "weighted_distinct",
]
