"""Training checkpoints: safetensors and JSON only (no pickle), swapped in atomically.

A checkpoint is a folder ``checkpoint/`` holding the model, the optimizer's tensors, each
process's RNG state and ``state.json`` (epoch, step, scheduler, best so far) written
last. It is built in ``checkpoint.tmp`` and renamed into place, with the previous one kept
as ``checkpoint.old`` until the swap is done, so a kill at any moment leaves one complete
checkpoint to resume from; a folder without ``state.json`` is never loaded. Every tensor
file is verified against its SHA-256 when read (:mod:`zoology.tensorfile`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from zoology import tensorfile
from zoology.files import atomic_write
from zoology.tensorfile import CorruptFile

CURRENT, PREVIOUS, PARTIAL = "checkpoint", "checkpoint.old", "checkpoint.tmp"
STATE = "state.json"
BEST = "best.safetensors"


def optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (safetensors) and the rest (JSON)."""
    tensors, scalars = {}, {}
    for idx, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *rest["scalars"].items()]:
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def write_rng(run_path: Path, rank: int) -> None:
    """Every process writes its own RNG state into the checkpoint being built."""
    tensorfile.save(run_path / PARTIAL / f"rng-{rank}.safetensors", rng_state())


def write(run_path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
          best: dict[str, torch.Tensor] | None = None) -> None:
    """Main process: complete the checkpoint in ``checkpoint.tmp`` and swap it into place."""
    tmp = run_path / PARTIAL
    tensorfile.save_module(tmp / "model.safetensors", model)
    tensors, rest = optimizer_tensors(optimizer.state_dict())
    tensorfile.save(tmp / "optimizer.safetensors", tensors)
    if best is not None:
        tensorfile.save(tmp / BEST, best)
    atomic_write(tmp / STATE, json.dumps({**state, "optimizer": rest}).encode())
    current, previous = run_path / CURRENT, run_path / PREVIOUS
    if current.exists():
        shutil.rmtree(previous, ignore_errors=True)
        current.rename(previous)
    tmp.rename(current)
    shutil.rmtree(previous, ignore_errors=True)


def candidates(run_path: Path) -> list[Path]:
    """The complete checkpoints of a run, newest first (a folder without state.json is an
    unfinished build and never loaded)."""
    return [run_path / name for name in (CURRENT, PREVIOUS) if (run_path / name / STATE).exists()]


def find(run_path: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = candidates(run_path)
    return found[0] if found else None


def read(path: Path, rank: int) -> dict[str, Any]:
    """Every part of a checkpoint, each file verified against its digest: ``model``,
    ``optimizer`` (a state dict), ``rng`` (this process's, if saved), ``best`` (or None)
    and the trainer's ``state``. CorruptFile naming the file if any part is damaged."""
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
        rest = state.pop("optimizer")
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise CorruptFile(f"{path / STATE}: unreadable ({exc})") from None
    model, _ = tensorfile.load(path / "model.safetensors")
    optimizer, _ = tensorfile.load(path / "optimizer.safetensors")
    rng = path / f"rng-{rank}.safetensors"
    best = path / BEST
    return {"state": state, "model": model, "optimizer": optimizer_state(optimizer, rest),
            "rng": tensorfile.load(rng)[0] if rng.exists() else None,
            "best": tensorfile.load(best)[0] if best.exists() else None}


def remove(run_path: Path) -> None:
    for name in (CURRENT, PREVIOUS, PARTIAL):
        shutil.rmtree(run_path / name, ignore_errors=True)
