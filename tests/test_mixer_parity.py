"""Parity with the reference implementations: BaseConv and H3 with upstream Zoology
(HazyResearch/zoology, zoology/mixers/{convolution,base_conv}.py and zoology/mixers/h3/),
RWKV-7 with BlinkDL/RWKV-LM's x070 (RWKV-v7/train_temp/src/model.py, RWKV_Tmix_x070).

Each test recomputes the reference's formula independently (loops, first principles) and
compares; each would fail on the versions these mixers replaced (Hyena's windowed filter in
BaseConv, zero-order hold and one SSM per key-value entry in H3, no shift skip, the old
RWKV-7 init, no value residual)."""

import cmath
import math

import pytest
import torch
import torch.nn.functional as F

from zoology.config import load_experiment
from zoology.errors import FieldError
from zoology.mixers.conv import BaseConv
from zoology.mixers.h3 import H3, DiagonalSSM, ShiftSSM
from zoology.mixers.hyena import Hyena
from zoology.mixers.rwkv7 import RWKV7, _lora_rank
from zoology.model import LanguageModel
from zoology.testing import check_mixer

from .conftest import BASE


def _model(write, mixer: str, n_layers: int = 2, seq_len: int = 16, d_model: int = 16) -> LanguageModel:
    text = (BASE.replace('sequence_mixer = { name = "attention", num_heads = 2 }', f"sequence_mixer = {mixer}")
            .replace("n_layers = 2", f"n_layers = {n_layers}").replace("d_model = 16", f"d_model = {d_model}")
            .replace("input_seq_len = 16", f"input_seq_len = {seq_len}"))
    return LanguageModel(load_experiment(write(text)))


def _causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """y[b, t, c] = Σ_{s ≤ t} k[c, t-s] u[b, s, c], by loops over t (no FFT)."""
    L = u.shape[1]
    return torch.stack([sum(k[:, t - s] * u[:, s] for s in range(t + 1)) for t in range(L)], dim=1)


# -- BaseConv ---------------------------------------------------------------------------------


def _late_over_early(taps: torch.Tensor) -> float:
    """mean |h| over lags 56..63 / mean |h| over lags 0..7, taps [D, 64]."""
    return (taps[:, 56:64].abs().mean() / taps[:, :8].abs().mean()).item()


def test_implicit_long_filter_is_upstreams_mlp_of_position():
    """Linear(3, 16) → ReLU → Linear(16, D) of (t/(L-1), cos(1e-4·2πt/L), -sin(1e-4·2πt/L)), no window."""
    torch.manual_seed(0)
    m = BaseConv(d_model=8, max_seq_len=32, kernel_size=-1, implicit_long_conv=True)
    f = m.conv.implicit
    first, act, last = f.mlp
    assert (first.in_features, first.out_features, last.in_features, last.out_features) == (3, 16, 16, 8)
    assert isinstance(act, torch.nn.ReLU) and first.bias is not None and last.bias is not None
    assert sum(p.numel() for p in f.parameters()) == 3 * 16 + 16 + 16 * 8 + 8
    assert {n for n, _ in f.named_buffers()} == {"z"}, "no window or other fixed modulation"
    L = 32
    z = torch.tensor([[t / (L - 1), math.cos(1e-4 * 2 * math.pi * t / L), -math.sin(1e-4 * 2 * math.pi * t / L)]
                      for t in range(L)])
    expected = last(torch.relu(first(z))).t()  # [D, L]
    assert torch.allclose(m.conv.taps(20), expected[:, :20], atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_implicit_long_filter_is_not_windowed_and_trains(write, seed):
    """At init (the model's N(0, 0.02) init, as upstream's) the filter at lags 56-63 is about as
    large as at lags 0-7 (Hyena's windowed filter: ~1%), and every filter parameter learns."""
    torch.manual_seed(seed)
    model = _model(write, "{ name = \"base_conv\", kernel_size = -1 }", seq_len=64, d_model=32)
    conv = model.blocks[0].sequence_mixer.conv
    with torch.no_grad():
        ratio = _late_over_early(conv.taps(64))
    assert 0.25 < ratio < 4, ratio
    torch.manual_seed(seed)
    with torch.no_grad():
        hyena = _late_over_early(Hyena(d_model=32, max_seq_len=64).filter(64))
    assert hyena < 0.05, "Hyena keeps its exponential window"
    tokens = torch.randint(0, 64, (2, 64))
    model(tokens).square().mean().backward()
    for name, p in conv.implicit.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_base_conv_long_paths_match_upstream_math():
    """Explicit: N(0, 1) taps, y = (k * u + u) ⊙ proj(u) + u; implicit the same with MLP taps;
    both causal on sequences shorter than max_seq_len."""
    torch.manual_seed(0)
    for implicit in (False, True):
        m = BaseConv(d_model=6, max_seq_len=24, kernel_size=-1, implicit_long_conv=implicit)
        u = torch.randn(2, 10, 6)
        k = m.conv.taps(10)
        expected = (_causal_conv(u, k) + u) * m.projection(u) + u
        assert torch.allclose(m(u), expected, atol=1e-5)
        u2 = u.clone()
        u2[:, 5:] = torch.randn(2, 5, 6)
        assert torch.allclose(m(u)[:, :5], m(u2)[:, :5], atol=1e-6), "taps past the length must not wrap around"
    explicit = BaseConv(d_model=64, max_seq_len=64, kernel_size=-1, implicit_long_conv=False).conv.filter
    assert 0.9 < explicit.std().item() < 1.1


@pytest.mark.parametrize("use_act", [False, True])
def test_base_conv_short_path_matches_upstream_math(use_act):
    """Depthwise Conv1d with bias (PyTorch init), gated: act(conv(u)) ⊙ act(proj(u)) + u."""
    torch.manual_seed(0)
    m = BaseConv(d_model=6, kernel_size=3, use_act=use_act)
    conv = m.conv.conv
    assert conv.bias is not None and conv.weight.shape == (6, 1, 3)
    u = torch.randn(2, 9, 6)
    c = F.conv1d(F.pad(u.transpose(1, 2), (2, 0)), conv.weight, conv.bias, groups=6).transpose(1, 2)
    p = m.projection(u)
    if use_act:
        c, p = F.silu(c), F.silu(p)
    assert torch.allclose(m(u), c * p + u, atol=1e-6)


# -- H3 ---------------------------------------------------------------------------------------


def _ssm_1head(log_dt: float, A: list[complex], B: list[complex], C: list[complex], D: float) -> DiagonalSSM:
    ssm = DiagonalSSM(1, 2 * len(A))
    with torch.no_grad():
        ssm.log_dt.fill_(log_dt)
        ssm.log_A_real.copy_(torch.tensor([[math.log(-a.real) for a in A]]))
        ssm.A_imag.copy_(torch.tensor([[a.imag for a in A]]))
        ssm.B.copy_(torch.view_as_real(torch.tensor([B], dtype=torch.cfloat)))
        ssm.C.copy_(torch.view_as_real(torch.tensor([C], dtype=torch.cfloat)))
        ssm.D.fill_(D)
    return ssm


def _simulate(u: list[float], dt: float, A, B, C, D, disc: str) -> list[float]:
    """The continuous SSM x' = Ax + Bu, y = 2 Re(Cx) + Du stepped with the trapezoid rule
    (bilinear: (1 - ΔA/2) x_k = (1 + ΔA/2) x_{k-1} + Δ B u_k) or with zero-order hold."""
    x = [0j] * len(A)
    ys = []
    for u_k in u:
        for n, (a, b) in enumerate(zip(A, B)):
            if disc == "bilinear":
                x[n] = ((1 + dt * a / 2) * x[n] + dt * b * u_k) / (1 - dt * a / 2)
            else:
                x[n] = cmath.exp(dt * a) * x[n] + (cmath.exp(dt * a) - 1) / a * b * u_k
        ys.append(2 * sum(c * xn for c, xn in zip(C, x)).real + D * u_k)
    return ys


def test_diagonal_ssm_discretises_bilinearly():
    """Upstream's SSKernelDiag default (disc='bilinear'): the FFT-convolution output equals the
    trapezoid-rule recurrence, and visibly differs from zero-order hold at this step size."""
    dt, A = 0.7, [-0.5 + 0j, -0.5 + 1j * math.pi]
    B, C, D = [1 + 0j, 0.5 - 0.2j], [0.3 + 0.1j, -0.2 + 0.4j], 0.25
    ssm = _ssm_1head(math.log(dt), A, B, C, D)
    torch.manual_seed(0)
    u = torch.randn(24)
    got = ssm(u.view(1, 1, -1)).view(-1).double()
    bilinear = torch.tensor(_simulate(u.tolist(), dt, A, B, C, D, "bilinear"), dtype=torch.float64)
    zoh = torch.tensor(_simulate(u.tolist(), dt, A, B, C, D, "zoh"), dtype=torch.float64)
    assert torch.allclose(got, bilinear, atol=1e-5)
    assert (got - zoh).abs().max() > 1e-2
    impulse = torch.tensor(_simulate([1.0] + [0.0] * 23, dt, A, B, C, D, "bilinear"))
    impulse[0] -= D
    assert torch.allclose(ssm.kernel(24)[0].double(), impulse.double(), atol=1e-5)
    step_y, _ = ssm.step(torch.ones(1, 1), torch.zeros(1, 1, 2, dtype=torch.cfloat))
    assert abs(step_y.item() - _simulate([1.0], dt, A, B, C, D, "bilinear")[0]) < 1e-5


def test_h3_init_is_s4d_lin_with_shift_b_e1():
    torch.manual_seed(0)
    m = H3(d_model=256, d_state=16, head_dim=2)
    s = m.ssm
    assert torch.allclose(s.log_A_real.exp(), torch.full((128, 8), 0.5))
    assert torch.allclose(s.A_imag, math.pi * torch.arange(8.0).expand(128, 8))
    dt = s.log_dt.exp()
    assert dt.min() >= 1e-3 and dt.max() <= 1e-1 and dt.std() > 0
    assert torch.equal(torch.view_as_complex(s.B), torch.ones(128, 8, dtype=torch.cfloat))
    c2 = torch.view_as_complex(s.C).abs().square().mean().item()
    assert 0.85 < c2 < 1.15, "C complex normal with E|C|² = 1"
    assert torch.equal(m.shift.B, F.one_hot(torch.zeros(256, dtype=torch.long), 16).float())
    assert m.shift.C.abs().max() <= 1 / 4 and m.shift.C.abs().max() > 0.9 / 4, "U(±1/√d_state)"
    assert 0.85 < m.shift.D.std().item() < 1.15 and 0.85 < s.D.std().item() < 1.15


def test_h3_has_one_ssm_per_head():
    """Upstream: SSKernel(H = d_model / head_dim), shared by the head's head_dim² products."""
    torch.manual_seed(0)
    m = H3(d_model=12, d_state=8, head_dim=3)
    s = m.ssm
    assert s.log_dt.shape == (4,) and s.log_A_real.shape == (4, 4) and s.C.shape == (4, 4, 2) and s.D.shape == (4,)
    assert sum(p.numel() for p in s.parameters()) == 4 * (1 + 4 + 4 + 8 + 8 + 1)
    with torch.no_grad():
        u = torch.randn(2, 11, 12)
        q, k, v = (p(u).view(2, 11, 4, 3) for p in (m.q_proj, m.k_proj, m.v_proj))
        k = m.shift(k.flatten(-2)).view(2, 11, 4, 3)
        K = s.kernel(11)  # [H, L]
        y = torch.zeros(2, 11, 4, 3)
        for h in range(4):
            for i in range(3):
                for j in range(3):
                    kv = (k[:, :, h, i] * v[:, :, h, j])[..., None]  # [B, L, 1]
                    filtered = _causal_conv(kv, K[h: h + 1])[..., 0] + s.D[h] * kv[..., 0]
                    y[:, :, h, j] += q[:, :, h, i] * filtered
        assert torch.allclose(m(u), m.output_linear(y.flatten(-2)), atol=1e-5)


def test_shift_ssm_kernel_and_skip():
    """Upstream's SSKernelShift: K[l] = Σ_n B[n] C[n+l] (= C while B = e₁), plus D at lag 0."""
    torch.manual_seed(0)
    sh = ShiftSSM(3, 5)
    assert torch.allclose(sh.kernel(7), F.pad(sh.C, (0, 2)))
    assert torch.allclose(sh.kernel(3), sh.C[:, :3])
    with torch.no_grad():
        sh.B.normal_()
    B, Cc = sh.B.detach().tolist(), sh.C.detach().tolist()
    expected = torch.tensor([[sum(B[c][n] * Cc[c][n + l] for n in range(5 - l)) for l in range(7)] for c in range(3)])
    assert torch.allclose(sh.kernel(7), expected, atol=1e-6)
    u = torch.randn(2, 9, 3)
    assert torch.allclose(sh(u), _causal_conv(u, sh.kernel(9)) + sh.D * u, atol=1e-5)
    with torch.no_grad():
        sh.C.zero_()
    assert torch.allclose(sh(u), sh.D * u, atol=1e-6), "the skip term D acts at lag 0"


@pytest.mark.parametrize("params", [{"d_state": 8, "head_dim": 2}, {"d_state": 32, "head_dim": 2}])
def test_h3_figure2_shapes_pass_conformance(params):
    """Upstream's Figure 2 H3 (d_state = d_model / 4, head_dim 2), and d_state beyond the length."""
    torch.set_num_threads(1)
    check_mixer(H3, d_model=32, seq_len=17, **params)


def test_h3_in_the_model_keeps_ssm_init_and_upstream_output_init(write):
    torch.manual_seed(0)
    model = _model(write, "{ name = \"h3\", d_state = 8, head_dim = 2 }", d_model=64)
    m = model.blocks[0].sequence_mixer
    assert torch.allclose(m.ssm.log_A_real.exp(), torch.full_like(m.ssm.log_A_real, 0.5))
    assert abs(m.output_linear.weight.std().item() - 0.02) < 0.003, "not depth-scaled, as upstream's output_linear"


# -- RWKV-7 -----------------------------------------------------------------------------------


def _x070_reference(C: int, N: int, layer_id: int, n_layer: int) -> dict[str, list[float]]:
    """RWKV_Tmix_x070.__init__'s per-channel formulas, transcribed loop by loop."""
    ratio_0_to_1 = layer_id / (n_layer - 1)
    ratio_1_to_almost0 = 1.0 - layer_id / n_layer
    ddd = [i / C for i in range(C)]
    out = {f"x_{c}": [1.0 - d ** (p * ratio_1_to_almost0) for d in ddd]
           for c, p in (("r", 0.2), ("w", 0.9), ("k", 0.7), ("v", 0.7), ("a", 0.9), ("g", 0.2))}
    linear, zigzag, www = [], [], []
    for n in range(C):
        linear.append(n / (C - 1) - 0.5)
        z = ((n % N) - ((N - 1) / 2)) / ((N - 1) / 2)
        zigzag.append(z * abs(z))
        www.append(-6 + 6 * (n / (C - 1)) ** (1 + 1 * ratio_0_to_1**0.3))
    out["w0"] = [w + 0.5 + z * 2.5 for w, z in zip(www, zigzag)]
    out["a0"] = [-0.19 + z * 0.3 + li * 0.4 for z, li in zip(zigzag, linear)]
    out["v0"] = [0.73 - li * 0.4 for li in linear]
    out["k_k"] = [0.71 - li * 0.1 for li in linear]
    out["k_a"] = [1.02] * C
    return out


def test_rwkv7_init_matches_x070():
    torch.manual_seed(0)
    C, N = 64, 16
    m = RWKV7(d_model=C, head_dim=N, layer_idx=1, n_layers=3, shared={"rwkv7.layers": [0]})
    ref = _x070_reference(C, N, layer_id=1, n_layer=3)
    got = {f"x_{c}": m.mix[i] for i, c in enumerate("rwkvag")}
    got.update(w0=m.w0, a0=m.a0, v0=m.v0, k_k=m.k_k, k_a=m.k_a)
    for name, values in ref.items():
        assert torch.allclose(got[name], torch.tensor(values), atol=1e-6), name
    assert torch.equal(m.r_k, torch.full((C // N, N), -0.04))
    for first, second in ((m.w1, m.w2), (m.a1, m.a2), (m.v1, m.v2), (m.g1, m.g2)):
        assert not first.any()
        assert torch.allclose(second @ second.t(), 0.01 * torch.eye(second.shape[0]), atol=1e-5), "orthogonal, gain 0.1"
    for lin, bound in ((m.receptance, 0.5), (m.key, 0.05), (m.value, 0.5)):
        w = lin.weight.abs().max().item() * math.sqrt(C)
        assert 0.95 * bound < w <= bound, (lin, w)
    assert not m.output.weight.any()


def test_rwkv7_low_rank_sizes_follow_x070():
    assert [_lora_rank(256, f) for f in (2.5, 1.7, 5.0)] == [32, 32, 64]
    assert [_lora_rank(1024, f) for f in (2.5, 1.7, 5.0)] == [64, 64, 160]
    torch.manual_seed(0)
    m = RWKV7(d_model=16, head_dim=8, layer_idx=1, shared={"rwkv7.layers": [0]})
    assert (m.w1.shape, m.a1.shape, m.v1.shape, m.g1.shape) == ((16, 32),) * 4
    assert torch.allclose(m.w2.t() @ m.w2, 0.02 * torch.eye(16), atol=1e-5), "gain 0.1·√(rows/cols) when rows > cols"


def test_rwkv7_rejects_bad_parameters_with_field_errors():
    for params, field in (({"head_dim": 5}, "head_dim"), ({"head_dim": 0}, "head_dim"), ({"a_lora": -1}, "a_lora")):
        with pytest.raises(FieldError) as exc:
            RWKV7(32, **params)
        assert exc.value.field == field


def _pair(shared: dict) -> tuple[RWKV7, RWKV7]:
    layers = RWKV7(32, head_dim=8, layer_idx=0, shared=shared), RWKV7(32, head_dim=8, layer_idx=1, shared=shared)
    with torch.no_grad():  # zero-initialised maps would hide the paths under test
        for m in layers:
            for p in m.parameters():
                if not p.any():
                    p.normal_(0.0, 0.1)
    return layers


def test_rwkv7_value_residual_reaches_the_first_layer():
    """Layer 1 mixes layer 0's values in: its output depends on layer 0's input and gradients
    flow to layer 0's value projection, even when layer 1's own input is unrelated."""
    torch.manual_seed(0)
    shared: dict = {}
    l0, l1 = _pair(shared)
    assert l0.first and not hasattr(l0, "v0") and not l1.first and l1.v0.shape == (32,)
    x0, x1 = torch.randn(2, 19, 32), torch.randn(2, 19, 32)
    l0(x0)
    assert "rwkv7.v_first" in shared
    l1(x1).square().sum().backward()
    assert "rwkv7.v_first" not in shared, "the last layer drops v_first"
    assert l0.value.weight.grad is not None and l0.value.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in (l1.v0, l1.v1, l1.v2))

    def out(x0, gate):
        with torch.no_grad():
            l1.v0.fill_(gate)
            l0(x0)
            return l1(x1)
    x0b = torch.randn(2, 19, 32)
    assert (out(x0, 0.0) - out(x0b, 0.0)).abs().max() > 1e-3
    assert (out(x0, -40.0) - out(x0b, -40.0)).abs().max() < 1e-6, "a closed gate leaves v alone"
    with pytest.raises(RuntimeError, match="first RWKV-7 layer"):
        l1(x1)


def test_rwkv7_pair_recurrent_matches_forward():
    torch.manual_seed(0)
    shared: dict = {}
    l0, l1 = (m.eval() for m in _pair(shared))
    x0, x1 = torch.randn(2, 21, 32), torch.randn(2, 21, 32)
    with torch.no_grad():
        y0, y1 = l0(x0), l1(x1)
        (r0, _), (r1, _) = l0.recurrent(x0), l1.recurrent(x1)
    assert torch.allclose(y0, r0, atol=1e-4) and torch.allclose(y1, r1, atol=1e-4)


def test_rwkv7_value_residual_in_the_model(write):
    """The model shares one dict: the first RWKV-7 layer (here layer 1, after a conv) feeds the later ones."""
    torch.manual_seed(0)
    model = _model(write, '[{ name = "base_conv" }, { name = "rwkv7", head_dim = 8 }]', n_layers=4, d_model=32)
    first, later = model.blocks[1].sequence_mixer, model.blocks[3].sequence_mixer
    assert first.first and not later.first and first.shared is later.shared
    loss = model(torch.randint(0, 64, (2, 16))).square().mean()
    assert "rwkv7.v_first" not in first.shared
    loss.backward()
    assert torch.isfinite(first.value.weight.grad).all() and later.v1.grad is not None
