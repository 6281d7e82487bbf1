"""Packed training (``zoology run --pack K``): runs of a sweep that share every shape train
as one stacked model in one process.

A small model leaves the hardware idle between kernels, and a sweep is many small models
of the same shape. A pack stacks the parameters of up to K such runs (its members) along a
new leading dimension, ``[K, P]``, and one ``vmap(grad_and_value(loss))`` over
``functional_call`` computes every member's loss and gradient at once; a vectorised AdamW
then updates each member with its own learning rate (its own schedule and warmup), weight
decay and gradient clipping.

Only the training step is shared. Each member is a real :class:`zoology.train.Trainer`:
its own run directory and lock, data, data order, tracker run, evaluation, early stopping,
checkpoint and summary. After every epoch each member's slice of the stacked parameters
and AdamW moments is copied back into its own model and ``torch.optim.AdamW``
(:meth:`Stack.copy_out`) before it evaluates, checkpoints or finishes, so its checkpoint is
exactly a solo run's, and a pack rebuilt from members restored from their checkpoints
continues as if never stopped. A member that ends (early stopping, divergence, its last
epoch, an error) is finished as a solo run would be and leaves the stack; the others are
stacked anew and no longer pay for it.

Members may differ in the settings :data:`PACKABLE` lists (seeds and replicates, learning
rate, weight decay, warmup, clipping, embedding/residual dropout, epochs, early stopping,
selection, checkpointing, logging); everything else of their resolved configs must be
equal. Runs with gradient accumulation, fp16 (loss scaling) or several processes per run
train unpacked, with a one-line note. A model that cannot run under ``vmap`` (e.g. a mixer
with a custom ``autograd.Function`` that has no vmap rule) is found at the start by one
packed step on a tiny batch; its runs then train unpacked, with a note naming the mixer.

How a member differs from its solo run:

- numbers: the same arithmetic in batched kernels (and the loss over gathered positions
  instead of a boolean mask), so metrics and weights agree to float rounding, not bit for bit;
- dropout: masks are drawn for all members at once from the process's random stream
  (``randomness="different"``), so a member with dropout > 0 sees other masks than its solo
  run would (same rate, same distribution); with dropout 0 nothing is random;
- ``train_time`` and ``train_steps_per_s`` are the pack's: every member of a pack trains
  during the same wall seconds. The summary's ``pack`` names the members.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from zoology.config import Experiment, to_dict
from zoology.errors import UserError
from zoology.tasks.base import IGNORE_INDEX

if TYPE_CHECKING:
    from zoology.launch import Report
    from zoology.progress import SweepProgress
    from zoology.runs import RunDir
    from zoology.sweep import Point
    from zoology.train import Trainer

    Job = tuple[Point, Experiment, RunDir]

# settings in which the members of a pack may differ (dotted paths of the resolved config)
PACKABLE = (
    "run_id", "logging",
    "data.seed", "data.cache_dir", "data.eval_batch_size",
    "model.embed_dropout", "model.resid_dropout",
    "train.seed", "train.replicate", "train.replicates", "train.replicate_data",
    "train.learning_rate", "train.weight_decay", "train.warmup_steps", "train.max_grad_norm",
    "train.max_epochs", "train.early_stopping", "train.select_metric", "train.checkpoint_every",
)

# warnings a pack triggers by design: vmap's per-member loop for ops without a batching rule
# (a speed note, not a problem), and LambdaLR stepping an optimizer whose step() the pack
# replaces
_EXPECTED_WARNINGS = (r"There is a performance drop because we have not yet implemented the batching rule",
                      r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")


# -- which runs pack together -----------------------------------------------------------------


def pack_key(exp: Experiment) -> str:
    """What members of a pack share: the resolved experiment without the :data:`PACKABLE` settings."""
    tree = to_dict(exp)
    for dotted in PACKABLE:
        *parents, last = dotted.split(".")
        node = tree
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return json.dumps(tree, sort_keys=True)


def unpackable(exp: Experiment) -> str | None:
    """Why ``exp`` cannot train in a pack (a setting the stacked step does not implement), or None."""
    if exp.train.gradient_accumulation_steps > 1:
        return "train.gradient_accumulation_steps > 1"
    if exp.train.mixed_precision == "fp16":
        return "train.mixed_precision = 'fp16' (loss scaling)"
    return None


def plan(jobs: list[Job], size: int, why_not: str | None = None) -> tuple[list[list[Job]], list[str]]:
    """Split ``jobs`` (sweep point, experiment, run dir) into packs of at most ``size`` runs
    with equal :func:`pack_key`, and the notes on runs that train unpacked.

    Runs that can pack are grouped by key and each group is cut into as few packs as
    ``size`` allows, of sizes differing by at most one; a pack of one trains solo.
    ``why_not``: a reason that holds for every run (e.g. several processes per run)."""
    if size <= 1:
        return [[job] for job in jobs], []
    if why_not is not None:
        return [[job] for job in jobs], [f"--pack: {why_not}: every run trains unpacked"]
    groups: dict[str, list[Job]] = {}
    solo: dict[str, list[Job]] = {}
    for job in jobs:
        reason = unpackable(job[1])
        if reason is None:
            groups.setdefault(pack_key(job[1]), []).append(job)
        else:
            solo.setdefault(reason, []).append(job)
    packs: list[list[Job]] = []
    for group in groups.values():
        n = math.ceil(len(group) / size)
        cuts = [-(-len(group) * i // n) for i in range(n + 1)]  # the first packs the fuller
        packs += [group[a:b] for a, b in itertools.pairwise(cuts)]
    packs += [[job] for reason_jobs in solo.values() for job in reason_jobs]
    order = {id(job): i for i, job in enumerate(jobs)}
    packs.sort(key=lambda pack: order[id(pack[0])])
    notes = [f"--pack: {len(js)} run(s) with {reason} train unpacked" for reason, js in solo.items()]
    return packs, notes


# -- the stacked model and its optimizer --------------------------------------------------------


class MemberDropout(nn.Module):
    """``nn.Dropout`` whose rate is a buffer, so that every member of a pack has its own."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("p", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x * (torch.rand_like(x) >= self.p) / (1 - self.p)


def _inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper holds the torch one


class Stack:
    """K models of equal structure as one: every trainable parameter in a row of ``flat``
    [K, P] (grouped by optimizer param group, so each group is one column range), AdamW's
    moments alike, and the vmapped step.

    ``optimizers``: each model's ``torch.optim.AdamW`` (its param groups give the
    learning rate, weight decay, betas and eps; its state, if any, the moments and step
    count). ``unused``: names of parameters that get no gradient (torch's AdamW leaves
    those alone, so the pack does too). ``autocast``: the mixed-precision context.
    Buffers and frozen parameters are stacked once and only read: a module that updates a
    buffer while training (none of Zoology's does) would not train correctly in a pack."""

    def __init__(self, models: list[nn.Module], optimizers: list[torch.optim.Optimizer],
                 unused: set[str] = frozenset(), autocast: Any = contextlib.nullcontext) -> None:
        self.k, self.autocast = len(models), autocast
        self.optimizers = [_inner(o) for o in optimizers]
        named = [dict(m.named_parameters()) for m in models]
        group_of = [{id(p): g for g, group in enumerate(o.param_groups) for p in group["params"]}
                    for o in self.optimizers]
        trainable = [n for n, p in named[0].items() if n not in unused and id(p) in group_of[0]]
        groups = {n: group_of[0][id(named[0][n])] for n in trainable}
        for k in range(1, self.k):
            if any(group_of[k].get(id(named[k][n])) != g for n, g in groups.items()):
                raise ValueError("members of a pack must group their parameters alike")
        self.names = sorted(trainable, key=groups.__getitem__)  # each param group one column range
        self.shapes = [named[0][n].shape for n in self.names]
        self.numels = [named[0][n].numel() for n in self.names]
        self.columns = list(itertools.pairwise(itertools.accumulate(self.numels, initial=0)))
        self.segments = []  # (param group, first column, end column)
        for name, (a, b) in zip(self.names, self.columns):
            g = groups[name]
            if self.segments and self.segments[-1][0] == g:
                self.segments[-1] = (g, self.segments[-1][1], b)
            else:
                self.segments.append((g, a, b))
        self.params = [[named[k][n] for n in self.names] for k in range(self.k)]  # the members' own tensors
        with torch.no_grad():
            self.flat = torch.stack([torch.cat([p.reshape(-1) for p in row]) for row in self.params])  # [K, P]
            self.exp_avg, self.exp_avg_sq = torch.zeros_like(self.flat), torch.zeros_like(self.flat)
            self.steps = [0.0] * self.k
            for k, (opt, row) in enumerate(zip(self.optimizers, self.params)):
                for p, (a, b) in zip(row, self.columns):
                    state = opt.state.get(p, {})
                    if "exp_avg" in state:
                        self.exp_avg[k, a:b] = state["exp_avg"].reshape(-1)
                        self.exp_avg_sq[k, a:b] = state["exp_avg_sq"].reshape(-1)
                        self.steps[k] = float(state["step"])
        hyper = [(tuple(o.param_groups[g]["betas"]), o.param_groups[g]["eps"]) for o in self.optimizers
                 for g, _, _ in self.segments]
        if len(set(hyper)) != 1 or any(o.param_groups[0].get("amsgrad") or o.param_groups[0].get("maximize")
                                       for o in self.optimizers):
            raise ValueError("a pack's AdamW takes per-member learning rates and weight decay; betas and eps "
                             "must be equal, amsgrad and maximize off")
        (self.beta1, self.beta2), self.eps = hyper[0]
        # the rest of each model's state: frozen parameters, buffers, per-member dropout rates
        self.base = copy.deepcopy(models[0])
        rest = [{n: t for n, t in [*m.named_parameters(), *m.named_buffers()] if n not in self.names}
                for m in models]
        self.consts = {n: torch.stack([r[n].detach() for r in rest]) for n in rest[0]}
        rates = [{n: mod.p for n, mod in m.named_modules() if isinstance(mod, nn.Dropout)} for m in models]
        for name in rates[0]:
            if len({r[name] for r in rates}) > 1:
                self.base.set_submodule(name, MemberDropout())
                self.consts[f"{name}.p"] = torch.tensor([r[name] for r in rates], device=self.flat.device)
        self._grad = vmap(grad_and_value(self._loss), in_dims=(0, 0, 0, 0, 0), randomness="different")
        self._grad_all_positions = vmap(grad_and_value(self._loss), in_dims=(0, 0, 0, None, 0),
                                        randomness="different")

    def _loss(self, row: torch.Tensor, consts: dict[str, torch.Tensor], tokens: torch.Tensor,
              where: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
        """One member: its parameters ``row`` [P], tokens [B, L]; scored positions ``where``
        [M] (flat indices) with ``targets`` [M] (IGNORE_INDEX: padding), or every position
        (``where`` None) with targets [B, L]. The mean cross-entropy over scored positions."""
        params = {n: t.view(s) for n, t, s in zip(self.names, row.split(self.numels), self.shapes)}
        with self.autocast():
            logits = functional_call(self.base, {**params, **consts}, (tokens, where))
        logits = logits.float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)

    def gradients(self, tokens: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients [K, P] and losses [K] of one batch per member: tokens, labels [K, B, L].

        On CPU only the scored positions go through the last block's state mixer and the head
        (as in a solo run); their count differs between members, so each member's flat
        indices are padded to the longest, the padding scored as IGNORE_INDEX. Elsewhere
        every position is computed, which needs no host sync (as in a solo run)."""
        tokens, labels = tokens.long(), labels.long()
        self.base.train()
        with expected_warnings():
            if tokens.device.type != "cpu":
                return self._grad_all_positions(self.flat, self.consts, tokens, None, labels)
            scored = (labels != IGNORE_INDEX).flatten(1)  # [K, B·L]
            counts = scored.sum(1)  # [K]
            width = max(1, int(counts.max()))
            where = torch.argsort((~scored).to(torch.uint8), dim=1, stable=True)[:, :width]  # scored first, in order
            targets = labels.flatten(1).gather(1, where)
            targets[torch.arange(width) >= counts[:, None]] = IGNORE_INDEX
            return self._grad(self.flat, self.consts, tokens, where, targets)

    def step(self, tokens: torch.Tensor, labels: torch.Tensor, lrs: list[list[float]], weight_decays: list[list[float]],
             max_norms: list[float | None]) -> torch.Tensor:
        """One training step of every member; returns the losses [K] (before the update).

        ``lrs[k][g]`` / ``weight_decays[k][g]``: member k's param group g now. The update is
        torch's AdamW (decoupled weight decay, bias-corrected moments) with those as per-row
        values, after clipping each member's gradient norm to ``max_norms[k]`` (None: no clipping)."""
        grads, losses = self.gradients(tokens, labels)
        with torch.no_grad():
            if any(max_norms):
                self._clip(grads, max_norms)
            self.steps = [s + 1 for s in self.steps]

            def column(values: list[float]) -> torch.Tensor:
                return torch.tensor(values, dtype=self.flat.dtype, device=self.flat.device)[:, None]  # [K, 1]

            bias2_sqrt = column([(1 - self.beta2 ** s) ** 0.5 for s in self.steps])
            for g, a, b in self.segments:
                p, m, v, grad = self.flat[:, a:b], self.exp_avg[:, a:b], self.exp_avg_sq[:, a:b], grads[:, a:b]
                if any(wd[g] for wd in weight_decays):
                    p.mul_(column([1 - lr[g] * wd[g] for lr, wd in zip(lrs, weight_decays)]))
                m.lerp_(grad, 1 - self.beta1)
                v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
                step_size = column([-lr[g] / (1 - self.beta1 ** s) for lr, s in zip(lrs, self.steps)])
                p.add_(step_size * m / v.sqrt().div_(bias2_sqrt).add_(self.eps))
        return losses.detach()

    def _clip(self, grads: torch.Tensor, max_norms: list[float | None]) -> None:
        """``clip_grad_norm_`` per member: the norm of the per-parameter norms, scaled to at most ``max_norms[k]``."""
        norms = torch.stack([torch.linalg.vector_norm(grads[:, a:b], dim=1) for a, b in self.columns], 1)
        total = torch.linalg.vector_norm(norms, dim=1)  # [K]
        limit = torch.tensor([m if m else math.inf for m in max_norms], dtype=total.dtype, device=total.device)
        grads.mul_((limit / (total + 1e-6)).clamp(max=1.0)[:, None])

    @torch.no_grad()
    def copy_out(self, k: int) -> None:
        """Member k's parameters and AdamW state (moments, step count) back into its own model
        and ``torch.optim.AdamW``, in exactly the layout torch keeps them."""
        opt = self.optimizers[k]
        for p, (a, b) in zip(self.params[k], self.columns):
            p.copy_(self.flat[k, a:b].view(p.shape))
            if not self.steps[k]:
                continue
            state = opt.state[p]
            for key, source in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
                if key in state:
                    state[key].copy_(source[k, a:b].view(p.shape))
                else:
                    state[key] = source[k, a:b].view(p.shape).clone()
            state["step"] = torch.tensor(self.steps[k], dtype=torch.float32)


# -- can this model be packed? ----------------------------------------------------------------------


def probe(exp: Experiment) -> tuple[str | None, set[str]]:
    """One packed step of two copies of ``exp``'s model on a tiny random batch.

    Returns (None, names of parameters that get no gradient in a plain backward), or (why
    the model cannot be packed, naming the mixer(s) that fail alone under vmap, ∅). The
    process's random state is left as it was."""
    from zoology.model import LanguageModel
    from zoology.train import param_groups, scored_logits

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        model = LanguageModel(exp).to(device).train()
        if model.has_auxiliary_loss:  # the stacked step optimizes the cross-entropy only
            names = sorted({getattr(type(m), "name", type(m).__name__) for m in model.aux_mixers})
            return f"mixer {', '.join(names)} adds an auxiliary loss, which the packed step leaves out", set()
        vocab, length = exp.model.vocab_size or exp.vocab_size, exp.max_seq_len
        tokens = torch.randint(vocab, (2, 2, length), device=device)  # [K=2, B=2, L]
        labels = torch.where(torch.rand(tokens.shape, device=device) < 0.5, tokens, IGNORE_INDEX)
        labels[..., -1] = tokens[..., -1]  # at least one scored position
        F.cross_entropy(*scored_logits(model, tokens[0], labels[0])).backward()
        unused = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
        model.zero_grad(set_to_none=True)
        models = [model, copy.deepcopy(model)]
        optimizers = [torch.optim.AdamW(param_groups(m, 0.0)) for m in models]
        try:
            with expected_warnings():
                Stack(models, optimizers, unused).gradients(tokens, labels)
        except Exception as exc:
            return f"{_culprits(model, length)} cannot be vmapped ({_first_line(exc)})", set()
    return None, unused


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def _culprits(model: nn.Module, length: int) -> str:
    """``mixer NAME[, NAME]``: the mixers of ``model`` whose own forward+backward fails under
    vmap on sequences of ``length``; ``the model`` if none fails alone."""
    failing, tried = [], set()
    for block in getattr(model, "blocks", []):
        for mixer in (block.sequence_mixer, block.state_mixer):
            name = getattr(type(mixer), "name", type(mixer).__name__)
            if name in tried:
                continue
            tried.add(name)
            params = {n: torch.stack([p.detach()] * 2) for n, p in mixer.named_parameters()}
            weight = model.token_embedding.weight
            x = torch.randn(2, 2, length, weight.shape[1], device=weight.device)  # [K=2, B=2, L, D]

            def loss(p: dict[str, torch.Tensor], x: torch.Tensor, mixer: nn.Module = mixer) -> torch.Tensor:
                return functional_call(mixer, p, (x,)).float().square().mean()

            try:
                with expected_warnings():
                    vmap(grad_and_value(loss), randomness="different")(params, x)
            except Exception:
                failing.append(name)
    return f"mixer {', '.join(failing)}" if failing else "the model"


@contextlib.contextmanager
def expected_warnings() -> Iterator[None]:
    """Silence the warnings a pack triggers by design."""
    with warnings.catch_warnings():
        for message in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


# -- training a pack ----------------------------------------------------------------------------------


class Pack:
    """The members (Trainers) of one pack, trained epoch by epoch until each has ended.
    Every member that ends is reported (``report(summary, run_dir)``) as it ends."""

    def __init__(self, members: list[Trainer], unused: set[str], quiet: bool, report: Report) -> None:
        self.members, self.unused, self.quiet, self.report = members, unused, quiet, report
        self.ended: set[int] = set()  # id() of the members that ended (finished or failed)
        self.failed = 0

    def running(self) -> list[Trainer]:
        return [m for m in self.members if id(m) not in self.ended]

    def run(self) -> None:
        """Restore each member (from its checkpoint, if any), then train until all have ended."""
        runs = [m.exp.run_id for m in self.members]
        for m in self.members:
            m.summary["pack"] = {"size": len(self.members), "runs": runs}
            self._guard(m, self._start, m)
        for m in self.running():
            status = self._guard(m, m.start_status)
            if status is not None:
                self._end(m, status, m.first_epoch - 1)
        epochs = {id(m): m.first_epoch for m in self.running()}  # each member's next epoch
        while active := self.running():
            try:
                stack = Stack([m.acc.unwrap_model(m.model) for m in active], [m.optimizer for m in active],
                              self.unused, active[0].precision.autocast)
                losses = self.train_round(active, stack, [epochs[id(m)] for m in active])
            except (KeyboardInterrupt, UserError):
                raise
            except Exception as exc:  # the shared step failed, and with it every member
                for m in active:
                    self._fail(m, exc)
                return
            for k, (m, loss) in enumerate(zip(active, losses)):
                epoch = epochs[id(m)]
                status = self._guard(m, self._after, m, stack, k, epoch, loss)
                if status is not None:
                    self._end(m, status, epoch)
                epochs[id(m)] = epoch + 1

    def train_round(self, members: list[Trainer], stack: Stack, epochs: list[int]) -> list[float]:
        """Train epoch ``epochs[k]`` of each member, in lockstep (equal data shapes give equal
        epoch lengths); their mean training losses. Each member draws its batches from its own
        loader in its own order, and steps its own learning-rate schedule."""
        for member, epoch in zip(members, epochs):
            member.model.train()
            member.order.epoch = epoch
        opts = stack.optimizers
        wds = [[group["weight_decay"] for group in opt.param_groups] for opt in opts]
        max_norms = [m.exp.train.max_grad_norm for m in members]
        total = torch.zeros(len(members), device=stack.flat.device)
        steps, start = 0, time.time()
        for batches in zip(*(m.train_loader for m in members)):
            tokens = torch.stack([inputs for inputs, _, _ in batches])  # [K, B, L]
            labels = torch.stack([labels for _, labels, _ in batches])
            lrs = [[group["lr"] for group in opt.param_groups] for opt in opts]
            total += stack.step(tokens, labels, lrs, wds, max_norms)
            for m in members:
                m.scheduler.step()
            steps += 1
        seconds = time.time() - start
        for m in members:
            m.train_time += seconds
            m.step += steps
        return [float(t) / max(1, steps) for t in total.cpu()]

    def _start(self, m: Trainer) -> None:
        m.restore()
        if m.main:
            m.tracker.start(m.acc)
        if m.found is not None and not self.quiet:
            print(f"{m.exp.name}/{m.exp.run_id}: resuming after epoch {m.first_epoch - 1}", flush=True)

    def _after(self, m: Trainer, stack: Stack, k: int, epoch: int, loss: float) -> str | None:
        """Member k after its epoch: its state back from the stack, then evaluate, record,
        checkpoint when due; its final status if it ends here."""
        stack.copy_out(k)
        record = m.record_epoch(epoch, loss)
        if not self.quiet:
            print(f"{m.exp.run_id}: epoch {epoch:>3}  " + (
                f"train/loss {loss:.4f}  valid/loss {record['valid/loss']:.4f}  valid/accuracy "
                f"{record['valid/accuracy']:.4f}" if record is not None else
                f"training loss is {loss}; the run diverged"), flush=True)
        return m.end_epoch(epoch, record)

    def _end(self, m: Trainer, status: str, epoch: int) -> None:
        summary = self._guard(m, m.finish, status, epoch)
        if id(m) not in self.ended:
            self.ended.add(id(m))
            self.report(summary, m.run_dir)

    def _guard(self, m: Trainer, fn: Any, *args: Any) -> Any:
        """``fn(*args)``; if it raises, member ``m`` has failed (recorded, reported) and None is returned."""
        try:
            return fn(*args)
        except (KeyboardInterrupt, UserError):
            raise
        except Exception as exc:
            self._fail(m, exc)
            return None

    def _fail(self, m: Trainer, exc: Exception) -> None:
        from zoology.launch import record_failure

        if id(m) in self.ended:
            return
        self.ended.add(id(m))
        self.failed += 1
        if m.main:
            with contextlib.suppress(Exception):
                m.tracker.abort()
        m.run_dir.write_text("error.log", "".join(traceback.format_exception(exc)))
        self.report(record_failure(m.run_dir, m.exp.name, m.exp.run_id,
                                   f"{type(exc).__name__}: {exc} (see error.log)"), m.run_dir)


def run_pack(jobs: list[Job], quiet: bool, report: Report, progress: SweepProgress | None = None) -> int:
    """Train ``jobs`` (sweep point, experiment, run dir; one :func:`pack_key`) as one pack in
    this process, each holding its run directory's lock; the number of runs that failed.

    A run whose directory another process holds is skipped. If :func:`probe` finds the
    model cannot be packed, the runs train one after another instead (with a note)."""
    from zoology.launch import record_failure, run_inline
    from zoology.runs import RunLocked
    from zoology.train import Trainer

    problem, unused = probe(jobs[0][1])
    if problem is not None:
        print(f"--pack: {problem}; these {len(jobs)} runs train unpacked", file=sys.stderr, flush=True)
        return run_inline(jobs, quiet, report, progress)
    failed = 0
    pack = None
    with contextlib.ExitStack() as held, expected_warnings():
        members = []
        for point, exp, run_dir in jobs:
            try:
                held.enter_context(run_dir.lock())
            except RunLocked as exc:
                print(f"{exp.name}/{exp.run_id}: skipped: {exc}", flush=True)
                continue
            if progress is not None:
                progress.started(run_dir)
            try:
                members.append(Trainer(exp, run_dir, quiet=True, point=point))
            except (KeyboardInterrupt, UserError):
                raise
            except Exception as exc:
                failed += 1
                run_dir.write_text("error.log", traceback.format_exc())
                report(record_failure(run_dir, exp.name, exp.run_id, f"{type(exc).__name__}: {exc} (see error.log)"),
                       run_dir)
        pack = Pack(members, unused, quiet, report)
        try:
            pack.run()
        except BaseException:
            for m in pack.running():
                if m.main:
                    with contextlib.suppress(Exception):
                        m.tracker.abort()
            raise
    return failed + pack.failed


def run_inline(packs: list[list[Job]], quiet: bool, report: Report, progress: SweepProgress | None = None) -> int:
    """Train each pack in this process, one after another (a pack of one as a solo run)."""
    from zoology import launch

    return sum(run_pack(pack, quiet, report, progress) if len(pack) > 1 else
               launch.run_inline(pack, quiet, report, progress) for pack in packs)
