"""The rest of the recall literature: RWKV-5/6, HGRN2, Gated Slot Attention, Forgetting
Attention, and Based's other feature maps in linear_attention.

Each passes check_mixer (causality, forward == recurrent in fp32, state_size scalars,
bf16); its chunked training form equals its recurrence in float64 at a length that is not
a multiple of the chunk; the chunked scan survives decays far past e^-88 per chunk; and a
representative subset learns a tiny MQAR cell well above its plateau.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from zoology.cli import main
from zoology.errors import FieldError
from zoology.mixers import BUILTIN_MIXERS
from zoology.mixers._gated import chunk_gated_attention
from zoology.mixers.forgetting_attention import ForgettingAttention
from zoology.mixers.gsa import GatedSlotAttention
from zoology.mixers.hgrn2 import HGRN2
from zoology.mixers.linear_attention import FeatureMap, LinearAttention
from zoology.mixers.rwkv6 import RWKV5, RWKV6
from zoology.testing import check_mixer

SEQ_LEN = 45  # three chunks of 16, the last one partial
NEW_MAPS = ("relu", "square", "all_poly", "exp_dim")

CASES = [
    (RWKV5, {}),
    (RWKV5, {"head_dim": 8}),
    (RWKV6, {}),
    (RWKV6, {"head_dim": 8, "mix_lora": 4, "decay_lora": 8}),
    (HGRN2, {}),
    (HGRN2, {"expand_ratio": 8, "num_heads": 2}),
    (GatedSlotAttention, {}),
    (GatedSlotAttention, {"num_heads": 2, "num_slots": 6, "expand_v": 2.0}),
    (ForgettingAttention, {}),
    (ForgettingAttention, {"num_heads": 4, "num_kv_heads": 2, "qk_norm": True, "use_output_gate": True}),
    *[(LinearAttention, {"feature_map": f, "normalize": f != "all_poly", "num_heads": 2, "feature_dim": 4,
                         "num_random_features": 8}) for f in NEW_MAPS],
]
IDS = [f"{cls.name}-{i}" for i, (cls, _) in enumerate(CASES)]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    for cls in (RWKV5, RWKV6, HGRN2, GatedSlotAttention, LinearAttention):
        monkeypatch.setattr(cls, "chunk_size", 16)


def test_registered():
    names = {cls.name for cls in BUILTIN_MIXERS}
    assert {"rwkv5", "rwkv6", "hgrn2", "gsa", "forgetting_attention"} <= names


@pytest.mark.parametrize(("cls", "params"), CASES, ids=IDS)
def test_check_mixer(cls, params):
    torch.set_num_threads(1)
    check_mixer(cls, d_model=32, seq_len=SEQ_LEN, **params)


def _random_double(cls, params, **ctx):
    """The mixer in float64 with every parameter random (none left at zero or one)."""
    torch.manual_seed(0)
    mixer = cls(32, **ctx, **params).double().eval()
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return mixer


@pytest.mark.parametrize(("cls", "params"), CASES, ids=IDS)
def test_chunked_forward_equals_recurrence_in_float64(cls, params):
    mixer = _random_double(cls, params)
    x = torch.randn(2, SEQ_LEN, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(mixer(x), mixer.recurrent(x)[0], rtol=0, atol=1e-10)


def test_hgrn2_lower_bound_from_the_second_layer():
    """Layer 0 has no bound; later layers start at layer_idx/n_layers and keep λ above it."""
    assert HGRN2(32, layer_idx=0, n_layers=4).lower_bound_logit is None
    mixer = _random_double(HGRN2, {"expand_ratio": 8}, layer_idx=1, n_layers=2)
    x = torch.randn(2, SEQ_LEN, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(mixer(x), mixer.recurrent(x)[0], rtol=0, atol=1e-10)
        _, k, log_f, _ = mixer._inputs(10 * x)  # saturate the gates
        gamma = torch.sigmoid(mixer.lower_bound_logit).view(mixer.num_heads, 1, -1)
        assert (log_f.exp() >= gamma - 1e-12).all() and torch.allclose(k, 1 - log_f.exp())
    fresh = HGRN2(32, layer_idx=3, n_layers=4)
    assert torch.allclose(torch.sigmoid(fresh.lower_bound_logit), torch.tensor(0.75))


def _scan(q, k, v, gk=None, gv=None):
    """The recurrence S_t = diag(e^gk_t) S_{t-1} diag(e^gv_t) + k_t v_tᵀ, o_t = q_tᵀ S_t."""
    b, h, l, dk = q.shape
    S, out = q.new_zeros(b, h, dk, v.shape[-1]), []
    for t in range(l):
        if gk is not None:
            S = S * gk[:, :, t, :, None].exp()
        if gv is not None:
            S = S * gv[:, :, t, None, :].exp()
        S = S + k[:, :, t, :, None] * v[:, :, t, None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], S))
    return torch.stack(out, 2), S


@pytest.mark.parametrize("gates", ["none", "key", "value", "both"])
def test_chunked_scan_matches_recurrence(gates):
    torch.manual_seed(0)
    b, h, l, dk, dv = 2, 3, 37, 5, 4
    dt = torch.float64
    q, k, v = torch.randn(b, h, l, dk, dtype=dt), torch.randn(b, h, l, dk, dtype=dt), torch.randn(b, h, l, dv, dtype=dt)
    gk = -2 * torch.rand(b, h, l, dk, dtype=dt) if gates in ("key", "both") else None
    gv = -2 * torch.rand(b, h, l, dv, dtype=dt) if gates in ("value", "both") else None
    o, S = chunk_gated_attention(q, k, v, gk, gv, chunk_size=8)
    o_ref, S_ref = _scan(q, k, v, gk, gv)
    assert o.dtype == dt and torch.allclose(o, o_ref, rtol=0, atol=1e-12)
    assert torch.allclose(S, S_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 8])
@pytest.mark.parametrize("gates", ["none", "key", "value", "both"])
def test_chunked_scan_gradients_match_the_recurrence(gates, chunk):
    """The chunked form's hand-written backward equals autograd through the step-by-step
    recurrence, for every input and the final state, in float64."""
    torch.manual_seed(0)
    b, h, l, dk, dv = 2, 2, 21, 3, 4
    dt = torch.float64
    q, k = torch.randn(b, h, l, dk, dtype=dt), torch.randn(b, h, l, dk, dtype=dt)
    v = torch.randn(b, h, l, dv, dtype=dt)
    gk = -2 * torch.rand(b, h, l, dk, dtype=dt) if gates in ("key", "both") else None
    gv = -2 * torch.rand(b, h, l, dv, dtype=dt) if gates in ("value", "both") else None
    inputs = [t.requires_grad_() for t in (q, k, v, gk, gv) if t is not None]
    w_o, w_S = torch.randn(b, h, l, dv, dtype=dt), torch.randn(b, h, dk, dv, dtype=dt)
    def grads(fn):
        o, S = fn(q, k, v, gk, gv)
        return torch.autograd.grad((o * w_o).sum() + (S * w_S).sum(), inputs)
    for g, g_ref in zip(grads(lambda *a: chunk_gated_attention(*a, chunk_size=chunk)), grads(_scan)):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-10)


def test_chunked_scan_under_vmap_matches_per_member():
    """Packed training: three members' gradients through vmap(grad(...)) equal each member's own."""
    from torch.func import grad, vmap
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 1, 2, 20, 4) for _ in range(3))
    gk, gv = -torch.rand(3, 1, 2, 20, 4), -torch.rand(3, 1, 2, 20, 4)
    def loss(q, k, v, gk, gv):
        o, S = chunk_gated_attention(q, k, v, gk, gv, chunk_size=8)
        return o.square().sum() + S.sum()
    args = (q, k, v, gk, gv)
    batched = vmap(grad(loss, argnums=(0, 1, 2, 3, 4)))(*args)
    for j in range(3):
        for b, s in zip(batched, grad(loss, argnums=(0, 1, 2, 3, 4))(*(a[j] for a in args))):
            torch.testing.assert_close(b[j], s)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_scan_survives_extreme_decay(dtype):
    """Decays of up to e^-200 per step: a chunk of 32 decays by far more than e^-88, where
    factoring every pair at the chunk start would overflow."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 64, 4) for _ in range(3))
    g = -200 * torch.rand(1, 2, 64, 4)
    o_ref, _ = _scan(*(t.double() for t in (q, k, v, g, g)))
    o, _ = chunk_gated_attention(*(t.to(dtype) for t in (q, k, v, g, g)), chunk_size=32)
    assert torch.isfinite(o).all()
    tol = 1e-4 if dtype == torch.float32 else 0.1
    assert torch.allclose(o.double(), o_ref, atol=tol, rtol=tol)


def test_chunk_size_must_be_a_power_of_two():
    x = torch.randn(1, 1, 8, 2)
    with pytest.raises(ValueError, match="power of two"):
        chunk_gated_attention(x, x, x, chunk_size=12)


def test_forgetting_attention_limits():
    """Forget gates at 1 give plain causal softmax attention; gates near 0 leave each position
    attending to itself alone."""
    torch.manual_seed(0)
    mixer = ForgettingAttention(32, num_heads=4).eval()
    x = torch.randn(2, 19, 32)
    q, k, v, _ = mixer._inputs(x)
    with torch.no_grad():
        mixer.f_proj.weight.zero_()
        mixer.f_bias.fill_(40.0)  # f = sigmoid(40): log f ≈ -4e-18
        plain = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        assert torch.allclose(mixer(x), mixer._output(plain, x), atol=1e-6)
        mixer.f_bias.fill_(-40.0)  # f ≈ e^-40 per step
        assert torch.allclose(mixer(x), mixer._output(v, x), atol=1e-6)


def test_state_size_formulas():
    assert RWKV5(128).state_size(999) == 128 * 65
    assert RWKV6(32, head_dim=8).state_size(7) == 32 * 9
    assert HGRN2(128).state_size(64) == 32 * 128
    assert HGRN2(64, expand_ratio=16, num_heads=2).state_size(64) == 16 * 64
    assert GatedSlotAttention(128).state_size(64) == 4 * 32 * (32 + 32)
    assert GatedSlotAttention(64, num_heads=2, num_slots=8, expand_v=2.0).state_size(64) == 2 * 8 * (32 + 64)
    assert ForgettingAttention(64, num_heads=4).state_size(10) == (2 * 64 + 4) * 10
    assert ForgettingAttention(64, num_heads=4, num_kv_heads=1).state_size(10) == (2 * 16 + 4) * 10
    def la(f, **kw):
        return LinearAttention(32, feature_map=f, feature_dim=4, num_heads=2, **kw).state_size(99)
    assert la("relu") == la("square") == 2 * 4 * 17
    assert la("exp_dim") == 2 * 8 * 17
    assert la("all_poly", normalize=False, num_random_features=24) == 2 * 24 * 16


def test_new_feature_maps():
    x = torch.randn(3, 5, 4)
    pos = torch.arange(5)
    relu, square = FeatureMap("relu", 4)(x, pos), FeatureMap("square", 4)(x, pos)
    assert relu.min() > 0 and torch.allclose(relu, F.relu(x).clamp(min=1e-12))
    assert torch.allclose(square, x * x)
    exp_dim = FeatureMap("exp_dim", 4)(x, pos)
    assert exp_dim.shape[-1] == 8 and exp_dim.min() >= 1
    assert torch.allclose(exp_dim, torch.cat([x.clamp(min=1e-12), (-x).clamp(min=1e-12)], -1).exp())
    poly = FeatureMap("all_poly", 4, num_random_features=6)
    w1, w2 = poly.projection
    assert poly(x, pos).shape[-1] == 6 == poly.out_dim
    assert torch.allclose(poly(x, pos), ((x @ w1.t()) ** 2 + (x**2) @ w2.t()) / math.sqrt(2))


@pytest.mark.parametrize(("cls", "params", "field"), [
    (LinearAttention, {"feature_map": "all_poly"}, "normalize"),
    (RWKV5, {"head_dim": 5}, "head_dim"),
    (RWKV6, {"mix_lora": 0}, "mix_lora"),
    (HGRN2, {"num_heads": 3}, "num_heads"),
    (HGRN2, {"expand_ratio": 0}, "expand_ratio"),
    (GatedSlotAttention, {"num_slots": -1}, "num_slots"),
    (ForgettingAttention, {"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads"),
])
def test_invalid_parameters_name_the_field(cls, params, field):
    with pytest.raises(FieldError) as exc:
        cls(32, **params)
    assert exc.value.field == field


TINY_MQAR = """
[data]
batch_size = 64
seed = 2
[[data.train]]
task = "mqar"
num_examples = {num_examples}
vocab_size = 32
input_seq_len = 32
num_kv_pairs = 4
[[data.test]]
task = "mqar"
num_examples = 256
vocab_size = 32
input_seq_len = 32
num_kv_pairs = 4
[model]
d_model = 64
n_layers = 2
max_position_embeddings = 32
sequence_mixer = {mixer}
state_mixer = {{ name = "mlp", hidden_mult = 2 }}
[train]
max_epochs = {epochs}
seed = 2
learning_rate = 1e-3
early_stopping = {{ metric = "valid/accuracy", threshold = 0.9 }}
"""

# (mixer table, train examples, max epochs, accuracy to beat); the plateau is ≈ 0.25
# (1/num_kv_pairs). A representative subset: the mixers that leave the plateau within ~20 s
# on one core (the others need far more epochs on this cell, if they leave it at all).
LEARNERS = {
    "rwkv5": ('{ name = "rwkv5" }', 3000, 6, 0.8),
    "rwkv6": ('{ name = "rwkv6" }', 3000, 6, 0.8),
}


@pytest.mark.parametrize("name", list(LEARNERS))
def test_learns_tiny_mqar(name, write, tmp_path):
    torch.set_num_threads(1)
    mixer, num_examples, epochs, beat = LEARNERS[name]
    path = write(TINY_MQAR.format(mixer=mixer, num_examples=num_examples, epochs=epochs))
    assert main(["run", str(path), "--out", str(tmp_path), "--quiet"]) == 0
    summary = json.loads((tmp_path / "exp" / "default" / "summary.json").read_text())
    assert summary["test"]["test/accuracy"] > beat, summary["test"]
