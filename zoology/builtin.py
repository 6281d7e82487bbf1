"""The built-in plugin: core tasks and mixers, registered through the public hooks."""

from __future__ import annotations

from collections.abc import Callable

from zoology.hookspecs import hookimpl
from zoology.mixers import BUILTIN_MIXERS
from zoology.tasks import BUILTIN_TASKS


@hookimpl
def zoology_register_tasks(register: Callable[..., None]) -> None:
    for task in BUILTIN_TASKS:
        register(task)


@hookimpl
def zoology_register_mixers(register: Callable[..., None]) -> None:
    for mixer in BUILTIN_MIXERS:
        register(mixer)
