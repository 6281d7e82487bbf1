"""Training checkpoints: safetensors and JSON only (no pickle), swapped in atomically.

A checkpoint is a folder ``checkpoint/`` holding the model, the optimizer's tensors, each
process's RNG state and ``state.json`` (epoch, step, scheduler, best so far) written
last. It is built in ``checkpoint.tmp`` and renamed into place, with the previous one kept
as ``checkpoint.old`` until the swap is done, so a kill at any moment leaves one complete
checkpoint to resume from; a folder without ``state.json`` is never loaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from zoology.files import atomic_write

CURRENT, PREVIOUS, PARTIAL = "checkpoint", "checkpoint.old", "checkpoint.tmp"
STATE = "state.json"


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata=metadata)


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
    (run_path / PARTIAL).mkdir(parents=True, exist_ok=True)
    _save_tensors(rng_state(), run_path / PARTIAL / f"rng-{rank}.safetensors")


def write(run_path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Main process: complete the checkpoint in ``checkpoint.tmp`` and swap it into place."""
    tmp = run_path / PARTIAL
    tmp.mkdir(parents=True, exist_ok=True)
    save_model(model, str(tmp / "model.safetensors"))  # handles the tied embedding/head
    tensors, rest = optimizer_tensors(optimizer.state_dict())
    _save_tensors(tensors, tmp / "optimizer.safetensors")
    atomic_write(tmp / STATE, json.dumps({**state, "optimizer": rest}).encode())
    current, previous = run_path / CURRENT, run_path / PREVIOUS
    if current.exists():
        shutil.rmtree(previous, ignore_errors=True)
        current.rename(previous)
    tmp.rename(current)
    shutil.rmtree(previous, ignore_errors=True)


def find(run_path: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    for name in (CURRENT, PREVIOUS):
        if (run_path / name / STATE).exists():
            return run_path / name
    return None


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int) -> dict[str, Any]:
    """Restore model, optimizer and this process's RNG; return the trainer state."""
    state = json.loads((path / STATE).read_text())
    load_model(model, str(path / "model.safetensors"))
    rest = state.pop("optimizer")
    optimizer.load_state_dict(optimizer_state(load_file(str(path / "optimizer.safetensors")), rest))
    rng = path / f"rng-{rank}.safetensors"
    if rng.exists():
        set_rng_state(load_file(str(rng)))
    return state


def remove(run_path: Path) -> None:
    for name in (CURRENT, PREVIOUS, PARTIAL):
        shutil.rmtree(run_path / name, ignore_errors=True)
