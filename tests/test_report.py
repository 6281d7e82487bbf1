"""`zoology report`: tables, best-over selection and the figure, from fake run directories."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import tomli

from zoology.cli import main
from zoology.config import dump_experiment, structure_experiment
from zoology.paths import assign
from zoology.report import build_rows, find_runs, hidden_differences, key_value, report
from zoology.runs import RunDir

from .conftest import BASE

EXP = 'name = "mqar_grid"\n' + BASE.replace("max_epochs = 1", "max_epochs = 4")
MIXERS = {"attention": {"name": "attention", "num_heads": 2}, "base_conv": {"name": "base_conv"}}


def fake_accuracy(mixer: str, d_model: int, lr: float, seq_len: int) -> tuple[float, float]:
    """(valid, test): attention is near perfect; base_conv grows with d_model, drops with length.
    lr 1e-3 has the better validation score but lr 1e-2 the better *test* score, so a selection
    that peeked at test would pick differently."""
    base = 0.97 if mixer == "attention" else min(0.9, 0.3 + d_model / 80 - seq_len / 200)
    good_lr = lr == 1e-3
    return base + (0.02 if good_lr else 0.0), base + (0.0 if good_lr else 0.02)


def write_run(root: Path, mixer: str, d_model: int, lr: float, seq_len: int, status: str = "done") -> Path:
    raw = tomli.loads(EXP)
    assign(raw, "model.sequence_mixer", dict(MIXERS[mixer]))
    assign(raw, "model.d_model", d_model)
    assign(raw, "train.learning_rate", lr)
    for part in ("train", "test"):
        assign(raw, f"data.{part}.0.input_seq_len", seq_len)
    raw["run_id"] = f"{mixer}-d{d_model}-lr{lr:g}-L{seq_len}" + ("-broken" if status != "done" else "")
    exp = structure_experiment(raw, "test")
    run = RunDir(root, exp.name, exp.run_id)
    run.write_text("config.toml", dump_experiment(exp))
    summary = {"status": status, "experiment": exp.name, "run_id": exp.run_id}
    if status == "done":
        valid, test = fake_accuracy(mixer, d_model, lr, seq_len)
        state = 2 * 2 * d_model * seq_len if mixer == "attention" else 2 * d_model * 3
        summary.update(num_parameters=1000 * d_model, state_size=state, epochs=4, best_epoch=3,
                       best={"epoch": 3, "valid/accuracy": valid, "valid/loss": 1 - valid},
                       test={"test/accuracy": test, "test/loss": 1 - test,
                             f"test/input_seq_len={seq_len}/accuracy": test},
                       wall_time_s=1.0)
    else:
        summary["error"] = "RuntimeError: boom (see error.log)"
    run.write_json("summary.json", summary)
    return run.path


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for mixer in MIXERS:
        for d_model in (16, 32, 64):
            for lr in (1e-3, 1e-2):
                for seq_len in (16, 32):
                    write_run(root, mixer, d_model, lr, seq_len)
    # a failed run that would otherwise compete with attention d16 L16
    write_run(root, "attention", 16, 3e-3, 16, status="failed")
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_finds_runs_from_root_experiment_or_single_run(runs_root):
    assert len(find_runs(runs_root)) == 25
    assert len(find_runs(runs_root / "mqar_grid")) == 25
    one = find_runs(runs_root / "mqar_grid" / "attention-d16-lr0.001-L16")
    assert len(one) == 1 and one[0].status == "done"


def test_aliases_and_dotted_keys(runs_root):
    run = find_runs(runs_root / "mqar_grid" / "base_conv-d32-lr0.01-L32")[0]
    assert key_value(run, "mixer") == "base_conv"
    assert key_value(run, "d_model") == 32 == key_value(run, "model.d_model")
    assert key_value(run, "lr") == 0.01
    assert key_value(run, "seq_len") == 32 == key_value(run, "data.test[0].input_seq_len")
    assert key_value(run, "num_kv_pairs") == 2
    assert key_value(run, "model.sequence_mixer.0.name") == "base_conv"
    assert key_value(run, "no.such.key") is None


def test_hybrid_mixer_and_sweep_label(tmp_path):
    path = write_run(tmp_path, "attention", 16, 1e-3, 16)
    config = tomli.loads((path / "config.toml").read_text())
    config["model"]["sequence_mixer"] = [{"name": "base_conv"}, {"name": "attention", "num_heads": 2}]
    (path / "config.toml").write_text(dump_experiment(structure_experiment(config, "test")))
    assert key_value(find_runs(path)[0], "mixer") == "base_conv+attention"


def test_sweep_point_is_recorded_and_names_the_mixer(write, tmp_path, capsys):
    """A real sweep run writes its point into the summary; report and --dry-run read it."""
    exp = write(BASE.replace("num_examples = 32", "num_examples = 8") + """
[sweep]
"model.sequence_mixer" = [{ label = "attn", name = "attention", num_heads = 2 }, { label = "conv", name = "base_conv" }]
""")
    out = tmp_path / "runs"
    assert main(["run", str(exp), "--out", str(out), "--quiet", "--set", "train.learning_rate=3e-3"]) == 0
    summary = json.loads((out / "exp" / "attn" / "summary.json").read_text())
    assert summary["sweep"] == {"model.sequence_mixer": {"label": "attn", "name": "attention", "num_heads": 2}}
    assert summary["sweep_labels"] == {"model.sequence_mixer": "attn"}
    assert {key_value(r, "mixer") for r in find_runs(out)} == {"attn", "conv"}
    capsys.readouterr()
    assert main(["run", str(exp), "--out", str(out), "--dry-run", "--set", "train.learning_rate=3e-3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["attn", "done", "model.sequence_mixer=attn"]
    assert lines[3].split() == ["conv", "done", "model.sequence_mixer=conv"]


def test_best_over_selects_by_validation_not_test(runs_root):
    runs = find_runs(runs_root)
    rows = build_rows(runs, ["mixer", "seq_len", "d_model"], best_over=["lr"])
    assert len(rows) == 2 * 3 * 2  # one row per (mixer, d_model, seq_len)
    for row in rows:
        assert row.run.status == "done"
        assert row.keys["lr"] == 1e-3, row.run.label  # the better validation score, the worse test
        assert len(row.candidates) == (3 if row.keys == {"mixer": "attention", "seq_len": 16,
                                                         "d_model": 16, "lr": 1e-3} else 2)
    # the same by dotted path
    rows2 = build_rows(runs, ["mixer", "seq_len", "d_model"], best_over=["train.learning_rate"])
    assert [r.run.label for r in rows2] == [r.run.label for r in rows]


def test_failed_run_never_selected_and_shown(runs_root, tmp_path):
    out = report(runs_root, csv_path=tmp_path / "all.csv")
    assert "failed" in out and "attention-d16-lr0.003-L16-broken" in out
    rows = {r["run"]: r for r in read_csv(tmp_path / "all.csv")}
    failed = rows["mqar_grid/attention-d16-lr0.003-L16-broken"]
    assert failed["status"] == "failed" and failed["test/accuracy"] == "" and failed["lr"] == "0.003"
    # alone in its group, a failed run still gets its row, with its status
    lonely = write_run(tmp_path / "lonely", "attention", 16, 1e-3, 16, status="failed")
    out = report(lonely.parent, best_over=["lr"], csv_path=tmp_path / "lonely.csv")
    assert read_csv(tmp_path / "lonely.csv")[0]["status"] == "failed"
    assert "0 done" in out


def test_csv_content_written_only_when_asked(runs_root, tmp_path):
    text = report(runs_root, group_by=["mixer", "seq_len", "d_model"], best_over=["lr"])
    assert "best of each group by valid/accuracy over lr" in text
    assert not (runs_root / "report.csv").exists() and "table →" not in text
    text = report(runs_root, group_by=["mixer", "seq_len", "d_model"], best_over=["lr"], csv_path=tmp_path / "r.csv")
    assert f"table → {tmp_path / 'r.csv'}" in text
    rows = read_csv(tmp_path / "r.csv")
    assert list(rows[0]) == ["mixer", "seq_len", "d_model", "lr (best)", "test/accuracy",
                             "valid/accuracy (best)", "state_size", "num_parameters", "epochs",
                             "status", "runs", "run"]
    assert len(rows) == 12
    first = rows[0]  # sorted by the group keys: attention, L16, d16
    assert (first["mixer"], first["seq_len"], first["d_model"]) == ("attention", "16", "16")
    assert first["run"] == "mqar_grid/attention-d16-lr0.001-L16" and first["runs"] == "3"
    assert float(first["test/accuracy"]) == pytest.approx(0.97)
    assert float(first["valid/accuracy (best)"]) == pytest.approx(0.99)
    assert first["state_size"] == str(2 * 2 * 16 * 16) and first["num_parameters"] == "16000"


def test_default_group_by_is_what_varies(runs_root, tmp_path):
    text = report(runs_root, csv_path=tmp_path / "r.csv")
    header = text.splitlines()[0].split()
    assert header[:4] == ["mixer", "seq_len", "d_model", "lr"]  # experiment, num_kv_pairs don't vary


def test_bad_input_is_a_user_error(runs_root, tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no runs found" in capsys.readouterr().err
    assert main(["report", str(runs_root), "--group-by", "model.d_modle", "--csv", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "unknown key" in err and "did you mean 'model.d_model'" in err and "mixer, d_model, lr" in err
    assert main(["report", str(runs_root), "--metric", "test/acc", "--csv", str(tmp_path / "x.csv")]) == 2
    assert "test/accuracy" in capsys.readouterr().err


def test_cli_prints_table(runs_root, tmp_path, capsys):
    code = main(["report", str(runs_root), "--group-by", "mixer", "--group-by", "d_model",
                 "--best-over", "lr", "--best-over", "seq_len", "--csv", str(tmp_path / "t.csv")])
    assert code == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["mixer", "d_model"]
    assert len(read_csv(tmp_path / "t.csv")) == 6


def test_plot_writes_png(runs_root, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "fig.png"
    text = report(runs_root, best_over=["lr"], csv_path=tmp_path / "r.csv", plot_path=out)
    assert f"figure → {out}" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_d_model = tmp_path / "fig_d.png"
    report(runs_root, best_over=["lr"], csv_path=tmp_path / "r.csv", plot_path=by_d_model, x="d_model")
    assert by_d_model.stat().st_size > 10_000


def test_run_tested_at_several_lengths_plots_a_point_per_length(tmp_path):
    pytest.importorskip("matplotlib")
    from zoology.report import _points

    path = write_run(tmp_path, "attention", 16, 1e-3, 32)
    summary = json.loads((path / "summary.json").read_text())
    summary["test"].update({"test/input_seq_len=16/accuracy": 1.0, "test/input_seq_len=32/accuracy": 0.5})
    (path / "summary.json").write_text(json.dumps(summary))
    rows = build_rows(find_runs(tmp_path), ["mixer"])
    assert _points(rows[0].run, "test/accuracy") == [(16, 1.0), (32, 0.5)]
    assert _points(rows[0].run, "test/input_seq_len=16/accuracy") == [(16, 1.0)]  # an explicit slice
    report(tmp_path, plot_path=tmp_path / "ext.png")
    assert (tmp_path / "ext.png").exists() and not (tmp_path / "report.csv").exists()


def test_json_holds_the_rows_with_raw_values(runs_root, capsys):
    assert main(["report", str(runs_root), "--group-by", "mixer", "--group-by", "seq_len", "--group-by", "d_model",
                 "--best-over", "lr", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 12 and not (runs_root / "report.csv").exists()
    first = rows[0]
    assert list(first)[:4] == ["mixer", "seq_len", "d_model", "lr (best)"]
    assert first["test/accuracy"] == pytest.approx(0.97) and first["state_size"] == 2 * 2 * 16 * 16
    assert first["run"] == "mqar_grid/attention-d16-lr0.001-L16" and first["runs"] == 3
    assert first["path"] == str(runs_root / "mqar_grid" / "attention-d16-lr0.001-L16")


def test_wide_table_is_cut_to_the_width(runs_root, capsys):
    assert main(["report", str(runs_root), "--width", "140"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = lines[: lines.index("")]
    assert max(map(len, table)) <= 140 and any(line.endswith("…") for line in table)
    assert main(["report", str(runs_root)]) == 0  # into a pipe (here: captured): whole lines
    assert not any("…" in line for line in capsys.readouterr().out.splitlines())


def add_history(path: Path, accuracies: list[float]) -> None:
    lines = [json.dumps({"epoch": i + 1, "step": 4 * (i + 1), "valid/accuracy": a}) for i, a in enumerate(accuracies)]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_curves_draw_a_line_per_run_a_colour_per_row(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    root = tmp_path / "runs"
    for lr, curve in ((1e-3, [0.25, 0.26, 0.9, 0.99]), (1e-2, [0.25, 0.25, 0.25])):
        add_history(write_run(root, "attention", 16, lr, 16), curve)
    add_history(write_run(root, "base_conv", 16, 1e-3, 16), [0.2, 0.3])
    out = tmp_path / "curves.png"
    text = report(root, curves_path=out)
    assert f"curves → {out}" in text
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 300 and image.shape[1] > 600
    # with --best-over lr one row per mixer: attention's selected lr, base_conv
    from zoology.report import plot_curves

    rows = build_rows(find_runs(root), ["mixer"], best_over=["lr"])
    plot_curves(rows, tmp_path / "best.png", "valid/accuracy", ["mixer", "lr"])
    assert (tmp_path / "best.png").stat().st_size > 10_000
    (tmp_path / "none").mkdir()
    write_run(tmp_path / "none", "attention", 16, 1e-3, 16)  # no metrics.jsonl
    assert main(["report", str(tmp_path / "none"), "--curves", str(tmp_path / "x.png")]) == 2


def test_trackers_do_not_make_a_different_configuration(tmp_path):
    plain_run = write_run(tmp_path, "attention", 16, 1e-3, 16)
    logged = tmp_path / "mqar_grid" / "logged"
    shutil.copytree(plain_run, logged)
    config = tomli.loads((logged / "config.toml").read_text())
    config.update(run_id="logged", logging={"trackers": ["tensorboard"]})
    (logged / "config.toml").write_text(dump_experiment(structure_experiment(config, "test")))
    rows = build_rows(find_runs(tmp_path), ["mixer"], best_over=["lr"])
    assert len(rows) == 1 and len(rows[0].candidates) == 2
    assert hidden_differences(rows, ["mixer"]) == []
