"""The run directory: ``runs/<experiment>/<run-id>/`` with every file written atomically
(see :mod:`zoology.files`), confined to its root (``--out``), and one writer at a time.

The writer holds an exclusive ``flock`` on ``<run>/.lock`` for the whole run; the kernel
drops it when the process dies, so ``kill -9`` leaves no stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zoology.errors import UserError
from zoology.files import atomic_write, read_json

# what an experiment name or run id may be: it becomes a folder under --out
SAFE_NAME = re.compile(r"[A-Za-z0-9_+=-][A-Za-z0-9._+=-]{0,199}")


def safe_name(text: str) -> str:
    """``text`` made a safe folder name: other characters become ``_``, no leading dot."""
    name = re.sub(r"[^A-Za-z0-9._+=-]", "_", text)[:200]
    return "_" + name[1:] if name.startswith(".") else name or "_"


SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
CONFIG = "config.toml"


LOCK = ".lock"


class RunLocked(UserError):
    """Another process is writing this run directory."""


def prepare_root(root: str | Path) -> Path:
    """``--out``: a folder that exists (created if needed) and can be written, checked
    before anything is generated or trained."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"--out {root}: exists and is not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        raise UserError(f"--out {root}: cannot write there: {exc.strerror or exc}") from None
    return root


class RunDir:
    """One run's folder, under ``root``."""

    def __init__(self, root: str | Path, experiment: str, run_id: str) -> None:
        for what, part in (("experiment name", experiment), ("run id", run_id)):
            if not SAFE_NAME.fullmatch(part):
                raise UserError(f"{what} {part!r} cannot name a folder: use letters, digits and ._+=- "
                                "(not starting with a dot)")
        self.root = Path(root)
        self.path = self.root / experiment / run_id
        inside = self.path.resolve()
        if not inside.is_relative_to(self.root.resolve()):  # e.g. a symbolic link out of --out
            raise UserError(f"{self.path}: resolves to {inside}, outside {self.root}; refusing to write there")
        self.run_id = run_id

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold this run's lock, or raise RunLocked naming the process that holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                raise RunLocked(f"run {self.run_id} is being written by another process (pid {holder}) "
                                f"→ {self.path}") from None
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def __str__(self) -> str:
        return str(self.path)

    def write_text(self, name: str, text: str) -> None:
        atomic_write(self.path / name, text.encode("utf-8"))

    def write_json(self, name: str, obj: Any) -> None:
        self.write_text(name, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")

    def read_json(self, name: str) -> Any:
        return read_json(self.path / name)

    def status(self) -> str | None:
        """``done``, ``failed``, ``diverged``, ``running`` (or killed), or None if never run."""
        summary = self.read_json(SUMMARY)
        return summary.get("status") if isinstance(summary, dict) else None

    def reset_metrics(self) -> None:
        self.write_text(METRICS, "")

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Add one line to metrics.jsonl (the whole file is rewritten atomically)."""
        path = self.path / METRICS
        old = path.read_bytes() if path.exists() else b""
        atomic_write(path, old + (json.dumps(record) + "\n").encode("utf-8"))

    def metrics(self) -> list[dict[str, Any]]:
        path = self.path / METRICS
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
