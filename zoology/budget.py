"""Will it fit? A memory estimate of a run, checked before anything is generated or built.

An experiment that cannot fit (``num_examples = 10**12``, ``n_layers = 10**6``) should be
refused in a second, naming the key to change, not after minutes of allocation or a swap
storm. The estimate is deliberately simple and errs high:

* data: every split's tokens (inputs and labels) in their token dtype, ×3 for what
  generation holds at its peak;
* model: parameters × 16 bytes (fp32 weights, gradients and AdamW's two moments), counted
  from a model of one cycle of layers built on the meta device, so nothing is allocated and
  a million layers cost no more than two;
* activations: one training step keeps about 24 floats per (example, position, channel,
  layer), plus the logits of the scored positions (at most every position) and their
  gradient.

``zoology run`` and ``zoology validate`` refuse a run whose estimate exceeds the memory
available now (``--force`` overrides).
"""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import torch

from zoology.config import Experiment
from zoology.errors import UserError
from zoology.tasks.base import token_dtype

ACTIVATION_FLOATS = 24  # per (example, position, channel, layer)
GENERATION_PEAK = 3


@attrs.frozen
class Estimate:
    """Bytes by part, each with the key that drives it."""

    parts: dict[str, tuple[int, str]]  # part → (bytes, key path)

    @property
    def total(self) -> int:
        return sum(b for b, _ in self.parts.values())

    @property
    def dominant(self) -> tuple[str, int, str]:
        part = max(self.parts, key=lambda p: self.parts[p][0])
        return part, *self.parts[part]


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} EB"


def _data(exp: Experiment) -> tuple[int, str]:
    biggest, key, total = -1, "data", 0
    for split, tasks, copies in (("train", exp.data.train, 1), ("test", exp.data.test, 2)):  # valid + test
        for i, t in enumerate(tasks):
            n = 2 * t.num_examples * t.input_seq_len * token_dtype(t.vocab_size).itemsize * copies
            total += n
            if n > biggest:
                what = "num_examples" if t.num_examples >= t.input_seq_len else "input_seq_len"
                biggest, key = n, f"data.{split}[{i}].{what}"
    return total * GENERATION_PEAK, key


def parameters(exp: Experiment) -> int:
    """The model's parameter count without building it: one cycle of layers on the meta
    device, the rest extrapolated."""
    from zoology.model import LanguageModel

    m = exp.model
    cycle = math.lcm(len(m.sequence_mixer), len(m.state_mixer))
    k = min(m.n_layers, cycle)
    with torch.device("meta"):
        model = LanguageModel(attrs.evolve(exp, model=attrs.evolve(m, n_layers=k)))
    per_cycle = sum(p.numel() for b in model.blocks for p in b.parameters())
    rest = model.num_parameters() - per_cycle
    return rest + per_cycle * m.n_layers // k


def estimate(exp: Experiment) -> Estimate:
    m = exp.model
    vocab = m.vocab_size or exp.vocab_size
    params = parameters(exp)
    embed = vocab * m.d_model
    model_key = ("model.n_layers" if params - embed > embed and m.n_layers > 64 else
                 "model.vocab_size" if embed * 2 > params else "model.d_model")
    tokens = exp.data.batch_size * exp.max_seq_len
    longest = max(((split, i, t) for split in ("train", "test") for i, t in enumerate(getattr(exp.data, split))),
                  key=lambda x: x[2].input_seq_len)
    step_key = ("model.n_layers" if m.n_layers > 64 else
                f"data.{longest[0]}[{longest[1]}].input_seq_len" if exp.max_seq_len > exp.data.batch_size
                else "data.batch_size")
    return Estimate({
        "data": _data(exp),
        "model and optimizer": (params * 16, model_key),
        "activations": (tokens * m.d_model * m.n_layers * ACTIVATION_FLOATS * 4, step_key),
        "logits": (tokens * vocab * 4 * 2, "model.vocab_size"),
    })


def available_memory() -> int | None:
    """Bytes the system can give now (Linux: MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check(exp: Experiment, source: str, available: int | None = None) -> Estimate:
    """The estimate; UserError naming the dominant key if it exceeds ``available``
    (default: the memory available now)."""
    est = estimate(exp)
    available = available_memory() if available is None else available
    if available is not None and est.total > available:
        part, _, key = est.dominant
        parts = ", ".join(f"{p} {human(b)}" for p, (b, _) in est.parts.items())
        raise UserError(f"{source}: run {exp.run_id}: {key}: needs about {human(est.total)} of memory "
                        f"({parts}; mostly {part}), more than the {human(available)} available; "
                        "make it smaller, or pass --force to try anyway")
    return est
