"""The mixer catalogue: every registered mixer passes check_mixer (shapes, causality,
gradients, bf16, and recurrent == forward with state_size scalars where it has a
recurrent view); chunked scans match their recurrences across chunk boundaries; Mamba's
own init survives the model's generic init."""

import pytest
import torch
import torch.nn.functional as F

from zoology.config import load_experiment
from zoology.errors import FieldError
from zoology.mixer_context import role_of
from zoology.mixers import BUILTIN_MIXERS
from zoology.mixers._ops import chunk_delta_rule, chunk_linear_attention, delta_rule_step
from zoology.mixers.attention import Attention, SlidingWindowAttention
from zoology.mixers.linear_attention import FEATURE_MAPS, LinearAttention
from zoology.mixers.mamba import Mamba, Mamba2
from zoology.model import LanguageModel
from zoology.plugins import load_registry
from zoology.testing import check_mixer, check_packable

from .conftest import BASE

SEQ_LEN = 45  # > 2 chunks at the test chunk size, not a multiple of it

# extra configurations beyond the defaults, exercising each option that changes the math
VARIANTS = {
    "attention": [{"num_heads": 4}, {"num_heads": 4, "num_kv_heads": 2}, {"num_heads": 4, "num_kv_heads": 1}],
    "sliding_window_attention": [{"window": 1}, {"window": 7, "num_heads": 4, "num_kv_heads": 2}],
    "linear_attention": [
        {"feature_map": f, "normalize": f not in ("identity", "all_poly"), "num_heads": 2, "feature_dim": 4}
        for f in FEATURE_MAPS
    ],
    "based": [{"feature_dim": 4, "num_heads": 2}, {"feature_dim": 4, "window": 8, "window_heads": 2}],
    "short_conv": [{"kernel_size": 1}, {"kernel_size": 5}],
    "base_conv": [{"kernel_size": -1}, {"kernel_size": -1, "implicit_long_conv": False}, {"use_act": True}],
    "hyena": [{"filter_order": 8, "short_filter_order": 2}],
    "h3": [{"d_state": 8, "head_dim": 4}],
    "gla": [{"num_heads": 2}],
    "retnet": [{"num_heads": 2, "expand_v": 1.0}],
    "delta_net": [{"use_short_conv": False}, {"num_heads": 2, "expand_v": 2.0}],
    "gated_delta_net": [{"use_short_conv": False, "num_heads": 2}],
    "mamba": [{"d_state": 4, "dt_rank": 3, "expand": 1}],
    "mamba2": [{"d_state": 8, "headdim": 16, "ngroups": 2}],
    "rwkv7": [{"head_dim": 8, "decay_lora": 4, "a_lora": 4, "gate_lora": 8}],
    "bigbird": [{"block_size": 4, "window_blocks": 2, "global_blocks": 1, "random_blocks": 2, "num_heads": 2},
                {"block_size": 4, "random_blocks": 0}],
    "scatterbrain": [{"window": 4, "feature_dim": 8, "num_heads": 2}, {"window": 1, "feature_dim": 64}],
    "nystromformer": [{"num_landmarks": 4, "num_heads": 2}, {"num_landmarks": 6, "conv_kernel_size": 3}],
    "selective_lookups": [{"num_heads": 2, "n_lookups": 3}, {"hard_select": False}],
    "sigmoid_lookups": [{"num_heads": 4, "n_lookups": 2, "selection_penalty": 0.1}, {"hard_select": False}],
    "sma": [{"num_heads": 2, "alpha": 1.0, "n_lookups": 50}],
}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Short chunks, so SEQ_LEN spans several of them (chunk boundaries and padding tested)."""
    for cls in BUILTIN_MIXERS:
        if hasattr(cls, "chunk_size"):
            monkeypatch.setattr(cls, "chunk_size", 16)


def _cases():
    for cls in BUILTIN_MIXERS:  # state mixers too: per position, so trivially causal
        yield pytest.param(cls, {}, id=f"{cls.name}-default")
        for i, params in enumerate(VARIANTS.get(cls.name, [])):
            yield pytest.param(cls, params, id=f"{cls.name}-{i}")


@pytest.mark.parametrize(("cls", "params"), list(_cases()))
def test_check_mixer(cls, params):
    torch.set_num_threads(1)
    mixer = check_mixer(cls, d_model=32, seq_len=SEQ_LEN, **params)
    assert isinstance(mixer.state_size(SEQ_LEN), int)


@pytest.mark.parametrize("cls", [c for c in BUILTIN_MIXERS if c.name != "identity"], ids=lambda c: c.name)
def test_every_builtin_mixer_packs(cls):
    """Every built-in mixer trains in a pack: vmapped gradients equal each member's own."""
    torch.set_num_threads(1)
    check_packable(cls, d_model=32, seq_len=SEQ_LEN)


def test_every_builtin_is_registered_with_documented_state_size():
    reg = load_registry(autoload=False)
    for cls in BUILTIN_MIXERS:
        comp = reg.get("mixer", cls.name)
        assert comp.cls is cls
        assert comp.doc, f"{cls.name} needs a class docstring"
        assert comp.role == role_of(cls)
        if comp.role == "sequence":
            assert cls.state_size.__doc__, f"{cls.name}.state_size needs a docstring stating its formula"
            for p in comp.params:
                assert p.doc, f"{cls.name}.{p.name} is not documented in the class's Args: section"


def test_registry_records_each_mixers_role():
    reg = load_registry(autoload=False)
    assert {c.name for c in reg.components("mixer", role="state")} == {"mlp", "glu", "identity"}
    assert "attention" in {c.name for c in reg.components("mixer", role="sequence")}


def test_recurrent_mixers_are_the_linear_time_families():
    recurrent = {cls.name for cls in BUILTIN_MIXERS if hasattr(cls, "recurrent")}
    assert recurrent >= {"sliding_window_attention", "linear_attention", "based", "short_conv", "base_conv",
                         "hyena", "h3", "gla", "retnet", "delta_net", "gated_delta_net", "mamba", "mamba2", "rwkv", "rwkv7"}


@pytest.mark.parametrize("per", ["none", "head", "key"])
def test_chunked_linear_attention_matches_recurrence(per):
    torch.manual_seed(0)
    b, h, l, k, v = 2, 3, 37, 5, 4
    q, kk, vv = torch.randn(b, h, l, k), torch.randn(b, h, l, k), torch.randn(b, h, l, v)
    g = {"none": None, "head": -torch.rand(b, h, l), "key": -torch.rand(b, h, l, k)}[per]
    out, state = chunk_linear_attention(q, kk, vv, g, chunk_size=8)
    S, ref = torch.zeros(b, h, k, v), []
    for t in range(l):
        if g is not None:
            S = S * (g[:, :, t, :, None] if per == "key" else g[:, :, t, None, None]).exp()
        S = S + kk[:, :, t, :, None] * vv[:, :, t, None, :]
        ref.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], S))
    assert torch.allclose(out, torch.stack(ref, 2), atol=1e-5)
    assert torch.allclose(state, S, atol=1e-5)


@pytest.mark.parametrize("gated", [False, True])
def test_chunked_delta_rule_matches_recurrence(gated):
    torch.manual_seed(0)
    b, h, l, k, v = 2, 3, 37, 5, 4
    q, vv = torch.randn(b, h, l, k), torch.randn(b, h, l, v)
    kk, beta = F.normalize(torch.randn(b, h, l, k), dim=-1), torch.rand(b, h, l)
    g = -torch.rand(b, h, l) if gated else None
    out, state = chunk_delta_rule(q, kk, vv, beta, g, chunk_size=8)
    S, ref = torch.zeros(b, h, k, v), []
    for t in range(l):
        alpha = g[:, :, t].exp() if gated else torch.ones(b, h)
        o, S = delta_rule_step(S, q[:, :, t], kk[:, :, t], vv[:, :, t], beta[:, :, t], alpha)
        ref.append(o)
    assert torch.allclose(out, torch.stack(ref, 2), atol=1e-5)
    assert torch.allclose(state, S, atol=1e-5)


def test_delta_rule_overwrites_a_key():
    """The point of the delta rule: writing a new value under the same key replaces the old one."""
    k = F.normalize(torch.randn(1, 1, 4), dim=-1)
    S = torch.zeros(1, 1, 4, 3)
    one = torch.ones(1, 1)
    _, S = delta_rule_step(S, k, k, torch.tensor([[[1.0, 0, 0]]]), one, one)
    out, S = delta_rule_step(S, k, k, torch.tensor([[[0.0, 2, 0]]]), one, one)
    assert torch.allclose(out, torch.tensor([[[0.0, 2, 0]]]), atol=1e-6)


def test_sliding_window_matches_masked_attention():
    torch.manual_seed(0)
    m = SlidingWindowAttention(32, window=5, num_heads=4, num_kv_heads=2).eval()
    x = torch.randn(2, 23, 32)
    q, k, v = m.qkv(x)
    lag = torch.arange(23)[:, None] - torch.arange(23)[None]
    ref = m.out(F.scaled_dot_product_attention(q, k, v, attn_mask=(lag >= 0) & (lag < 5)))
    assert torch.allclose(m(x), ref, atol=1e-5)
    assert m.state_size(100) == 2 * 16 * 5 and m.state_size(3) == 2 * 16 * 3


def test_attention_grouped_kv_heads():
    full, gqa, mqa = Attention(32, num_heads=4), Attention(32, num_heads=4, num_kv_heads=2), Attention(32, num_heads=4, num_kv_heads=1)
    assert full.state_size(10) == 2 * 32 * 10
    assert gqa.state_size(10) == 2 * 16 * 10 and mqa.state_size(10) == 2 * 8 * 10
    assert gqa.Wqkv.out_features == 32 + 2 * 16
    with pytest.raises(FieldError) as exc:
        Attention(32, num_heads=4, num_kv_heads=3)
    assert exc.value.field == "num_kv_heads"


@pytest.mark.parametrize(("cls", "params", "field"), [
    (LinearAttention, {"feature_map": "softmax"}, "feature_map"),
    (LinearAttention, {"feature_map": "identity"}, "normalize"),
    (SlidingWindowAttention, {"window": 0}, "window"),
    (Mamba2, {"headdim": 48}, "headdim"),
])
def test_invalid_parameters_name_the_field(cls, params, field):
    with pytest.raises(FieldError) as exc:
        cls(32, **params)
    assert exc.value.field == field


def test_state_size_formulas():
    assert LinearAttention(32, feature_map="taylor_exp", feature_dim=4, num_heads=2).state_size(99) == 2 * 21 * 17
    assert Mamba(32).state_size(99) == 64 * 16 + 3 * 64
    assert Mamba2(32, headdim=16, d_state=8).state_size(99) == 64 * 8 + 3 * (64 + 16)


MAMBA_TOML = BASE.replace("d_model = 16", "d_model = 32").replace(
    'sequence_mixer = { name = "attention", num_heads = 2 }',
    'sequence_mixer = [{ name = "mamba", dt_min = 0.01, dt_max = 0.05 }, { name = "mamba2", headdim = 16 }]',
)


def test_language_model_keeps_mamba_init(write):
    """Upstream Mamba and MAD re-initialised dt_proj's bias with the generic Linear init (zeros,
    so Δ = softplus(0) ≈ 0.69 everywhere). Our model must call reset_parameters() instead."""
    torch.manual_seed(0)
    model = LanguageModel(load_experiment(write(MAMBA_TOML)))
    mamba, mamba2 = model.blocks[0].sequence_mixer, model.blocks[1].sequence_mixer
    assert isinstance(mamba, Mamba) and isinstance(mamba2, Mamba2)
    dt = F.softplus(mamba.dt_proj.bias)
    assert dt.min() >= 0.01 - 1e-6 and dt.max() <= 0.05 + 1e-6, "Mamba's dt bias was overwritten"
    assert dt.std() > 0, "Mamba's dt bias must be log-uniform, not constant"
    expected_A = torch.log(torch.arange(1, 17.0)).repeat(mamba.d_inner, 1)
    assert torch.equal(mamba.A_log, expected_A), "Mamba's A_log (S4D-real) was overwritten"
    assert torch.equal(mamba.D, torch.ones_like(mamba.D))
    bound = mamba.dt_rank**-0.5
    assert mamba.dt_proj.weight.abs().max() <= bound and mamba.dt_proj.weight.std() > 0.02 * 2
    dt2 = F.softplus(mamba2.dt_bias)
    assert dt2.min() >= 1e-3 - 1e-6 and dt2.max() <= 0.1 + 1e-6
    A2 = mamba2.A_log.exp()
    assert A2.min() >= 1 - 1e-5 and A2.max() <= 16 + 1e-4
    # the rest of the model still gets the generic init
    assert abs(model.token_embedding.weight.std().item() - 0.02) < 0.005


def test_chunked_rwkv7_matches_its_recurrence():
    from zoology.mixers.rwkv7 import chunk_rwkv7

    torch.manual_seed(0)
    b, h, l, n = 2, 3, 37, 5
    r, k, v = (torch.randn(b, h, l, n, dtype=torch.float64) for _ in range(3))
    logw = -torch.exp(-F.softplus(torch.randn(b, h, l, n, dtype=torch.float64)) - 0.5)
    kappa = F.normalize(torch.randn(b, h, l, n, dtype=torch.float64), dim=-1)
    a, bb = -kappa, kappa * torch.rand(b, h, l, n, dtype=torch.float64)
    S, ref = torch.zeros(b, h, n, n, dtype=torch.float64), []
    for t in range(l):  # S_t = S_{t-1}(diag(w_t) + a_t b_t^T) + v_t k_t^T, o_t = S_t r_t
        S = (S * logw[:, :, t, None, :].exp() + torch.einsum("bhvk,bhk->bhv", S, a[:, :, t])[..., None]
             * bb[:, :, t, None, :] + v[:, :, t, :, None] * k[:, :, t, None, :])
        ref.append(torch.einsum("bhvk,bhk->bhv", S, r[:, :, t]))
    out = chunk_rwkv7(r, logw, k, v, a, bb, chunk_size=8)
    assert torch.allclose(out, torch.stack(ref, 2), atol=1e-10)
