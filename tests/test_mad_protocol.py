"""MAD's benchmark protocol: examples/mad_protocol.toml and `zoology report --mad`.

The protocol file is checked as written (--dry-run); the report is checked on real runs of
a tiny version of it (the same six tasks and grid axes, shrunk segments, one epoch, two
learning rates) for two architectures, one of them missing a task.
"""

import contextlib
import csv
import json
from pathlib import Path

import pytest
import tomli
import tomli_w

from zoology.cli import main
from zoology.plugins import get_registry
from zoology.report import MAD_TASKS

PROTOCOL = Path(__file__).parent.parent / "examples" / "mad_protocol.toml"
# per task: the segment fields shrunk for a run of seconds (the rest as in the protocol)
TINY = {
    "in_context_recall": {"input_seq_len": 16},
    "fuzzy_in_context_recall": {"input_seq_len": 16, "k_motif_size": 2, "v_motif_size": 2},
    "noisy_in_context_recall": {"input_seq_len": 16},
    "selective_copying": {"input_seq_len": 16, "num_tokens_to_copy": 4},
    "compression": {"input_seq_len": 8},
    "memorization": {"input_seq_len": 8, "vocab_size": 16},
}
TINY_LRS = [1e-3, 3e-3]
MODEL = ["--set", "model.d_model=16", "--set", "model.max_position_embeddings=16", "--set", "train.max_epochs=1",
         "--set", "data.batch_size=16", "--set", "model.state_mixer={ name = \"mlp\", hidden_mult = 1.0 }"]
ARCHS = {"attention": '{ name = "attention", num_heads = 2 }', "base_conv": '{ name = "base_conv" }'}


def test_protocol_lists_the_six_tasks_times_the_grid(capsys):
    assert main(["run", str(PROTOCOL), "--dry-run", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert len(runs) == 6 * 3 * 2
    points = {(r["sweep"]["data.test"], r["sweep"]["train.learning_rate"], r["sweep"]["train.weight_decay"])
              for r in runs}  # as the values read in run ids
    assert points == {(t, lr, wd) for t in MAD_TASKS for lr in ("1e-4", "5e-4", "1e-3") for wd in ("0", "0.1")}


def test_protocol_takes_other_mixers_with_set(capsys):
    for mixer in ('{ name = "hyena" }', '{ name = "ttt_linear" }'):
        assert main(["run", str(PROTOCOL), "--dry-run", "--set", f"model.sequence_mixer={mixer}"]) == 0
        assert "36 runs, all valid" in capsys.readouterr().out


def test_protocol_tasks_are_mads_baselines():
    """Every segment of the task axis is at MAD's baseline (configs/tasks/*.yml), 1,280 test examples."""
    axis = tomli.loads(PROTOCOL.read_text())["sweep"]["task"]
    baseline = {
        "in_context_recall": {"vocab_size": 16, "input_seq_len": 128},
        "fuzzy_in_context_recall": {"vocab_size": 16, "input_seq_len": 128, "k_motif_size": 3, "v_motif_size": 3},
        "noisy_in_context_recall": {"vocab_size": 32, "noise_vocab_size": 16, "frac_noise": 0.2, "input_seq_len": 128},
        "selective_copying": {"vocab_size": 16, "input_seq_len": 256, "num_tokens_to_copy": 16},
        "compression": {"vocab_size": 16, "input_seq_len": 32},
        "memorization": {"vocab_size": 256, "input_seq_len": 32},
    }
    train_examples = {t: 256 if t == "memorization" else 12_800 for t in MAD_TASKS}
    for (train,), (test,), readout in zip(axis["data.train"], axis["data.test"], axis["model.readout"]):
        task = test["task"]
        assert train["task"] == task and readout == ("autoencoder" if task == "compression" else "next_token")
        assert {k: train[k] for k in baseline[task]} == {k: test[k] for k in baseline[task]} == baseline[task]
        assert train["num_examples"] == train_examples[task] and test["num_examples"] == 1_280
    assert [t[0]["task"] for t in axis["data.test"]] == list(MAD_TASKS)
    assert set(MAD_TASKS) <= set(get_registry().names("task"))


def _tiny_protocol(path: Path) -> Path:
    raw = tomli.loads(PROTOCOL.read_text())
    raw["sweep"]["train.learning_rate"] = TINY_LRS
    for split, n in (("data.train", 96), ("data.test", 48)):
        for (segment,) in raw["sweep"]["task"][split]:
            segment.update(TINY[segment["task"]], num_examples=n)
    path.write_text(tomli_w.dumps(raw))
    return path


@pytest.fixture(scope="module")
def mad_runs(tmp_path_factory) -> Path:
    """The tiny protocol for two architectures: attention on the whole grid, base_conv at one
    grid point per task and without compression."""
    tmp = tmp_path_factory.mktemp("mad")
    exp, out = _tiny_protocol(tmp / "tiny_mad.toml"), tmp / "runs"
    capture = tmp / "dry_run.json"
    for arch, mixer in ARCHS.items():
        args = ["run", str(exp), "--out", str(out), *MODEL, "--set", f"name=mad_{arch}",
                "--set", f"model.sequence_mixer={mixer}"]
        only = []
        if arch == "base_conv":
            with capture.open("w") as f, contextlib.redirect_stdout(f):
                assert main([*args, "--dry-run", "--json"]) == 0
            runs = json.loads(capture.read_text())["runs"]
            only = [a for r in runs if r["sweep"]["data.test"] != "compression"  # one grid point each, no compression
                    and r["sweep"]["train.learning_rate"] == "1e-3" and r["sweep"]["train.weight_decay"] == "0"
                    for a in ("--only", r["run_id"])]
        assert main([*args, "--quiet", *only]) == 0
    return out


def _expected(out: Path, arch: str) -> dict[str, tuple[float, set[float]]]:
    """Per task, from the summaries: the best validation accuracy over the grid and the test
    accuracies of the runs that reach it (ties are possible in runs this small)."""
    by_task: dict[str, list[dict]] = {}
    for path in (out / f"mad_{arch}").glob("*/summary.json"):
        summary = json.loads(path.read_text())
        assert summary["status"] == "done"
        by_task.setdefault(summary["sweep"]["data.test"][0]["task"], []).append(summary)
    expected = {}
    for task, summaries in by_task.items():
        best = max(s["best"]["valid/accuracy"] for s in summaries)
        expected[task] = (best, {s["test"]["test/accuracy"] for s in summaries if s["best"]["valid/accuracy"] == best})
    return expected


def test_report_mad_json_holds_the_best_per_task_and_their_mean(mad_runs, capsys):
    assert len(list(mad_runs.glob("mad_attention/*/summary.json"))) == 6 * len(TINY_LRS) * 2
    assert main(["report", str(mad_runs), "--mad", "--json"]) == 0
    records = {r["mixer"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(records) == {"attention", "base_conv"}
    for arch, record in records.items():
        expected = _expected(mad_runs, arch)
        for task in MAD_TASKS:
            if task not in expected:
                assert record[task] is None
                continue
            assert record[task] in expected[task][1]
            (chosen,) = record["selected"][task]
            summary = json.loads((Path(chosen["path"]) / "summary.json").read_text())
            assert summary["best"]["valid/accuracy"] == expected[task][0]
            assert summary["test"]["test/accuracy"] == record[task] == chosen["test/accuracy"]
            assert (chosen["lr"], chosen["train.weight_decay"]) == (
                summary["sweep"]["train.learning_rate"], summary["sweep"]["train.weight_decay"])
        assert record["runs"] == len(list((mad_runs / f"mad_{arch}").glob("*/summary.json")))
    attention = records["attention"]
    assert attention["missing"] == []
    assert attention["mad_score"] == pytest.approx(sum(attention[t] for t in MAD_TASKS) / 6, abs=1e-12)
    assert records["base_conv"]["missing"] == ["compression"] and records["base_conv"]["mad_score"] is None


def test_report_mad_table_csv_and_figure(mad_runs, tmp_path, capsys):
    table, figure, curves = tmp_path / "mad.csv", tmp_path / "mad.png", tmp_path / "curves.png"
    assert main(["report", str(mad_runs), "--mad", "--csv", str(table), "--plot", str(figure),
                 "--curves", str(curves)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].split() == ["mixer", *MAD_TASKS, "mad_score", "runs"]
    assert "base_conv: no done run of compression: no mad_score" in text
    assert f"{6 * len(TINY_LRS) * 2 + 5} runs of MAD tasks" in text
    with table.open(newline="") as f:
        rows = {r["mixer"]: r for r in csv.DictReader(f)}
    score = float(rows["attention"]["mad_score"])
    assert score == pytest.approx(sum(float(rows["attention"][t]) for t in MAD_TASKS) / 6, abs=1e-12)
    assert rows["base_conv"]["compression"] == rows["base_conv"]["mad_score"] == ""
    attention_line = next(line for line in lines if line.startswith("attention"))
    assert f"{score:.4f}" in attention_line.split()
    assert figure.read_bytes()[:8] == curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_mad_needs_runs_of_mad_tasks(tmp_path, write, base_toml, capsys):
    out = tmp_path / "runs"
    assert main(["run", str(write(base_toml.replace("num_examples = 32", "num_examples = 8"))), "--out", str(out),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(out), "--mad"]) == 2
    assert "no run is scored on one MAD task" in capsys.readouterr().err
