"""The on-disk segment cache: one safetensors file per (task, parameters, seed, version).

A segment's file name is a hash of the task name, every task parameter, the seed, the
task class's ``version`` (bumped whenever its generator changes what a seed gives) and
:data:`FORMAT`, the version of this file layout. The tensors ``inputs`` and ``labels`` are
stored with the same key material as metadata, so a file is checked against what was asked
for before it is used, and a SHA-256 of the tensor data, verified on every read
(:mod:`zoology.tensorfile`). Files are written atomically (temporary file in the same
folder, fsync, rename). A file that cannot be read, whose data does not match its digest,
or whose metadata or shapes do not match, is reported in one line and regenerated.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

from zoology import tensorfile
from zoology.tasks.base import TOKEN_DTYPES, Segment, Task

FORMAT = 2  # bump when the file layout or the key changes (2: data digest)


def resolve_cache_dir(value: bool | str | None) -> Path | None:
    """``data.cache_dir`` as a folder: true → ``$XDG_CACHE_HOME/zoology`` (default
    ``~/.cache/zoology``), a string → that folder (``~`` expanded), false/None → no cache."""
    if value is None or value is False:
        return None
    if value is True:
        base = os.environ.get("XDG_CACHE_HOME") or ""
        root = Path(base).expanduser() if base else Path.home() / ".cache"
        return root / "zoology"
    return Path(value).expanduser()


def _params_json(task: Task) -> str:
    return json.dumps(task.params(), sort_keys=True, default=str)


def key_material(task: Task, seed: int) -> dict[str, str]:
    """What identifies a segment; stored as the file's metadata (safetensors wants strings)."""
    return {
        "format": str(FORMAT),
        "task": task.name,
        "params": _params_json(task),
        "seed": str(int(seed)),
        "version": str(type(task).version),
    }


def cache_path(cache_dir: Path, task: Task, seed: int) -> Path:
    digest = hashlib.sha256(json.dumps(key_material(task, seed), sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / f"{task.name}-{digest[:24]}.safetensors"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _load(path: Path, task: Task, seed: int) -> Segment:
    """The cached segment, or an exception saying why the file is unusable."""
    tensors, meta = tensorfile.load(path)  # verifies the data's digest
    want = key_material(task, seed)
    for k, v in want.items():
        if meta.get(k) != v:
            raise ValueError(f"metadata {k}={meta.get(k)!r}, expected {v!r}")
    if set(tensors) != {"inputs", "labels"}:
        raise ValueError(f"tensors {sorted(tensors)}, expected inputs and labels")
    inputs, labels = tensors["inputs"], tensors["labels"]
    shape = (task.num_examples, task.input_seq_len)
    for name, t in (("inputs", inputs), ("labels", labels)):
        if tuple(t.shape) != shape or t.dtype not in TOKEN_DTYPES:
            raise ValueError(f"{name} is {t.dtype} {tuple(t.shape)}, expected an integer tensor of {shape}")
    return Segment(inputs, labels)


def cached_generate(task: Task, seed: int, cache_dir: Path | None) -> Segment:
    """``task.generate(seed)``, through the cache in ``cache_dir`` when it is not None."""
    if cache_dir is None:
        return task.generate(seed)
    path = cache_path(cache_dir, task, seed)
    if path.exists():
        try:
            return _load(path, task, seed)
        except Exception as exc:  # corrupt, truncated, or not what its name promises
            warnings.warn(f"zoology cache: {path}: unusable ({_one_line(exc)}); regenerating",
                          RuntimeWarning, stacklevel=2)
    segment = task.generate(seed)
    try:
        tensorfile.save(path, {"inputs": segment.inputs, "labels": segment.labels}, key_material(task, seed))
    except OSError as exc:  # a read-only or full disk costs speed, never the run
        warnings.warn(f"zoology cache: {path}: cannot write ({_one_line(exc)}); continuing uncached",
                      RuntimeWarning, stacklevel=2)
    return segment


def describe(task: Task, seed: int) -> dict[str, Any]:
    """A segment's provenance, for exports: task name, parameters, seed, generator version."""
    return {"task": task.name, "params": task.params(), "seed": int(seed), "version": type(task).version}
