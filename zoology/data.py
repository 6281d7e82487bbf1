"""Turn an experiment's segment specs into tensors: seeds per segment, padding, loaders."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from zoology.cache import cached_generate, resolve_cache_dir
from zoology.config import Experiment
from zoology.tasks.base import IGNORE_INDEX, Task

SPLITS = ("train", "valid", "test")


def segment_seed(base_seed: int, split: str, index: int) -> int:
    """Independent, reproducible seed of segment ``index`` of ``split``."""
    seq = np.random.SeedSequence(base_seed, spawn_key=(SPLITS.index(split), index))
    return int(seq.generate_state(1, dtype=np.uint32)[0])


@attrs.frozen
class Split:
    """The examples of one split, right-padded to one length, and where each came from."""

    inputs: torch.Tensor  # [N, L] int16/32/64: the widest of its segments' dtypes
    labels: torch.Tensor  # [N, L] same dtype, -100 where not scored
    segment: torch.Tensor  # [N] int64: index into `slices`
    slices: list[dict[str, Any]]  # per segment
    seeds: list[int]

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def dataset(self) -> TensorDataset:
        return TensorDataset(self.inputs, self.labels, self.segment)


def build_split(tasks: list[Task], split: str, base_seed: int, cache_dir: Path | None = None) -> Split:
    """Generate every segment of a split (through the on-disk cache in ``cache_dir`` if
    given). Padding is on the right (inputs 0, labels -100), which a causal model never sees
    from the positions that are scored."""
    seeds = [segment_seed(base_seed, split, i) for i in range(len(tasks))]
    segments = [cached_generate(task, seed, cache_dir) for task, seed in zip(tasks, seeds)]
    length = max(s.seq_len for s in segments)
    dtype = functools.reduce(torch.promote_types, [t.dtype for s in segments for t in (s.inputs, s.labels)])

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t.to(dtype), (0, length - t.shape[1]), value=value)

    return Split(
        inputs=torch.cat([pad(s.inputs, 0) for s in segments]),
        labels=torch.cat([pad(s.labels, IGNORE_INDEX) for s in segments]),
        segment=torch.cat([torch.full((len(s),), i, dtype=torch.int64) for i, s in enumerate(segments)]),
        slices=[t.slices() for t in tasks],
        seeds=seeds,
    )


def build_splits(exp: Experiment) -> dict[str, Split]:
    """train from data.train; valid and test from data.test with different seeds."""
    cache_dir = resolve_cache_dir(exp.data.cache_dir)
    return {name: build_split(tasks, name, exp.data_seed, cache_dir) for name, tasks in split_specs(exp).items()}


def split_specs(exp: Experiment) -> dict[str, list[Task]]:
    """The segment specs of each split: valid reuses the test specs (with its own seeds)."""
    return {"train": exp.data.train, "valid": exp.data.test, "test": exp.data.test}


def loader(split: Split, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(split.dataset(), batch_size=batch_size, shuffle=shuffle, generator=gen)


def export_splits(exp: Experiment, out: str | Path) -> list[Path]:
    """Write the exact train/valid/test tensors ``exp`` trains and scores on into ``out``:
    ``<split>.safetensors`` (inputs, labels, segment) per split and ``data.toml`` saying
    what produced them (the resolved [data] section; per segment its task, parameters,
    seed, generator version and slices; the zoology version). Every file is written
    atomically. Returns the paths written."""
    import json

    import tomli_w

    import zoology
    from zoology import tensorfile
    from zoology.cache import describe
    from zoology.config import to_dict
    from zoology.errors import UserError
    from zoology.files import atomic_write
    from zoology.paths import drop_none

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    splits = build_splits(exp)
    resolved = to_dict(exp)
    info: dict[str, Any] = {
        "zoology_version": zoology.__version__,
        "experiment": exp.name,
        "run_id": exp.run_id,
        "data": resolved["data"],
        "splits": {},
    }
    written = []
    for name, tasks in split_specs(exp).items():
        split = splits[name]
        segments = []
        for i, (task, seed, slices) in enumerate(zip(tasks, split.seeds, split.slices)):
            segments.append({"index": i, **describe(task, seed), "slices": slices,
                             "rows": int((split.segment == i).sum())})
        file = f"{name}.safetensors"
        meta = {"split": name, "zoology_version": zoology.__version__,
                "segments": json.dumps(segments, default=str)}
        tensors = {"inputs": split.inputs.contiguous(), "labels": split.labels.contiguous(),
                   "segment": split.segment.contiguous()}
        tensorfile.save(out / file, tensors, meta)
        written.append(out / file)
        info["splits"][name] = {"file": file, "num_examples": len(split), "seq_len": int(split.inputs.shape[1]),
                                "segments": segments}
    atomic_write(out / "data.toml", tomli_w.dumps(drop_none(info)).encode("utf-8"))
    written.append(out / "data.toml")
    return written

