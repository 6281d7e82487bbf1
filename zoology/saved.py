"""A finished run's saved model: find it, check that it fits a model, load it.

``zoology run`` ends a run by testing the validation-selected model and saving it as
``<run>/model.safetensors`` (:meth:`zoology.train.Trainer.finish`), before it writes the
summary whose status says how the run ended. A run whose status is ``done`` or
``diverged`` and that holds that file has a model to evaluate (``zoology eval``) or to
start another run from (``model.init_from``). A diverged run's model is the one selected
before the divergence; a run that diverged before its first evaluation has none.
"""

from __future__ import annotations

from pathlib import Path

import torch

from zoology import tensorfile
from zoology.errors import UserError
from zoology.files import read_json
from zoology.runs import SUMMARY
from zoology.tensorfile import CorruptFile

MODEL = "model.safetensors"
FINISHED = ("done", "diverged")
MAX_LISTED = 12  # mismatched parameters named in one message; the rest are counted


def model_file(run: str | Path) -> Path:
    """``<run>/model.safetensors`` of a finished run; UserError saying why there is none."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"{run}: no such run directory")
    summary = read_json(run / SUMMARY)
    if not isinstance(summary, dict):
        inner = sorted(p.parent.name for p in run.glob(f"*/{SUMMARY}"))
        hint = f"; it holds the runs {', '.join(inner[:5])}{', …' if len(inner) > 5 else ''}" if inner else ""
        raise UserError(f"{run}: not a run directory (no readable {SUMMARY}){hint}")
    status = summary.get("status")
    if status not in FINISHED:
        raise UserError(f"{run}: the run is not finished (status {status!r}); only a run whose status is "
                        f"{' or '.join(FINISHED)} has a saved model")
    path = run / MODEL
    if not path.is_file():
        raise UserError(f"{run}: the run ended {status!r} without a model ({MODEL} is missing)")
    return path


def mismatches(expected: dict[str, list[int]], found: dict[str, list[int]]) -> list[str]:
    """Every parameter name whose shape differs between a model (``expected``) and a saved
    one (``found``), or that only one of them has, as readable lines."""
    lines = []
    for name in sorted(expected.keys() | found.keys()):
        want, have = expected.get(name), found.get(name)
        if want == have:
            continue
        if have is None:
            lines.append(f"{name} {want}: not in the saved model")
        elif want is None:
            lines.append(f"{name} {have}: saved, but this model has no such parameter")
        else:
            lines.append(f"{name}: saved {have}, this model {want}")
    return lines


def describe_mismatches(lines: list[str]) -> str:
    shown = lines[:MAX_LISTED]
    more = f"; … and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else ""
    return "; ".join(shown) + more


def state_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {name: list(t.shape) for name, t in model.state_dict().items()}


def check_fits(path: Path, model: torch.nn.Module) -> None:
    """UserError listing every mismatched name and shape unless the file at ``path`` holds
    exactly ``model``'s state (read from the header alone; ``model`` may be on the meta device)."""
    try:
        found = tensorfile.shapes(path)
    except CorruptFile as exc:
        raise UserError(str(exc)) from None
    lines = mismatches(state_shapes(model), found)
    if lines:
        raise UserError(f"{path}: does not fit this model ({len(lines)} parameter(s) differ): "
                        f"{describe_mismatches(lines)}")


def origin(run: str | Path, meta: dict[str, str]) -> dict[str, object]:
    """Where a loaded model came from: the run's path and, from the file's metadata, its
    experiment, run id and the epoch it was selected at."""
    epoch = meta.get("epoch", "")
    return {"run": str(run), "experiment": meta.get("experiment"), "run_id": meta.get("run_id"),
            "epoch": int(epoch) if epoch.isdigit() else None}


def load_into(model: torch.nn.Module, path: Path) -> dict[str, str]:
    """Load the verified state in ``path`` into ``model``: UserError if the file is damaged
    or its names and shapes differ from the model's. Returns the file's metadata."""
    check_fits(path, model)
    try:
        tensors, meta = tensorfile.load(path)
    except CorruptFile as exc:
        raise UserError(str(exc)) from None
    model.load_state_dict(tensors, strict=True)
    return meta
