"""Replicates: one configuration trained with several seeds, reported by mean, range and
solved fraction, and selected by its mean (never by its luckiest seed)."""

import json

import pytest

from zoology.cli import main
from zoology.config import load_experiment, load_points, replicate_seed
from zoology.report import build_rows, find_runs, report

from .conftest import BASE

TINY = BASE.replace("num_examples = 32", "num_examples = 16").replace(
    "[train]", '[train]\nearly_stopping = { metric = "valid/accuracy", threshold = 0.5 }')


def test_replicates_expand_into_runs_that_differ_only_in_seeds(write):
    path = write(TINY.replace("[train]", "[train]\nreplicates = 3\nseed = 7") + """
[sweep]
"train.learning_rate" = [1e-3, 3e-3]
""")
    runs = load_points(path)
    assert [e.run_id for _, e in runs] == [f"lr{lr}-r{k}" for lr in ("1e-3", "3e-3") for k in range(3)]
    first = [e for _, e in runs[:3]]
    assert [e.train.replicate for e in first] == [0, 1, 2]
    assert [e.train_seed for e in first] == [7, replicate_seed(7, 1), replicate_seed(7, 2)]
    assert len({e.train_seed for e in first}) == 3
    assert {e.data_seed for e in first} == {123}  # same data unless replicate_data
    assert runs[1][0].labels == {"train.learning_rate": "1e-3", "train.replicate": "r1"}
    shared = write(TINY.replace("[train]", "[train]\nreplicates = 2\nreplicate_data = true"), "data.toml")
    assert [e.data_seed for _, e in load_points(shared)] == [123, replicate_seed(123, 1)]


def test_a_resolved_replicate_loads_as_itself(write, tmp_path):
    path = write(TINY.replace("[train]", "[train]\nreplicates = 2"))
    assert main(["run", str(path), "--out", str(tmp_path), "--quiet", "--only", "default-r1"]) == 0
    resolved = tmp_path / "exp" / "default-r1" / "config.toml"
    again = load_experiment(resolved)  # one run, not two: it is replicate 1 already
    assert (again.run_id, again.train.replicate, again.train.replicates) == ("default-r1", 1, 2)


@pytest.mark.parametrize(("edit", "message"), [
    ("replicates = 0", "train.replicates: must be between 1 and 1000, got 0"),
    ("replicates = 2\nreplicate = 2", "train.replicate: must be between 0 and replicates - 1 = 1, got 2"),
    ("seed = -1", "train.seed: must be between 0 and 4294967295, got -1"),
])
def test_bad_replicate_settings(write, capsys, edit, message):
    assert main(["validate", str(write(TINY.replace("[train]", f"[train]\n{edit}")))]) == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two learning rates × three replicates of a tiny run, trained for real."""
    root = tmp_path_factory.mktemp("replicates")
    exp = root / "grid.toml"
    exp.write_text(TINY.replace("[train]", "[train]\nreplicates = 3") + """
[sweep]
"train.learning_rate" = [1e-3, 3e-3]
""")
    assert main(["run", str(exp), "--out", str(root / "runs"), "--quiet"]) == 0
    return root / "runs"


def plant(root, run_id, valid, test):
    """Overwrite a real run's scores, so that the selection has a known answer."""
    path = root / "grid" / run_id / "summary.json"
    summary = json.loads(path.read_text())
    summary["best"]["valid/accuracy"], summary["test"]["test/accuracy"] = valid, test
    path.write_text(json.dumps(summary))


def test_every_replicate_has_its_own_summary(trained):
    runs = find_runs(trained)
    assert sorted(r.path.name for r in runs) == [f"lr{lr}-r{k}" for lr in ("1e-3", "3e-3") for k in range(3)]
    seeds = {r.path.name: r.summary["seeds"]["init_and_order"] for r in runs}
    assert len({seeds[f"lr1e-3-r{k}"] for k in range(3)}) == 3
    assert all(r.summary["sweep"]["train.replicate"] == int(r.path.name[-1]) for r in runs)


def test_report_aggregates_replicates_and_selects_by_mean(trained, tmp_path):
    # lr 1e-3: one lucky seed (0.95) but mean 0.6; lr 3e-3: steady 0.7 → 3e-3 wins on the mean
    for k, (valid, test) in enumerate([(0.95, 0.94), (0.45, 0.44), (0.40, 0.42)]):
        plant(trained, f"lr1e-3-r{k}", valid, test)
    for k, (valid, test) in enumerate([(0.70, 0.71), (0.69, 0.68), (0.71, 0.71)]):
        plant(trained, f"lr3e-3-r{k}", valid, test)
    runs = find_runs(trained)
    rows = build_rows(runs, ["mixer"])
    assert len(rows) == 2 and all(len(r.replicates) == 3 for r in rows)
    by_lr = {r.run.config["train"]["learning_rate"]: r for r in rows}
    assert by_lr[1e-3].mean("test/accuracy") == pytest.approx(0.6)
    assert by_lr[1e-3].values("test/accuracy") == pytest.approx([0.94, 0.44, 0.42])
    assert by_lr[1e-3].solved() == pytest.approx(1 / 3)  # threshold 0.5 on valid/accuracy
    assert by_lr[3e-3].solved() == 1.0
    [best] = build_rows(runs, ["mixer"], best_over=["lr"])
    assert best.keys["lr"] == 3e-3 and len(best.candidates) == 6
    text = report(trained, group_by=["mixer"], best_over=["lr"], csv_path=tmp_path / "r.csv",
                  plot_path=tmp_path / "r.png")
    header = text.splitlines()[0]
    assert "test/accuracy (mean)" in header and "solved" in header and "replicates" in header
    line = text.splitlines()[2].split()
    assert line[:8] == ["attention", "0.003", "0.7000", "0.6800", "0.7100", "0.7000", "1.00", "3"]
    csv = (tmp_path / "r.csv").read_text().splitlines()
    assert csv[0].startswith("mixer,lr (best),test/accuracy (mean),test/accuracy (min),test/accuracy (max)")
    assert (tmp_path / "r.png").stat().st_size > 0
