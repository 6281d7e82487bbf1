"""Input-dependent sparse attention (selective_lookups, sigmoid_lookups, sma) and the
auxiliary-loss part of the mixer contract: check_mixer (with recurrent == forward and the
aux-loss check), the causal top-n selection and each gate against a direct computation,
the state-size formula, FieldErrors, the model's sum over layers (also with ``where``),
check_mixer catching a broken auxiliary loss, the auxiliary loss's gradient reaching the
optimizer step, and ``train/aux_loss`` in metrics.jsonl."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoology.train
from zoology.cli import main
from zoology.config import load_experiment
from zoology.errors import FieldError
from zoology.mixers import BUILTIN_MIXERS
from zoology.mixers.attention import Attention
from zoology.mixers.selective import SMA, SelectiveLookups, SigmoidLookups
from zoology.model import LanguageModel
from zoology.runs import RunDir
from zoology.testing import check_mixer
from zoology.train import Trainer

from .conftest import BASE

SEQ_LEN = 45  # default budget n = ceil(sqrt(45)) = 7

CASES = [
    (SelectiveLookups, {}),
    (SelectiveLookups, {"num_heads": 2, "n_lookups": 3}),
    (SelectiveLookups, {"hard_select": False}),
    (SigmoidLookups, {}),
    (SigmoidLookups, {"num_heads": 4, "n_lookups": 2, "selection_penalty": 0.5}),
    (SigmoidLookups, {"hard_select": False, "dropout": 0.1}),
    (SMA, {}),
    (SMA, {"num_heads": 2, "alpha": 1.0, "n_lookups": 50}),  # budget ≥ length: nothing dropped
]
IDS = [f"{cls.name}-{i}" for i, (cls, _) in enumerate(CASES)]


def test_registered():
    assert {"selective_lookups", "sigmoid_lookups", "sma"} <= {cls.name for cls in BUILTIN_MIXERS}


@pytest.mark.parametrize(("cls", "params"), CASES, ids=IDS)
def test_check_mixer(cls, params):
    torch.set_num_threads(1)
    check_mixer(cls, d_model=32, seq_len=SEQ_LEN, **params)


def _mixer(cls, **params):
    torch.manual_seed(0)
    return cls(32, max_seq_len=SEQ_LEN, **params).eval()


@pytest.mark.parametrize("cls", [SelectiveLookups, SigmoidLookups, SMA])
def test_evaluation_keeps_the_causal_top_n(cls):
    """Kept positions are exactly those whose logit is among the n largest so far (earlier wins
    ties); the others output zero; training mode keeps every position."""
    mixer = _mixer(cls, n_lookups=4)
    x = torch.randn(3, SEQ_LEN, 32)
    r = mixer.logits(x)
    kept = torch.zeros_like(r, dtype=torch.bool)
    for b in range(3):
        for t in range(SEQ_LEN):
            kept[b, t] = int((r[b, :t] >= r[b, t]).sum()) < 4
    assert torch.equal(mixer.selected(r), kept)
    assert kept[:, :4].all() and (kept.sum(1) >= 4).all() and not kept.all()
    with torch.no_grad():
        y = mixer(x)
        assert (y[~kept] == 0).all() and (y[kept].abs().sum(-1) > 0).all()
        assert (mixer.train()(x).abs().sum(-1) > 0).all()
    rising = torch.arange(10.0)[None]  # every position beats all before it
    assert mixer.selected(rising).all()
    assert mixer.selected(torch.zeros(1, 10)).sum() == 4  # ties: the first n


def test_gates_follow_their_definitions():
    x = torch.randn(2, SEQ_LEN, 32)
    sel = _mixer(SelectiveLookups)
    r = sel.logits(x)
    prefix = torch.stack([torch.softmax(r[:, : t + 1], dim=1)[:, -1] for t in range(SEQ_LEN)], dim=1)
    assert torch.allclose(sel.gates(r), prefix, atol=1e-6)  # softmax over positions ≤ t
    sig = _mixer(SigmoidLookups)
    assert torch.allclose(sig.gates(sig.logits(x)), torch.sigmoid(sig.selecting(x).squeeze(-1)))
    sma = _mixer(SMA, alpha=0.5)
    assert torch.allclose(sma.temperature, torch.tensor([0.5 * math.sqrt(32)]))
    two_way = torch.softmax(sma.selection_proj(x) / sma.temperature, dim=-1)[..., 1]  # upstream's form
    assert torch.allclose(sma.gates(sma.logits(x)), two_way, atol=1e-6)


def test_training_form_is_gated_attention():
    """With the attention weights of `attention` and a closed selection (w = 0), training
    output is σ(0) · attention = half of it at every position (the gate scales after W_o)."""
    torch.manual_seed(0)
    attn = Attention(32, num_heads=2).eval()
    mixer = SigmoidLookups(32, max_seq_len=SEQ_LEN, num_heads=2)
    missing = mixer.load_state_dict(attn.state_dict(), strict=False).missing_keys
    assert missing == ["selecting.weight"]
    with torch.no_grad():
        mixer.selecting.weight.zero_()
        x = torch.randn(2, SEQ_LEN, 32)
        assert torch.allclose(mixer.train()(x), 0.5 * attn(x), atol=1e-6)


def test_state_size_formula():
    d, n = 32, math.ceil(math.sqrt(SEQ_LEN))
    for length in (3, SEQ_LEN, 200):
        assert _mixer(SigmoidLookups).state_size(length) == 2 * d * length + min(n, length)
        assert _mixer(SMA, n_lookups=5).state_size(length) == 2 * d * length + min(5, length)
        assert _mixer(SelectiveLookups).state_size(length) == 2 * d * length + min(n, length) + 1
        assert _mixer(SigmoidLookups, hard_select=False).state_size(length) == 2 * d * length
        assert _mixer(SelectiveLookups, hard_select=False).state_size(length) == 2 * d * length + 1


@pytest.mark.parametrize(("cls", "field", "params"), [
    (SigmoidLookups, "n_lookups", {"n_lookups": -1}),
    (SigmoidLookups, "selection_penalty", {"selection_penalty": -0.1}),
    (SigmoidLookups, "selection_penalty", {"selection_penalty": math.nan}),
    (SMA, "alpha", {"alpha": 0.0}),
    (SMA, "alpha", {"alpha": math.inf}),
    (SelectiveLookups, "num_heads", {"num_heads": 3}),
    (SelectiveLookups, "dropout", {"dropout": 1.0}),
])
def test_invalid_values_name_their_field(cls, field, params):
    with pytest.raises(FieldError) as info:
        cls(32, max_seq_len=SEQ_LEN, **params)
    assert info.value.field == field


def test_auxiliary_loss_value_and_gradient():
    mixer = _mixer(SigmoidLookups, selection_penalty=0.5).train()
    with pytest.raises(RuntimeError, match="call forward first"):
        mixer.auxiliary_loss()
    x = torch.randn(2, SEQ_LEN, 32)
    mixer(x)
    g = torch.sigmoid(mixer.selecting(x)).mean()
    n = math.ceil(math.sqrt(SEQ_LEN))
    aux = mixer.auxiliary_loss()
    assert g > n / SEQ_LEN and torch.allclose(aux, 0.5 * (g - n / SEQ_LEN))
    (grad,) = torch.autograd.grad(aux, [mixer.selecting.weight])
    assert grad.abs().max() > 0
    with torch.no_grad():
        mixer.selecting.weight.fill_(0.0)
        mixer.selecting.weight[0, 0] = -1.0
    mixer(x.abs() * 10)  # gates ≈ 0: below the budget, no penalty
    assert mixer.auxiliary_loss() == 0


MODEL = BASE.replace('sequence_mixer = { name = "attention", num_heads = 2 }',
                     'sequence_mixer = [{ name = "sigmoid_lookups", selection_penalty = 0.5 }, { name = "attention" }]')


def test_model_sums_the_auxiliary_losses(write):
    exp = load_experiment(write(MODEL.replace("n_layers = 2", "n_layers = 4")))  # sigmoid, attention, sigmoid, attention
    model = LanguageModel(exp).train()
    assert model.has_auxiliary_loss
    tokens = torch.randint(0, 64, (3, 16))
    where = torch.zeros(3, 16, dtype=torch.bool)
    where[:, -2:] = True
    for mask in (None, where):
        model(tokens, mask)
        parts = [model.blocks[i].sequence_mixer.auxiliary_loss() for i in (0, 2)]
        assert torch.allclose(model.auxiliary_loss(), parts[0] + parts[1]) and model.auxiliary_loss() > 0
    plain = LanguageModel(load_experiment(write(BASE)))
    assert not plain.has_auxiliary_loss and plain.auxiliary_loss() is None


class _BadAux(nn.Module):
    name = "bad_aux"

    def __init__(self, d_model: int, how: str = "detached") -> None:
        super().__init__()
        self.proj, self.how = nn.Linear(d_model, d_model), how

    def forward(self, x):
        y = self.proj(x)
        self._aux = {"detached": y.mean().detach(), "vector": y.mean(-1).sum(0).mean(0, keepdim=True),
                     "nan": y.mean() * math.nan}[self.how]
        return y

    def auxiliary_loss(self):
        return self._aux

    def state_size(self, seq_len: int) -> int:
        return 0


@pytest.mark.parametrize(("how", "message"), [("detached", "not in the autograd graph"),
                                              ("vector", "must be a scalar"), ("nan", "must be finite")])
def test_check_mixer_catches_a_broken_auxiliary_loss(how, message):
    with pytest.raises(AssertionError, match=message):
        check_mixer(_BadAux, d_model=8, seq_len=6, how=how)


ONE_STEP = BASE.replace("num_examples = 32", "num_examples = 8").replace(
    '[model]', '[model]\nembed_dropout = 0.0').replace(
    'sequence_mixer = { name = "attention", num_heads = 2 }',
    'sequence_mixer = { name = "sigmoid_lookups", num_heads = 2, selection_penalty = 1.0 }')


def test_auxiliary_loss_gradient_reaches_the_optimizer_step(write, tmp_path, monkeypatch):
    """One optimizer step of the real Trainer (one batch of 8): the gradient the optimizer
    sees on the selection weights is d(CE)/dw + d(aux)/dw, recomputed from a copy of the
    initial model on the same batch, and the aux part is not zero."""
    torch.set_num_threads(1)
    exp = load_experiment(write(ONE_STEP))
    trainer = Trainer(exp, RunDir(tmp_path, exp.name, exp.run_id), quiet=True)
    initial = copy.deepcopy(trainer.raw_model)
    names = [n for n, _ in initial.named_parameters() if n.endswith("selecting.weight")]
    assert len(names) == 2

    batches, seen = [], {}
    original_logits = zoology.train.scored_logits

    def record_batch(model, inputs, labels):
        batches.append((inputs.clone(), labels.clone()))
        return original_logits(model, inputs, labels)

    monkeypatch.setattr(zoology.train, "scored_logits", record_batch)
    original_step = trainer.optimizer.step

    def record_grads(*args, **kwargs):
        params = dict(trainer.raw_model.named_parameters())
        seen.update({n: params[n].grad.clone() for n in names})
        return original_step(*args, **kwargs)

    monkeypatch.setattr(trainer.optimizer, "step", record_grads)
    trainer.restore()
    record = trainer.run_epoch(1)
    assert record is not None and trainer.step == 1 and set(seen) == set(names)

    inputs, labels = batches[0]  # the training batch (the later ones are validation)
    logits, targets = original_logits(initial.train(), inputs, labels)
    ce = F.cross_entropy(logits, targets)
    aux = initial.auxiliary_loss()
    params = [dict(initial.named_parameters())[n] for n in names]
    grad_ce = torch.autograd.grad(ce, params, retain_graph=True)
    grad_aux = torch.autograd.grad(aux, params)
    for name, g_ce, g_aux in zip(names, grad_ce, grad_aux, strict=True):
        assert g_aux.abs().max() > 1e-4, name
        assert torch.allclose(seen[name], g_ce + g_aux, rtol=1e-4, atol=1e-7), name
        assert not torch.allclose(seen[name], g_ce, rtol=1e-2, atol=1e-5), name
    assert record["train/aux_loss"] == pytest.approx(aux.item(), rel=1e-5)
    assert record["train/loss"] == pytest.approx(ce.item(), rel=1e-5)  # the cross-entropy alone


def test_train_aux_loss_is_logged_only_for_models_with_one(write, tmp_path):
    torch.set_num_threads(1)
    assert main(["run", str(write(MODEL.replace("max_epochs = 1", "max_epochs = 2"))), "--out", str(tmp_path / "a"),
                 "--quiet"]) == 0
    lines = [json.loads(line) for line in (tmp_path / "a" / "exp" / "default" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert math.isfinite(line["train/aux_loss"]) and line["train/aux_loss"] > 0
        assert math.isfinite(line["train/loss"]) and "valid/loss" in line
    assert main(["run", str(write(BASE)), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    plain = json.loads((tmp_path / "b" / "exp" / "default" / "metrics.jsonl").read_text().splitlines()[0])
    assert "train/aux_loss" not in plain and "train/loss" in plain
