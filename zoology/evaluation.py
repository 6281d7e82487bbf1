"""``zoology eval``: score a finished run's saved model on its own test segments or on new ones.

The model is rebuilt from the run's resolved experiment (``config.toml``) exactly as it
trained: the same shapes and the same mixer context, whose ``max_seq_len`` (the longest
length the run trained or tested on) some mixers turn into position features. Its saved
weights (``model.safetensors``, verified) are loaded into it. Only test segments are
generated, by the function and with the seeds training uses for its test split, and
scored by training's own :func:`zoology.train.evaluate` in the run's mixed precision, so
on the run's own segments the metrics equal the summary's ``test`` metrics.

New segments come from ``--set data.test...`` overrides of the resolved config or from a
file's ``[[data.test]]``, which replace the run's test segments: other lengths, pair
counts or tasks, scored with the tokens the model knows. Segments it cannot score are
refused before anything is generated: a vocabulary larger than the model's, a length past
its learned positions (``model.max_position_embeddings``), or past what the autoencoder
readout decodes. A mixer that refuses a length it was not built for (a long convolution's
filter spans ``max_seq_len``) is reported the same way when it runs.

The result goes to ``<run>/eval/<name>.json``, written atomically.
"""

from __future__ import annotations

import copy
import datetime
import json
import time
from pathlib import Path
from typing import Any

import attrs
from accelerate.utils import set_seed

from zoology import saved
from zoology.cache import describe, resolve_cache_dir
from zoology.config import Experiment, parse_override, read_toml, structure_experiment
from zoology.data import build_split, loader
from zoology.errors import ConfigError, UserError
from zoology.files import atomic_write
from zoology.paths import assign, normalize
from zoology.runs import CONFIG, SAFE_NAME, safe_name

EVAL_DIR = "eval"
OWN = "test"  # the name of an evaluation on the run's own test segments
# what --set may change: the evaluation data and how it is computed, never the model
SETTABLE = ("data.test", "data.seed", "data.eval_batch_size", "data.cache_dir", "train.mixed_precision")
DATA_FILE_KEYS = ("test", "seed", "eval_batch_size")  # what --data reads from a file's [data]


@attrs.frozen
class Evaluation:
    """What ``zoology eval`` computed and where it wrote it."""

    name: str
    path: Path  # <run>/eval/<name>.json
    record: dict[str, Any]  # the file's content

    @property
    def metrics(self) -> dict[str, float]:
        return self.record["metrics"]


def load_run(run: Path) -> tuple[Experiment, dict[str, Any]]:
    """The run's experiment as it trained, and its resolved config as data. ``model.init_from``
    is left out: the run's own weights are loaded, and the run it started from may be gone."""
    path = run / CONFIG
    if not path.is_file():
        raise UserError(f"{run}: has no {CONFIG} (the resolved experiment every run writes first)")
    raw = read_toml(path)
    if isinstance(raw.get("model"), dict):
        raw["model"].pop("init_from", None)
    return structure_experiment(copy.deepcopy(raw), str(path)), raw


def _read_data_file(path: Path) -> dict[str, Any]:
    """The ``[data]`` keys a ``--data`` file gives: ``test`` (required), ``seed``, ``eval_batch_size``."""
    raw = read_toml(path)
    problems = [(key, "not read by zoology eval: the file gives [[data.test]] segments (and optionally "
                      f"data.{', data.'.join(DATA_FILE_KEYS[1:])})") for key in raw if key != "data"]
    data = raw.get("data")
    if not isinstance(data, dict) or "test" not in data:
        problems.append(("data.test", "missing: the segments to evaluate on, as [[data.test]] tables"))
    else:
        problems += [(f"data.{key}", f"not read by zoology eval; allowed: {', '.join(DATA_FILE_KEYS)}")
                     for key in data if key not in DATA_FILE_KEYS]
    if problems:
        raise ConfigError(str(path), problems)
    return data


def _settable(text: str) -> tuple[str, Any]:
    key, value = parse_override(text)
    dotted = normalize(key)
    if not any(dotted == k or dotted.startswith(k + ".") for k in SETTABLE):
        raise UserError(f"--set {key}: zoology eval changes only what is evaluated and how: "
                        f"{', '.join(SETTABLE)} (the model and its training are the run's)")
    return key, value


def eval_experiment(exp: Experiment, raw: dict[str, Any], overrides: list[str], data_file: Path | None,
                    source: str) -> Experiment:
    """``exp`` with the test segments (and seed, batch, cache, precision) that ``--data`` and
    ``--set`` give, each checked to be something this model can score."""
    raw = copy.deepcopy(raw)
    if data_file is not None:
        raw["data"].update(_read_data_file(data_file))
    for text in overrides:
        assign(raw, *_settable(text))
    new = structure_experiment(raw, source, check_model=False)
    model = exp.model
    problems = []
    for i, task in enumerate(new.data.test):
        where = f"data.test[{i}]"
        if task.vocab_size > model.vocab_size:
            problems.append((f"{where}.vocab_size", f"{task.vocab_size} tokens, but the model embeds "
                                                    f"{model.vocab_size} (model.vocab_size of the run); at most "
                                                    f"{model.vocab_size}"))
        if task.readout != model.readout:
            problems.append((where, f"{task.name} is scored with readout {task.readout!r}; the model has "
                                    f"{model.readout!r}"))
        length = task.input_seq_len
        if 0 < model.max_position_embeddings < length:
            problems.append((f"{where}.input_seq_len", f"length {length} is past the model's learned positions: "
                                                       f"it has {model.max_position_embeddings} "
                                                       "(model.max_position_embeddings of the run); at most "
                                                       f"{model.max_position_embeddings}"))
        elif model.readout == "autoencoder" and length > exp.max_seq_len:
            problems.append((f"{where}.input_seq_len", f"length {length} is past what the autoencoder readout "
                                                       f"decodes: {exp.max_seq_len} positions; at most "
                                                       f"{exp.max_seq_len}"))
    if model.readout == "autoencoder" and len({t.input_seq_len for t in new.data.test}) > 1:
        problems.append(("data.test", "the autoencoder decodes from the last position, so every segment needs "
                                      "the same input_seq_len"))
    if problems:
        raise ConfigError(source, problems)
    return attrs.evolve(exp, data=new.data, train=attrs.evolve(exp.train, mixed_precision=new.train.mixed_precision))


def default_name(exp: Experiment, new: Experiment, overrides: list[str], data_file: Path | None) -> str:
    """``test`` for the run's own test segments and seeds, else made of the ``--data`` file's
    name and the ``--set`` assignments (``test.0.input_seq_len=128``)."""
    if new.data.test == exp.data.test and new.data_seed == exp.data_seed:
        return OWN
    parts = [data_file.stem] if data_file is not None else []
    for text in overrides:
        key, _, value = text.partition("=")
        parts.append(f"{normalize(key.strip()).removeprefix('data.')}={value.strip()}")
    return safe_name("_".join(parts))


def evaluate_run(run: str | Path, overrides: list[str] = (), data_file: str | Path | None = None,
                 name: str | None = None) -> Evaluation:
    """Score ``run``'s saved model (see the module doc) and write ``<run>/eval/<name>.json``."""
    from zoology.model import LanguageModel
    from zoology.train import Precision, evaluate, make_accelerator, versions

    run = Path(run)
    model_path = saved.model_file(run)
    if name is not None and not SAFE_NAME.fullmatch(name):
        raise UserError(f"--name {name!r}: must be 1-200 letters, digits or ._+=- not starting with a dot "
                        f"(it names {EVAL_DIR}/NAME.json in the run directory)")
    data_file = Path(data_file) if data_file is not None else None
    exp, raw = load_run(run)
    source = str(data_file or run / CONFIG) + (" with --set" if overrides else "")
    new = eval_experiment(exp, raw, list(overrides), data_file, source)
    name = name or default_name(exp, new, list(overrides), data_file)

    start = time.time()
    acc = make_accelerator(new)
    precision = Precision(new.train.mixed_precision, acc.device)
    set_seed(exp.train_seed)  # as training built it (a mixer may draw buffers it does not save)
    model = LanguageModel(exp)  # the run's experiment: its shapes and its mixers' max_seq_len
    meta = saved.load_into(model, model_path)
    split = build_split(new.data.test, "test", new.data_seed, resolve_cache_dir(new.data.cache_dir))
    model, data = acc.prepare(model, loader(split, new.data.eval_batch_size or new.data.batch_size))
    length = split.inputs.shape[1]
    try:
        with precision.autocast():
            metrics = evaluate(model, data, split, acc, "test")
    except (ValueError, RuntimeError) as exc:
        if length <= exp.max_seq_len:
            raise
        raise UserError(f"{run}: the model cannot run at length {length} (it trained and tested up to "
                        f"length {exp.max_seq_len}): {type(exc).__name__}: {exc}") from None

    record = {
        "name": name, "run": str(run), "experiment": exp.name, "run_id": exp.run_id,
        "model_epoch": saved.origin(run, meta)["epoch"],
        "from": {"data_file": str(data_file) if data_file else None, "set": list(overrides)},
        "data": {"seed": new.data_seed, "num_examples": len(split), "seq_len": length,
                 "segments": [{**describe(task, seed), "slices": slices}
                              for task, seed, slices in zip(new.data.test, split.seeds, split.slices)]},
        "metrics": metrics,
        "mixed_precision": precision.mode, "device_type": acc.device.type,
        "evaluated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "wall_time_s": round(time.time() - start, 2), "versions": versions(),
    }
    path = run / EVAL_DIR / f"{name}.json"
    if acc.is_main_process:
        atomic_write(path, (json.dumps(record, indent=2, default=str) + "\n").encode("utf-8"))
    return Evaluation(name, path, record)

