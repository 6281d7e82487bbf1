"""The ``zoology`` command. User errors become one-line messages and exit code 2;
a run that fails is recorded in its run directory and makes the exit code 1."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import attrs

from zoology.errors import UserError
from zoology.plugins import Component, UnknownComponent, get_registry
from zoology.progress import SweepProgress
from zoology.tables import format_table, output_width

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


# -- run / validate ------------------------------------------------------------------------


def _result_line(summary: dict[str, Any], run_dir: Any) -> str:
    status = summary.get("status")
    parts = [f"{summary.get('experiment')}/{summary.get('run_id')}: {status}"]
    best = summary.get("best") or {}
    metric = summary.get("select_metric", "valid/accuracy")
    if metric in best:
        parts.append(f"{metric} {best[metric]:.4f} (epoch {best.get('epoch')})")
    test = summary.get("test") or {}
    if "test/accuracy" in test:
        parts.append(f"test/accuracy {test['test/accuracy']:.4f}")
    if "epochs" in summary:
        parts.append(f"{summary['epochs']} epochs, {summary.get('wall_time_s')} s, "
                     f"{summary.get('train_steps_per_s')} steps/s")
    if "error" in summary:
        parts.append(summary["error"])
    return " · ".join(parts) + f" → {run_dir}"


def _why_not_packed(args: argparse.Namespace, distributed: bool, plan: Any) -> str | None:
    """Why no run of this command can train packed (each run is several processes), or None."""
    if distributed:
        return "this process is one of a distributed launch"
    gpus = plan.gpus_per_run if plan is not None else args.gpus_per_run or 0
    several = (plan is not None and plan.mode == "launch") or (args.backend == "ray" and gpus > 1)
    return f"{gpus:g} GPUs per run train each run on several processes" if several else None


def cmd_run(args: argparse.Namespace) -> int:
    from zoology import budget, checkpoint, launch, pack
    from zoology.config import load_points
    from zoology.runs import RunDir, RunLocked, prepare_root

    if args.json and not args.dry_run:
        raise UserError("--json: only with --dry-run (the runs and their resources as JSON)")
    if args.pack < 1:
        raise UserError(f"--pack {args.pack}: must be at least 1")
    runs = load_points(args.experiment, args.set)  # every run validated up front
    if args.only:
        unknown = sorted(set(args.only) - {e.run_id for _, e in runs})
        if unknown:
            raise UserError(f"{args.experiment}: --only: no run {', '.join(unknown)} "
                            f"(runs: {', '.join(e.run_id for _, e in runs)})")
        runs = [(p, e) for p, e in runs if e.run_id in args.only]
    if not args.force:
        for _, exp in runs:
            budget.check(exp, str(args.experiment))
    distributed = launch.distributed_launch()
    if distributed and (args.backend == "ray" or args.parallel is not None or args.gpus_per_run is not None):
        raise UserError("--backend ray, --parallel and --gpus-per-run hand out devices; under torchrun or "
                        "accelerate launch the launcher has done that: run without them")
    run_dirs = [RunDir(args.out, exp.name, exp.run_id) for _, exp in runs]
    statuses = [d.status() for d in run_dirs]
    plan = None
    if args.backend == "local" and not distributed:
        plan = launch.plan_local(args.parallel, args.gpus_per_run, sum(args.rerun or s != "done" for s in statuses))
    why_not = _why_not_packed(args, distributed, plan)
    pending = [(p, e, d) for (p, e), d, s in zip(runs, run_dirs, statuses) if args.rerun or s != "done"]
    packs, notes = pack.plan(pending, args.pack, why_not)
    if plan is not None and args.pack > 1:  # a worker per pack
        plan = launch.plan_local(args.parallel, args.gpus_per_run, len(packs))
    if args.dry_run:
        for note in notes:
            print(note, file=sys.stderr)
        return _dry_run(args, runs, run_dirs, statuses, plan, packs)
    prepare_root(args.out)
    if args.resume and not any(checkpoint.find(d.path) for d in run_dirs):
        raise UserError(f"{args.experiment}: --resume: no checkpoint under {args.out} to resume from")
    todo = []
    for (point, exp), run_dir in zip(runs, run_dirs):
        if args.rerun:
            try:
                with run_dir.lock():  # never delete what another process is writing
                    checkpoint.remove(run_dir.path)
            except RunLocked as exc:
                if len(runs) == 1:
                    raise
                print(f"{exp.name}/{exp.run_id}: skipped: {exc}")
                continue
        elif run_dir.status() == "done":
            print(f"{exp.name}/{exp.run_id}: already done, skipped (--rerun to train again) → {run_dir}")
            continue
        todo.append((point, exp, run_dir))

    # one bar over the sweep on a terminal (stderr), on the main process; result lines always
    progress = SweepProgress(len(todo), enabled=not args.quiet and len(todo) > 1 and _on_terminal())

    def report(summary: dict[str, Any], run_dir: Any) -> None:
        if summary.get("processes", 1) == 1 or _is_main():
            progress.finished(run_dir, str(summary.get("status")), _result_line(summary, run_dir))

    def worker(exp: Any, quiet: bool = True) -> list[str]:
        return launch.worker_command(args.experiment, exp.run_id, args.out, args.set, args.rerun, quiet=quiet)

    packs, notes = pack.plan(todo, args.pack, why_not)
    for note in notes:
        print(note, file=sys.stderr, flush=True)

    def job(runs: list[Any]) -> launch.Job:
        """A worker's job: one run, or one pack (its run dirs, a command that trains them as a pack)."""
        if len(runs) == 1:
            _, exp, run_dir = runs[0]
            return run_dir, worker(exp), exp.name
        return ([d for _, _, d in runs], launch.worker_command(
            args.experiment, [e.run_id for _, e, _ in runs], args.out, args.set, args.rerun), runs[0][1].name)

    pack_jobs = [job(p) for p in packs]
    try:
        if args.backend == "ray":
            failed = launch.run_ray(pack_jobs, args.address, args.cpus_per_run, args.gpus_per_run, report, progress)
        elif plan is None or plan.mode == "inline":
            failed = (pack.run_inline(packs, args.quiet, report, progress) if len(packs) < len(todo) else
                      launch.run_inline(todo, args.quiet, report, progress))
        elif plan.mode == "launch":  # one run at a time on G GPUs: accelerate launch of G processes
            g = plan.gpus_per_run
            print(f"each run: accelerate launch of {g} processes on GPUs {','.join(plan.slots[0])}",
                  file=sys.stderr, flush=True)
            jobs = [(run_dir, launch.accelerate_command(worker(exp, args.quiet), g, exp.train.mixed_precision),
                     exp.name) for _, exp, run_dir in todo]
            failed = launch.run_launched(jobs, plan.env(0, processes=g), report, progress)
        else:
            print(f"local workers: {plan.describe()}", file=sys.stderr, flush=True)
            failed = launch.run_local(pack_jobs, plan.parallel, report, progress, env=plan.env)
    finally:
        progress.close()
    if len(runs) > 1:
        print(f"{len(runs)} runs: {len(runs) - len(todo)} already done, {len(todo)} run, {failed} failed")
        if failed:
            for _, exp, run_dir in todo:
                if run_dir.status() == "failed":
                    print(f"  failed: {exp.run_id} → {run_dir}")
    return EXIT_FAILED if failed else EXIT_OK


def _dry_run(args: argparse.Namespace, runs: list[Any], run_dirs: list[Any], statuses: list[str | None],
             plan: Any, packs: list[list[Any]]) -> int:
    """List every run with its status and resources (GPUs and CPU threads per run, or per
    pack with ``--pack``) and, with ``--pack``, the pack it trains in; with ``--json`` as one
    JSON object, e.g. for a job array that runs ``--only RUN_ID`` per task."""
    if args.backend == "ray":  # gpus None: decided by the cluster (1 if it has GPUs, else 0)
        gpus, cpus, where = args.gpus_per_run, args.cpus_per_run, "ray"
        how = (f"ray: each run {cpus:g} CPU(s) and "
               + (f"{gpus:g} GPU(s)" if gpus is not None else "1 GPU if the cluster has GPUs, else 0"))
    elif plan is None:
        gpus, cpus, where = None, None, "launcher"
        how = "this process is one of a distributed launch: the launcher placed it"
    else:
        gpus, cpus, where = plan.gpus_per_run, plan.threads, "local"
        how = f"local ({plan.mode}): {plan.describe()}"
    packed = {id(e): i for i, p in enumerate([p for p in packs if len(p) > 1], 1) for _, e, _ in p}
    rows = [{"run_id": e.run_id, "experiment": e.name, "run_dir": str(d), "status": s, "gpus": gpus, "cpus": cpus,
             "sweep": p.labels, **({"pack": packed.get(id(e))} if args.pack > 1 else {})}
            for (p, e), d, s in zip(runs, run_dirs, statuses)]
    if args.json:
        out: dict[str, Any] = {"experiment": str(args.experiment), "out": str(args.out), "backend": where}
        if plan is not None:
            out.update(parallel=plan.parallel, mode=plan.mode, gpus_per_worker=plan.slots)
        out.update(gpus_per_run=gpus, cpus_per_run=cpus, runs=rows)
        print(json.dumps(out, indent=2))
        return EXIT_OK
    pack_column = ["pack"] if args.pack > 1 else []
    print(format_table(["run", "status", *pack_column, "varied values"],
                       [[r["run_id"], r["status"] or "-", *([r["pack"] or "-"] if pack_column else []),
                         " ".join(f"{k}={v}" for k, v in r["sweep"].items())] for r in rows]))
    print(how)  # every run gets the same resources
    if args.pack > 1:
        sizes = [len(p) for p in packs if len(p) > 1]
        print(f"--pack {args.pack}: {len(sizes)} pack(s) of {'/'.join(map(str, sizes)) or '-'} runs, "
              f"{len(packs) - len(sizes)} run(s) unpacked; each pack trains in one process (\"run\" above: "
              "per pack); whether its model can be packed is checked when it starts")
    print(f"{len(runs)} runs, all valid; nothing trained (--dry-run)")
    return EXIT_OK


def _on_terminal() -> bool:
    """stderr is a terminal and this is not a secondary process of a distributed run."""
    return sys.stderr.isatty() and os.environ.get("RANK", "0") == "0"


def _is_main() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def cmd_validate(args: argparse.Namespace) -> int:
    import torch

    from zoology import budget
    from zoology.config import load_experiments
    from zoology.model import LanguageModel

    for exp in load_experiments(args.experiment, args.set):
        if not args.force:
            budget.check(exp, str(args.experiment))
        with torch.device("meta"):
            model = LanguageModel(exp)
        print(f"{exp.name}/{exp.run_id}: ok · {model.num_parameters():,} parameters · state size "
              f"{model.state_size(exp.max_seq_len):,} at length {exp.max_seq_len}")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from zoology.evaluation import evaluate_run

    result = evaluate_run(args.run_dir, args.set, args.data, args.name)
    rec = result.record
    if not args.quiet:
        print(f"{rec['experiment']}/{rec['run_id']}: the model of epoch {rec['model_epoch']} on "
              f"{rec['data']['num_examples']} examples ({len(rec['data']['segments'])} segment(s), "
              f"length {rec['data']['seq_len']})")
        print(format_table(["metric", "value"], [[k, f"{v:.4f}"] for k, v in result.metrics.items()],
                           output_width(args.width)))
    accuracy = result.metrics.get("test/accuracy")
    print(f"{result.name}: test/accuracy {accuracy:.4f} → {result.path}")
    return EXIT_OK


# -- listing -------------------------------------------------------------------------------


def plain(text: str) -> str:
    """Docstring text for the terminal: RST markup (``literal``, :role:`target`, `x`,
    a closing ``::``) reduced to its words."""
    text = re.sub(r":[\w:.-]+:`~?([^`]+)`", r"\1", text)  # :func:`name` → name
    text = re.sub(r"``(.+?)``", r"\1", text, flags=re.S)
    text = re.sub(r"(?<![\w`])`([^`\n]+)`(?![\w`])", r"\1", text)
    text = re.sub(r"(\S)::$", r"\1:", text, flags=re.M)
    # refill plain paragraphs (their lines got shorter); keep indented blocks and lists as written
    paragraphs = text.split("\n\n")
    return "\n\n".join(textwrap.fill(" ".join(p.split()), 88) if "\n" in p and not re.search(r"^(\s|[-*•]|\d+\.)", p, re.M)
                       else p for p in paragraphs)


def cmd_plugins(args: argparse.Namespace) -> int:
    reg = get_registry()
    infos = list(reg.plugins.values())
    if args.json:
        print(json.dumps([attrs.asdict(i) for i in infos], indent=2))
        return EXIT_OK
    # the long cells last: what it registers, and a failed plugin's error (on one line)
    rows = [[i.name, i.distribution or "-", i.version or "-", i.entry_point or "(built in)",
             ", ".join(h.removeprefix("zoology_register_") for h in i.hooks) or "-",
             "FAILED" if i.error else "ok",
             "; ".join(x for x in (", ".join(i.components), i.error and " ".join(i.error.split())) if x)
             or "-"] for i in infos]
    print(format_table(["plugin", "distribution", "version", "entry point", "hooks (zoology_register_*)",
                        "status", "registers / error"], rows, output_width(args.width)))
    return EXIT_OK


def _list(kind: str, args: argparse.Namespace) -> int:
    comps = get_registry().components(kind)
    if args.json:
        print(json.dumps([{"name": c.name, "plugin": c.plugin, "version": c.version, "doc": c.doc}
                          for c in comps], indent=2))
        return EXIT_OK
    print(format_table([kind, "plugin", "description"], [[c.name, c.plugin, plain(c.doc)] for c in comps],
                       output_width(args.width)))
    return EXIT_OK


def _params_table(comp: Component, width: int | None = None) -> str:
    rows = [[p.name, p.type, "(required)" if p.required else repr(p.default), plain(p.doc)] for p in comp.params]
    header = ["parameter", "type", "default", "description"]
    return format_table(header, rows, width, wrap=True) if rows else "(no parameters)"


def show_task(comp: Component, width: int | None = None) -> str:
    from zoology.tasks.base import IGNORE_INDEX

    cls = comp.cls
    params = {**getattr(cls, "example", {}), "num_examples": 2}
    task = cls(**params)
    seg = task.generate(0)
    lines = [f"task {comp.name} (plugin {comp.plugin})", "", plain(inspect.cleandoc(cls.__doc__ or "")), "",
             _params_table(comp, width), "",
             f"two examples with {', '.join(f'{k}={v}' for k, v in params.items())} "
             "(scored positions as [input → label]):"]
    for i in range(len(seg)):
        toks = []
        for t, lab in zip(seg.inputs[i].tolist(), seg.labels[i].tolist()):
            word = task.decode(t)
            toks.append(f"[{word}→{task.decode(lab)}]" if lab != IGNORE_INDEX else word)
        lines.append(textwrap.fill(" ".join(toks), width=100, initial_indent=f"  {i + 1}: ",
                                   subsequent_indent="     "))
    return "\n".join(lines)


def show_mixer(comp: Component, width: int | None = None) -> str:
    import torch

    from zoology.mixer_context import MixerContext, build_mixer

    cls = comp.cls
    lines = [f"{comp.role} mixer {comp.name} (plugin {comp.plugin})", "", plain(inspect.cleandoc(cls.__doc__ or "")),
             "", _params_table(comp, width), ""]
    state_doc = plain(inspect.getdoc(getattr(cls, "state_size", None)) or "(not documented)")
    lines.append(f"state size: {state_doc}")
    ctx = MixerContext()
    try:
        with torch.device("meta"):
            mixer = build_mixer(cls, {}, ctx)
        lines.append(f"  e.g. d_model={ctx.d_model}, seq_len={ctx.max_seq_len}, defaults: "
                     f"{mixer.state_size(ctx.max_seq_len):,} scalars per layer")
    except Exception as exc:  # a mixer whose defaults do not build at this size
        lines.append(f"  (example not available: {exc})")
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    comp = get_registry().get(args.kind, args.name)
    width = output_width(args.width)
    print(show_task(comp, width) if args.kind == "task" else show_mixer(comp, width))
    return EXIT_OK


def _bench_device(name: str) -> str:
    """``auto``: the GPU when torch sees one, else the CPU."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("bench mixers: --device cuda, but this torch sees no CUDA device")
    return name


def _bench_ops(args: argparse.Namespace, bench: Any) -> int:
    if len(args.names) != 1:
        raise UserError("bench ops: name one mixer (zoology mixers lists them)")
    length, top = 256 if args.length is None else args.length, 30 if args.top is None else args.top
    if length < 1 or top < 0:
        raise UserError(f"bench ops: --length must be at least 1 and --top at least 0, got {length}, {top}")
    try:
        rows = list(bench.bench_ops(args.names[0], length=length, device=_bench_device(args.device)))
    except UnknownComponent as e:
        raise UserError(f"bench ops: {e}") from None
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    shown = rows[:top] if top else rows
    print(bench.format_rows(shown, output_width(args.width)))
    if len(shown) < len(rows):
        print(f"... {len(rows) - len(shown)} more rows (--top 0 shows all)")
    print(bench.summarize_ops(rows))
    print("layouts: c row-major, t last two dims transposed, s strided rows, b broadcast, x other strided")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from zoology import bench

    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    if args.what == "ops":
        return _bench_ops(args, bench)
    if args.length is not None or args.top is not None:
        raise UserError(f"bench {args.what}: --length and --top are for bench ops")
    if args.what in ("train", "sweep"):
        if len(args.names) != 1:
            raise UserError(f"bench {args.what}: name one experiment TOML file")
        steps = args.steps or (50 if args.what == "train" else 10)
        if args.pack < 1 or steps < 1:
            raise UserError(f"bench {args.what}: --pack and --steps must be at least 1")
        gen = (bench.bench_train if args.what == "train" else bench.bench_sweep)(
            Path(args.names[0]), args.set, args.pack, steps)
    elif args.set or args.pack != 1 or args.steps is not None:
        raise UserError(f"bench {args.what}: --set, --pack and --steps are for bench train and bench sweep")
    elif args.rounds < 1:
        raise UserError(f"bench {args.what}: --rounds must be at least 1, got {args.rounds}")
    else:
        gen = bench.bench_data(args.names) if args.what == "data" else bench.bench_mixers(args.names, repeats=args.rounds, device=_bench_device(args.device))
    for row in gen:
        rows.append(row)
        if not args.quiet:
            print("  ".join(f"{k}={v}" for k, v in row.items()), file=sys.stderr, flush=True)
    if args.what == "mixers":  # timed length by length, shown mixer by mixer
        rows.sort(key=lambda r: (r["mixer"], r["seq_len"]))
    print(json.dumps(rows, indent=2) if args.json else bench.format_rows(rows, output_width(args.width)))
    return EXIT_OK


def cmd_data_export(args: argparse.Namespace) -> int:
    from zoology.config import load_experiment
    from zoology.data import export_splits

    exp = load_experiment(args.experiment, args.set)
    try:
        written = export_splits(exp, args.out)
    except OSError as exc:
        raise UserError(f"--out {args.out}: cannot write: {exc.strerror or exc}") from None
    for path in written:
        print(path)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from zoology.report import report

    print(report(args.runs_dir, group_by=args.group_by, best_over=args.best_over, csv_path=args.csv,
                 plot_path=args.plot, x=args.x, metric=args.metric, curves_path=args.curves,
                 as_json=args.json, width=output_width(args.width), mad=args.mad))
    return EXIT_OK


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from zoology.scaffold import new_plugin

    both = not (args.task or args.mixer)
    root = new_plugin(args.name, args.out, task=args.task or both, mixer=args.mixer or both)
    print(f"wrote {root}:")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(root)}")
    print(f"next: pip install -e '{root}[test]' && pytest {root} && zoology plugins")
    return EXIT_OK


# -- entry point ---------------------------------------------------------------------------


class HelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help where there is a default worth showing and
    the help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (not text or "default" in text.lower() or default is None or default is False
                or default is argparse.SUPPRESS or default == [] or not action.option_strings):
            return action.help
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """Every (sub)command's parser shows defaults in its --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _width_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width", type=int, metavar="N",
                   help="cut table lines to N characters (0: never); by default the terminal's width "
                        "when printing to one, whole lines into a pipe or file")


def build_parser() -> argparse.ArgumentParser:
    from zoology import __version__

    parser = Parser(prog="zoology", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"zoology {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    def experiment_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("experiment", type=Path, help="experiment TOML file")
        p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a key (value in TOML syntax), e.g. --set train.learning_rate=3e-4")

    p = sub.add_parser("run", help="train every run an experiment file describes")
    experiment_args(p)
    p.add_argument("--out", type=Path, default=Path("runs"), help="root of run directories (default ./runs)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--rerun", action="store_true", help="start every run from scratch, even done ones")
    p.add_argument("--resume", action="store_true",
                   help="continue interrupted runs from their checkpoints (the default; errors if there is none)")
    p.add_argument("--dry-run", action="store_true",
                   help="list and validate every run with its resources; train nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: the runs and their resources as JSON")
    p.add_argument("--force", action="store_true", help="run even where the memory estimate exceeds what is available")
    p.add_argument("--only", action="append", metavar="RUN_ID", help="run only this sweep point (repeatable)")
    p.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="N local worker processes, one run each (default: visible GPUs ÷ G; 1 without GPUs); "
                        "each gets its share of CUDA_VISIBLE_DEVICES (or of all GPUs) and of the CPU cores")
    p.add_argument("--gpus-per-run", type=float, default=None, metavar="G",
                   help="GPUs per run (default: 1 where there are GPUs, else 0); a run with G > 1 is an "
                        "accelerate launch of G data-parallel processes; with Ray a fraction shares a GPU")
    p.add_argument("--pack", type=int, default=1, metavar="K",
                   help="train up to K runs that differ only in seeds, learning rate, weight decay, warmup, "
                        "clipping or dropout as one stacked model in one process (each keeps its own run "
                        "directory, data order, early stopping and checkpoint); 1: every run on its own")
    p.add_argument("--backend", choices=["local", "ray"], default="local", help="where worker runs go")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="Ray: CPUs per run")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="load an experiment and build its model, train nothing")
    experiment_args(p)
    p.add_argument("--force", action="store_true", help="build the model even where the memory estimate "
                                                         "exceeds what is available")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("eval", help="score a finished run's saved model on its test segments or new ones",
                       description="Score a finished run's saved model (model.safetensors) on the run's own "
                                   "test segments, which reproduces its summary's test metrics, or on new ones "
                                   "(other lengths, pair counts, tasks within the model's vocabulary). Writes "
                                   "eval/NAME.json in the run directory.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run: runs/<experiment>/<run-id>")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="change what is evaluated (value in TOML syntax): data.test..., data.seed, "
                        "data.eval_batch_size, data.cache_dir or train.mixed_precision, "
                        "e.g. --set data.test.0.input_seq_len=128")
    p.add_argument("--data", type=Path, metavar="FILE.toml",
                   help="a TOML file whose [[data.test]] tables replace the run's test segments")
    p.add_argument("--name", metavar="NAME",
                   help="write eval/NAME.json (default: 'test' for the run's own test segments, else made "
                        "of the --data file's name and the --set values)")
    p.add_argument("--quiet", "-q", action="store_true", help="the result line only, no table")
    _width_arg(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plugins", help="installed plugins and what they register")
    p.add_argument("--json", action="store_true", help="every field in full, as JSON")
    _width_arg(p)
    p.set_defaults(func=cmd_plugins)
    for kind in ("task", "mixer"):
        p = sub.add_parser(f"{kind}s", help=f"registered {kind}s")
        p.add_argument("--json", action="store_true", help="every field in full, as JSON")
        _width_arg(p)
        p.set_defaults(func=lambda a, kind=kind: _list(kind, a))

    p = sub.add_parser("bench", help="benchmarks: task generation speed, mixer throughput, training steps/s, "
                                     "a sweep's estimated wall time, a mixer's step op by op")
    p.add_argument("what", choices=["data", "mixers", "train", "sweep", "ops"])
    p.add_argument("names", nargs="*", help="only these tasks / mixers; for train and sweep: the experiment "
                                            "TOML file; for ops: one mixer")
    p.add_argument("--length", type=int, metavar="L", help="ops: sequence length, 8,192 tokens a step (default: 256)")
    p.add_argument("--top", type=int, metavar="N", help="ops: rows shown, slowest first; 0: all (default: 30)")
    p.add_argument("--pack", type=int, default=1, metavar="K",
                   help="train: also time K copies (seeds seed…seed+K-1) trained as one pack; sweep: also "
                        "estimate the sweep trained with --pack K")
    p.add_argument("--steps", type=int, metavar="N",
                   help="train: timed steps per row (default: 50); sweep: per group of runs (default: 10)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="mixers: where to time them (auto: the GPU if there is one)")
    p.add_argument("--rounds", type=int, default=5, metavar="N",
                   help="mixers: timing rounds, each one step of every mixer in turn; rows give the median")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="train, sweep: override a key of the experiment")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", "-q", action="store_true", help="no per-row progress on stderr")
    _width_arg(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("data", help="the data an experiment trains on")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = data_sub.add_parser("export", help="write the exact train/valid/test tensors (safetensors) "
                                           "and a TOML saying what produced them")
    experiment_args(p)
    p.add_argument("--out", type=Path, required=True, help="folder to write into")
    p.set_defaults(func=cmd_data_export)

    p = sub.add_parser("show", help="parameters and docs of one task or mixer")
    p.add_argument("kind", choices=["task", "mixer"])
    p.add_argument("name")
    _width_arg(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("report", help="table (and figure) of the runs under a directory")
    p.add_argument("runs_dir", type=Path, metavar="RUNS_DIR",
                   help="a runs root, an experiment folder or one run")
    p.add_argument("--group-by", action="append", default=[], metavar="KEY",
                   help="a column: an alias (mixer, d_model, lr, seq_len, num_kv_pairs, experiment) "
                        "or a dotted config path (default: the aliases that vary)")
    p.add_argument("--best-over", action="append", default=[], metavar="KEY",
                   help="keep the validation-best run of runs differing only in KEY, "
                        "e.g. --best-over lr")
    p.add_argument("--json", action="store_true",
                   help="print the rows as a JSON array (raw values, each row's run path) instead of the table")
    p.add_argument("--csv", type=Path, metavar="OUT.csv", help="also write the table as CSV to OUT.csv")
    p.add_argument("--plot", type=Path, metavar="OUT.png", help="draw accuracy vs state size, a panel per seq len")
    p.add_argument("--x", choices=["state_size", "d_model"], default="state_size", help="the figure's x axis")
    p.add_argument("--curves", type=Path, metavar="OUT.png",
                   help="draw learning curves: validation accuracy (--metric's valid/ twin) per epoch, "
                        "a line per run, a colour per row of the table")
    p.add_argument("--metric", default="test/accuracy",
                   help="test metric to report (selection uses its valid/ twin)")
    p.add_argument("--mad", action="store_true",
                   help="MAD's score: per architecture (--group-by, default mixer) and MAD task, the test "
                        "metric of the lr × weight decay point with the best validation score, and their "
                        "mean over the six tasks (--plot: bars per task)")
    _width_arg(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("new", help="start something new from a template")
    new_sub = p.add_subparsers(dest="new_command", required=True, metavar="WHAT")
    p = new_sub.add_parser("plugin", help="a plugin package (task and/or mixer skeletons that pass "
                                          "Zoology's conformance checks, tests, an example, a README)")
    p.add_argument("name", metavar="NAME", help="the plugin's name, e.g. my-recall (package zoology-my-recall)")
    p.add_argument("--task", action="store_true", help="a task skeleton (with --mixer: both; neither: both)")
    p.add_argument("--mixer", action="store_true", help="a mixer skeleton")
    p.add_argument("--out", type=Path, default=Path("."), help="folder to create zoology-NAME/ in")
    p.set_defaults(func=cmd_new_plugin)
    return parser


def _stdout_gone() -> int:
    """The reader of stdout went away (``zoology tasks | head``): stop quietly, as Unix
    tools do, with 128 + SIGPIPE; later writes and the exit flush go to /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured)
        pass
    return 141


def main(argv: list[str] | None = None) -> int:
    from zoology.allocator import keep_freed_memory

    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _stdout_gone()
    except UserError as exc:
        print(f"error: {exc}" if "\n" not in str(exc) else f"error:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130




if __name__ == "__main__":
    sys.exit(main())
