"""How a mixer is built: the context the model fills in, and the one function that builds.

A mixer's constructor keyword arguments are its config. Five of them are *context*: the
model knows them, so users never write them in TOML, and a constructor receives only the
ones it declares. Everything that instantiates a mixer (the model, config validation,
``zoology show``, ``zoology bench``, ``zoology.testing``) goes through :func:`build_mixer`.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import attrs

ROLES = ("sequence", "state")
Role = Literal["sequence", "state"]


@attrs.frozen
class MixerContext:
    """What the model passes to every mixer constructor that declares it. The defaults are
    the small model that ``zoology show``, ``zoology bench`` and the conformance checks use
    when there is no experiment."""

    d_model: int = 128
    layer_idx: int = 0
    n_layers: int = 2
    max_seq_len: int = 64
    vocab_size: int = 256
    # one dict per model, the same for every layer: how a layer hands data on to later
    # layers in one forward pass (RWKV-7's value residual); a mixer built on its own gets None
    shared: dict[str, Any] | None = attrs.field(default=None, eq=False)


# Filled in by the model from the experiment; never set in a mixer's TOML table.
CONTEXT_ARGS: tuple[str, ...] = tuple(f.name for f in attrs.fields(MixerContext))


def role_of(cls: type) -> Role:
    """``"sequence"`` (mixes across positions) or ``"state"`` (per position, e.g. an MLP):
    a mixer class declares ``role = "state"``; the default is a sequence mixer."""
    role = getattr(cls, "role", "sequence")
    if role not in ROLES:
        raise TypeError(f"{cls.__name__}.role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def build_mixer(cls: type, params: dict[str, Any] | None = None, context: MixerContext | None = None) -> Any:
    """``cls(**params)`` plus the context arguments its constructor declares."""
    context = context or MixerContext()
    accepted = inspect.signature(cls.__init__).parameters
    ctx = {k: getattr(context, k) for k in CONTEXT_ARGS if k in accepted}
    return cls(**ctx, **(params or {}))
