"""Experiment trackers through Accelerate: wandb, TensorBoard and the others it ships.

``[logging] trackers`` picks them (see :class:`zoology.config.LoggingConfig`). The Trainer
hands :attr:`Tracker.trackers` to ``Accelerator(log_with=...)``, starts them with
``init_trackers`` once the run directory is ready, logs each epoch's record with
``acc.log`` (at the optimizer step) and finishes them with the run. Only the main process
starts, logs and finishes (Accelerate's logging calls are main-process-only as well).

What each writes, all inside the run directory:

- **wandb** → ``RUN_DIR/wandb/`` (offline: ``wandb/offline-run-<time>-<id>/``). The W&B id
  is made when a run starts from scratch (a digest of the run directory's absolute path,
  then the start time) and kept in ``RUN_DIR/tracking.json``; a resumed run reads it back
  and passes ``resume="allow"``, so it continues the same W&B run, while ``--rerun`` starts
  a new one. Name = the run id, group = the experiment, config = the resolved experiment;
  at the end the run summary gets status, test metrics, state size, parameters and epochs.
- **tensorboard** → ``RUN_DIR/tensorboard/``: event files whose tags are the metric names
  (``tensorboard --logdir runs`` shows every run); the resolved experiment, flattened to
  dotted keys, as hparams; the test metrics, state size and parameters at the last step. A
  resumed run purges what the first attempt logged after its checkpoint (``purge_step``).
- **any other** Accelerate tracker: its class gets the experiment name as project name and
  ``[logging.NAME]`` as keyword arguments; one that needs a folder gets ``RUN_DIR/NAME``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoology.config import Experiment, to_dict
from zoology.errors import UserError
from zoology.files import atomic_write, read_json
from zoology.paths import flatten

if TYPE_CHECKING:
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker

TRACKING = "tracking.json"  # what a resumed run needs to continue its tracker runs
PACKAGES = {"tensorboard": "'zoology[tensorboard]'", "comet_ml": "comet-ml"}  # pip names that differ
FINAL = ("status", "num_parameters", "state_size", "epochs", "best_epoch")  # summary → W&B summary


def new_wandb_id(run_path: Path) -> str:
    """The W&B id of a run starting from scratch: a digest of its directory's absolute path,
    then the start time in milliseconds (base 36), e.g. ``3f2a9c1e-m3x0k2a1``."""
    digest = hashlib.sha1(str(Path(run_path).resolve()).encode()).hexdigest()[:8]
    ms, digits = time.time_ns() // 1_000_000, ""
    while ms:
        ms, d = divmod(ms, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[d] + digits
    return f"{digest}-{digits}"


def _checkpoint_step(checkpoint_path: Path | None) -> int | None:
    """The optimizer step a checkpoint was saved at (what a resumed run continues from)."""
    if checkpoint_path is None:
        return None
    state = read_json(Path(checkpoint_path) / "state.json")
    return int(state["step"]) if isinstance(state, dict) and "step" in state else None


def _check_installed(names: list[str]) -> None:
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name in {str(t) for t in LoggerType} and name not in available:
            raise UserError(f"logging.trackers: {name!r} is not installed: pip install {PACKAGES.get(name, name)}")


def _hparams(exp: Experiment) -> dict[str, Any]:
    """The resolved experiment as flat ``dotted.key → scalar`` (what TensorBoard's hparams take)."""
    return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
            for k, v in flatten(to_dict(exp)).items()}


class Tracker:
    """The run's trackers: built before the Accelerator (which takes them as ``log_with``),
    started, fed and finished by the Trainer on the main process. With no trackers
    configured every method does nothing."""

    def __init__(self, exp: Experiment, run_path: str | Path, resume: Path | None = None) -> None:
        """``resume``: the checkpoint the run continues from (None: a start from scratch)."""
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        self.exp, self.run_path, self.resumed = exp, Path(run_path), resume is not None
        self.acc: Accelerator | None = None
        names = list(exp.logging.trackers or [])
        _check_installed(names)
        saved = read_json(self.run_path / TRACKING) if self.resumed else None
        saved_id = saved.get("wandb_id") if isinstance(saved, dict) else None
        self.wandb_id = saved_id if isinstance(saved_id, str) else new_wandb_id(self.run_path)
        step = _checkpoint_step(resume)
        self.trackers: list[GeneralTracker] = []
        for name in names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            options = dict(exp.logging.options.get(name, {}))
            if name == "wandb":
                self.trackers.append(cls(**self._wandb_kwargs()))
            elif name == "tensorboard":
                if "purge_step" in options:
                    raise UserError("logging.tensorboard.purge_step: Zoology sets it (a resumed run "
                                    "purges what was logged after its checkpoint); remove it")
                # events after the checkpoint's step came from the attempt that was cut short
                options["purge_step"] = 0 if step is None else step + 1
                self.trackers.append(cls("tensorboard", str(self.run_path), **options))
            elif cls.requires_logging_directory:
                self.trackers.append(cls(exp.name, str(self.run_path / name), **options))
            else:
                self.trackers.append(cls(exp.name, **options))

    def _wandb_kwargs(self) -> dict[str, Any]:
        exp, cfg = self.exp, self.exp.logging.wandb
        kwargs: dict[str, Any] = {
            "run_name": cfg.project if cfg else "zoology",  # Accelerate passes it as wandb's project
            "entity": cfg.entity if cfg else None, "tags": list(cfg.tags) if cfg and cfg.tags else None,
            "id": self.wandb_id, "resume": "allow", "name": exp.run_id, "group": exp.name,
            "config": to_dict(exp), "dir": str(self.run_path),
            "reinit": "create_new",  # never hand back (or finish) another active run of this process
        }
        if cfg is not None and cfg.mode is not None:  # an explicit mode overrides WANDB_MODE: only when set
            kwargs["mode"] = cfg.mode
        return kwargs

    def start(self, acc: Accelerator) -> None:
        """``init_trackers`` (main process); records the W&B id for a later resume."""
        if not self.trackers:
            return
        self.acc = acc
        try:
            acc.init_trackers(self.exp.name)
        except Exception as exc:  # a tracker that cannot start (no login, a bad option)
            raise UserError(f"{self.run_path}: logging: a tracker failed to start: "
                            f"{type(exc).__name__}: {exc}") from exc
        for tracker in acc.trackers:
            if tracker.name == "wandb":
                atomic_write(self.run_path / TRACKING, json.dumps({"wandb_id": self.wandb_id}).encode())
            elif not self.resumed:  # wandb took the config at init; the others get it flat, once
                tracker.store_init_configuration(_hparams(self.exp))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.acc is not None:
            self.acc.log(metrics, step=step)

    def finish(self, summary: dict[str, Any], step: int | None = None) -> None:
        """Put the run's result where each tracker shows results, then close them."""
        if self.acc is None:
            return
        test = summary.get("test") or {}
        status = summary.get("status")
        for tracker in self.acc.trackers:
            if tracker.name == "wandb":
                run = tracker.tracker
                run.summary.update({**{k: summary[k] for k in FINAL if k in summary}, **test})
                run.finish(exit_code=0 if status == "done" else 1)
                continue
            final = {**test, **{k: summary[k] for k in ("num_parameters", "state_size") if k in summary}}
            if final and status is not None:
                tracker.log(final, step=step)
            tracker.finish()
        self.acc = None

    def abort(self) -> None:
        """Close the trackers of a run that raised (W&B marks it failed)."""
        self.finish({"status": "failed"})
