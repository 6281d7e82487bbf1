"""zoology.load_runs: one record per run, from a real trained sweep."""

import importlib.util
import shutil
import sys

import pytest

import zoology
from zoology.cli import main
from zoology.errors import UserError

from .conftest import BASE


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-run sweep over d_model, 2 epochs each, trained in this process."""
    root = tmp_path_factory.mktemp("results")
    exp = root / "grid.toml"
    exp.write_text(BASE.replace("max_epochs = 1", "max_epochs = 2") + '\n[sweep]\n"model.d_model" = [8, 16]\n')
    assert main(["run", str(exp), "--out", str(root / "runs"), "--quiet"]) == 0
    return root / "runs"


def test_one_record_per_run_with_config_summary_and_epochs(trained):
    records = zoology.load_runs(trained)
    assert [r["run_id"] for r in records] == ["d16", "d8"]  # path order
    for record in records:
        assert record["experiment"] == "grid" and record["status"] == "done"
        assert record["path"].endswith(f"grid/{record['run_id']}")
        assert record["model.d_model"] == int(record["run_id"][1:])
        assert record["data.train.0.num_kv_pairs"] == 2 and record["model.sequence_mixer.0.name"] == "attention"
        summary = record["summary"]
        assert record["test/accuracy"] == summary["test"]["test/accuracy"]
        assert record["valid/accuracy"] == summary["best"]["valid/accuracy"]
        assert record["state_size"] == summary["state_size"] and record["num_parameters"] == summary["num_parameters"]
        assert [m["epoch"] for m in record["metrics"]] == [1, 2]
        assert "valid/accuracy" in record["metrics"][0] and "train/loss" in record["metrics"][0]
    one = zoology.load_runs(trained / "grid" / "d8")
    assert len(one) == 1 and one[0]["model.d_model"] == 8


def test_a_torn_metrics_line_is_skipped(trained, tmp_path):
    copy = tmp_path / "d8"
    shutil.copytree(trained / "grid" / "d8", copy)
    with (copy / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 3, "valid/acc')  # a run killed while appending
    assert [m["epoch"] for m in zoology.load_runs(copy)[0]["metrics"]] == [1, 2]


def test_no_runs_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no runs found"):
        zoology.load_runs(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="pandas is not installed")
def test_as_frame_gives_a_dataframe(trained):
    df = zoology.load_runs(trained, as_frame=True)
    assert len(df) == 2 and {"model.d_model", "test/accuracy", "metrics"} <= set(df.columns)
    assert sorted(df["model.d_model"]) == [8, 16]


def test_as_frame_without_pandas_says_what_to_install(trained, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed: import pandas fails
    with pytest.raises(ImportError, match="pip install pandas"):
        zoology.load_runs(trained, as_frame=True)
