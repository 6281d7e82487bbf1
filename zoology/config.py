"""An experiment as attrs classes, the strict cattrs converter, and TOML in and out.

Loading is strict: an unknown key, a wrong type, a missing field or an invalid value is
an error naming the file and the dotted key path, and all errors of a file are reported
together. ``task = "..."`` and mixer ``name = "..."`` select registered components whose
parameters are structured into their own schema.
"""

from __future__ import annotations

import difflib
import functools
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
import numpy as np
import tomli
import tomli_w
from cattrs.errors import AttributeValidationNote, ForbiddenExtraKeysError, IterableValidationNote
from cattrs.gen import make_dict_structure_fn

from zoology import saved
from zoology.errors import MAX_SHOWN, ConfigError, FieldError, UserError
from zoology.metrics import parse as parse_metric
from zoology.metrics import reported as reported_metrics
from zoology.mixer_context import CONTEXT_ARGS, MixerContext, build_mixer
from zoology.paths import assign, drop_none
from zoology.plugins import Registry, UnknownComponent, get_registry
from zoology.runs import SAFE_NAME, safe_name
from zoology.sweep import MAX_REPLICATES, Point, expand
from zoology.tasks.base import Task, at_least, between

# -- the experiment ------------------------------------------------------------------------


def _one_or_many(doc: str, **kwargs: Any) -> Any:
    """A list field that also accepts a single table in TOML."""
    return attrs.field(metadata={"doc": doc, "one_or_many": True}, **kwargs)


def _non_empty(inst: Any, attribute: attrs.Attribute, value: list) -> None:
    if not value:
        raise FieldError(attribute.name, "must hold at least one table")


@attrs.frozen
class MixerSpec:
    """A registered mixer by name with its resolved constructor arguments."""

    name: str
    params: dict[str, Any] = attrs.Factory(dict)
    cls: type | None = attrs.field(default=None, eq=False, repr=False)

    def build(self, context: MixerContext) -> Any:
        """Instantiate with these parameters in ``context``."""
        return build_mixer(self.cls or get_registry().get("mixer", self.name).cls, self.params, context)


SEED_MAX = 2**32 - 1  # numpy and torch seeds are unsigned 32-bit


@attrs.frozen
class DataConfig:
    train: list[Task] = _one_or_many("training segments", validator=_non_empty)
    test: list[Task] = _one_or_many("test segments (validation uses the same specs, other seeds)",
                                    validator=_non_empty)
    batch_size: int = attrs.field(default=32, validator=at_least(1))
    eval_batch_size: int | None = attrs.field(default=None, validator=attrs.validators.optional(at_least(1)))
    seed: int = attrs.field(default=123, validator=between(0, SEED_MAX))
    # on-disk segment cache: true = $XDG_CACHE_HOME/zoology (~/.cache/zoology), a string = that
    # folder, false = off (see zoology/cache.py)
    cache_dir: bool | str = False


def _absolute(value: str | None) -> str | None:
    return None if value is None else str(Path(value).expanduser().resolve())


def _saved_model(inst: Any, attribute: attrs.Attribute, value: str | None) -> None:
    """``model.init_from`` names a finished run that holds a model."""
    if value is not None:
        try:
            saved.model_file(value)
        except UserError as exc:
            raise FieldError(attribute.name, str(exc)) from None


@attrs.frozen
class ModelConfig:
    sequence_mixer: list[MixerSpec] = _one_or_many("mixer table(s), cycled over layers",
                                                   validator=_non_empty)
    state_mixer: list[MixerSpec] = _one_or_many(
        "state mixer table(s), cycled over layers",
        factory=lambda: [MixerSpec("mlp", {"hidden_mult": 4.0})],
        validator=_non_empty,
    )
    d_model: int = attrs.field(default=128, validator=at_least(1))
    n_layers: int = attrs.field(default=2, validator=at_least(1))
    vocab_size: int | None = attrs.field(default=None, validator=attrs.validators.optional(at_least(2)))
    max_position_embeddings: int = attrs.field(default=0, validator=at_least(0))
    # upstream Zoology's default: dropout on the embeddings (layer 0's input)
    embed_dropout: float = attrs.field(default=0.1, validator=between(0.0, 0.99))
    resid_dropout: float = attrs.field(default=0.0, validator=between(0.0, 0.99))
    # "next_token": a causal LM head at every position; "autoencoder": MAD's compression
    # protocol, every position decoded from the last position's vector by an MLP
    readout: Literal["next_token", "autoencoder"] = "next_token"
    # a finished run (its folder) whose saved model is loaded into this one before training;
    # kept as an absolute path, so the resolved config names the same run from anywhere
    init_from: str | None = attrs.field(default=None, converter=_absolute, validator=_saved_model)


def _metric(inst: Any, attribute: attrs.Attribute, value: str) -> None:
    parsed = parse_metric(value)
    if parsed is None or parsed.split != "valid":
        raise FieldError(attribute.name, f"must be a validation metric: valid/accuracy, valid/loss or a per-slice "
                                         f"one like valid/num_kv_pairs=4/accuracy, got {value!r}")


def _replicate_index(inst: Any, attribute: attrs.Attribute, value: int) -> None:
    if not 0 <= value < inst.replicates:
        raise FieldError(attribute.name, f"must be between 0 and replicates - 1 = {inst.replicates - 1}, got {value}")


def replicate_seed(seed: int, replicate: int) -> int:
    """The seed of replicate ``replicate`` of a run seeded ``seed``: ``seed`` itself for
    replicate 0, else an independent draw from (seed, replicate)."""
    if replicate == 0:
        return seed
    return int(np.random.SeedSequence([seed, replicate]).generate_state(1, dtype=np.uint32)[0])


@attrs.frozen
class EarlyStopping:
    metric: str = attrs.field(default="valid/accuracy", validator=_metric)
    threshold: float = 0.99


@attrs.frozen
class TrainConfig:
    max_epochs: int = attrs.field(default=64, validator=at_least(1))
    learning_rate: float = attrs.field(default=1e-3, validator=between(0.0, 10.0))
    weight_decay: float = attrs.field(default=0.1, validator=at_least(0.0))
    warmup_steps: int = attrs.field(default=0, validator=at_least(0))
    # clip the gradient norm to this (0 or absent: no clipping)
    max_grad_norm: float | None = attrs.field(default=None, validator=attrs.validators.optional(at_least(0.0)))
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_accumulation_steps: int = attrs.field(default=1, validator=at_least(1))
    seed: int = attrs.field(default=0, validator=between(0, SEED_MAX))
    # replicates: the run stands for `replicates` runs that differ only in their seeds
    # (model init and data order; with replicate_data also the data); each is one
    # `replicate` (0-based). Replicate 0 keeps the seeds as written.
    replicates: int = attrs.field(default=1, validator=between(1, MAX_REPLICATES))
    replicate: int = attrs.field(default=0, validator=_replicate_index)
    replicate_data: bool = False
    select_metric: str = attrs.field(default="valid/accuracy", validator=_metric)
    checkpoint_every: int = attrs.field(default=1, validator=at_least(0))  # epochs; 0 = never
    early_stopping: EarlyStopping | None = None


@attrs.frozen
class WandbConfig:
    """``[logging.wandb]``: where the W&B run goes. Zoology sets the rest: the run id (kept in
    the run directory, so a resumed run continues the same W&B run), name (the run id),
    group (the experiment) and config (the resolved experiment)."""

    project: str = "zoology"
    entity: str | None = None
    # None: wandb decides (WANDB_MODE, login); an explicit mode overrides WANDB_MODE
    mode: Literal["online", "offline", "disabled"] | None = None
    tags: list[str] = attrs.Factory(list)


def tracker_names() -> list[str]:
    """Every tracker Accelerate knows by name: its own (wandb, tensorboard, mlflow, aim,
    comet_ml, clearml, dvclive, swanlab, trackio, ...) and any registered with
    ``accelerate.tracking.register_tracker_class`` before the experiment loads."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return sorted(LOGGER_TYPE_TO_CLASS)


@attrs.frozen
class LoggingConfig:
    """``[logging]``: experiment trackers, run through Accelerate on the main process.

    ``trackers`` names them; left out, it is every tracker that has a table here (so a
    ``[logging.wandb]`` table alone means ``trackers = ["wandb"]``). ``[logging.wandb]`` is
    typed (:class:`WandbConfig`). Any other tracker's table, e.g. ``[logging.tensorboard]``
    or ``[logging.mlflow]``, holds keyword arguments for Accelerate's tracker class (for
    TensorBoard: ``torch.utils.tensorboard.SummaryWriter``'s) and lands in ``options``
    under the tracker's name; in TOML it is ``[logging.NAME]``, never a key ``options``.
    """

    trackers: list[str] | None = None
    wandb: WandbConfig | None = None
    options: dict[str, dict[str, Any]] = attrs.Factory(dict)

    @property
    def implied(self) -> list[str]:
        """The trackers the tables name, in the order ``trackers`` defaults to."""
        return [*(["wandb"] if self.wandb is not None else []), *self.options]

    def __attrs_post_init__(self) -> None:
        if not self.trackers and not self.options:
            if self.trackers is None:
                object.__setattr__(self, "trackers", self.implied)
            elif self.wandb is not None:
                raise FieldError("wandb", _unlisted("wandb", self.trackers))
            return
        known = tracker_names()
        for name in self.options:
            if name in ("trackers", "wandb", "options") or name not in known:
                close = difflib.get_close_matches(name, ["trackers", "wandb", *known], n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise FieldError(name, f"unknown key; {hint}allowed: trackers, wandb, or a table of options "
                                       f"named after a tracker ({', '.join(known)})")
        if self.trackers is None:
            object.__setattr__(self, "trackers", self.implied)
            return
        for name in self.trackers:
            if name not in known:
                raise FieldError("trackers", f"unknown tracker {name!r}; Accelerate's trackers: {', '.join(known)}")
        if len(set(self.trackers)) < len(self.trackers):
            raise FieldError("trackers", f"names a tracker twice: {self.trackers}")
        for name in self.implied:
            if name not in self.trackers:
                raise FieldError(name, _unlisted(name, self.trackers))


def _unlisted(name: str, trackers: list[str]) -> str:
    return (f"[logging.{name}] is set but logging.trackers = {trackers} leaves {name!r} out; "
            "add it there or remove the table")


def _path_component(inst: Any, attribute: attrs.Attribute, value: str) -> None:
    """Experiment names and run ids become folders under --out (see ``runs.SAFE_NAME``)."""
    if not SAFE_NAME.fullmatch(value):
        raise FieldError(attribute.name, f"must be 1-200 letters, digits or ._+=- not starting with a dot "
                                         f"(it names a folder under --out), got {value!r}")


@attrs.frozen
class Experiment:
    data: DataConfig
    model: ModelConfig
    train: TrainConfig = attrs.Factory(TrainConfig)
    logging: LoggingConfig = attrs.Factory(LoggingConfig)
    # path components of the run directory: checked to be safe names
    name: str = attrs.field(default="experiment", validator=_path_component)
    run_id: str = attrs.field(default="default", validator=_path_component)

    @property
    def vocab_size(self) -> int:
        """What the data needs: the largest vocabulary of any segment."""
        return max(t.vocab_size for t in [*self.data.train, *self.data.test])

    @property
    def train_seed(self) -> int:
        """Seed of model init and data order (this replicate's)."""
        return replicate_seed(self.train.seed, self.train.replicate)

    @property
    def data_seed(self) -> int:
        """Base seed of the data segments (this replicate's, with ``train.replicate_data``)."""
        return replicate_seed(self.data.seed, self.train.replicate if self.train.replicate_data else 0)

    @property
    def max_seq_len(self) -> int:
        return max(t.input_seq_len for t in [*self.data.train, *self.data.test])


# -- the converter -------------------------------------------------------------------------


def _strict(tp: type) -> Any:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}

    def structure(value: Any, _: Any) -> Any:
        ok = isinstance(value, tp) and not (tp is not bool and isinstance(value, bool))
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # an integer literal where a float is wanted loses nothing
        if not ok:
            raise TypeError(f"must be {names[tp]}, got {type(value).__name__} {value!r}")
        return value

    return structure


def _literal(tp: Any) -> Any:
    allowed = typing.get_args(tp)

    def structure(value: Any, _: Any) -> Any:
        if value not in allowed or isinstance(value, bool):
            raise ValueError(f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value

    return structure


def _bool_or_str(value: Any, _: Any) -> bool | str:
    if not isinstance(value, (bool, str)):
        raise TypeError(f"must be true, false or a string (a folder), got {type(value).__name__} {value!r}")
    return value


@functools.cache
def converter(registry: Registry | None = None) -> cattrs.Converter:
    """The strict converter for ``registry``, built once: cattrs compiles a structuring
    function per class on first use, which costs more than structuring one experiment."""
    return make_converter(registry)


def make_converter(registry: Registry | None = None) -> cattrs.Converter:
    """The strict converter; ``registry`` resolves task and mixer names (default: installed)."""
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    for tp in (int, float, bool, str):
        conv.register_structure_hook(tp, _strict(tp))
    conv.register_structure_hook_func(lambda t: t == (bool | str), _bool_or_str)
    conv.register_structure_hook_factory(lambda t: typing.get_origin(t) is Literal, _literal)

    def attrs_factory(cl: type) -> Any:
        base = make_dict_structure_fn(cl, conv, _cattrs_forbid_extra_keys=True)
        wrap = [f.name for f in attrs.fields(cl) if f.metadata.get("one_or_many")]

        def structure(value: Any, _: Any) -> Any:
            if not isinstance(value, dict):
                raise TypeError(f"must be a table, got {type(value).__name__} {value!r}")
            value = {k: [v] if k in wrap and isinstance(v, dict) else v for k, v in value.items()}
            return base(value, cl)

        return structure

    conv.register_structure_hook_factory(attrs.has, attrs_factory)

    def component(kind: str, key: str, value: Any) -> tuple[Any, dict[str, Any]]:
        if not isinstance(value, dict):
            raise TypeError(f"must be a table with a `{key}` key, got {type(value).__name__} {value!r}")
        value = dict(value)
        reg = registry or get_registry()
        if key not in value:
            raise FieldError(key, f"missing: which {kind} (available: {', '.join(reg.names(kind))})")
        name = value.pop(key)
        if not isinstance(name, str):
            raise FieldError(key, f"must be a string naming a {kind}, got {name!r}")
        try:
            return reg.get(kind, name), value
        except UnknownComponent as exc:
            raise FieldError(key, str(exc)) from None

    def structure_task(value: Any, _: Any) -> Task:
        comp, params = component("task", "task", value)
        return conv.structure(params, comp.cls)

    def structure_mixer(value: Any, _: Any) -> MixerSpec:
        comp, params = component("mixer", "name", value)
        for key in params:
            if key in CONTEXT_ARGS:
                raise FieldError(key, "is filled in by the model (from [model] and the data); "
                                      "remove it from the mixer table")
        resolved = conv.structure(params, comp.params_cls)
        return MixerSpec(comp.name, attrs.asdict(resolved), comp.cls)

    logging_base = make_dict_structure_fn(LoggingConfig, conv, _cattrs_forbid_extra_keys=True)

    def structure_logging(value: Any, _: Any) -> LoggingConfig:
        # [logging.NAME] tables of trackers other than wandb are their options
        if not isinstance(value, dict):
            raise TypeError(f"must be a table, got {type(value).__name__} {value!r}")
        own = {k: v for k, v in value.items() if k in ("trackers", "wandb")}
        if not isinstance(own.get("trackers", []), list):
            raise FieldError("trackers", f'must be an array of tracker names, e.g. ["wandb", "tensorboard"], '
                                         f"got {own['trackers']!r}")
        options = {k: v for k, v in value.items() if k not in own}
        for key, table in options.items():
            if not isinstance(table, dict):
                raise FieldError(key, f"must be a table of the {key} tracker's options, got {table!r}")
        return logging_base({**own, "options": options}, LoggingConfig)

    def unstructure_logging(cfg: LoggingConfig) -> dict[str, Any]:
        out: dict[str, Any] = {} if cfg.trackers == cfg.implied else {"trackers": list(cfg.trackers or [])}
        if cfg.wandb is not None:
            out["wandb"] = conv.unstructure(cfg.wandb)
        return {**out, **{k: dict(v) for k, v in cfg.options.items()}}

    conv.register_structure_hook(LoggingConfig, structure_logging)
    conv.register_unstructure_hook(LoggingConfig, unstructure_logging)
    conv.register_structure_hook_func(lambda t: t is Task, structure_task)
    conv.register_structure_hook_func(lambda t: t is MixerSpec, structure_mixer)
    conv.register_unstructure_hook(Task, lambda t: {"task": t.name, **conv.unstructure(t.params())})
    conv.register_unstructure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, Task), lambda t: {"task": t.name, **t.params()}
    )
    conv.register_unstructure_hook(MixerSpec, lambda m: {"name": m.name, **m.params})
    return conv


# -- errors --------------------------------------------------------------------------------


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _allowed(cl: type) -> list[str]:
    return [f.name for f in attrs.fields(cl)] if attrs.has(cl) else []


def flatten_errors(exc: BaseException, path: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, message) for every leaf error of a cattrs validation error tree."""
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", []):
                if isinstance(note, IterableValidationNote):
                    sub_path = _join(sub_path, note.index)
                elif isinstance(note, AttributeValidationNote):
                    sub_path = _join(sub_path, note.name)
            yield from flatten_errors(sub, sub_path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        allowed = _allowed(exc.cl)
        for n, key in enumerate(sorted(exc.extra_fields)):
            close = difflib.get_close_matches(key, allowed, n=1) if n < MAX_SHOWN else None  # only those shown
            hint = f"did you mean {close[0]!r}? " if close else ""
            yield _join(path, key), f"unknown key; {hint}allowed: {', '.join(allowed)}"
    elif isinstance(exc, KeyError):
        yield path, "missing required key"
    elif isinstance(exc, FieldError):
        yield _join(path, exc.field), exc.message
    else:
        yield path, str(exc)


# -- loading and dumping -------------------------------------------------------------------


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_toml(text, str(path))


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """TOML text → dict; syntax errors (and nesting deeper than the parser allows) are
    ConfigErrors naming ``source``."""
    try:
        return tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        raise ConfigError(source, [("", f"TOML syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}")]) from None
    except RecursionError:
        raise ConfigError(source, [("", "TOML nested too deeply to read")]) from None


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` with the value in TOML syntax (a bare word is taken as a string)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {_short(text)}: expected KEY.PATH=VALUE")
    if key.count(".") >= MAX_KEY_PARTS:
        raise UserError(f"--set {_short(text)}: a key path of at most {MAX_KEY_PARTS} parts, got {key.count('.') + 1}")
    try:
        value = tomli.loads(f"v = {raw.strip()}")["v"]
    except tomli.TOMLDecodeError:
        value = raw.strip()
    except RecursionError:
        raise UserError(f"--set {_short(text)}: the value is nested too deeply") from None
    return key.strip(), value


MAX_KEY_PARTS = 64


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def structure_experiment(raw: dict[str, Any], source: str, registry: Registry | None = None,
                         check_model: bool = True) -> Experiment:
    """dict → Experiment, strictly, with every problem reported at once as a ConfigError.
    ``check_model=False`` skips the checks of the model against the data (``zoology eval``
    makes its own, for a model that exists already)."""
    conv = converter(registry)
    try:
        exp = conv.structure(raw, Experiment)
    except Exception as exc:
        if not isinstance(exc, (BaseExceptionGroup, ValueError, TypeError, KeyError)):
            raise
        raise ConfigError(source, list(flatten_errors(exc))) from None
    if not check_model:
        return exp
    problems = list(_check_model(exp))
    if problems:
        raise ConfigError(source, problems)
    if exp.model.vocab_size is None:
        exp = attrs.evolve(exp, model=attrs.evolve(exp.model, vocab_size=exp.vocab_size))
    return exp


def _check_model(exp: Experiment) -> Iterator[tuple[str, str]]:
    """Checks that need the whole experiment: vocabulary and each mixer's own validation."""
    import torch

    m = exp.model
    if m.vocab_size is not None and m.vocab_size < exp.vocab_size:
        yield "model.vocab_size", f"must be >= {exp.vocab_size}, the largest vocab_size in [data], got {m.vocab_size}"
    if 0 < m.max_position_embeddings < exp.max_seq_len:
        yield ("model.max_position_embeddings",
               f"must be 0 (none) or >= the longest input_seq_len {exp.max_seq_len}, got {m.max_position_embeddings}")
    for split in ("train", "test"):
        for i, task in enumerate(getattr(exp.data, split)):
            if task.readout != m.readout:
                yield ("model.readout", f"data.{split}[{i}] ({task.name}) is scored with readout "
                                        f"{task.readout!r}; the model has {m.readout!r}")
                return
    if m.readout == "autoencoder" and len({t.input_seq_len for t in [*exp.data.train, *exp.data.test]}) > 1:
        yield ("model.readout", "the autoencoder decodes from the last position, so every segment needs "
                                "the same input_seq_len")
    reported = reported_metrics("valid", [t.slices() for t in exp.data.test])
    stop = exp.train.early_stopping
    for key, metric in (("train.select_metric", exp.train.select_metric),
                        ("train.early_stopping.metric", stop.metric if stop else None)):
        if metric is not None and metric not in reported:
            yield key, f"{metric!r} is not reported by the validation segments; they report {', '.join(reported)}"
    mixers_build = True
    for key, specs in (("sequence_mixer", m.sequence_mixer), ("state_mixer", m.state_mixer)):
        for i, spec in enumerate(specs[: m.n_layers]):
            path = f"model.{key}" + (f"[{i}]" if len(specs) > 1 else "")
            try:
                with torch.device("meta"):
                    spec.build(mixer_context(exp, layer_idx=i))
            except FieldError as exc:
                mixers_build = False
                yield _join(path, exc.field), exc.message
            except (ValueError, TypeError, AssertionError) as exc:
                mixers_build = False
                yield path, f"{spec.name} rejects these arguments: {exc}"
    if m.init_from is not None and mixers_build:
        from zoology.model import LanguageModel

        with torch.device("meta"):
            model = LanguageModel(exp)
        try:
            saved.check_fits(saved.model_file(m.init_from), model)
        except UserError as exc:
            yield "model.init_from", str(exc)


def mixer_context(exp: Experiment, layer_idx: int) -> MixerContext:
    """The context of layer ``layer_idx``'s mixers in ``exp``'s model."""
    return MixerContext(d_model=exp.model.d_model, layer_idx=layer_idx, n_layers=exp.model.n_layers,
                        max_seq_len=exp.max_seq_len, vocab_size=exp.model.vocab_size or exp.vocab_size)


def load_points(
    path: str | Path, overrides: list[str] = (), registry: Registry | None = None
) -> list[tuple[Point, Experiment]]:
    """Every run a TOML file describes, validated up front: the sweep point it comes from
    (its varied values and labels) and its experiment."""
    registry = registry or get_registry()  # a plugin failure (strict mode) is reported once, as such
    raw = read_toml(path)
    for text in overrides:
        assign(raw, *parse_override(text))
    raw.setdefault("name", safe_name(Path(path).stem))
    runs, problems = [], []
    for point in expand(raw, str(path)):
        try:
            runs.append((point, structure_experiment(point.raw, str(path), registry)))
        except ConfigError as exc:
            prefix = f"run {point.run_id}: " if "sweep" in raw else ""
            problems += [(p, prefix + m) for p, m in exc.problems]
    if problems:
        raise ConfigError(str(path), list(dict.fromkeys(problems)))
    return runs


def load_experiments(
    path: str | Path, overrides: list[str] = (), registry: Registry | None = None
) -> list[Experiment]:
    """Every experiment a TOML file describes (one per sweep point), validated up front."""
    return [exp for _, exp in load_points(path, overrides, registry)]


def load_experiment(path: str | Path, overrides: list[str] = (), registry: Registry | None = None) -> Experiment:
    """The one experiment of a TOML file without a sweep."""
    exps = load_experiments(path, overrides, registry)
    if len(exps) != 1:
        raise UserError(f"{path}: describes {len(exps)} runs (a sweep); use load_experiments")
    return exps[0]


def to_dict(exp: Experiment) -> dict[str, Any]:
    """The experiment as plain TOML-ready data, every default filled in."""
    return drop_none(converter().unstructure(exp))


def dump_experiment(exp: Experiment) -> str:
    return tomli_w.dumps(to_dict(exp))
