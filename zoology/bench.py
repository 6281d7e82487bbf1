"""Benchmarks behind ``zoology bench``: figures to print, never timed tests.

* ``data``: generation time of every registered task at its ``bench_params``.
* ``mixers``: forward+backward throughput and activation memory of every registered
  mixer at d_model 128: sequence mixers over lengths 64…4096, state mixers (which act per
  position) at the first length.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

from zoology.mixer_context import MixerContext, build_mixer
from zoology.plugins import get_registry
from zoology.tables import format_table


def _best_of(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_data(names: list[str] | None = None, repeats: int = 1) -> Iterator[dict[str, Any]]:
    """One row per (task, setting): seconds to generate ``num_examples`` examples, after a
    64-example warm-up of the same task (first-touch of the output memory is counted)."""
    reg = get_registry()
    for comp in reg.components("task"):
        if names and comp.name not in names:
            continue
        for params in getattr(comp.cls, "bench_params", None) or [{**comp.cls.example, "num_examples": 100_000}]:
            task = comp.cls(**params)
            comp.cls(**{**params, "num_examples": 64}).generate(1)  # warm-up: imports, thread pools
            seconds = _best_of(lambda task=task: task.generate(0), repeats)
            yield {"task": comp.name, **params, "seconds": round(seconds, 6),
                   "examples_per_s": round(task.num_examples / seconds)}


class _SavedBytes:
    """Bytes of tensors autograd saves for backward: the activation memory of training."""

    def __init__(self) -> None:
        self.bytes = 0

    def __enter__(self) -> _SavedBytes:
        def pack(t: torch.Tensor) -> torch.Tensor:
            self.bytes += t.numel() * t.element_size()
            return t

        self._ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def bench_mixers(
    names: list[str] | None = None,
    lengths: tuple[int, ...] = (64, 256, 1024, 4096),
    d_model: int = 128,
    tokens_per_batch: int = 8192,
    repeats: int = 3,
    max_seconds: float = 20.0,
) -> Iterator[dict[str, Any]]:
    """One row per (mixer, length): fwd+bwd tokens/s and saved-activation MiB, batch sized to
    ``tokens_per_batch`` tokens. A length whose single run exceeds ``max_seconds`` ends that mixer."""
    reg = get_registry()
    for comp in reg.components("mixer"):
        if names and comp.name not in names:
            continue
        # a state mixer acts per position: one length measures it
        for length in lengths if comp.role == "sequence" else lengths[:1]:
            torch.manual_seed(0)
            mixer = build_mixer(comp.cls, {}, MixerContext(d_model=d_model, max_seq_len=length))
            batch = max(1, tokens_per_batch // length)
            x = torch.randn(batch, length, d_model, requires_grad=True)

            def step(mixer: torch.nn.Module = mixer, x: torch.Tensor = x) -> None:
                mixer(x).sum().backward()

            start = time.perf_counter()
            with _SavedBytes() as saved:
                step()
            first = time.perf_counter() - start
            seconds = _best_of(step, repeats) if first < max_seconds / repeats else first
            yield {"mixer": comp.name, "role": comp.role, "seq_len": length, "batch": batch,
                   "tokens_per_s": round(batch * length / seconds),
                   "ms_per_step": round(seconds * 1000, 1),
                   "activation_mib": round(saved.bytes / 2**20, 1),
                   "state_size": mixer.state_size(length)}
            if first > max_seconds:
                break


def format_rows(rows: list[dict[str, Any]], width: int | None = None) -> str:
    if not rows:
        return "(nothing to benchmark)"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return format_table(keys, [[r.get(k, "") for k in keys] for r in rows], width)
