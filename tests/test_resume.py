"""Checkpoints: a run killed with SIGKILL mid-epoch resumes to a bit-identical result."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from zoology import checkpoint
from zoology.cli import main

EXP = """
[data]
batch_size = 16
seed = 3
[[data.train]]
task = "mqar"
num_examples = 1024
vocab_size = 64
input_seq_len = 32
num_kv_pairs = 4
[[data.test]]
task = "mqar"
num_examples = 64
vocab_size = 64
input_seq_len = 32
num_kv_pairs = 4
[model]
d_model = 32
n_layers = 2
sequence_mixer = { name = "attention", num_heads = 2, dropout = 0.1 }
[train]
max_epochs = 5
learning_rate = 3e-3
"""


def metrics(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in lines]


def assert_same_model(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


def test_sigkill_mid_epoch_then_resume_is_bit_identical(write, tmp_path):
    path = write(EXP)
    assert main(["run", str(path), "--out", str(tmp_path / "straight"), "--quiet"]) == 0
    straight = tmp_path / "straight" / "exp" / "default"

    out = tmp_path / "killed"
    run = out / "exp" / "default"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "zoology", "run", str(path), "--out", str(out), "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        if (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # into the third epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((run / "summary.json").read_text())["status"] == "running"
    assert checkpoint.find(run) is not None

    assert main(["run", str(path), "--out", str(out), "--quiet", "--resume"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["resumed_from_epoch"] >= 1
    assert metrics(run) == metrics(straight)
    assert_same_model(run, straight)


def test_resume_requires_a_checkpoint(write, tmp_path, capsys):
    assert main(["run", str(write(EXP)), "--out", str(tmp_path), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_half_written_checkpoints_are_never_loaded(tmp_path):
    run = tmp_path
    (run / checkpoint.PARTIAL).mkdir()
    (run / checkpoint.PARTIAL / "model.safetensors").write_bytes(b"truncated")
    assert checkpoint.find(run) is None  # a build that never finished

    (run / checkpoint.PREVIOUS).mkdir()
    (run / checkpoint.PREVIOUS / checkpoint.STATE).write_text("{}")
    (run / checkpoint.CURRENT).mkdir()  # killed while the new one was being swapped in
    assert checkpoint.find(run) == run / checkpoint.PREVIOUS

    (run / checkpoint.CURRENT / checkpoint.STATE).write_text("{}")
    assert checkpoint.find(run) == run / checkpoint.CURRENT


def test_changed_experiment_is_not_resumed(write, tmp_path, capsys):
    path = write(EXP.replace("max_epochs = 5", "max_epochs = 1"))
    assert main(["run", str(path), "--out", str(tmp_path), "--quiet"]) == 0
    run = tmp_path / "exp" / "default"
    summary = json.loads((run / "summary.json").read_text())
    summary["status"] = "running"  # pretend it was interrupted
    (run / "summary.json").write_text(json.dumps(summary))
    assert main(["run", str(path), "--out", str(tmp_path), "--quiet", "--set", "train.learning_rate=1e-2"]) == 2
    assert "different experiment" in capsys.readouterr().err
