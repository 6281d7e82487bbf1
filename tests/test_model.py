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
