"""``zoology bench mixers``: mixers of one length are timed side by side and compared with attention."""

import json

import torch

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


def test_bench_ops_times_a_mixer_op_by_op_with_operand_layouts():
    from zoology.bench import bench_ops, layout, summarize_ops

    x = torch.zeros(2, 3, 4)
    assert [layout(t) for t in (x, x.transpose(-1, -2), x[:, :2], x.permute(2, 0, 1), x[:1].expand(5, 3, 4))] == \
        ["c", "t", "s", "x", "b"]
    rows = list(bench_ops("attention", length=8, d_model=16, tokens_per_batch=32, steps=2))
    assert rows == sorted(rows, key=lambda r: -r["ms_per_step"])
    assert abs(sum(r["share"] for r in rows) - 1) < 0.01
    kinds = {r["kind"] for r in rows}
    assert "matmul" in kinds and "view" in kinds  # the projections; the head reshapes
    assert all(r["calls"] >= 1 and r["operands"] for r in rows if r["kind"] != "view")
    assert {r["phase"] for r in rows} == {"fwd", "bwd"}
    assert "ms per step" in summarize_ops(rows) and "backward" in summarize_ops(rows)


def test_bench_ops_flags_elementwise_ops_on_strided_operands():
    from zoology.bench import _OpTimer

    a = torch.randn(4, 8, 8)
    with _OpTimer(sync=False) as timer:
        a * a
        a * a.transpose(-1, -2)
        a @ a.transpose(-1, -2)
    keys = {(op, operands, kind) for op, operands, kind, _ in timer.stats}
    assert ("mul", "4×8×8 c · 4×8×8 c", "elementwise") in keys
    assert ("mul", "4×8×8 c · 4×8×8 t", "elementwise") in keys
    assert any(kind == "matmul" for _, _, kind in keys)


def test_bench_ops_cli(capsys):
    assert main(["bench", "ops", "short_conv", "--length", "16", "--top", "3", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "ms per step" in out and "more rows" in out and "layouts:" in out
    assert main(["bench", "ops", "no_such_mixer"]) == 2
    assert "unknown mixer 'no_such_mixer'" in capsys.readouterr().err
    assert main(["bench", "ops", "attention", "short_conv"]) == 2
    assert main(["bench", "mixers", "attention", "--length", "64"]) == 2
    assert "--length and --top are for bench ops" in capsys.readouterr().err
