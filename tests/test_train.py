"""End to end: `zoology run` trains, records, skips, survives failures."""

import json
import math
from pathlib import Path

import pytest
import torch

from zoology.cli import main
from zoology.config import load_experiment
from zoology.mixers.attention import Attention

ROOT = Path(__file__).resolve().parents[1]


def read_summary(out: Path, name: str, run_id: str = "default") -> dict:
    return json.loads((out / name / run_id / "summary.json").read_text())


def test_tiny_example_learns_mqar(tmp_path, capsys):
    """The bundled tiny example trains to far above chance (≈1/num_kv_pairs on the plateau)."""
    code = main(["run", str(ROOT / "examples/mqar_tiny.toml"), "--out", str(tmp_path), "--quiet"])
    assert code == 0
    run = tmp_path / "mqar_tiny" / "default"
    summary = read_summary(tmp_path, "mqar_tiny")
    assert summary["status"] == "done"
    assert summary["test"]["test/accuracy"] > 0.8, summary["test"]
    assert summary["best"]["valid/accuracy"] >= 0.9
    assert summary["state_size"] == 2 * 2 * 64 * 32  # 2 layers × (K and V) × d_model × length
    assert summary["num_parameters"] > 0 and summary["epochs"] >= 1
    assert set(summary["seeds"]) == {"init_and_order", "train", "valid", "test"}
    exp = load_experiment(ROOT / "examples/mqar_tiny.toml")
    assert summary["seeds"]["init_and_order"] == exp.train.seed and len(summary["seeds"]["train"]) == 1
    assert summary["seeds"]["valid"] != summary["seeds"]["test"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == summary["epochs"]
    assert "valid/num_kv_pairs=4/accuracy" in metrics[-1]
    assert (run / "model.safetensors").exists()
    assert load_experiment(run / "config.toml") == exp
    assert "test/accuracy" in capsys.readouterr().out

    # re-running skips a done run; --rerun trains again
    assert main(["run", str(ROOT / "examples/mqar_tiny.toml"), "--out", str(tmp_path), "--quiet"]) == 0
    assert "already done" in capsys.readouterr().out


def test_failed_run_is_recorded_and_others_continue(write, base_toml, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    original = Attention.forward

    def flaky(self, x):
        calls["n"] += 1
        if self.num_heads == 1:
            raise RuntimeError("boom")
        return original(self, x)

    monkeypatch.setattr(Attention, "forward", flaky)
    text = base_toml + '\n[sweep]\n"model.sequence_mixer.num_heads" = [1, 2]\n'
    code = main(["run", str(write(text)), "--out", str(tmp_path / "runs"), "--quiet"])
    assert code == 1
    runs = tmp_path / "runs" / "exp"
    statuses = {d.name: json.loads((d / "summary.json").read_text())["status"] for d in runs.iterdir()}
    assert sorted(statuses.values()) == ["done", "failed"]
    failed = next(d for d in runs.iterdir() if statuses[d.name] == "failed")
    assert "RuntimeError: boom" in (failed / "error.log").read_text()
    assert "2 runs: 0 already done, 2 run, 1 failed" in capsys.readouterr().out


def test_nan_loss_ends_as_diverged(write, base_toml, tmp_path, monkeypatch):
    monkeypatch.setattr(Attention, "forward", lambda self, x: x * math.nan)
    assert main(["run", str(write(base_toml)), "--out", str(tmp_path), "--quiet"]) == 0
    summary = read_summary(tmp_path, "exp")
    assert summary["status"] == "diverged"


def test_fp16_rejected_on_cpu(write, base_toml, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed on GPU")
    path = write(base_toml.replace("[train]", '[train]\nmixed_precision = "fp16"'))
    assert main(["run", str(path), "--out", str(tmp_path)]) == 2
    assert "fp16" in capsys.readouterr().err


def test_bf16_and_grad_accumulation_run(write, base_toml, tmp_path):
    path = write(base_toml.replace("[train]", '[train]\nmixed_precision = "bf16"\ngradient_accumulation_steps = 2'))
    assert main(["run", str(path), "--out", str(tmp_path), "--quiet"]) == 0
    summary = read_summary(tmp_path, "exp")
    assert summary["status"] == "done" and summary["micro_batch_size"] == 4


def test_wandb_only_when_configured(write, base_toml, tmp_path, monkeypatch):
    import wandb

    def forbidden(*args, **kwargs):
        raise AssertionError("wandb.init called without [logging.wandb]")

    monkeypatch.setattr(wandb, "init", forbidden)
    assert main(["run", str(write(base_toml)), "--out", str(tmp_path), "--quiet"]) == 0

    seen = {}

    class FakeRun:
        summary = {}

        def log(self, metrics, step):
            seen.setdefault("logged", []).append(step)

        def finish(self, exit_code=0):
            seen["finished"] = exit_code

    def fake_init(**kwargs):
        seen["init"] = kwargs
        return FakeRun()

    monkeypatch.setattr(wandb, "init", fake_init)
    text = base_toml + '\n[logging.wandb]\nproject = "zoo"\nmode = "offline"\n'
    assert main(["run", str(write(text, "w.toml")), "--out", str(tmp_path), "--quiet"]) == 0
    assert seen["init"]["project"] == "zoo" and seen["init"]["mode"] == "offline"
    assert seen["logged"] and seen["finished"] == 0
