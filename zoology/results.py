"""Runs as data, for notebooks and scripts: ``zoology.load_runs(root)``.

    runs = zoology.load_runs("runs")                    # a list of dicts, one per run
    df = zoology.load_runs("runs/figure2", as_frame=True)  # the same as a pandas DataFrame
    df.groupby("model.d_model")["test/accuracy"].mean()
    curves = pd.DataFrame(runs[0]["metrics"])           # one row per epoch
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoology.paths import flatten
from zoology.report import Run, find_runs

HEADLINE = ("num_parameters", "state_size", "epochs", "best_epoch", "wall_time_s", "train_steps_per_s")


def run_record(run: Run) -> dict[str, Any]:
    """One run as a flat record. Keys, in order:

    - ``path``, ``experiment``, ``run_id``, ``status``;
    - every leaf of the resolved config (``config.toml``) under its dotted path
      (``model.d_model``, ``data.train.0.num_kv_pairs``; arrays of plain values as tuples);
    - from ``summary.json``: parameters, state size, epochs, the selected epoch, wall time and
      steps/s; the test metrics of the selected model (``test/accuracy``, per slice too);
      the validation metrics of the selected epoch (``valid/accuracy``, ...);
    - ``summary``: the whole summary; ``metrics``: the per-epoch records of ``metrics.jsonl``.
    """
    summary = run.summary
    record: dict[str, Any] = {
        "path": str(run.path),
        "experiment": summary.get("experiment") or run.config.get("name") or run.path.parent.name,
        "run_id": summary.get("run_id") or run.config.get("run_id") or run.path.name,
        "status": run.status,
    }
    record.update({k: v for k, v in flatten(run.config).items() if k not in ("name", "run_id")})
    record.update({k: summary[k] for k in HEADLINE if k in summary})
    record.update(summary.get("test") or {})
    record.update({k: v for k, v in (summary.get("best") or {}).items() if k.startswith("valid/")})
    record["summary"] = summary
    record["metrics"] = run.history()
    return record


def load_runs(root: str | Path, as_frame: bool = False) -> Any:
    """Every run at or under ``root`` (a runs root, an experiment folder or one run), as
    :func:`run_record` dicts in path order; with ``as_frame``, a pandas DataFrame of them
    (one row per run; ``summary`` and ``metrics`` stay objects in their cells).

    Raises :class:`zoology.UserError` when ``root`` holds no run, and ImportError when
    ``as_frame`` is asked for without pandas installed."""
    records = [run_record(run) for run in find_runs(root)]
    if not as_frame:
        return records
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("load_runs(..., as_frame=True) needs pandas: pip install pandas "
                          "(or call it without as_frame for a list of dicts)") from None
    return pd.DataFrame.from_records(records)
