"""The hooks a Zoology plugin can implement.

A plugin is a module with functions decorated by ``zoology.hookimpl`` whose names match
the specifications below. Each hook receives a ``register`` callback:
``register(SomeClass)`` registers under ``SomeClass.name``; ``register(cls, name="...")``
overrides it.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("zoology")
hookimpl = pluggy.HookimplMarker("zoology")


@hookspec
def zoology_register_tasks(register: Callable[..., None]) -> None:
    """Register synthetic tasks (subclasses of ``zoology.Task``)."""


@hookspec
def zoology_register_mixers(register: Callable[..., None]) -> None:
    """Register mixers: ``torch.nn.Module`` classes used as sequence or state mixers."""
