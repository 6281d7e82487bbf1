"""The paper sweeps in examples/ reproduce upstream's configs: run counts and resolved points.

Loading every run of every example is tests/test_config.py's job; here the sweeps are
expanded (cheap) and only the points named below are structured, so a drift in a row, an
axis or a default that these files rely on shows up as a wrong value, not just a count.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from zoology.config import Experiment, read_toml, structure_experiment
from zoology.model import LanguageModel
from zoology.sweep import Point, expand

EXAMPLES = Path(__file__).parent.parent / "examples"
ZOOLOGY_LRS = [float(x) for x in np.logspace(-4, -2, 4)]
BASED_LRS = [float(x) for x in np.logspace(-3, -1.5, 4)]


@pytest.fixture(scope="module")
def sweeps() -> dict[str, dict[str, Point]]:
    """file stem → {run_id: sweep point}."""
    out = {}
    for stem in ("zoology_figure2", "zoology_figure2_512", "based_figure2"):
        path = EXAMPLES / f"{stem}.toml"
        out[stem] = {p.run_id: p for p in expand(read_toml(path), str(path))}
    return out


def resolve(sweeps, stem: str, run_id: str) -> Experiment:
    return structure_experiment(sweeps[stem][run_id].raw, f"{stem}.toml")


def label(point: Point) -> str:
    """The model row's label (rows are the `model` key of a tied axis)."""
    return point.values["model"]["label"]


def mixers(exp: Experiment) -> list[tuple[str, dict]]:
    """(name, params) of the sequence mixer each layer gets (tables cycle over layers)."""
    specs = exp.model.sequence_mixer
    return [(specs[i % len(specs)].name, specs[i % len(specs)].params) for i in range(exp.model.n_layers)]


def has(params: dict, **expected) -> bool:
    return {k: params.get(k) for k in expected} == expected


def mqar(tasks) -> list[tuple[int, int, int]]:
    return [(t.input_seq_len, t.num_kv_pairs, t.num_examples) for t in tasks]


def test_run_counts(sweeps):
    assert len(sweeps["zoology_figure2"]) == 3 * 7 * 4 * 4 == 336
    assert len(sweeps["zoology_figure2_512"]) == 7 * 4 * 4 == 112  # with the above: upstream's 448
    assert len(sweeps["based_figure2"]) == 95 * 4 == 380  # upstream's 99 models but MRA's 4


def test_zoology_figure2_grid_matches_upstream(sweeps):
    cells = {64: (4, 512), 128: (8, 512), 256: (16, 256)}
    seen = set()
    for stem in ("zoology_figure2", "zoology_figure2_512"):
        for run_id, point in sweeps[stem].items():
            raw = point.raw
            seq_len = raw["data"]["train"][0]["input_seq_len"]
            kv, batch = cells.get(seq_len, (64, 128))
            for t in (*raw["data"]["train"], *raw["data"]["test"]):
                assert (t["input_seq_len"], t["num_kv_pairs"], t["vocab_size"]) == (seq_len, kv, 8192)
                assert (t["power_a"], t["random_non_queries"]) == (0.01, False)
            assert raw["data"]["batch_size"] == batch
            model = raw["model"]
            assert model["n_layers"] == 2 and model["state_mixer"] == {"name": "identity"}
            assert f"-d{model['d_model']}-" in run_id  # the width axis is applied after the model rows
            assert model["embed_dropout"] == (0.0 if model["sequence_mixer"] == {"name": "mamba"} else 0.1)
            seen.add((seq_len, label(point), model["d_model"], raw["train"]["learning_rate"]))
    mixer_names = {"attention", "hyena", "rwkv", "base_conv", "h3", "based", "mamba"}
    assert seen == {(n, m, d, lr) for n in (64, 128, 256, 512) for m in mixer_names
                    for d in (64, 128, 256, 512) for lr in ZOOLOGY_LRS}


def test_zoology_figure2_resolved_points(sweeps):
    exp = resolve(sweeps, "zoology_figure2", "L128-kv8-bs512-h3-d256-lr2.15e-3")
    assert mixers(exp) == [("h3", {"d_state": 128, "head_dim": 2})] * 2  # d_state = input_seq_len
    assert (exp.model.d_model, exp.model.vocab_size, exp.model.max_position_embeddings) == (256, 8192, 0)
    assert exp.train.learning_rate == ZOOLOGY_LRS[2]
    assert (exp.train.max_epochs, exp.train.weight_decay, exp.train.seed) == (64, 0.1, 123)
    assert (exp.train.early_stopping.metric, exp.train.early_stopping.threshold) == ("valid/accuracy", 0.99)
    assert mqar(exp.data.train) == [(128, 8, 100_000)] and mqar(exp.data.test) == [(128, 8, 3_000)]
    assert (exp.data.batch_size, exp.data.seed) == (512, 123)

    exp = resolve(sweeps, "zoology_figure2", "L256-kv16-bs256-attention-d64-lr1e-4")
    assert [m for m, _ in mixers(exp)] == ["attention"] * 2
    assert has(mixers(exp)[0][1], num_heads=1, dropout=0.1)
    assert (exp.model.max_position_embeddings, exp.model.embed_dropout, exp.data.batch_size) == (256, 0.1, 256)

    exp = resolve(sweeps, "zoology_figure2", "L64-kv4-bs512-base_conv-d512-lr0.01")
    (l0, p0), (l1, p1) = mixers(exp)
    assert (l0, l1) == ("base_conv", "base_conv")
    assert has(p0, kernel_size=3) and has(p1, kernel_size=-1, implicit_long_conv=True, use_act=False)

    exp = resolve(sweeps, "zoology_figure2", "L64-kv4-bs512-based-d64-lr1e-4")
    (l0, p0), (l1, p1) = mixers(exp)
    assert l0 == "base_conv" and has(p0, kernel_size=3, implicit_long_conv=True)
    assert l1 == "based" and has(p1, feature_dim=8, num_heads=1, window=0)
    with torch.device("meta"):
        model = LanguageModel(exp)
    assert [type(b.sequence_mixer).__name__ for b in model.blocks] == ["BaseConv", "Based"]

    exp = resolve(sweeps, "zoology_figure2", "L128-kv8-bs512-hyena-d128-lr4.64e-4")
    assert has(mixers(exp)[0][1], filter_order=64, short_filter_order=3, emb_dim=3, dropout=0.0)
    assert exp.max_seq_len == 128  # the implicit filter spans upstream's l_max = input_seq_len

    exp = resolve(sweeps, "zoology_figure2", "L256-kv16-bs256-mamba-d128-lr1e-4")
    assert mixers(exp)[0][0] == "mamba" and has(mixers(exp)[0][1], d_state=16, d_conv=4, expand=2)
    assert exp.model.embed_dropout == 0.0

    exp = resolve(sweeps, "zoology_figure2_512", "h3-d512-lr1e-4")
    assert mixers(exp)[0][1]["d_state"] == 512 and exp.data.batch_size == 128
    exp = resolve(sweeps, "zoology_figure2_512", "attention-d64-lr0.01")
    assert exp.model.max_position_embeddings == 512 and mqar(exp.data.test) == [(512, 64, 3_000)]


def test_based_figure2_models_match_upstream(sweeps):
    models = {}
    for point in sweeps["based_figure2"].values():
        raw = point.raw
        models.setdefault(label(point), (raw["model"], set()))[1].add(raw["train"]["learning_rate"])
        assert raw["model"]["n_layers"] == 2 and raw["model"]["state_mixer"] == {"name": "identity"}
    assert all(lrs == set(BASED_LRS) for _, lrs in models.values())
    families = {}
    for name, (model, _) in models.items():
        families.setdefault(name.split("-")[0], set()).add(model["d_model"])
        mixer = model["sequence_mixer"]
        hybrid = isinstance(mixer, list)
        if hybrid:  # upstream's Hybrid: layer 0 BaseConv kernel 3, layer 1 the named mixer
            assert mixer[0] == {"name": "base_conv", "kernel_size": 3, "implicit_long_conv": True}
        assert hybrid == name.startswith(("attention", "based", "sliding_window", "scatterbrain", "bigbird", "nystromformer"))
        assert model["embed_dropout"] == (0.0 if name.startswith("mamba") else 0.1)
    assert families == {"attention": {64, 128}, "based": {48, 64, 128}, "sliding_window": {128},
                        "mamba": {64, 128, 256}, "mamba2": {64, 128, 256}, "hyena": {64, 128, 256},
                        "h3": {64, 128, 256}, "scatterbrain": {64, 128, 256}, "bigbird": {64}, "nystromformer": {128}}
    counts = {f: sum(name.split("-")[0] == f for name in models) for f in families}
    assert counts == {"attention": 2, "based": 9, "sliding_window": 8, "mamba": 9, "mamba2": 9, "hyena": 3, "h3": 3,
                      "scatterbrain": 40, "bigbird": 6, "nystromformer": 6}
    # scatterbrain: window_size 4..1024 (+1: our window counts the query) × feature_dim ≤ d_model
    sb = {(m["d_model"], m["sequence_mixer"][1]["window"], m["sequence_mixer"][1]["feature_dim"])
          for name, (m, _) in models.items() if name.startswith("scatterbrain")}
    assert sb == {(d, w + 1, f) for d in (64, 128, 256) for w in (4, 16, 64, 256, 1024) for f in (32, 64, 128) if f <= d}
    assert {m["sequence_mixer"][1]["block_size"] for name, (m, _) in models.items() if name.startswith("bigbird")} \
        == {4, 8, 16, 32, 64, 128}
    assert {m["sequence_mixer"][1]["num_landmarks"] for name, (m, _) in models.items() if name.startswith("nystrom")} \
        == {16, 32, 64, 128, 256, 512}


def test_based_figure2_resolved_points(sweeps):
    exp = resolve(sweeps, "based_figure2", "based-d48-f24-lr3.16e-3")
    (l0, p0), (l1, p1) = mixers(exp)
    assert l0 == "base_conv" and has(p0, kernel_size=3)
    assert l1 == "based" and has(p1, feature_dim=24, num_heads=1)
    assert (exp.model.d_model, exp.model.max_position_embeddings, exp.model.embed_dropout) == (48, 0, 0.1)
    assert exp.train.learning_rate == BASED_LRS[1]
    assert (exp.train.max_epochs, exp.train.weight_decay, exp.train.seed) == (32, 0.1, 123)
    assert exp.train.early_stopping.threshold == 0.99
    assert (exp.data.batch_size, exp.data.eval_batch_size) == (256, 32)
    assert mqar(exp.data.train) == [(64, 4, 100_000), (128, 8, 20_000), (256, 16, 20_000),
                                    (256, 32, 20_000), (256, 64, 20_000)]
    assert mqar(exp.data.test) == [(64, 4, 1_000), (64, 8, 1_000), (64, 16, 1_000), (128, 32, 1_000),
                                   (256, 64, 1_000), (512, 128, 1_000), (1024, 256, 1_000)]
    assert all(t.power_a == 0.01 and t.random_non_queries and t.vocab_size == 8192
               for t in (*exp.data.train, *exp.data.test))
    assert exp.max_seq_len == 1024 and exp.model.vocab_size == 8192

    exp = resolve(sweeps, "based_figure2", "sliding_window-d128-w9-lr0.01")
    assert mixers(exp)[1] == ("sliding_window_attention", {"window": 9, "num_heads": 1, "num_kv_heads": 0, "dropout": 0.0})

    exp = resolve(sweeps, "based_figure2", "attention-d128-lr1e-3")
    assert mixers(exp)[1][0] == "attention" and has(mixers(exp)[1][1], num_heads=1, dropout=0.1)

    exp = resolve(sweeps, "based_figure2", "h3-d128-lr1e-3")
    assert mixers(exp) == [("h3", {"d_state": 32, "head_dim": 2})] * 2  # d_state = d_model / 4

    exp = resolve(sweeps, "based_figure2", "scatterbrain-d128-w65-f64-lr0.01")
    assert mixers(exp)[1] == ("scatterbrain", {"window": 65, "feature_dim": 64, "num_heads": 1, "dropout": 0.1, "seed": 0})
    assert exp.model.d_model == 128

    exp = resolve(sweeps, "based_figure2", "bigbird-d64-b16-lr1e-3")
    assert mixers(exp)[1] == ("bigbird", {"block_size": 16, "window_blocks": 3, "global_blocks": 2, "random_blocks": 3,
                                          "num_heads": 1, "dropout": 0.0, "seed": 0})

    exp = resolve(sweeps, "based_figure2", "nystromformer-d128-m512-lr1e-3")
    assert mixers(exp)[1] == ("nystromformer", {"num_landmarks": 512, "num_heads": 1, "conv_kernel_size": 0, "dropout": 0.0})
    with torch.device("meta"):
        model = LanguageModel(exp)
    assert [type(b.sequence_mixer).__name__ for b in model.blocks] == ["BaseConv", "Nystromformer"]

    exp = resolve(sweeps, "based_figure2", "mamba2-d256-n24-lr1e-3")
    assert mixers(exp)[0][0] == "mamba2" and has(mixers(exp)[0][1], d_state=24, headdim=64, expand=2)
    assert exp.model.embed_dropout == 0.0
