"""``zoology bench mixers``: mixers of one length are timed side by side and compared with attention."""

import json

from zoology.bench import bench_mixers
from zoology.cli import main


def test_bench_mixers_rows_side_by_side():
    rows = list(bench_mixers(["attention", "base_conv", "mamba"], lengths=(8, 16), d_model=16,
                             tokens_per_batch=32, repeats=3))
    assert [(r["seq_len"], r["mixer"]) for r in rows] == [
        (8, "attention"), (8, "base_conv"), (8, "mamba"), (16, "attention"), (16, "base_conv"), (16, "mamba")]
    for r in rows:
        assert r["batch"] * r["seq_len"] == 32 and r["tokens_per_s"] > 0 and r["spread"] >= 1.0
        assert r["activation_mib"] >= 0 and r["state_size"] > 0
        expected = r["tokens_per_s"] / next(a["tokens_per_s"] for a in rows
                                            if a["mixer"] == "attention" and a["seq_len"] == r["seq_len"])
        assert abs(r["vs_attention"] - expected) < 0.01 * max(expected, 1)
    assert {r["vs_attention"] for r in rows if r["mixer"] == "attention"} == {1.0}


def test_bench_mixers_without_attention_has_no_ratio():
    rows = list(bench_mixers(["base_conv"], lengths=(8,), d_model=16, tokens_per_batch=16, repeats=1))
    assert len(rows) == 1 and "vs_attention" not in rows[0]


def test_bench_cli_rejects_zero_rounds(capsys):
    assert main(["bench", "mixers", "attention", "--rounds", "0"]) == 2
    assert "--rounds must be at least 1" in capsys.readouterr().err


def test_bench_cli_mixers_json_sorted_by_mixer(monkeypatch, capsys):
    import zoology.bench as bench

    real = bench.bench_mixers
    monkeypatch.setattr(bench, "bench_mixers", lambda names, repeats, device: real(
        names, lengths=(8, 16), d_model=16, tokens_per_batch=32, repeats=repeats, device=device))
    assert main(["bench", "mixers", "base_conv", "attention", "--rounds", "2", "--json", "-q", "--threads", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["mixer"], r["seq_len"]) for r in rows] == [
        ("attention", 8), ("attention", 16), ("base_conv", 8), ("base_conv", 16)]


def test_bench_cli_cuda_without_a_gpu_is_a_usage_error(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "mixers", "attention", "--device", "cuda"]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err
