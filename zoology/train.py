"""Train one experiment with Hugging Face Accelerate: fit, evaluate, select, test, record.

One process or many (``accelerate launch`` / ``torchrun``): ``data.batch_size`` is the
global batch of one optimizer step, split over processes and gradient-accumulation steps.
Only the main process prints, writes the run directory and logs to the trackers
(``[logging]``, see :mod:`zoology.tracking`).

Mixed precision is the experiment's (``train.mixed_precision``) and is applied here
(:class:`Precision`), not by Accelerate: Accelerate fixes precision once per process, and
one process may train many experiments (a sweep, a notebook, a test session). The
Accelerator of every run is built the same way, so none has to reset Accelerate's state.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import time
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from zoology import checkpoint, saved, tensorfile
from zoology.config import Experiment, dump_experiment
from zoology.data import Split, build_splits, loader
from zoology.errors import UserError
from zoology.metrics import QUANTITIES, slice_groups
from zoology.metrics import parse as parse_metric
from zoology.model import LanguageModel
from zoology.runs import CONFIG, METRICS, SUMMARY, RunDir
from zoology.sweep import Point
from zoology.tasks.base import IGNORE_INDEX
from zoology.tensorfile import CorruptFile
from zoology.tracking import Tracker

LAUNCHER_PRECISION = "ACCELERATE_MIXED_PRECISION"  # how accelerate launch passes its precision on


def make_accelerator(exp: Experiment, log_with: list[Any] | None = None) -> Accelerator:
    """Check what this machine can do for ``exp``, then build the Accelerator (``log_with``:
    the run's trackers, :attr:`zoology.tracking.Tracker.trackers`).

    Precision rule: the experiment decides. ``accelerate launch --mixed_precision`` and the
    ``mixed_precision`` of ``accelerate config`` reach a run only through ``accelerate
    launch`` (as ``ACCELERATE_MIXED_PRECISION``; without either it passes ``no``); when that
    differs from ``train.mixed_precision`` the run warns, naming both, and uses the
    experiment's. The Accelerator itself always runs in full precision (see the module doc),
    and takes the experiment's gradient accumulation, which its environment cannot change."""
    cuda = torch.cuda.is_available()
    want = exp.train.mixed_precision
    if want == "fp16" and not cuda:
        raise UserError(
            f"{exp.name}: train.mixed_precision: 'fp16' needs a GPU (loss scaling, half-precision "
            "matmuls); on CPU use 'bf16' or 'no'"
        )
    acc = Accelerator(
        cpu=not cuda,
        mixed_precision="no",
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=exp.train.gradient_accumulation_steps),
        log_with=log_with or None,
    )
    launcher = os.environ.get(LAUNCHER_PRECISION)
    if launcher is not None and launcher.lower() != want and acc.is_main_process:
        warnings.warn(
            f"{exp.name}: mixed precision: accelerate launch (its --mixed_precision or accelerate config) "
            f"says {launcher!r}, the experiment's train.mixed_precision says {want!r}; using {want!r} "
            "(the experiment decides: change it in the TOML or with --set train.mixed_precision=...)",
            stacklevel=2)
    shards = acc.num_processes * exp.train.gradient_accumulation_steps
    if exp.data.batch_size % shards:
        raise UserError(
            f"{exp.name}: data.batch_size: the global batch {exp.data.batch_size} must be divisible "
            f"by processes ({acc.num_processes}) × train.gradient_accumulation_steps "
            f"({exp.train.gradient_accumulation_steps})"
        )
    return acc


class Precision:
    """A run's mixed precision: autocast to ``bf16`` / ``fp16`` around the forward pass,
    and for ``fp16`` loss scaling (small gradients underflow in half precision) whose state
    a checkpoint keeps. ``no``: everything in float32. The parameters, gradients and
    optimizer state stay float32 in every mode."""

    def __init__(self, mode: str, device: torch.device) -> None:
        self.mode, self.device_type = mode, device.type
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
        self.scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Make the gradients true gradients again (before clipping them)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """One optimizer step; with fp16, skipped when a gradient is inf/NaN (the scale shrinks)."""
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def lr_lambda(warmup: int, total: int) -> Any:
    """Linear warmup, then cosine decay to 0 over the remaining optimizer steps."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on biases, norms or 1-d parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def scored_logits(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [M, V] and targets [M] of the scored positions.

    On CPU the model computes its last state mixer and head only there (see model.py);
    on accelerators it computes every position, which avoids a host sync per step. Batches
    come in the split's compact token dtype and are widened here."""
    inputs, labels = inputs.long(), labels.long()
    scored = labels != IGNORE_INDEX
    if inputs.device.type == "cpu":
        return model(inputs, scored).float(), labels[scored]
    return model(inputs).float()[scored], labels[scored]


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Any, split: Split, acc: Accelerator, prefix: str) -> dict[str, float]:
    """Loss and accuracy over the scored positions, overall and per slice (``valid/k=v/accuracy``)."""
    model.eval()
    parts: list[tuple[torch.Tensor, ...]] = []
    for inputs, labels, segment in data:
        logits, targets = scored_logits(model, inputs, labels)  # [M, V], [M]
        row = (labels != IGNORE_INDEX).nonzero()[:, 0]  # [M]: the example of each scored position
        values = torch.stack([
            (logits.argmax(-1) == targets).double(),  # correct
            torch.ones_like(targets, dtype=torch.float64),  # scored
            F.cross_entropy(logits, targets, reduction="none").double(),  # loss
        ], dim=1)  # [M, 3]
        per_example = torch.zeros(len(labels), 3, dtype=torch.float64, device=values.device)
        parts.append(acc.gather_for_metrics((per_example.index_add_(0, row, values), segment)))
    per_example, segment = (torch.cat(t).cpu() for t in zip(*parts))
    correct, count, loss = per_example.unbind(1)
    n = len(split.slices)
    seg_correct = torch.zeros(n, dtype=torch.float64).index_add_(0, segment.long(), correct)
    seg_count = torch.zeros(n, dtype=torch.float64).index_add_(0, segment.long(), count)
    seg_loss = torch.zeros(n, dtype=torch.float64).index_add_(0, segment.long(), loss)

    def summarize(idx: list[int], name: str) -> dict[str, float]:
        c = max(float(seg_count[idx].sum()), 1.0)
        return {f"{name}/{QUANTITIES[0]}": float(seg_correct[idx].sum()) / c,
                f"{name}/{QUANTITIES[1]}": float(seg_loss[idx].sum()) / c}

    metrics = summarize(list(range(n)), prefix)
    for name, idx in slice_groups(prefix, split.slices).items():
        metrics.update(summarize(idx, name))
    return metrics


def _better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if _lower_is_better(metric) else new > old


def _reached(metric: str, value: float, threshold: float) -> bool:
    return value <= threshold if _lower_is_better(metric) else value >= threshold


def _lower_is_better(metric: str) -> bool:
    parsed = parse_metric(metric)
    return parsed is not None and parsed.lower_is_better


def versions() -> dict[str, str]:
    import accelerate

    from zoology import __version__

    return {"zoology": __version__, "torch": torch.__version__, "accelerate": accelerate.__version__,
            "python": platform.python_version()}


class EpochShuffle(torch.utils.data.Sampler[int]):
    """A permutation that depends on (seed, epoch) only, so a resumed run sees the same data
    order as an uninterrupted one, and every process draws the same permutation to shard.
    (Deliberately no ``set_epoch``: Accelerate would call it with its own per-loader count,
    which restarts at 0 after a resume.)"""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def __iter__(self) -> Any:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


class Trainer:
    """One run of one experiment: built from the experiment and its run directory, then
    :meth:`fit` restores what a checkpoint holds, trains epoch by epoch and finishes."""

    def __init__(self, exp: Experiment, run_dir: RunDir, quiet: bool = False, point: Point | None = None) -> None:
        self.exp, self.run_dir, self.quiet = exp, run_dir, quiet
        self.found = checkpoint.find(run_dir.path)
        self.tracker = Tracker(exp, run_dir.path, resume=self.found)
        self.acc = acc = make_accelerator(exp, log_with=self.tracker.trackers)
        self.precision = Precision(exp.train.mixed_precision, acc.device)
        self.main = acc.is_main_process
        self.start = time.time()
        self.resolved = dump_experiment(exp)
        if self.found is not None:
            old = run_dir.path / CONFIG
            if not old.exists() or old.read_text(encoding="utf-8") != self.resolved:
                raise UserError(f"{run_dir}: holds a checkpoint of a different experiment; "
                                "use --rerun to start over or --out for another place")
        self.summary: dict[str, Any] = {"status": "running", "experiment": exp.name, "run_id": exp.run_id}
        if point is not None and point.values:
            self.summary.update(sweep=point.values, sweep_labels=point.labels)

        cfg = exp.train
        set_seed(exp.train_seed)
        self.splits = build_splits(exp)
        model = LanguageModel(exp)
        self.num_parameters = model.num_parameters()
        self.state_size = model.state_size(exp.max_seq_len)
        self.micro_batch = exp.data.batch_size // (acc.num_processes * cfg.gradient_accumulation_steps)
        eval_batch = exp.data.eval_batch_size or exp.data.batch_size
        self.order = EpochShuffle(len(self.splits["train"]), exp.train_seed)
        train_loader = DataLoader(self.splits["train"].dataset(), batch_size=self.micro_batch, sampler=self.order)
        steps_per_epoch = math.ceil(math.ceil(len(self.splits["train"]) / (self.micro_batch * acc.num_processes))
                                    / cfg.gradient_accumulation_steps)
        optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate, foreach=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(cfg.warmup_steps, steps_per_epoch * cfg.max_epochs)
        )
        self.raw_model = model  # the LanguageModel itself (prepare may wrap it, e.g. in DDP)
        self.model, self.optimizer, self.train_loader, self.valid_loader, self.test_loader = acc.prepare(
            model, optimizer, train_loader, loader(self.splits["valid"], eval_batch),
            loader(self.splits["test"], eval_batch)
        )
        # progress: what a checkpoint saves and restores
        self.step, self.train_time, self.first_epoch = 0, 0.0, 1
        self.attempts: list[dict[str, Any]] = []  # earlier attempts at this run (killed, failed)
        self.elapsed = 0.0  # wall seconds of the earlier attempts, each up to its last checkpoint
        self.attempt_start = _now()
        self.best_value: float | None = None
        self.best_record: dict[str, Any] = {}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.last_metrics: dict[str, float] = {}

    # -- the three steps -------------------------------------------------------------------

    def restore(self) -> None:
        """Continue from the run directory's newest checkpoint whose files verify (falling
        back to the previous one), or start the run directory afresh."""
        run_dir = self.run_dir
        if self.found is not None:
            ckpt = self._read_checkpoint()
            state = ckpt["state"]
            self.acc.unwrap_model(self.model).load_state_dict(ckpt["model"], strict=True)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt["rng"] is not None:
                checkpoint.set_rng_state(ckpt["rng"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.precision.load_state_dict(state.get("grad_scaler", {}))
            self.step, self.train_time, self.first_epoch = state["step"], state["train_time"], state["epoch"] + 1
            self.best_value, self.best_record, self.best_state = state["best_value"], state["best_record"], ckpt["best"]
            self.last_metrics = state.get("last_metrics", {})
            if state.get("init_from"):
                self.summary["init_from"] = state["init_from"]
            # the attempt the checkpoint came from ended (as far as anything was kept) at its save
            self.attempts = [*state.get("attempts", []), {
                "start": state.get("attempt_start"), "end": state.get("saved_at"),
                "epochs": [state.get("attempt_first_epoch"), state["epoch"]], "ended": "interrupted"}]
            self.elapsed = state.get("elapsed_s", 0.0)
            self.summary["resumed_from_epoch"] = state["epoch"]
            if self.main:
                run_dir.write_text(METRICS, "".join(json.dumps(r) + "\n" for r in run_dir.metrics()
                                                    if r["epoch"] <= state["epoch"]))
                if not self.quiet:
                    print(f"{self.exp.name}/{self.exp.run_id}: resuming after epoch {state['epoch']}")
        else:
            if self.exp.model.init_from is not None:
                self._init_from(self.exp.model.init_from)
            if self.main:
                run_dir.write_text(CONFIG, self.resolved)
                run_dir.reset_metrics()
        if self.main:
            run_dir.write_json(SUMMARY, self.summary)
        acc = self.acc
        # one entry per distinct device (a CPU shared by several processes counts once)
        devices = set(gather_object([f"{platform.node()}/{acc.device}"]))
        self.summary.update(
            num_parameters=self.num_parameters, state_size=self.state_size, processes=acc.num_processes,
            micro_batch_size=self.micro_batch, mixed_precision=self.precision.mode, device_type=acc.device.type,
            device_count=len(devices),
            **({"device_name": torch.cuda.get_device_name(acc.device)} if acc.device.type == "cuda" else {}),
            seeds={"init_and_order": self.exp.train_seed, **{k: s.seeds for k, s in self.splits.items()}},
            versions=versions(),
        )

    def _init_from(self, run: str) -> None:
        """Start from another run's saved model (``model.init_from``; every process loads
        it): its weights replace the fresh initialisation, and the summary names the run."""
        meta = saved.load_into(self.acc.unwrap_model(self.model), saved.model_file(run))
        self.summary["init_from"] = saved.origin(run, meta)

    def _read_checkpoint(self) -> dict[str, Any]:
        """The newest checkpoint whose every file verifies; UserError if none does."""
        problems = []
        found = checkpoint.candidates(self.run_dir.path)
        for i, path in enumerate(found):
            try:
                return checkpoint.read(path, self.acc.process_index)
            except CorruptFile as exc:
                problems.append(str(exc))
                if self.main and i + 1 < len(found):
                    warnings.warn(f"{exc}; falling back to the previous checkpoint, {found[i + 1].name}",
                                  RuntimeWarning, stacklevel=2)
        raise UserError(f"{self.run_dir}: no usable checkpoint ({'; '.join(problems)}); "
                        "`zoology run --rerun` starts this run over")

    def run_epoch(self, epoch: int) -> dict[str, Any] | None:
        """Train one epoch, then :meth:`record_epoch`.

        The optimized loss is the cross-entropy of the scored positions plus, when mixers
        define one, the model's auxiliary loss (``LanguageModel.auxiliary_loss``).
        ``train/loss`` records the cross-entropy alone (comparable with ``valid/loss`` and
        across mixers) and ``train/aux_loss`` the auxiliary part, each an epoch mean;
        evaluation scores the plain cross-entropy."""
        acc, model, cfg = self.acc, self.model, self.exp.train
        model.train()
        self.order.epoch = epoch
        epoch_start = time.time()
        total = torch.zeros((), device=acc.device)
        aux = self.raw_model.has_auxiliary_loss
        aux_total = torch.zeros((), device=acc.device)
        bar = tqdm(self.train_loader, desc=f"epoch {epoch}/{cfg.max_epochs}", disable=self.quiet or not self.main,
                   leave=False, dynamic_ncols=True)
        for i, (inputs, labels, _) in enumerate(bar):
            with acc.accumulate(model):
                with self.precision.autocast():
                    logits, targets = scored_logits(model, inputs, labels)
                    loss = F.cross_entropy(logits, targets)
                    aux_loss = self.raw_model.auxiliary_loss() if aux else None
                acc.backward(self.precision.scale(loss if aux_loss is None else loss + aux_loss))
                if acc.sync_gradients:
                    self.precision.unscale_(self.optimizer)
                    if cfg.max_grad_norm:
                        acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    self.step += 1
                    self.precision.step(self.optimizer)
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            total += loss.detach()
            if aux_loss is not None:
                aux_total += aux_loss.detach()
            if i % 25 == 24 and not bar.disable:  # the only host syncs in the loop
                bar.set_postfix(loss=f"{total.item() / (i + 1):.3f}", refresh=False)
        self.train_time += time.time() - epoch_start
        steps = max(1, len(self.train_loader))
        aux_mean = float(acc.reduce(aux_total, "mean")) / steps if aux else None
        return self.record_epoch(epoch, float(acc.reduce(total, "mean")) / steps, aux_mean)

    def record_epoch(self, epoch: int, train_loss: float, aux_mean: float | None = None) -> dict[str, Any] | None:
        """After training epoch ``epoch`` (mean loss ``train_loss``, mean auxiliary loss
        ``aux_mean`` when the model has one): evaluate, record, keep the best; the epoch's
        record, or None if it diverged."""
        acc, model, cfg = self.acc, self.model, self.exp.train
        aux = aux_mean is not None
        if not math.isfinite(train_loss + (aux_mean or 0.0)):
            if self.main and not self.quiet:
                what = f"{train_loss}" + (f" (auxiliary {aux_mean})" if aux else "")
                tqdm.write(f"epoch {epoch}: training loss is {what}; the run diverged")
            return None
        with self.precision.autocast():
            metrics = evaluate(model, self.valid_loader, self.splits["valid"], acc, "valid")
        self.last_metrics = metrics
        record = {"epoch": epoch, "step": self.step, "train/loss": train_loss,
                  **({"train/aux_loss": aux_mean} if aux else {}),
                  "lr": self.scheduler.get_last_lr()[0], **metrics, "time_s": round(time.time() - self.start, 3)}
        if self.main:
            self.run_dir.append_metrics(record)
            self.tracker.log(record, self.step)
            if not self.quiet:
                aux_text = f"  train/aux_loss {aux_mean:.4g}" if aux else ""
                tqdm.write(f"epoch {epoch:>3}  train/loss {train_loss:.4f}{aux_text}  valid/loss "
                           f"{metrics['valid/loss']:.4f}  valid/accuracy {metrics['valid/accuracy']:.4f}")
        if _better(cfg.select_metric, metrics[cfg.select_metric], self.best_value):
            self.best_value, self.best_record = metrics[cfg.select_metric], record
            self.best_state = {k: v.detach().clone() for k, v in acc.unwrap_model(model).state_dict().items()}
        return record

    def finish(self, status: str, epoch: int) -> dict[str, Any]:
        """Test the selected model, save it, and write the summary."""
        acc, exp, model = self.acc, self.exp, self.model
        best = self.best_record
        self.summary.update(
            status=status, epochs=epoch, best_epoch=best.get("epoch"), select_metric=exp.train.select_metric,
            best=best, final=self.last_metrics or {k: v for k, v in best.items() if k.startswith("valid/")},
            train_steps=self.step, train_steps_per_s=round(self.step / max(self.train_time, 1e-9), 2))
        if self.best_state is not None:
            acc.unwrap_model(model).load_state_dict(self.best_state)
            with self.precision.autocast():
                self.summary["test"] = evaluate(model, self.test_loader, self.splits["test"], acc, "test")
            if self.main:
                tensorfile.save_module(self.run_dir.path / "model.safetensors", acc.unwrap_model(model),
                                   {"experiment": exp.name, "run_id": exp.run_id, "epoch": str(best["epoch"])})
        self.summary["wall_time_s"] = round(self.elapsed + time.time() - self.start, 2)
        self.summary["attempts"] = [*self.attempts, {"start": self.attempt_start, "end": _now(),
                                                     "epochs": [self.first_epoch, epoch], "ended": status}]
        if self.main:
            self.run_dir.write_json(SUMMARY, self.summary)
            self.tracker.finish(self.summary, self.step)
        acc.wait_for_everyone()
        return self.summary

    def fit(self) -> dict[str, Any]:
        """Run to the end (or to early stopping) and return the summary (also in ``summary.json``)."""
        self.restore()
        if self.main:
            self.tracker.start(self.acc)
        try:
            return self._fit()
        except BaseException:
            if self.main:
                self.tracker.abort()
            raise

    def _fit(self) -> dict[str, Any]:
        epoch, status = self.first_epoch - 1, self.start_status()
        while status is None:
            epoch += 1
            status = self.end_epoch(epoch, self.run_epoch(epoch))
        return self.finish(status, epoch)

    def start_status(self) -> str | None:
        """``done`` if a resumed run has nothing left to train (it was checkpointed after its
        last epoch, or after the epoch that met the early-stopping threshold), else None."""
        stop = self.exp.train.early_stopping
        stopped = stop is not None and stop.metric in self.best_record and \
            _reached(stop.metric, self.best_record[stop.metric], stop.threshold)
        return "done" if stopped or self.first_epoch > self.exp.train.max_epochs else None

    def end_epoch(self, epoch: int, record: dict[str, Any] | None) -> str | None:
        """After epoch ``epoch`` (its record; None: it diverged): checkpoint when due; the
        run's final status if it ends here, else None."""
        cfg, stop = self.exp.train, self.exp.train.early_stopping
        if record is None:
            return "diverged"
        stopped = stop is not None and _reached(stop.metric, record[stop.metric], stop.threshold)
        if cfg.checkpoint_every and (epoch % cfg.checkpoint_every == 0 or stopped or epoch == cfg.max_epochs):
            self.save_checkpoint(epoch)
        return "done" if stopped or epoch == cfg.max_epochs else None

    def save_checkpoint(self, epoch: int) -> None:
        """Every process writes its RNG; the main process writes the rest and swaps it in."""
        acc, path = self.acc, self.run_dir.path
        acc.wait_for_everyone()
        checkpoint.write_rng(path, acc.process_index)
        acc.wait_for_everyone()
        if acc.is_main_process:
            checkpoint.write(path, acc.unwrap_model(self.model), self.optimizer, {
                "epoch": epoch, "step": self.step, "train_time": self.train_time,
                "scheduler": self.scheduler.state_dict(), "grad_scaler": self.precision.state_dict(),
                "best_value": self.best_value, "best_record": self.best_record, "last_metrics": self.last_metrics,
                "attempts": self.attempts, "attempt_start": self.attempt_start,
                "attempt_first_epoch": self.first_epoch, "saved_at": _now(),
                "init_from": self.summary.get("init_from"),
                "elapsed_s": self.elapsed + time.time() - self.start}, self.best_state)
        acc.wait_for_everyone()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def train(exp: Experiment, run_dir: RunDir, quiet: bool = False, point: Point | None = None) -> dict[str, Any]:
    """Run ``exp`` to the end and return its summary (also written to ``summary.json``).

    Resumes from the run directory's checkpoint when there is one for the same experiment;
    ``point`` (the sweep point the run came from) is recorded in the summary. The main
    process holds the run directory's lock throughout (RunLocked if another holds it)."""
    main = int(os.environ.get("RANK", "0")) == 0  # set by torchrun / accelerate launch
    with run_dir.lock() if main else contextlib.nullcontext():
        return Trainer(exp, run_dir, quiet, point).fit()
