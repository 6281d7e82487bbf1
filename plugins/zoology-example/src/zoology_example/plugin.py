"""The module the ``zoology`` entry point names: one function per hook."""

from __future__ import annotations

from collections.abc import Callable

import zoology
from zoology_example.gru import GRU
from zoology_example.multi_hop import MultiHopRecall


@zoology.hookimpl
def zoology_register_tasks(register: Callable[..., None]) -> None:
    register(MultiHopRecall)  # as "example_multi_hop_recall" (its `name`)


@zoology.hookimpl
def zoology_register_mixers(register: Callable[..., None]) -> None:
    register(GRU)  # as "example_gru"
