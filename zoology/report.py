"""Tables and figures from run directories: ``zoology report``.

A run directory is any folder holding ``summary.json`` (and, normally, the resolved
``config.toml``). Runs are described by *keys*: dotted paths into the resolved config
(``model.d_model``, ``data.test.0.input_seq_len``) or a few short aliases (``ALIASES``).

``best_over`` keys implement the Zoology paper's "best of several learning rates": runs
whose resolved configs are identical except for those keys compete, and the one with the
best *validation* metric is kept (its test metric is what the table shows). Done runs
always win over failed, diverged or unfinished ones.

``mad`` (``zoology report --mad``, :func:`mad_report`) is MAD's benchmark score (Poli et al.
2024, examples/mad_protocol.toml): per architecture and MAD task, the test metric of the
grid point (learning rate × weight decay) that is best on validation, and the mean over the
six tasks.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli

from zoology.errors import UserError
from zoology.files import atomic_write, read_json
from zoology.metrics import parse as parse_metric
from zoology.metrics import per_slice, twin
from zoology.paths import flatten, lookup, matches, normalize
from zoology.runs import CONFIG, METRICS, SUMMARY
from zoology.tables import format_table

ALIASES: dict[str, str] = {
    "experiment": "the experiment name",
    "mixer": "sequence mixer name(s) joined with '+', or the sweep label if recorded",
    "d_model": "model.d_model",
    "lr": "train.learning_rate",
    "seq_len": "the longest input_seq_len of the test segments",
    "num_kv_pairs": "the largest num_kv_pairs of the test segments",
}
# the config paths that --best-over ALIAS lets vary
ALIAS_PATHS: dict[str, tuple[str, ...]] = {
    "experiment": ("name",),
    "mixer": ("model.sequence_mixer",),
    "d_model": ("model.d_model",),
    "lr": ("train.learning_rate",),
    "seq_len": ("data.*.input_seq_len",),
    "num_kv_pairs": ("data.*.num_kv_pairs",),
}
DEFAULT_GROUP_BY = ("experiment", "mixer", "seq_len", "num_kv_pairs", "d_model", "lr")
STATUS_RANK = {"done": 0, "diverged": 1, "running": 2, "failed": 3}
X_AXES = {"state_size": "state size (scalars per sequence)", "d_model": "model dimension (d_model)"}


# -- runs ----------------------------------------------------------------------------------


@dataclass
class Run:
    """One run directory: its summary and its resolved config as plain data."""

    path: Path
    summary: dict[str, Any]
    config: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.summary.get("status") or "unknown")

    @property
    def label(self) -> str:
        exp = self.summary.get("experiment") or self.config.get("name") or self.path.parent.name
        run_id = self.summary.get("run_id") or self.config.get("run_id") or self.path.name
        return f"{exp}/{run_id}"

    def history(self) -> list[dict[str, Any]]:
        """The per-epoch records of ``metrics.jsonl`` (none if it is missing; a torn line,
        from a run killed while writing, is skipped)."""
        try:
            lines = (self.path / METRICS).read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def metric(self, name: str) -> float | None:
        """A test metric (``test/...``) of the selected model, or a validation metric
        (``valid/...``) of the selection epoch; None if the run has none."""
        source = self.summary.get("test") if name.startswith("test/") else self.summary.get("best")
        value = (source or {}).get(name)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return tomli.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomli.TOMLDecodeError, RecursionError):
        return {}  # an unreadable config: the run is listed without its keys


def find_runs(root: str | Path) -> list[Run]:
    """Every run directory at or under ``root`` (a runs root, an experiment folder or one run)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such directory")
    runs = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if SUMMARY in files:
            dirs[:] = []  # a run's own sub-folders (checkpoints) hold no runs
            path = Path(folder)
            summary = read_json(path / SUMMARY)
            summary = summary if isinstance(summary, dict) else {"status": "unreadable"}
            runs.append(Run(path, summary, _read_config(path / CONFIG)))
    if not runs:
        raise UserError(f"{root}: no runs found (no folder with {SUMMARY} at or below it)")
    return runs


# -- keys ----------------------------------------------------------------------------------


def _mixer_name(run: Run) -> str | None:
    labels = run.summary.get("sweep_labels")  # how the sweep point named its mixer, if it swept one
    label = labels.get("model.sequence_mixer") if isinstance(labels, dict) else None
    if isinstance(label, str):
        return label
    specs = lookup(run.config, "model.sequence_mixer")
    if isinstance(specs, dict):
        specs = [specs]
    if not isinstance(specs, list):
        return None
    n_layers = lookup(run.config, "model.n_layers")
    if isinstance(n_layers, int):
        specs = specs[:n_layers]
    names = [str(s.get("name")) for s in specs if isinstance(s, dict)]
    return "+".join(dict.fromkeys(names)) or None


def _test_max(run: Run, param: str) -> Any:
    values = [t.get(param) for t in lookup(run.config, "data.test") or [] if isinstance(t, dict)]
    values = [v for v in values if isinstance(v, (int, float))]
    return max(values) if values else None


def key_value(run: Run, key: str) -> Any:
    """The value of an alias or a dotted config path for ``run`` (None where it has none)."""
    if key == "experiment":
        return run.summary.get("experiment") or run.config.get("name")
    if key == "mixer":
        return _mixer_name(run)
    if key in ("seq_len", "num_kv_pairs"):
        return _test_max(run, "input_seq_len" if key == "seq_len" else key)
    if key in ("d_model", "lr"):
        return lookup(run.config, ALIAS_PATHS[key][0])
    return lookup(run.config, normalize(key))


def available_keys(runs: Sequence[Run]) -> list[str]:
    """The aliases, then every dotted config path any run has."""
    paths: dict[str, None] = {}
    for run in runs:
        paths.update(dict.fromkeys(flatten(run.config)))
    return [*ALIASES, *sorted(p for p in paths if p not in ("run_id", "name"))]


def check_keys(runs: Sequence[Run], keys: Sequence[str], option: str) -> None:
    """UserError for a key that no run has, listing the keys there are."""
    for key in keys:
        if key in ALIASES or any(key_value(r, key) is not None for r in runs):
            continue
        avail = available_keys(runs)
        close = difflib.get_close_matches(key, avail, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"{option} {key}: unknown key; {hint}available: {', '.join(avail)}")


def _excluded(path: str, keys: Sequence[str]) -> bool:
    return any(matches(p, path) for k in keys for p in ALIAS_PATHS.get(k, (k,)))


def _identity(run: Run, best_over: Sequence[str]) -> tuple:
    """What a run is, apart from ``best_over`` keys, its run id and its trackers."""
    if not run.config:
        return ("no config", str(run.path))
    leaves = flatten(run.config)
    return tuple(sorted((p, repr(v)) for p, v in leaves.items()
                        if not _bookkeeping(p) and not _excluded(p, best_over)))


def _bookkeeping(path: str) -> bool:
    """Config paths that never change a result: the run id and where metrics are logged."""
    return path == "run_id" or path.startswith("logging.")


# -- selection and rows --------------------------------------------------------------------


REPLICATE_KEY = "train.replicate"  # what alone tells replicates of one configuration apart


@dataclass
class Row:
    """One line of the report: a configuration's replicates (one run unless
    ``train.replicates`` > 1), the validation-best of them as its representative, and the
    runs of every configuration it competed with under ``best_over``."""

    run: Run
    keys: dict[str, Any]
    candidates: list[Run] = field(default_factory=list)
    replicates: list[Run] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        """``metric`` of each done replicate that reports it."""
        values = [r.metric(metric) for r in self.replicates or [self.run] if r.status == "done"]
        return [v for v in values if v is not None and not math.isnan(v)]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return sum(values) / len(values) if values else None

    def solved(self) -> float | None:
        """Fraction of replicates whose early-stopping metric reached its threshold (None
        where the runs have no early stopping)."""
        reached = [_solved(r) for r in self.replicates or [self.run]]
        return None if None in reached else sum(reached) / len(reached)


def _solved(run: Run) -> bool | None:
    stop = lookup(run.config, "train.early_stopping")
    if not isinstance(stop, dict) or not isinstance(stop.get("threshold"), (int, float)):
        return None
    name = str(stop.get("metric", "valid/accuracy"))
    value = run.metric(name) if run.status == "done" else None
    if value is None:
        return False
    lower = (parse_metric(name) or parse_metric("valid/accuracy")).lower_is_better
    return value <= stop["threshold"] if lower else value >= stop["threshold"]


def valid_metric(metric: str) -> str:
    """The validation twin of a test metric: selection happens on validation, never on test."""
    return twin(metric, "valid")


def _rank(runs: Sequence[Run], select: str) -> tuple:
    """Sort key of a configuration's replicates: done first, then by their mean ``select``."""
    scored = [r.metric(select) for r in runs if r.status == "done"]
    scored = [v for v in scored if v is not None and not math.isnan(v)]
    value = sum(scored) / len(scored) if scored else None
    if value is not None and (parse_metric(select) or parse_metric("valid/accuracy")).lower_is_better:
        value = -value
    status = min(STATUS_RANK.get(r.status, len(STATUS_RANK)) for r in runs)
    return (status, value is None, -(value or 0.0))


def select_best(runs: Sequence[Run], select: str = "valid/accuracy") -> Run:
    """The run with the best ``select`` (validation) metric, done runs first."""
    return min(runs, key=lambda r: _rank([r], select))


def _groups(runs: Sequence[Run], ignore: Sequence[str]) -> list[list[Run]]:
    """Runs whose resolved configs are equal apart from the ``ignore`` keys, in order."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(_identity(run, ignore), []).append(run)
    return list(groups.values())


def build_rows(runs: Sequence[Run], group_by: Sequence[str], best_over: Sequence[str] = (),
               metric: str = "test/accuracy") -> list[Row]:
    """One row per configuration (its replicates together); with ``best_over``, one per group
    of configurations identical apart from those keys, the one with the best *mean*
    validation score over its replicates kept (never a lucky seed)."""
    select = valid_metric(metric)
    configurations = _groups(runs, [REPLICATE_KEY])
    if best_over:
        contests: dict[tuple, list[list[Run]]] = {}
        for config in configurations:
            contests.setdefault(_identity(config[0], [*best_over, REPLICATE_KEY]), []).append(config)
        chosen = [(min(c, key=lambda reps: _rank(reps, select)), [r for reps in c for r in reps])
                  for c in contests.values()]
    else:
        chosen = [(config, config) for config in configurations]
    rows = []
    for replicates, candidates in chosen:
        best = select_best(replicates, select)
        keys = {k: key_value(best, k) for k in [*group_by, *best_over]}
        rows.append(Row(best, keys, candidates, replicates))
    rows.sort(key=lambda r: ([_sort_key(r.keys[k]) for k in group_by], r.run.label))
    return rows


def _sort_key(value: Any) -> tuple:
    if value is None:
        return (2, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, str(value))


def default_group_by(runs: Sequence[Run], best_over: Sequence[str]) -> list[str]:
    """The aliases whose value differs between runs (``mixer`` if none does)."""
    keys = [k for k in DEFAULT_GROUP_BY if k not in best_over
            and len({repr(key_value(r, k)) for r in runs}) > 1]
    return keys or ["mixer"]


def hidden_differences(rows: Sequence[Row], group_by: Sequence[str]) -> list[str]:
    """Config paths that differ between rows showing the same group keys."""
    same: dict[tuple, list[Row]] = {}
    for row in rows:
        same.setdefault(tuple(repr(row.keys[k]) for k in group_by), []).append(row)
    paths: set[str] = set()
    for members in same.values():
        if len(members) > 1:
            leaves = [flatten(r.run.config) for r in members]
            for p in {p for leaf in leaves for p in leaf if not _bookkeeping(p)}:
                if len({repr(leaf.get(p)) for leaf in leaves}) > 1:
                    paths.add(p)
    return sorted(paths)


# -- table and CSV -------------------------------------------------------------------------


def columns(group_by: Sequence[str], best_over: Sequence[str], metric: str, replicated: bool = False) -> list[str]:
    best = [f"{k} (best)" for k in best_over]
    tail = ["runs"] if best_over else []
    if replicated:  # the mean over replicates, their range and how many were solved
        shown = [f"{metric} (mean)", f"{metric} (min)", f"{metric} (max)", f"{valid_metric(metric)} (mean)",
                 "solved", "replicates"]
    else:
        shown = [metric, f"{valid_metric(metric)} (best)"]
    return [*group_by, *best, *shown, "state_size", "num_parameters", "epochs", "status", *tail, "run"]


def _fmt(value: Any, column: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}" if "/" in column else f"{value:.2f}" if column == "solved" else f"{value:g}"
    if isinstance(value, int) and column in ("state_size", "num_parameters"):
        return f"{value:,}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def table_rows(rows: Sequence[Row], group_by: Sequence[str], best_over: Sequence[str],
               metric: str) -> tuple[list[str], list[list[Any]]]:
    """Header and raw cell values of the report; with replicates, their mean, min, max and
    solved fraction (the representative run is the validation-best replicate)."""
    replicated = any(len(r.replicates) > 1 for r in rows)
    header = columns(group_by, best_over, metric, replicated)
    cells = []
    for row in rows:
        s = row.run.summary
        if replicated:
            values = row.values(metric)
            shown = [row.mean(metric), min(values, default=None), max(values, default=None),
                     row.mean(valid_metric(metric)), row.solved(), len(row.replicates)]
        else:
            shown = [row.run.metric(metric), row.run.metric(valid_metric(metric))]
        cells.append([*row.keys.values(), *shown, s.get("state_size"), s.get("num_parameters"), s.get("epochs"),
                      row.run.status, *([len(row.candidates)] if best_over else []), row.run.label])
    return header, cells


def format_cells(header: Sequence[str], cells: Sequence[Sequence[Any]], width: int | None = None) -> str:
    """The report as aligned plain-text columns, at most ``width`` characters a line."""
    return format_table(header, [[_fmt(v, h) for v, h in zip(r, header)] for r in cells], width)


def to_records(header: Sequence[str], cells: Sequence[Sequence[Any]], rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The report as JSON-ready objects, one per row: every column with its raw value (NaN
    as null) and ``path``, the representative run's directory."""
    def clean(value: Any) -> Any:
        return None if isinstance(value, float) and math.isnan(value) else value

    return [{**{h: clean(v) for h, v in zip(header, cell)}, "path": str(row.run.path)}
            for cell, row in zip(cells, rows)]


def to_csv(header: Sequence[str], cells: Sequence[Sequence[Any]]) -> str:
    """The report as CSV: full-precision numbers, empty cells where there is no value."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in cells:
        writer.writerow(["" if v is None else json.dumps(v) if isinstance(v, (dict, list)) else v for v in r])
    return buf.getvalue()


# -- figure --------------------------------------------------------------------------------


def _points(run: Run, metric: str) -> list[tuple[Any, float]]:
    """(sequence length, value) of a run: one per tested length when a run tests several."""
    parsed = parse_metric(metric)
    if parsed is not None and parsed.slice is None:
        per_len = per_slice(run.summary.get("test") or {}, metric, "input_seq_len")
        if len(per_len) > 1:
            return sorted((int(k), v) for k, v in per_len.items())
    value = run.metric(metric)
    sliced = parsed is not None and parsed.slice is not None and parsed.slice[0] == "input_seq_len"
    seq_len = int(parsed.slice[1]) if sliced else key_value(run, "seq_len")
    return [] if value is None or seq_len is None else [(seq_len, value)]


def _row_points(row: Row, metric: str) -> dict[Any, list[float]]:
    """Sequence length → the value of each done replicate."""
    out: dict[Any, list[float]] = {}
    for run in row.replicates or [row.run]:
        if run.status == "done":
            for seq_len, value in _points(run, metric):
                out.setdefault(seq_len, []).append(value)
    return out


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats: none with at most their x and a higher y."""
    frontier: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not frontier or y > frontier[-1][1]:
            frontier.append((x, y))
    return frontier


def plot(rows: Sequence[Row], out: str | Path, x: str = "state_size", metric: str = "test/accuracy",
         title: str | None = None) -> Path:
    """The Zoology figure: ``metric`` against state size (or d_model), a panel per sequence
    length, a colour per mixer. Each configuration is a point (the mean over its replicates,
    with a bar from their min to max). Against state size each mixer's line is its Pareto
    frontier (the best accuracy reached at that state size or less, as in the Based paper's
    figure); against d_model it joins the means, with the min–max band shaded. Where several
    rows share a point, the one with the best mean validation score is drawn."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FixedLocator, NullLocator
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'zoology[plot]'") from None
    if x not in X_AXES:
        raise UserError(f"--x {x}: must be one of {', '.join(X_AXES)}")
    select = valid_metric(metric)
    # (seq len, mixer, x) → (row, values of its replicates)
    points: dict[tuple, tuple[Row, list[float]]] = {}
    for row in rows:
        xv = row.run.summary.get("state_size") if x == "state_size" else key_value(row.run, "d_model")
        if not isinstance(xv, (int, float)) or xv <= 0:
            continue
        mixer = str(key_value(row.run, "mixer") or "?")
        for seq_len, values in _row_points(row, metric).items():
            key = (seq_len, mixer, xv)
            if key not in points or _rank(row.replicates or [row.run], select) < \
                    _rank(points[key][0].replicates or [points[key][0].run], select):
                points[key] = (row, values)
    if not points:
        raise UserError(f"--plot: no run has {metric} and a {x} to plot")
    panels = sorted({k[0] for k in points}, key=_sort_key)
    mixers = sorted({k[1] for k in points})
    colors = {m: f"C{i % 10}" for i, m in enumerate(mixers)}
    fig = Figure(figsize=(max(4.2 * len(panels), 5.5) + 1.6, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, seq_len in zip(axes, panels):
        for mixer in mixers:
            mine = sorted((k[2], v[1]) for k, v in points.items() if k[0] == seq_len and k[1] == mixer)
            if not mine:
                continue
            xs = [p[0] for p in mine]
            means = [sum(v) / len(v) for _, v in mine]
            lows, highs = [min(v) for _, v in mine], [max(v) for _, v in mine]
            color = colors[mixer]
            ax.errorbar(xs, means, yerr=[[m - lo for m, lo in zip(means, lows)], [hi - m for m, hi in zip(means, highs)]],
                        fmt="o", color=color, alpha=0.6, markersize=4, capsize=2, linewidth=1)
            if x == "state_size":
                ax.plot(*zip(*pareto_frontier(list(zip(xs, means)))), color=color, label=mixer, drawstyle="steps-post")
            else:
                ax.plot(xs, means, color=color, label=mixer)
                if any(hi > lo for lo, hi in zip(lows, highs)):
                    ax.fill_between(xs, lows, highs, color=color, alpha=0.15, linewidth=0)
        ax.set_xscale("log", base=10 if x == "state_size" else 2)
        if x == "d_model":
            ticks = sorted({k[2] for k in points})
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"seq len {seq_len}")
        ax.set_xlabel(X_AXES[x])
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel(metric.replace("/", " ", 1).replace("/", " · "))
    handles = [h for m in mixers for h in [_handle_for(axes, m)] if h is not None]
    fig.legend(handles, [h.get_label() for h in handles], loc="outside right upper", title="mixer")
    fig.suptitle(title or f"{metric} vs {X_AXES[x].split(' (')[0]}")
    return _save_figure(fig, out, "--plot")


def _row_label(row: Row, keys: Sequence[str]) -> str:
    return " ".join(f"{k}={_fmt(row.keys[k], k)}" for k in keys) or row.run.label


def plot_curves(rows: Sequence[Row], out: str | Path, metric: str = "valid/accuracy",
                keys: Sequence[str] = (), title: str | None = None) -> Path:
    """Learning curves: ``metric`` (a validation metric) per epoch from each run's
    ``metrics.jsonl``, one line per run, one colour per row of the table (a configuration;
    with ``best_over`` the selected one), so the replicates of a configuration share a
    colour. MQAR's plateau-then-jump, and how its timing varies with the seed, shows here.
    ``keys`` name the rows in the legend (default: the run label)."""
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise UserError("--curves needs matplotlib: pip install 'zoology[plot]'") from None
    curves = []  # (row index, epochs, values)
    for i, row in enumerate(rows):
        for run in row.replicates or [row.run]:
            points = [(r["epoch"], r[metric]) for r in run.history()
                      if isinstance(r.get("epoch"), int) and isinstance(r.get(metric), (int, float))]
            if points:
                curves.append((i, *zip(*points)))
    if not curves:
        raise UserError(f"--curves: no run has {metric} per epoch (metrics.jsonl)")
    shown = sorted({c[0] for c in curves})
    cmap = colormaps["tab10" if len(shown) <= 10 else "tab20" if len(shown) <= 20 else "viridis"]
    colors = {i: cmap(k % cmap.N) if len(shown) <= 20 else cmap(k / max(1, len(shown) - 1))
              for k, i in enumerate(shown)}
    fig = Figure(figsize=(8.5 if len(shown) <= 12 else 11, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    labelled: set[int] = set()
    for i, epochs, values in curves:
        ax.plot(epochs, values, color=colors[i], linewidth=1.2, alpha=0.85, marker="." if len(epochs) < 30 else None,
                label=_row_label(rows[i], keys) if i not in labelled else None)
        labelled.add(i)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric.replace("/", " ", 1).replace("/", " · "))
    if (parse_metric(metric) or parse_metric("valid/accuracy")).quantity == "accuracy":
        ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside right upper", fontsize="small" if len(shown) <= 20 else "x-small",
               ncol=1 if len(shown) <= 30 else 2)
    ax.set_title(title or f"{metric} per epoch")
    return _save_figure(fig, out, "--curves")


def _save_figure(fig: Any, out: str | Path, option: str) -> Path:
    """Render ``fig`` in the format its file name says (PNG by default) and write it atomically."""
    out = Path(out)
    buf = io.BytesIO()
    fig.savefig(buf, format=out.suffix.lstrip(".").lower() or "png", dpi=120)
    _write(out, buf.getvalue(), option)
    return out


def _write(path: Path, data: bytes, option: str) -> None:
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write: {exc.strerror or exc}") from None


def _handle_for(axes: Sequence[Any], mixer: str) -> Any:
    for ax in axes:
        for line in ax.get_lines():
            if line.get_label() == mixer:
                return line
    return None


# -- MAD -----------------------------------------------------------------------------------

# MAD's six tasks (Poli et al. 2024, athms/mad-lab) under their Zoology names, in the paper's order
MAD_TASKS = ("in_context_recall", "fuzzy_in_context_recall", "noisy_in_context_recall",
             "selective_copying", "compression", "memorization")
MAD_GRID = ("lr", "train.weight_decay")  # what MAD's protocol sweeps, and selects over, per task
MAD_SCORE = "mad_score"
MAD_TASK_KEY = "data.test.0.task"  # names each selected row's task (in --curves legends too)


def mad_task(run: Run) -> str | None:
    """The MAD task a run is scored on: the task of its test segments when that is one of
    ``MAD_TASKS`` (None for other runs, or runs testing several tasks)."""
    tasks = {t.get("task") for t in lookup(run.config, "data.test") or [] if isinstance(t, dict)}
    return next(iter(tasks)) if len(tasks) == 1 and tasks <= set(MAD_TASKS) else None


@dataclass
class MadRow:
    """One architecture in the MAD table: per task, the rows (one per task setting; MAD's
    baseline is one) whose grid point won on validation."""

    keys: dict[str, Any]
    tasks: dict[str, list[Row]] = field(default_factory=dict)

    def accuracy(self, task: str, metric: str) -> float | None:
        """The task's ``metric``: the mean over its settings of the selected configuration's
        (mean over replicates); None when a setting has no done run."""
        values = [row.mean(metric) for row in self.tasks.get(task, [])]
        return sum(values) / len(values) if values and None not in values else None

    def missing(self, metric: str) -> list[str]:
        return [t for t in MAD_TASKS if self.accuracy(t, metric) is None]

    def score(self, metric: str) -> float | None:
        """The MAD score: the mean of the six task accuracies, None unless all six are there."""
        if self.missing(metric):
            return None
        return sum(self.accuracy(t, metric) for t in MAD_TASKS) / len(MAD_TASKS)


def build_mad_rows(runs: Sequence[Run], arch_keys: Sequence[str], best_over: Sequence[str] = (),
                   metric: str = "test/accuracy") -> list[MadRow]:
    """MAD's aggregation on runs of its tasks: configurations that differ only in MAD's grid
    (and ``best_over``) compete on validation (:func:`build_rows`); each winner is one setting
    of its task for the architecture its ``arch_keys`` name."""
    rows = build_rows([r for r in runs if mad_task(r)], [*arch_keys, MAD_TASK_KEY], [*MAD_GRID, *best_over], metric)
    archs: dict[tuple, MadRow] = {}
    for row in rows:
        arch = {k: row.keys[k] for k in arch_keys}
        mad = archs.setdefault(tuple(repr(v) for v in arch.values()), MadRow(arch))
        mad.tasks.setdefault(row.keys[MAD_TASK_KEY], []).append(row)
    return list(archs.values())


def mad_table(rows: Sequence[MadRow], arch_keys: Sequence[str],
              metric: str) -> tuple[list[str], list[list[Any]]]:
    """Header and raw cells: an architecture per line, a column per task, the MAD score, and
    how many runs took part."""
    header = [*arch_keys, *MAD_TASKS, MAD_SCORE, "runs"]
    cells = [[*row.keys.values(), *(row.accuracy(t, metric) for t in MAD_TASKS), row.score(metric),
              sum(len(r.candidates) for rs in row.tasks.values() for r in rs)] for row in rows]
    return header, cells


def mad_records(header: Sequence[str], cells: Sequence[Sequence[Any]], rows: Sequence[MadRow],
                metric: str) -> list[dict[str, Any]]:
    """The MAD table as JSON-ready objects: every column, ``missing`` (tasks without a done
    run) and ``selected`` (per task, the chosen grid point and run of each setting)."""
    out = []
    for cell, row in zip(cells, rows):
        selected = {t: [{**{k: v for k, v in r.keys.items() if k not in row.keys and k != MAD_TASK_KEY},
                         metric: r.mean(metric),
                         "path": str(r.run.path)} for r in row.tasks[t]] for t in MAD_TASKS if t in row.tasks}
        out.append({**dict(zip(header, cell)), "missing": row.missing(metric), "selected": selected})
    return out


def plot_mad(rows: Sequence[MadRow], out: str | Path, arch_keys: Sequence[str], metric: str = "test/accuracy",
             title: str | None = None) -> Path:
    """Grouped bars: for each MAD task and the MAD score, a bar per architecture ("n/a" where
    the architecture has no value)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'zoology[plot]'") from None
    names = [*(t.replace("_", " ") for t in MAD_TASKS), "MAD score"]
    width = 0.8 / max(len(rows), 1)
    fig = Figure(figsize=(2.0 + len(names) * (0.6 + 0.25 * len(rows)), 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, row in enumerate(rows):
        values = [row.accuracy(t, metric) for t in MAD_TASKS] + [row.score(metric)]
        xs = [g + (i - (len(rows) - 1) / 2) * width for g in range(len(values))]
        ax.bar([x for x, v in zip(xs, values) if v is not None], [v for v in values if v is not None], width=width,
               color=f"C{i % 10}", label=" ".join(_fmt(row.keys[k], k) for k in arch_keys))
        for x, v in zip(xs, values):
            if v is None:  # no value: say so, rather than a gap that reads as 0
                ax.text(x, 0.01, "n/a", rotation=90, ha="center", va="bottom", fontsize="x-small", color=f"C{i % 10}")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(metric.replace("/", " ", 1).replace("/", " · "))
    ax.grid(True, axis="y", alpha=0.3)
    fig.legend(loc="outside right upper", title=", ".join(arch_keys))
    ax.set_title(title or f"MAD: {metric} per task")
    return _save_figure(fig, out, "--plot")


def mad_report(runs: Sequence[Run], group_by: Sequence[str], best_over: Sequence[str], metric: str,
               csv_path: str | Path | None, plot_path: str | Path | None, curves_path: str | Path | None,
               as_json: bool, width: int | None) -> str:
    """``zoology report --mad``: the table, notes, and the CSV and figures where asked."""
    arch_keys = list(group_by) or ["mixer"]
    ignored = [r for r in runs if not mad_task(r)]
    if len(ignored) == len(runs):
        raise UserError(f"--mad: no run is scored on one MAD task ({', '.join(MAD_TASKS)})")
    rows = build_mad_rows(runs, arch_keys, best_over, metric)
    header, cells = mad_table(rows, arch_keys, metric)
    grid = ", ".join([*MAD_GRID, *best_over])
    notes = []
    if csv_path:
        _write(Path(csv_path), to_csv(header, cells).encode("utf-8"), "--csv")
        notes.append(f"table → {csv_path}")
    if plot_path:
        title = f"MAD: {metric} per task (best of {grid} by {valid_metric(metric)})"
        notes.append(f"figure → {plot_mad(rows, plot_path, arch_keys, metric, title)}")
    if curves_path:
        chosen = [r for row in rows for t in MAD_TASKS for r in row.tasks.get(t, [])]
        title = f"MAD: {valid_metric(metric)} per epoch (best of {grid})"
        keys = [*arch_keys, MAD_TASK_KEY]
        notes.append(f"curves → {plot_curves(chosen, curves_path, valid_metric(metric), keys, title)}")
    if as_json:
        return json.dumps(mad_records(header, cells, rows, metric), indent=2, default=str)
    mad_runs = len(runs) - len(ignored)
    shown = [[_fmt(v, metric if h in (*MAD_TASKS, MAD_SCORE) else h) for v, h in zip(r, header)] for r in cells]
    lines = [format_table(header, shown, width), "",
             f"{mad_runs} runs of MAD tasks ({sum(r.status == 'done' for r in runs if mad_task(r))} done); "
             f"per task the {metric} of the grid point ({grid}) with the best {valid_metric(metric)}; "
             f"{MAD_SCORE} = the mean over the {len(MAD_TASKS)} tasks"]
    for row in rows:
        name = " ".join(_fmt(row.keys[k], k) for k in arch_keys)
        if row.missing(metric):
            lines.append(f"{name}: no done run of {', '.join(row.missing(metric))}: no {MAD_SCORE}")
        for task, settings in row.tasks.items():
            if len(settings) > 1:
                differ = [p for p in hidden_differences(settings, []) if not _excluded(p, [*MAD_GRID, *best_over])]
                lines.append(f"{name}: {task} averages {len(settings)} settings"
                             + (f" (they differ in {', '.join(differ)})" if differ else ""))
    if ignored:
        lines.append(f"ignored {len(ignored)} run(s) not scored on one MAD task")
    return "\n".join(lines + notes)


# -- the command ---------------------------------------------------------------------------


def report(root: str | Path, group_by: Sequence[str] = (), best_over: Sequence[str] = (),
           csv_path: str | Path | None = None, plot_path: str | Path | None = None,
           x: str = "state_size", metric: str = "test/accuracy", curves_path: str | Path | None = None,
           as_json: bool = False, width: int | None = None, mad: bool = False) -> str:
    """Everything ``zoology report`` does; returns the text it prints: the table (at most
    ``width`` characters a line) and notes, or with ``as_json`` the rows as a JSON array
    (:func:`to_records`). The CSV, figure and curves are written only where asked. With
    ``mad``, MAD's table instead (:func:`mad_report`): ``group_by`` names the architecture
    (default: the mixer), ``best_over`` adds keys to MAD's grid, and ``x`` does not apply."""
    if not metric.startswith("test/"):
        raise UserError(f"--metric {metric}: must be a test metric (test/...); "
                        "selection uses its validation twin")
    runs = find_runs(root)
    best_over = list(dict.fromkeys(best_over))
    check_keys(runs, best_over, "--best-over")
    check_keys(runs, group_by, "--group-by")
    known = sorted({k for r in runs for k in r.summary.get("test") or {}})
    if known and metric not in known:
        close = difflib.get_close_matches(metric, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"--metric {metric}: no run reports it; {hint}reported: {', '.join(known)}")
    if mad:
        if x != "state_size":
            raise UserError(f"--x {x}: does not apply to --mad (its figure has a group of bars per task)")
        return mad_report(runs, group_by, best_over, metric, csv_path, plot_path, curves_path, as_json, width)
    group_by = list(group_by) or default_group_by(runs, best_over)
    rows = build_rows(runs, group_by, best_over, metric)
    header, cells = table_rows(rows, group_by, best_over, metric)
    notes = []
    if csv_path:
        _write(Path(csv_path), to_csv(header, cells).encode("utf-8"), "--csv")
        notes.append(f"table → {csv_path}")
    names = sorted({str(key_value(r.run, "experiment")) for r in rows})
    names_text = f"{', '.join(names[:3])}{' …' if len(names) > 3 else ''}"
    if plot_path:
        title = f"{names_text}: {metric} vs {X_AXES[x].split(' (')[0]}"
        if best_over:
            title += f" (best over {', '.join(best_over)})"
        notes.append(f"figure → {plot(rows, plot_path, x=x, metric=metric, title=title)}")
    if curves_path:
        select = valid_metric(metric)
        title = f"{names_text}: {select} per epoch" + (f" (best over {', '.join(best_over)})" if best_over else "")
        notes.append(f"curves → {plot_curves(rows, curves_path, select, [*group_by, *best_over], title)}")
    if as_json:
        return json.dumps(to_records(header, cells, rows), indent=2, default=str)
    lines = [format_cells(header, cells, width), ""]
    done = sum(r.status == "done" for r in runs)
    lines.append(f"{len(runs)} runs ({done} done), {len(rows)} rows"
                 + (f", best of each group by {valid_metric(metric)} over {', '.join(best_over)}"
                    if best_over else ""))
    shown = {id(r.run) for r in rows}
    losers = [f"{r.label} ({r.status})" for r in runs if r.status != "done" and id(r) not in shown]
    if losers:
        lines.append(f"not done, not selected: {', '.join(losers)}")
    hidden = hidden_differences(rows, group_by)
    if hidden:
        lines.append(f"note: rows with the same {', '.join(group_by)} differ in "
                     f"{', '.join(hidden)} (add --group-by or --best-over)")
    return "\n".join(lines + notes)
