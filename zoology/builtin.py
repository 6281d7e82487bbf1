"""The built-in plugin: core tasks and mixers, registered through the public hooks."""

from __future__ import annotations

from collections.abc import Callable

from zoology.hookspecs import hookimpl
from zoology.mixers.attention import Attention
from zoology.mixers.state import GLU, MLP, Identity
from zoology.tasks.mqar import MQAR

TASKS = [MQAR]
MIXERS = [Attention, MLP, GLU, Identity]


@hookimpl
def zoology_register_tasks(register: Callable[..., None]) -> None:
    for task in TASKS:
        register(task)


@hookimpl
def zoology_register_mixers(register: Callable[..., None]) -> None:
    for mixer in MIXERS:
        register(mixer)
