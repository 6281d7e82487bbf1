"""Data-parallel training over gloo on CPU: 2 processes give the 1-process result."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

EXP = """
[data]
batch_size = 16
[[data.train]]
task = "mqar"
num_examples = 128
vocab_size = 64
input_seq_len = 16
num_kv_pairs = 2
[[data.test]]
task = "mqar"
num_examples = 48
vocab_size = 64
input_seq_len = 16
num_kv_pairs = 2
[model]
embed_dropout = 0.0  # dropout masks differ between processes
d_model = 32
n_layers = 2
sequence_mixer = { name = "attention", num_heads = 2 }
[train]
max_epochs = 2
learning_rate = 1e-3
"""


def test_two_processes_match_one(write, tmp_path):
    """Both runs on CPU over gloo (no GPU visible), so the test means the same on any machine:
    two processes sharing one GPU under NCCL would fail, and GPU vs CPU numbers differ."""
    path = write(EXP)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    one = subprocess.run([sys.executable, "-m", "zoology", "run", str(path), "--out", str(tmp_path / "one"),
                          "--quiet"], capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "zoology", "run", str(path), "--out", str(tmp_path / "two"), "--quiet"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("exp/default: done") == 1  # only the main process prints
    one, two = (tmp_path / name / "exp" / "default" for name in ("one", "two"))
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert (s1["processes"], s2["processes"]) == (1, 2)
    for key, value in s1["test"].items():
        assert s2["test"][key] == pytest.approx(value, abs=1e-5), key
    m1, m2 = ([json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two))
    assert len(m1) == len(m2) == 2
    for a, b in zip(m1, m2):
        for key in ("train/loss", "valid/loss", "valid/accuracy"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), key
    t1, t2 = (load_file(str(d / "model.safetensors")) for d in (one, two))
    for key in t1:
        torch.testing.assert_close(t2[key], t1[key], atol=1e-5, rtol=0)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["exp"]
