"""Find plugins, call their hooks, and keep what they registered in a Registry.

Built-in components come in through the same hooks as third-party ones
(``zoology.builtin``). Entry points (group ``zoology``) are loaded one at a time so that
one broken plugin becomes a warning naming it, not a dead CLI.
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import inspect
import os
import re
import typing
import warnings
from collections.abc import Callable
from typing import Any

import attrs
import pluggy

from zoology import hookspecs
from zoology.errors import UserError

ENTRY_POINT_GROUP = "zoology"
BUILTIN_PLUGIN = "zoology.builtin"
KINDS = ("task", "mixer")
# Filled in by the model from the experiment; never set in a mixer's TOML table. `shared` is
# one dict per model, the same for every layer: how a layer hands data on to later layers
# (RWKV-7's value residual); a mixer built on its own gets none.
CONTEXT_ARGS = ("d_model", "layer_idx", "n_layers", "max_seq_len", "vocab_size", "shared")
_HOOKS = {"task": "zoology_register_tasks", "mixer": "zoology_register_mixers"}


class PluginError(UserError):
    """A plugin failed to load or to register (fatal only with ZOOLOGY_STRICT_PLUGINS=1)."""


class UnknownComponent(UserError):
    """A name that no plugin registered."""


@attrs.frozen
class Param:
    name: str
    type: str
    default: Any = attrs.NOTHING
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is attrs.NOTHING


@attrs.frozen
class Component:
    """One registered task or mixer and where it came from."""

    name: str
    kind: str
    cls: type
    plugin: str
    version: str | None
    doc: str
    params: tuple[Param, ...]
    # the attrs class that TOML parameters are structured into (the task class itself for tasks)
    params_cls: type = attrs.field(repr=False)


@attrs.define
class PluginInfo:
    name: str
    distribution: str | None = None
    version: str | None = None
    entry_point: str | None = None
    hooks: list[str] = attrs.Factory(list)
    components: list[str] = attrs.Factory(list)
    error: str | None = None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _fail(info: PluginInfo, message: str) -> None:
    info.error = message
    text = f"zoology plugin {info.name!r} ({info.distribution or 'unknown distribution'}): {message}"
    if _env_flag("ZOOLOGY_STRICT_PLUGINS"):
        raise PluginError(text)
    warnings.warn(text, stacklevel=3)


def get_plugin_manager(
    autoload: bool | None = None,
) -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """A fresh plugin manager with the built-ins and (unless disabled) every entry point."""
    from zoology import builtin

    pm = pluggy.PluginManager("zoology")
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    version = _version("zoology")
    infos[BUILTIN_PLUGIN] = PluginInfo(BUILTIN_PLUGIN, "zoology", version, None)
    pm.register(builtin, name=BUILTIN_PLUGIN)
    if autoload is None:
        autoload = not _env_flag("ZOOLOGY_DISABLE_PLUGIN_AUTOLOAD")
    if not autoload:
        return pm, infos
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=ep.name,
            distribution=dist.name if dist else None,
            version=dist.version if dist else None,
            entry_point=ep.value,
        )
        if ep.name in infos:
            info.name = f"{ep.name} ({info.distribution})"
        infos[info.name] = info
        try:
            module = ep.load()
        except Exception as exc:
            _fail(info, f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}")
            continue
        try:
            pm.register(module, name=info.name)
        except Exception as exc:  # pluggy.PluginValidationError: wrong hook arguments
            _fail(info, str(exc))
            continue
        unknown = [
            impl.function.__name__
            for caller in pm.get_hookcallers(module) or []
            for impl in caller.get_hookimpls()
            if impl.plugin is module and not caller.has_spec()
        ]
        if unknown:
            pm.unregister(module)
            known = ", ".join(_HOOKS.values())
            _fail(info, f"unknown hook(s) {', '.join(unknown)}; the hooks are: {known}")
    return pm, infos


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def first_line(doc: str | None) -> str:
    return inspect.cleandoc(doc or "").split("\n\n")[0].replace("\n", " ").strip()


def _arg_docs(doc: str | None) -> dict[str, str]:
    """Parameter docs from a docstring's ``Args:`` section (``name: text`` lines)."""
    out: dict[str, str] = {}
    in_args, current = False, None
    for line in inspect.cleandoc(doc or "").splitlines():
        if line.strip() in ("Args:", "Parameters:", "Arguments:"):
            in_args = True
            continue
        if not in_args:
            continue
        if line and not line.startswith(" "):
            break
        m = re.match(r"^\s{1,8}(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
        if m:
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current and line.strip():
            out[current] += " " + line.strip()
    return out


def type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _task_params(cls: type) -> tuple[tuple[Param, ...], type]:
    from zoology.tasks.base import Task

    if not (isinstance(cls, type) and issubclass(cls, Task) and attrs.has(cls)):
        raise TypeError(f"{cls!r} is not an attrs subclass of zoology.Task")
    hints = typing.get_type_hints(cls)
    params = tuple(
        Param(f.name, type_name(hints.get(f.name, f.type)), f.default, f.metadata.get("doc", ""))
        for f in attrs.fields(cls)
        if f.init
    )
    return params, cls


def _mixer_params(cls: type) -> tuple[tuple[Param, ...], type]:
    import torch

    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise TypeError(f"{cls!r} is not a torch.nn.Module subclass")
    hints = typing.get_type_hints(cls.__init__)
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass inherits its base's argument docs
        docs.update(_arg_docs(klass.__doc__))
    params, fields = [], {}
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.name in CONTEXT_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name not in hints or p.default is p.empty:
            raise TypeError(
                f"constructor argument {p.name!r} of {cls.__name__} needs a type hint and a "
                "default (a mixer's constructor arguments are its config)"
            )
        params.append(Param(p.name, type_name(hints[p.name]), p.default, docs.get(p.name, "")))
        fields[p.name] = attrs.field(type=hints[p.name], default=p.default)
    params_cls = attrs.make_class(f"{cls.__name__}Params", fields, frozen=True)
    return tuple(params), params_cls


class Registry:
    """Every registered task and mixer, by kind and name."""

    def __init__(self, pm: pluggy.PluginManager, plugins: dict[str, PluginInfo]) -> None:
        self.plugins = plugins
        self._components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        for kind in KINDS:
            caller = getattr(pm.hook, _HOOKS[kind])
            # in registration order: the built-ins first, so they keep their names
            for impl in caller.get_hookimpls():
                self._collect(kind, impl.plugin_name, impl.function)

    def _collect(self, kind: str, plugin: str, hook: Callable[..., None]) -> None:
        info = self.plugins[plugin]
        info.hooks.append(_HOOKS[kind])
        staged: list[Component] = []

        def register(cls: type, name: str | None = None) -> None:
            name = name or getattr(cls, "name", None)
            if not isinstance(name, str) or not name:
                raise TypeError(f"{cls!r} has no `name`; pass register(cls, name='...')")
            params, params_cls = (_task_params if kind == "task" else _mixer_params)(cls)
            staged.append(
                Component(name, kind, cls, plugin, info.version, first_line(cls.__doc__), params, params_cls)
            )

        try:
            hook(register=register)
        except Exception as exc:
            _fail(info, f"{_HOOKS[kind]} raised {type(exc).__name__}: {exc}")
            return
        table = self._components[kind]
        for comp in staged:
            if comp.name in table:
                other = table[comp.name].plugin
                _fail(info, f"{kind} {comp.name!r} is already registered by plugin {other!r}; "
                            f"plugin {plugin!r} may not register it again (rename one of them)")
                continue
            table[comp.name] = comp
            info.components.append(f"{kind}:{comp.name}")

    def names(self, kind: str) -> list[str]:
        return sorted(self._components[kind])

    def components(self, kind: str) -> list[Component]:
        return [self._components[kind][n] for n in self.names(kind)]

    def get(self, kind: str, name: str) -> Component:
        table = self._components[kind]
        if name in table:
            return table[name]
        close = difflib.get_close_matches(name, table, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownComponent(
            f"unknown {kind} {name!r}{hint} (available: {', '.join(sorted(table)) or 'none'})"
        )


def load_registry(autoload: bool | None = None) -> Registry:
    """Build a fresh registry (plugins found now); tests use this directly."""
    return Registry(*get_plugin_manager(autoload))


@functools.cache
def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    return load_registry()
