"""Benchmarks behind ``zoology bench``: figures to print, never timed tests.

* ``data``: generation time of every registered task at its ``bench_params``.
* ``mixers``: forward+backward throughput and activation memory of every registered
  mixer at d_model 128: sequence mixers over lengths 64…4096, state mixers (which act per
  position) at the first length.
* ``train``: steps/s of an experiment's training step, solo and packed (``--pack K``).
* ``ops``: where one mixer's forward+backward spends its time, op by op, with the layout of
  every operand (elementwise ops on strided operands run several times slower on CPU).
"""

from __future__ import annotations

import collections
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

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
    repeats: int = 5,
    max_seconds: float = 20.0,
    device: str = "cpu",
) -> Iterator[dict[str, Any]]:
    """One row per (mixer, length): fwd+bwd tokens/s and saved-activation MiB, batch sized to
    ``tokens_per_batch`` tokens, on ``device`` (fp32; a GPU is synchronised around each step).

    The mixers of one length are timed side by side: ``repeats`` rounds, each timing one step
    of every mixer in turn, and a row reports the median of its rounds (``spread``: slowest ÷
    fastest round). A machine whose speed drifts (a shared or throttled CPU) then slows every
    mixer of a round alike, so their ratios hold even when absolute figures move; ``vs_attention``
    is that ratio to attention's tokens/s when attention is among them. A mixer whose first step
    exceeds ``max_seconds`` is timed once and not at longer lengths.
    """
    reg = get_registry()
    comps = [c for c in reg.components("mixer") if not names or c.name in names]
    too_slow: set[str] = set()
    for i, length in enumerate(lengths):
        # a state mixer acts per position: one length measures it
        group = [c for c in comps if c.name not in too_slow and (c.role == "sequence" or i == 0)]
        batch = max(1, tokens_per_batch // length)
        steps, rows = [], []
        for comp in group:
            torch.manual_seed(0)
            mixer = build_mixer(comp.cls, {}, MixerContext(d_model=d_model, max_seq_len=length)).to(device)
            x = torch.randn(batch, length, d_model, device=device, requires_grad=True)
            # a dense upstream gradient, as in training (``.sum().backward()`` would send a
            # stride-0 one, which sends some backward matmuls down a per-matrix path)
            grad = torch.randn(batch, length, d_model, device=device)

            def step(mixer: torch.nn.Module = mixer, x: torch.Tensor = x, grad: torch.Tensor = grad) -> None:
                mixer(x).backward(grad)
                if x.is_cuda:
                    torch.cuda.synchronize()

            start = time.perf_counter()
            with _SavedBytes() as saved:
                step()
            first = time.perf_counter() - start
            if first > max_seconds:
                too_slow.add(comp.name)
            again = first <= max_seconds / repeats
            steps.append(step if again else None)
            rows.append({"mixer": comp.name, "role": comp.role, "seq_len": length, "batch": batch,
                         "times": [] if again else [first], "activation_mib": round(saved.bytes / 2**20, 1),
                         "state_size": mixer.state_size(length)})
        for _ in range(repeats):
            for step, row in zip(steps, rows):
                if step is not None:
                    start = time.perf_counter()
                    step()
                    row["times"].append(time.perf_counter() - start)
        speed = {row["mixer"]: batch * length / statistics.median(row["times"]) for row in rows}
        for row in rows:
            times = row.pop("times")
            yield {**row, "tokens_per_s": round(speed[row["mixer"]]),
                   "ms_per_step": round(statistics.median(times) * 1000, 1),
                   "spread": round(max(times) / min(times), 2),
                   **({"vs_attention": round(speed[row["mixer"]] / speed["attention"], 3)} if "attention" in speed else {})}


def layout(t: torch.Tensor) -> str:
    """One letter for how a tensor lies in memory: ``c`` row-major, ``t`` its last two dims
    transposed, ``b`` broadcast (a zero stride), ``s`` rows contiguous but strided between
    them (a slice, a permuted view), ``x`` anything else."""
    if t.is_contiguous():
        return "c"
    if 0 in t.stride():
        return "b"
    if t.dim() >= 2 and t.transpose(-1, -2).is_contiguous():
        return "t"
    return "s" if t.stride()[-1] == 1 else "x"


def _op_kind(func: Any) -> str:
    name = func.overloadpacket.__name__.lstrip("_")
    if getattr(func, "is_view", False):
        return "view"
    if "mm" in name or "attention" in name or "convolution" in name:
        return "matmul"
    if name.rstrip("_") in ("clone", "copy", "to_copy", "cat", "stack", "flip", "constant_pad_nd", "contiguous"):
        return "copy"
    return "elementwise"


class _OpTimer(TorchDispatchMode):
    """Times every aten op run under it (synchronising a GPU around each), keyed by op,
    operands, kind and ``phase`` (set by the caller: forward or backward)."""

    def __init__(self, sync: bool) -> None:
        super().__init__()
        self.sync = sync
        self.phase = "fwd"
        self.stats: dict[tuple[str, str, str, str], list[float]] = collections.defaultdict(lambda: [0.0, 0])

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if self.sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        if self.sync:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        tensors = [a for a in tree_leaves(args) if isinstance(a, torch.Tensor)]
        shown = [f"{'×'.join(map(str, t.shape)) or 'scalar'} {layout(t)}" for t in tensors[:3]]
        operands = " · ".join(shown + ([f"+{len(tensors) - 3}"] if len(tensors) > 3 else []))
        stat = self.stats[(func.overloadpacket.__name__, operands, _op_kind(func), self.phase)]
        stat[0] += elapsed
        stat[1] += 1
        return out


def bench_ops(name: str, length: int = 256, d_model: int = 128, tokens_per_batch: int = 8192, steps: int = 3,
              device: str = "cpu") -> Iterator[dict[str, Any]]:
    """One row per (op, operands) of one step of mixer ``name`` (forward + backward, fp32, the
    shapes of ``bench mixers``), slowest first: milliseconds and calls per step, the share of the
    step, the op's kind (matmul, elementwise, copy, view), its phase (fwd, bwd) and ``strided``: an elementwise op
    with an operand that is neither row-major nor broadcast — the ones a different layout
    upstream can often speed up several times on CPU (see docs/performance.md).

    Each op is timed alone through a Python dispatch mode, which adds a few microseconds per
    op: the figures say where the time goes, and overstate the many small ops a little.
    """
    comp = get_registry().get("mixer", name)
    batch = max(1, tokens_per_batch // length)
    torch.manual_seed(0)
    mixer = build_mixer(comp.cls, {}, MixerContext(d_model=d_model, max_seq_len=length)).to(device)
    x = torch.randn(batch, length, d_model, device=device, requires_grad=True)
    grad = torch.randn(batch, length, d_model, device=device)
    mixer(x).backward(grad)  # warm-up: first-call costs are not the step's
    timer = _OpTimer(sync=x.is_cuda)
    with timer:
        for _ in range(steps):
            timer.phase = "fwd"
            y = mixer(x)
            timer.phase = "bwd"
            y.backward(grad)
    total = sum(seconds for seconds, _ in timer.stats.values())
    for (op, operands, kind, phase), (seconds, calls) in sorted(timer.stats.items(), key=lambda kv: -kv[1][0]):
        letters = [part.rsplit(" ", 1)[-1] for part in operands.split(" · ") if " " in part]
        yield {"op": op, "operands": operands, "kind": kind, "phase": phase, "calls": round(calls / steps),
               "ms_per_step": round(seconds / steps * 1000, 2), "share": round(seconds / total, 4),
               "strided": kind == "elementwise" and any(c in "tsx" for c in letters)}


def summarize_ops(rows: list[dict[str, Any]]) -> str:
    """Totals of :func:`bench_ops` rows by phase and by kind, one line."""
    ms, phases = collections.Counter(), collections.Counter()
    for r in rows:
        ms["strided elementwise" if r["strided"] else r["kind"]] += r["ms_per_step"]
        phases[r["phase"]] += r["ms_per_step"]
    total = sum(ms.values())
    parts = ", ".join(f"{kind} {v:.1f} ({v / total:.0%})" for kind, v in ms.most_common())
    return (f"{total:.1f} ms per step (each op timed alone; forward {phases['fwd']:.1f}, backward "
            f"{phases['bwd']:.1f}): {parts}")


def format_rows(rows: list[dict[str, Any]], width: int | None = None) -> str:
    if not rows:
        return "(nothing to benchmark)"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return format_table(keys, [[r.get(k, "") for k in keys] for r in rows], width)


def bench_train(experiment: Path, overrides: list[str] = (), pack: int = 1, steps: int = 50,
                warmup: int = 5, repeats: int = 3) -> Iterator[dict[str, Any]]:
    """Steps/s of the training step of ``experiment``'s first sweep point: solo (a Trainer's
    own epoch loop) and, with ``pack`` K > 1, K copies with seeds seed … seed+K-1 trained as
    one pack (:meth:`zoology.pack.Pack.train_round`); models×steps/s is K × steps/s.

    After ``warmup`` untimed steps (first-step allocations, AdamW's state), solo and pack
    take turns at ``steps`` steps, ``repeats`` times; each row reports its fastest turn (a
    loaded machine slows some turns, never speeds one up). Batches come from each copy's own
    loader, fetched beforehand. Nothing is logged; run directories live in a temporary folder."""
    from zoology.config import load_points

    _, exp = load_points(experiment, list(overrides))[0]
    with tempfile.TemporaryDirectory() as tmp:
        timed = _time_steps(exp, sorted({1, pack}), steps, warmup, repeats, tmp)
    solo = 1 / timed.seconds[1]
    for k in sorted({1, pack}):
        row: dict[str, Any] = {"experiment": exp.name, "pack": k, "steps": steps}
        if k in timed.seconds:
            rate = 1 / timed.seconds[k]
            row.update(steps_per_s=round(rate, 2), model_steps_per_s=round(k * rate, 2), vs_solo=round(k * rate / solo, 2))
        else:
            row["note"] = timed.notes[k]
        yield row


@attrs.define
class _Timed:
    """What :func:`_time_steps` measured of one experiment."""

    seconds: dict[int, float]  # pack size (1: solo) → seconds per training step (fastest or median turn)
    notes: dict[int, str]  # pack size → why it could not be timed (the model cannot pack)
    start: dict[int, float]  # pack size → one-off seconds: data, models, a pack's probe, the first steps' extra
    eval_seconds: float  # one evaluation of the whole validation set, solo
    checkpoint_seconds: float  # one checkpoint written, solo
    steps_per_epoch: int  # training batches (forward and backward each) in one epoch


def _time_steps(exp: Any, sizes: list[int], steps: int, warmup: int, repeats: int, tmp: str,
                typical: bool = False) -> _Timed:
    """Seconds per training step of ``exp`` solo and as packs of the other ``sizes`` (copies
    with seeds seed … seed+K-1), taking turns ``repeats`` times after ``warmup`` untimed steps
    (the fastest turn, or with ``typical`` the median one); the one-off seconds of starting
    each; and the seconds of one solo evaluation of the validation set and of one checkpoint."""
    from zoology import pack as packing
    from zoology.config import SEED_MAX, LoggingConfig
    from zoology.runs import RunDir
    from zoology.train import Trainer, evaluate

    exp = attrs.evolve(exp, logging=LoggingConfig(),
                       train=attrs.evolve(exp.train, early_stopping=None, checkpoint_every=0))
    if not exp.data.cache_dir:  # the copies' data are the same: generated once, then read
        exp = attrs.evolve(exp, data=attrs.evolve(exp.data, cache_dir=os.path.join(tmp, "data")))
    turns: dict[int, Any] = {}
    notes: dict[int, str] = {}
    start: dict[int, float] = {}
    eval_seconds, checkpoint_seconds, per_epoch = 0.0, 0.0, 0
    with packing.expected_warnings():
        for k in sizes:
            unused: set[str] = set()
            before = time.perf_counter()
            if k > 1:
                problem, unused = packing.probe(exp)
                if problem is not None:
                    notes[k] = problem
                    continue
            members = [Trainer(attrs.evolve(exp, run_id=f"m{i}", train=attrs.evolve(
                exp.train, seed=(exp.train.seed + i) % (SEED_MAX + 1))), RunDir(tmp, f"pack{k}", f"m{i}"), quiet=True)
                for i in range(k)]
            for m in members:
                m.restore()
            setup = time.perf_counter() - before  # the probe, data and models: once per run or pack
            if k == 1:
                m = members[0]
                per_epoch = len(m.train_loader)  # batches: what a timed step is (accumulation included)
                with m.precision.autocast():
                    t0 = time.perf_counter()
                    evaluate(m.model, m.valid_loader, m.splits["valid"], m.acc, "valid")
                    eval_seconds = time.perf_counter() - t0
            for m in members:
                m.valid_loader = list(itertools.islice(m.valid_loader, 1))  # the untimed evaluation: one batch
            turns[k] = _turn(members, [_batches(m, warmup + steps) for m in members], warmup, unused)
            start[k] = setup + turns[k](warm=True)  # the warm-up steps' steady share is taken off below
            if k == 1:
                m = members[0]
                m.best_state = {n: t.detach().clone() for n, t in m.acc.unwrap_model(m.model).state_dict().items()}
                t0 = time.perf_counter()
                m.save_checkpoint(1)
                checkpoint_seconds = time.perf_counter() - t0
        seconds: dict[int, list[float]] = {k: [] for k in turns}
        for _ in range(repeats):
            for k, turn in turns.items():
                seconds[k].append(turn())
    per_step = {k: (statistics.median(t) if typical else min(t)) / steps for k, t in seconds.items()}
    start = {k: max(0.0, s - warmup * per_step[k]) for k, s in start.items()}
    return _Timed(per_step, notes, start, eval_seconds, checkpoint_seconds, per_epoch)


def bench_sweep(experiment: Path, overrides: list[str] = (), pack: int = 1, steps: int = 10,
                warmup: int = 2) -> Iterator[dict[str, Any]]:
    """The wall time that training every run of ``experiment`` would take here, one run after
    another and (``pack`` K > 1) as ``zoology run --pack K`` packs it, estimated from a few
    timed steps: one row per group of runs that share every shape (they differ only in what
    a pack lets members differ in: seeds, learning rate, ...; so a step costs them the same),
    then a ``total`` row.

    For each group one run is timed: three turns of ``steps`` training steps after ``warmup``,
    the median turn (solo, and as a pack of min(K, runs in the group)), its start (data, model, a pack's probe, the warm-up
    steps' one-off costs), one evaluation of its validation set and one checkpoint. A run's
    estimate is its start + max_epochs × (steps per epoch × seconds per step + an evaluation)
    + its checkpoints + a final evaluation (the test split, taken to cost what the validation
    split does); a pack's, its start + its longest member's epochs × steps per epoch × the
    pack's seconds per step + every member's evaluations and checkpoints (members evaluate
    and save one after another). An upper bound where early stopping ends runs sooner; the
    process's own start-up (importing torch: once per ``zoology run`` or worker) is left out."""
    from zoology import pack as packing
    from zoology.config import load_points

    runs = [exp for _, exp in load_points(experiment, list(overrides))]
    groups: dict[str, list[Any]] = {}
    for exp in runs:
        groups.setdefault(packing.pack_key(exp), []).append(exp)
    total_solo = total_packed = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        _time_steps(runs[0], [1], 1, 1, 1, os.path.join(tmp, "warm"))  # the process's own first-use costs, untimed
        for i, group in enumerate(groups.values()):
            rep = group[0]
            size = min(pack, len(group)) if packing.unpackable(rep) is None else 1
            timed = _time_steps(rep, sorted({1, size}), steps, warmup, 3, os.path.join(tmp, str(i)), typical=True)
            per_epoch = timed.steps_per_epoch
            solo_step, evaluation = timed.seconds[1], timed.eval_seconds

            solo = sum(timed.start[1] + e.train.max_epochs * per_epoch * solo_step + _besides_steps(e, timed) for e in group)
            row: dict[str, Any] = {"group": rep.run_id, "runs": len(group), "steps_per_epoch": per_epoch,
                                   "max_epochs": max(e.train.max_epochs for e in group),
                                   "start_s": round(timed.start[1], 2), "solo_ms_per_step": round(solo_step * 1e3, 2),
                                   "eval_s": round(evaluation, 2), "checkpoint_s": round(timed.checkpoint_seconds, 2),
                                   "solo_estimate_s": round(solo, 2)}
            packed = solo
            if pack > 1:
                if size in timed.seconds and size > 1:
                    packs, _ = packing.plan([(None, e, None) for e in group], pack)
                    packed = 0.0
                    for p in packs:  # a pack of one trains solo; smaller packs are costed as the largest
                        k = size if len(p) > 1 else 1
                        packed += (timed.start[k] + max(e.train.max_epochs for _, e, _ in p) * per_epoch
                                   * timed.seconds[k] + sum(_besides_steps(e, timed) for _, e, _ in p))
                    row.update(pack=size, pack_start_s=round(timed.start[size], 2),
                               pack_ms_per_step=round(timed.seconds[size] * 1e3, 2))
                else:
                    row.update(pack=1, note=timed.notes.get(size, packing.unpackable(rep) or "one run"))
                row["packed_estimate_s"] = round(packed, 2)
            total_solo, total_packed = total_solo + solo, total_packed + packed
            yield row
    total: dict[str, Any] = {"group": "total", "runs": len(runs), "solo_estimate_s": round(total_solo, 2),
                             "solo_estimate": _duration(total_solo)}
    if pack > 1:
        total.update(packed_estimate_s=round(total_packed, 2), packed_estimate=_duration(total_packed),
                     speedup=round(total_solo / total_packed, 2))
    yield total


def _besides_steps(exp: Any, timed: _Timed) -> float:
    """Seconds of a run's evaluations (every epoch, and the final test) and checkpoints."""
    every = exp.train.checkpoint_every
    saves = -(-exp.train.max_epochs // every) if every else 0
    return (exp.train.max_epochs + 1) * timed.eval_seconds + saves * timed.checkpoint_seconds


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{s:02d}"


def _turn(members: list[Any], batches: list[list[Any]], warmup: int, unused: set[str]) -> Any:
    """A function that trains ``members`` (solo or as one pack) on their warm-up batches
    (``warm=True``) or on the rest, and returns the seconds it trained."""
    from zoology import pack as packing

    stack = None if len(members) == 1 else packing.Stack(
        [m.acc.unwrap_model(m.model) for m in members], [m.optimizer for m in members], unused,
        members[0].precision.autocast)

    def turn(warm: bool = False) -> float:
        for m, b in zip(members, batches):
            m.train_loader = b[:warmup] if warm else b[warmup:]
        before = members[0].train_time
        if stack is None:
            members[0].run_epoch(1)
        else:
            packing.Pack(members, unused, True, lambda *_: None).train_round(members, stack, [1] * len(members))
        return members[0].train_time - before

    return turn


def _batches(trainer: Any, n: int) -> list[Any]:
    """The first ``n`` batches ``trainer`` trains on (over as many epochs as that takes)."""
    out: list[Any] = []
    for epoch in itertools.count(1):
        trainer.order.epoch = epoch
        out += itertools.islice(trainer.train_loader, n - len(out))
        if len(out) >= n:
            return out
    raise AssertionError("unreachable")
