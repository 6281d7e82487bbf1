"""Turn an experiment's segment specs into tensors: seeds per segment, padding, loaders."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

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

    inputs: torch.Tensor  # [N, L] int64
    labels: torch.Tensor  # [N, L] int64, -100 where not scored
    segment: torch.Tensor  # [N] int64: index into `slices`
    slices: list[dict[str, Any]]  # per segment
    seeds: list[int]

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def dataset(self) -> TensorDataset:
        return TensorDataset(self.inputs, self.labels, self.segment)


def build_split(tasks: list[Task], split: str, base_seed: int) -> Split:
    """Generate every segment of a split. Padding is on the right (inputs 0, labels -100),
    which a causal model never sees from the positions that are scored."""
    seeds = [segment_seed(base_seed, split, i) for i in range(len(tasks))]
    segments = [task.generate(seed) for task, seed in zip(tasks, seeds)]
    length = max(s.seq_len for s in segments)

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, length - t.shape[1]), value=value)

    return Split(
        inputs=torch.cat([pad(s.inputs, 0) for s in segments]),
        labels=torch.cat([pad(s.labels, IGNORE_INDEX) for s in segments]),
        segment=torch.cat([torch.full((len(s),), i, dtype=torch.int64) for i, s in enumerate(segments)]),
        slices=[s.slices for s in segments],
        seeds=seeds,
    )


def build_splits(exp: Experiment) -> dict[str, Split]:
    """train from data.train; valid and test from data.test with different seeds."""
    specs = {"train": exp.data.train, "valid": exp.data.test, "test": exp.data.test}
    return {name: build_split(tasks, name, exp.data.seed) for name, tasks in specs.items()}


def loader(split: Split, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(split.dataset(), batch_size=batch_size, shuffle=shuffle, generator=gen)
