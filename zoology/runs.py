"""The run directory: ``runs/<experiment>/<run-id>/`` with every file written atomically
(see :mod:`zoology.files`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zoology.files import atomic_write, read_json

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
CONFIG = "config.toml"


class RunDir:
    """One run's folder."""

    def __init__(self, root: str | Path, experiment: str, run_id: str) -> None:
        self.path = Path(root) / experiment / run_id

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
