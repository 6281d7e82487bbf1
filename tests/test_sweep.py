"""Sweeps: the grammar, readable ids, dry runs, parallel workers that survive a crash, Ray."""

import json
import re
import sys
import textwrap

import pytest

from zoology.cli import main
from zoology.config import load_experiments
from zoology.errors import ConfigError
from zoology.plugins import get_registry
from zoology.sweep import expand, fmt

from .conftest import BASE, install_plugin


def test_grid_axes_multiply_and_ids_read_well(write):
    text = BASE + textwrap.dedent('''
        [sweep]
        "model.d_model" = [16, 32, 64]
        "train.learning_rate" = [1e-4, 1e-3]
    ''')
    exps = load_experiments(write(text))
    assert len(exps) == 6
    assert [e.run_id for e in exps][:2] == ["d16-lr1e-4", "d16-lr1e-3"]
    assert {(e.model.d_model, e.train.learning_rate) for e in exps} == {(d, lr) for d in (16, 32, 64) for lr in (1e-4, 1e-3)}
    assert [e.run_id for e in load_experiments(write(text))] == [e.run_id for e in exps]  # stable


def test_tied_axes_wildcards_and_table_values(write):
    text = BASE + textwrap.dedent('''
        [sweep]
        "model.sequence_mixer" = [{ label = "attn", name = "attention", num_heads = 2 }, { name = "short_conv" }]
        [sweep.seq]
        "data.*.input_seq_len" = [16, 32]
        "data.*.num_kv_pairs" = [2, 4]
        "data.batch_size" = [8, 4]
    ''')
    exps = load_experiments(write(text))
    assert [e.run_id for e in exps] == ["attn-L16", "attn-L32", "short_conv-L16", "short_conv-L32"]
    long = exps[1]
    assert [t.input_seq_len for t in (*long.data.train, *long.data.test)] == [32, 32]
    assert [t.num_kv_pairs for t in (*long.data.train, *long.data.test)] == [4, 4]
    assert long.data.batch_size == 4
    assert exps[0].model.sequence_mixer[0].params["num_heads"] == 2  # the label is not a parameter
    assert exps[2].model.sequence_mixer[0].name == "short_conv"


def test_array_index_paths(write):
    text = BASE + '\n[sweep]\n"data.train.0.num_kv_pairs" = [1, 3]\n'
    exps = load_experiments(write(text))
    assert [e.data.train[0].num_kv_pairs for e in exps] == [1, 3]
    assert [e.data.test[0].num_kv_pairs for e in exps] == [2, 2]


def test_bad_sweeps_fail_up_front_with_the_run_id(write):
    with pytest.raises(ConfigError, match=r"sweep.seq: tied keys must list the same number of values"):
        load_experiments(write(BASE + '\n[sweep.seq]\n"model.d_model" = [1, 2]\n"train.seed" = [1]\n'))
    with pytest.raises(ConfigError) as info:
        load_experiments(write(BASE + '\n[sweep]\n"data.train.0.num_kv_pairs" = [2, 9]\n'))
    assert any("run kv9:" in msg and "must be <= input_seq_len" in msg for _, msg in info.value.problems)
    with pytest.raises(ConfigError, match="no item 5"):
        load_experiments(write(BASE + '\n[sweep]\n"data.train.5.num_kv_pairs" = [2]\n'))


def test_fmt():
    assert [fmt(v) for v in (1e-3, 3e-4, 0.5, 64, 1e-2, {"label": "x"}, True)] == ["1e-3", "3e-4", "0.5", "64", "0.01", "x", "true"]


def test_dry_run_lists_and_validates(write, capsys, tmp_path):
    text = BASE + '\n[sweep]\n"model.d_model" = [16, 32]\n'
    assert main(["run", str(write(text)), "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "d16" in out and "d32" in out and "2 runs, all valid" in out
    assert not (tmp_path / "exp").exists()


def test_figure2_example_has_upstreams_336_runs(capsys):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "zoology_figure2.toml"
    points = expand(__import__("tomli").loads(path.read_text()), str(path))
    assert len(points) == 336 and len({p.run_id for p in points}) == 336
    assert main(["run", str(path), "--dry-run"]) == 0
    assert "336 runs, all valid" in capsys.readouterr().out


CRASHY = '''
import os
import torch
import zoology


class Crashy(torch.nn.Module):
    """Attention-free mixer that raises while a marker file exists (for executor tests).

    Args:
        marker: path of the marker file
    """

    name = "crashy"

    def __init__(self, d_model: int, marker: str = "") -> None:
        super().__init__()
        self.proj = torch.nn.Linear(d_model, d_model)
        self.marker = marker

    def forward(self, x):
        if self.marker and os.path.exists(self.marker):
            os._exit(13)  # die hard, as a segfault or OOM kill would
        return self.proj(x)

    def state_size(self, seq_len: int) -> int:
        return 0


@zoology.hookimpl
def zoology_register_mixers(register):
    register(Crashy)
'''


@pytest.fixture
def crashy(tmp_path, monkeypatch):
    install_plugin(tmp_path / "site", monkeypatch, "crashy", CRASHY)
    get_registry.cache_clear()
    marker = tmp_path / "crash-now"
    marker.write_text("")
    yield marker
    get_registry.cache_clear()
    sys.modules.pop("zoo_crashy", None)


def test_parallel_sweep_survives_a_crash_and_resumes(write, tmp_path, crashy, capsys):
    text = BASE + textwrap.dedent(f'''
        [sweep]
        "model.sequence_mixer" = [
            {{ label = "a1", name = "attention", num_heads = 1 }},
            {{ label = "a2", name = "attention", num_heads = 2 }},
            {{ label = "a4", name = "attention", num_heads = 4 }},
            {{ label = "boom", name = "crashy", marker = "{crashy}" }},
        ]
    ''')
    path, out = write(text), tmp_path / "runs"
    assert main(["run", str(path), "--out", str(out), "--parallel", "2"]) == 1
    printed = capsys.readouterr().out
    statuses = {d.name: json.loads((d / "summary.json").read_text())["status"] for d in (out / "exp").iterdir()}
    assert statuses == {"a1": "done", "a2": "done", "a4": "done", "boom": "failed"}
    assert "worker exited with code 13" in json.loads((out / "exp/boom/summary.json").read_text())["error"]
    assert (out / "exp/boom/worker.log").exists()
    assert "4 runs: 0 already done, 4 run, 1 failed" in printed and "failed: boom" in printed

    crashy.unlink()  # the cause is fixed: re-running completes only the missing run
    assert main(["run", str(path), "--out", str(out), "--parallel", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("already done, skipped") == 3 and "4 runs: 3 already done, 1 run, 0 failed" in printed
    assert json.loads((out / "exp/boom/summary.json").read_text())["status"] == "done"


def test_ray_backend_runs_two(write, tmp_path, capsys):
    pytest.importorskip("ray")
    text = BASE + '\n[sweep]\n"model.d_model" = [16, 32]\n'
    assert main(["run", str(write(text)), "--out", str(tmp_path), "--backend", "ray", "--cpus-per-run", "1"]) == 0
    for run in ("d16", "d32"):
        assert json.loads((tmp_path / "exp" / run / "summary.json").read_text())["status"] == "done"
        assert "1 CPU(s), 0 GPU(s), GPU ids []" in (tmp_path / "exp" / run / "worker.log").read_text()
    assert "each 1 CPU(s) and 0 GPU(s) (cluster:" in capsys.readouterr().err  # a CPU-only cluster: 0 by default


def test_parallel_workers_persist_across_runs(write, tmp_path):
    """`--parallel 2` over three runs: two worker processes, one of them trains two runs
    (start-up is paid per worker, not per run); each run's worker.log names its worker."""
    text = BASE + '\n[sweep]\n"model.d_model" = [16, 24, 32]\n'
    path, out = write(text), tmp_path / "runs"
    assert main(["run", str(path), "--out", str(out), "--parallel", "2", "--quiet"]) == 0
    pids = {}
    for run in ("d16", "d24", "d32"):
        assert json.loads((out / "exp" / run / "summary.json").read_text())["status"] == "done"
        log = (out / "exp" / run / "worker.log").read_text()
        pids[run] = re.search(r"zoology worker (\d+): python -m zoology run", log).group(1)
    assert len(set(pids.values())) == 2, pids
