"""The language model: causal end to end, scored-position head exact, mixers cycle, state size."""

import torch

from zoology.config import load_experiment
from zoology.model import LanguageModel


def build(write, text):
    return LanguageModel(load_experiment(write(text))).eval()


def test_causal_and_scored_positions_match(write, base_toml):
    torch.manual_seed(0)
    model = build(write, base_toml)
    x = torch.randint(0, 64, (3, 16))
    full = model(x)
    assert full.shape == (3, 16, 64)
    x2 = x.clone()
    x2[:, 9:] = torch.randint(0, 64, (3, 7))
    assert torch.allclose(model(x2)[:, :9], full[:, :9], atol=1e-5)
    where = torch.rand(3, 16) < 0.3
    assert torch.allclose(model(x, where), full[where], atol=1e-5)


def test_tied_head_positions_and_cycling(write, base_toml):
    text = base_toml.replace('sequence_mixer = { name = "attention", num_heads = 2 }',
                             'n_layers = 3\nmax_position_embeddings = 16\n'
                             'sequence_mixer = [{ name = "attention", num_heads = 2 }, { name = "attention", num_heads = 4 }]\n'
                             'state_mixer = [{ name = "mlp" }, { name = "identity" }]').replace("n_layers = 2\n", "")
    model = build(write, text)
    assert model.lm_head.weight is model.token_embedding.weight
    assert model.position_embedding.weight.shape == (16, 16)
    assert [b.sequence_mixer.num_heads for b in model.blocks] == [2, 4, 2]
    assert [type(b.state_mixer).__name__ for b in model.blocks] == ["MLP", "Identity", "MLP"]
    assert model.state_size(16) == 3 * 2 * 16 * 16


def test_generic_init_and_mixer_own_init(write, base_toml):
    model = build(write, base_toml)
    std = model.blocks[0].state_mixer.fc1.weight.std().item()
    assert 0.015 < std < 0.025  # GPT-2 init
    assert model.blocks[0].state_mixer.fc2.weight.std().item() < std  # scaled output projection
    # a mixer with reset_parameters() keeps its own init: Mamba's S4D-Real A and D = 1, and
    # PyTorch's default U(±1/√fan_in) projections rather than the generic N(0, 0.02)
    mamba = build(write, base_toml.replace('name = "attention", num_heads = 2', 'name = "mamba", d_state = 4'))
    mixer = mamba.blocks[1].sequence_mixer
    assert torch.equal(mixer.A_log.exp(), torch.arange(1.0, 5.0).repeat(mixer.d_inner, 1))
    assert torch.equal(mixer.D, torch.ones_like(mixer.D))
    bound = mixer.in_proj.weight.shape[1] ** -0.5
    assert mixer.in_proj.weight.abs().max().item() <= bound
    assert mixer.in_proj.weight.std().item() > 2 * 0.02  # not re-drawn by the generic init
    assert 0.015 < mamba.blocks[1].state_mixer.fc1.weight.std().item() < 0.025  # the rest is generic


COMPRESSION = """
[data]
batch_size = 32
[[data.train]]
task = "compression"
num_examples = 2048
vocab_size = 6
input_seq_len = 6
[[data.test]]
task = "compression"
num_examples = 128
vocab_size = 6
input_seq_len = 6
[model]
d_model = 48
n_layers = 2
max_position_embeddings = 6
readout = "autoencoder"
sequence_mixer = { name = "attention", num_heads = 2 }
[train]
max_epochs = 6
learning_rate = 3e-3
"""


def test_autoencoder_decodes_every_position_from_the_last_vector(write):
    torch.manual_seed(0)
    model = build(write, COMPRESSION)
    assert model.lm_head.weight is not model.token_embedding.weight
    x = torch.randint(0, 5, (4, 6))
    full = model(x)
    assert full.shape == (4, 6, 6)
    where = torch.rand(4, 6) < 0.5
    assert torch.allclose(model(x, where), full[where], atol=1e-6)
    # the decoder sees only the last position's vector: equal vectors, equal reconstructions
    z = model.norm_f(torch.zeros(2, 48))
    out = model.lm_head(model.decoder(z, 6))
    assert torch.allclose(out[0], out[1])


def test_autoencoder_learns_mads_compression(write, tmp_path):
    """5 random tokens of 5 symbols + the compression token, rebuilt from one vector; chance
    for a token is 1/5 (the compression token itself is free)."""
    import json

    from zoology.cli import main

    assert main(["run", str(write(COMPRESSION)), "--out", str(tmp_path), "--quiet"]) == 0
    summary = json.loads((tmp_path / "exp" / "default" / "summary.json").read_text())
    assert summary["test"]["test/accuracy"] > 0.6, summary["test"]  # reaches ~0.76 in 5 s


def test_readout_must_match_every_task(write, capsys):
    from zoology.cli import main

    next_token = COMPRESSION.replace('readout = "autoencoder"\n', "")
    assert main(["validate", str(write(next_token))]) == 2
    err = capsys.readouterr().err
    assert "model.readout" in err and "data.train[0] (compression)" in err and "'autoencoder'" in err
    lm_task = COMPRESSION.replace('task = "compression"', 'task = "compression"\nprotocol = "next_token"')
    assert main(["validate", str(write(lm_task))]) == 2
    assert "model.readout" in capsys.readouterr().err
    mixed = COMPRESSION.replace("input_seq_len = 6\n[model]", "input_seq_len = 4\n[model]")
    assert main(["validate", str(write(mixed))]) == 2
    assert "same input_seq_len" in capsys.readouterr().err
