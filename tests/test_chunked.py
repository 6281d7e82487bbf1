"""Chunked training forms equal their step-by-step recurrences: in float64 to ~1e-10, over
lengths that are not a multiple of the chunk (padding, several chunk boundaries), with
decays strong enough that an unscaled form would overflow, and with gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoology.mixers import (
    RWKV4,
    DeltaNet,
    GatedDeltaNet,
    GatedLinearAttention,
    Mamba,
    Mamba2,
    MultiScaleRetention,
)
from zoology.mixers._gated import chunk_gated_attention
from zoology.mixers.mamba import selective_scan, ssd_chunked
from zoology.mixers.rwkv import wkv_chunked, wkv_step

F64 = torch.float64
L = 45  # not a multiple of any chunk size below


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    err = (a - b).abs().max().item() / max(b.abs().max().item(), 1e-30)
    assert err <= tol, f"relative error {err:.2e} > {tol:.0e}"


def _grads(out: torch.Tensor, inputs, weight: torch.Tensor):
    return torch.autograd.grad((out * weight).sum(), inputs)


def _forward_matches_recurrent(m: nn.Module, x: torch.Tensor, tol: float, grad_tol: float) -> None:
    """The mixer's training form equals its step-by-step recurrence, in value and in every
    parameter's gradient (under a random output weighting)."""
    y, y_rec = m(x), m.recurrent(x)[0]
    _close(y, y_rec, tol)
    weight, params = torch.randn_like(y), list(m.parameters())
    for g, g_ref in zip(_grads(y, params, weight), _grads(y_rec, params, weight)):
        _close(g, g_ref, grad_tol)


# --- RWKV-4 -------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 4, 16, 64])
@pytest.mark.parametrize(("key_scale", "decay_shift"), [(1.0, 0.0), (300.0, 5.0), (30.0, -8.0)])
def test_wkv_chunked_matches_steps(chunk, key_scale, decay_shift):
    """Keys of ±300 and decays down to e^{-e^7} per step: e^k alone overflows float32 and float64."""
    torch.manual_seed(0)
    b, d = 2, 6
    k = (torch.randn(b, L, d, dtype=F64) * key_scale).requires_grad_()
    v = torch.randn(b, L, d, dtype=F64, requires_grad=True)
    w = -torch.exp(torch.randn(d, dtype=F64) + decay_shift)
    u = torch.randn(d, dtype=F64) * 3
    state = (torch.zeros(b, d, dtype=F64), torch.zeros(b, d, dtype=F64), torch.full((b, d), -1e38, dtype=F64))
    ref = []
    for t in range(L):
        out, state = wkv_step(w, u, k[:, t], v[:, t], state)
        ref.append(out)
    ref = torch.stack(ref, 1)
    out = wkv_chunked(w, u, k, v, chunk)
    _close(out, ref, 1e-12)
    weight = torch.randn_like(ref)
    for g, g_ref in zip(_grads(out, (k, v), weight), _grads(ref, (k, v), weight)):
        _close(g, g_ref, 1e-10)


def test_rwkv4_forward_matches_recurrent_float64():
    torch.manual_seed(0)
    m = RWKV4(16, layer_idx=1, n_layers=3).double()
    m.chunk_size = 8
    with torch.no_grad():
        m.time_decay.copy_(torch.linspace(-8, 5, 16))  # w from -3e-4 to -148 per step
        m.key.weight.mul_(20)  # keys far outside exp()'s range
        m.output.weight.normal_()
    x = torch.randn(2, L, 16, dtype=F64)
    _forward_matches_recurrent(m, x, 1e-10, 1e-9)


# --- GLA ----------------------------------------------------------------------------------


def _gla_steps(q, k, v, log_decay):
    S = q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1])
    out = []
    for t in range(q.shape[2]):
        S = log_decay[:, :, t, :, None].exp() * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], S))
    return torch.stack(out, 2), S


@pytest.mark.parametrize("chunk", [1, 2, 8, 16, 32])
def test_chunked_gated_attention_matches_steps(chunk):
    """Per-key log decays from -1e-3 to -1e3 per step: e^{-G} over a chunk overflows any float."""
    torch.manual_seed(0)
    b, h, dk, dv = 2, 3, 5, 4
    q, k = (torch.randn(b, h, L, dk, dtype=F64, requires_grad=True) for _ in range(2))
    v = torch.randn(b, h, L, dv, dtype=F64, requires_grad=True)
    scale = torch.tensor([1e-3, 1.0, 10.0, 100.0, 1000.0], dtype=F64)
    log_decay = (-torch.rand(b, h, L, dk, dtype=F64) * scale).requires_grad_()
    ref, S_ref = _gla_steps(q, k, v, log_decay)
    out, S = chunk_gated_attention(q, k, v, gk=log_decay, chunk_size=chunk)
    _close(out, ref, 1e-12)
    _close(S, S_ref, 1e-12)
    weight = torch.randn_like(ref)
    inputs = (q, k, v, log_decay)
    for g, g_ref in zip(_grads(out, inputs, weight), _grads(ref, inputs, weight)):
        _close(g, g_ref, 1e-10)


# --- Mamba --------------------------------------------------------------------------------


def _ssm_steps(dt, A, x, B, C):
    h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
    out = []
    for t in range(x.shape[1]):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        out.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(out, 1)


# one position per block, a few, all at once; then a few per block with the batch scanned one example at a time
@pytest.mark.parametrize(("block_elements", "step_elements"), [(1, 2**17), (700, 2**17), (2**20, 2**17), (100, 1)])
def test_selective_scan_matches_steps(block_elements, step_elements):
    """Values and the hand-written gradients; steps with Δ·A down to -500 (e^{-500} per step)."""
    torch.manual_seed(0)
    b, di, n = 2, 6, 5
    dt = (F.softplus(torch.randn(b, L, di, dtype=F64) * 3)).requires_grad_()
    A = (-torch.rand(di, n, dtype=F64) * 50).requires_grad_()
    x, B, C = (torch.randn(b, L, s, dtype=F64, requires_grad=True) for s in (di, n, n))
    inputs = (dt, A, x, B, C)
    ref = _ssm_steps(*inputs)
    out = selective_scan(*inputs, block_elements=block_elements, step_elements=step_elements)
    _close(out, ref, 1e-12)
    weight = torch.randn_like(ref)
    for g, g_ref in zip(_grads(out, inputs, weight), _grads(ref, inputs, weight)):
        _close(g, g_ref, 1e-10)


def test_selective_scan_gradcheck():
    torch.manual_seed(0)
    b, l, di, n = 2, 7, 3, 2
    inputs = (F.softplus(torch.randn(b, l, di, dtype=F64)), -torch.rand(di, n, dtype=F64) - 0.5,
              torch.randn(b, l, di, dtype=F64), torch.randn(b, l, n, dtype=F64), torch.randn(b, l, n, dtype=F64))
    inputs = tuple(t.requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, block_elements=2 * di * n), inputs)


@pytest.mark.parametrize("shared_A", [False, True])
def test_selective_scan_under_vmap_matches_per_member(shared_A):
    """Packed training: three members' gradients through vmap(grad(...)) equal each member's
    own, with A one per member or shared (not vmapped); blocks of 4 positions (2 when folded)."""
    from torch.func import grad, vmap

    torch.manual_seed(0)
    k, b, l, di, n = 3, 2, 11, 6, 5
    dt = F.softplus(torch.randn(k, b, l, di, dtype=F64) * 3)
    A = -torch.rand(di, n, dtype=F64) * 5 if shared_A else -torch.rand(k, di, n, dtype=F64) * 5
    x, B, C = (torch.randn(k, b, l, s, dtype=F64) for s in (di, n, n))
    w = torch.randn(k, b, l, di, dtype=F64)

    def loss(dt, A, x, B, C, w):
        return (selective_scan(dt, A, x, B, C, block_elements=4 * b * di * n) * w).sum()

    argnums = (0, 1, 2, 3, 4)
    batched = vmap(grad(loss, argnums=argnums), in_dims=(0, None if shared_A else 0, 0, 0, 0, 0))(dt, A, x, B, C, w)
    for j in range(k):
        own = grad(loss, argnums=argnums)(dt[j], A if shared_A else A[j], x[j], B[j], C[j], w[j])
        for got, ref in zip(batched, own):
            _close(got[j], ref, 1e-12)


def test_selective_scan_vmapped_forward_then_backward_matches_per_member():
    """vmap over the forward only, then an ordinary backward() through it: the folded scan is
    itself differentiated (its vmap rule applies the Function, not its bare forward)."""
    from torch.func import vmap

    torch.manual_seed(0)
    k, b, l, di, n = 3, 2, 11, 6, 5
    dt = F.softplus(torch.randn(k, b, l, di, dtype=F64)).requires_grad_()
    A = (-torch.rand(k, di, n, dtype=F64) * 5).requires_grad_()
    x, B, C = (torch.randn(k, b, l, s, dtype=F64, requires_grad=True) for s in (di, n, n))
    inputs, w = (dt, A, x, B, C), torch.randn(k, b, l, di, dtype=F64)

    def scan(*a):
        return selective_scan(*a, block_elements=4 * b * di * n)

    y = vmap(scan)(*inputs)
    ref = torch.stack([scan(*(t[j] for t in inputs)) for j in range(k)])
    _close(y, ref, 1e-14)
    for g, g_ref in zip(_grads(y, inputs, w), _grads(ref, inputs, w)):
        _close(g, g_ref, 1e-12)


def test_mamba_forward_matches_recurrent_float64():
    torch.manual_seed(0)
    m = Mamba(16, d_state=4).double()
    with torch.no_grad():
        m.dt_proj.bias.add_(3.0)  # Δ ≈ 3: decays exp(Δ·A) down to e^{-12} per step
    x = torch.randn(2, L, 16, dtype=F64)
    _forward_matches_recurrent(m, x, 1e-10, 1e-9)


# --- Mamba-2 ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 4, 16, 64])
def test_ssd_chunked_matches_steps(chunk):
    torch.manual_seed(0)
    b, heads, p, groups, n = 2, 4, 3, 2, 5
    v = torch.randn(b, L, heads, p, dtype=F64, requires_grad=True)
    B, C = (torch.randn(b, L, groups, n, dtype=F64, requires_grad=True) for _ in range(2))
    scale = torch.tensor([1e-2, 1.0, 30.0, 1000.0], dtype=F64)
    log_decay = (-torch.rand(b, L, heads, dtype=F64) * scale).requires_grad_()
    Bh, Ch = (t.repeat_interleave(heads // groups, 2) for t in (B, C))  # [b, L, H, N]
    h, ref = torch.zeros(b, heads, n, p, dtype=F64), []
    for t in range(L):
        h = log_decay[:, t, :, None, None].exp() * h + Bh[:, t, :, :, None] * v[:, t, :, None, :]
        ref.append(torch.einsum("bhn,bhnp->bhp", Ch[:, t], h))
    ref = torch.stack(ref, 1)
    out = ssd_chunked(v, log_decay, B, C, chunk)
    _close(out, ref, 1e-12)
    weight, inputs = torch.randn_like(ref), (v, log_decay, B, C)
    for g, g_ref in zip(_grads(out, inputs, weight), _grads(ref, inputs, weight)):
        _close(g, g_ref, 1e-10)


# --- whole mixers in float64 ---------------------------------------------------------------


def _strong_decay(m: nn.Module) -> None:
    with torch.no_grad():
        if isinstance(m, Mamba2):
            m.A_log.fill_(4.0)  # A = -55: exp(Δ·A) down to e^{-5} and below
            m.dt_bias.add_(2.0)
        elif isinstance(m, GatedLinearAttention):
            m.gate_logit_normalizer = 0.05  # log α down to about -40 per step
        elif isinstance(m, MultiScaleRetention):
            m.log_gamma.mul_(200)
        elif isinstance(m, GatedDeltaNet):
            m.A_log.add_(3.0)


@pytest.mark.parametrize(("cls", "params", "tol"), [
    (GatedLinearAttention, {"num_heads": 2}, 1e-10),
    (Mamba2, {"d_state": 8, "headdim": 16, "ngroups": 2}, 1e-10),
    # their chunked cores (_ops.chunk_linear_attention, chunk_delta_rule) take decays in float32
    (MultiScaleRetention, {"num_heads": 2}, 1e-5),
    (DeltaNet, {"num_heads": 2}, 1e-5),
    (GatedDeltaNet, {"num_heads": 2}, 1e-5),
])
def test_mixer_forward_matches_recurrent_float64(cls, params, tol):
    torch.manual_seed(0)
    m = cls(32, **params).double()
    m.chunk_size = 16
    _strong_decay(m)
    with torch.no_grad():
        for p in m.parameters():  # zero-initialised maps would make the comparison vacuous
            if not p.any():
                p.normal_(0.0, 0.1)
    x = torch.randn(2, L, 32, dtype=F64)
    _forward_matches_recurrent(m, x, tol, tol * 100)
