"""The hand-written or rewritten ops in ``zoology.mixers._ops`` (short convolution, RMSNorm,
group norm, decay matrices, transposed products, the unit-lower inverse) equal the plain PyTorch expressions they replace, in value and
gradient, and work under vmap (packed training stacks models with ``torch.func``)."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from zoology.mixers._ops import (
    ShortConvolution,
    decay_matrix,
    group_norm,
    matmul_nt,
    rms_norm,
    unit_lower_inverse,
)

F64 = torch.float64


def _reference_conv(x: torch.Tensor, conv: torch.nn.Conv1d, silu: bool) -> torch.Tensor:
    """What ShortConvolution computed before: nn.Conv1d on [B, D, L], cut to the causal part."""
    y = conv(x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)
    return F.silu(y) if silu else y


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("length", "kernel"), [(9, 4), (3, 4), (1, 4), (7, 1)])
def test_short_convolution_matches_conv1d(activation, bias, length, kernel):
    torch.manual_seed(0)
    sc = ShortConvolution(6, kernel, bias=bias, activation=activation).double()
    x = torch.randn(2, length, 6, dtype=F64, requires_grad=True)
    y, ref = sc(x), _reference_conv(x, sc.conv, activation == "silu")
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    params = [x, *sc.parameters()]
    weight = torch.randn_like(y)
    for g, g_ref in zip(torch.autograd.grad((y * weight).sum(), params),
                        torch.autograd.grad((ref * weight).sum(), params)):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)


def test_short_convolution_on_a_strided_input_and_in_bf16():
    torch.manual_seed(0)
    sc = ShortConvolution(4, 3, activation="silu")
    wide = torch.randn(2, 8, 10, requires_grad=True)
    x = wide[..., 2:6]  # a column slice, as after splitting a projection
    y = sc(x)
    torch.testing.assert_close(y, _reference_conv(x, sc.conv, True), rtol=1e-5, atol=1e-6)
    y.sum().backward()
    assert wide.grad[..., :2].abs().sum() == 0 and wide.grad[..., 2:6].abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(sc(x.bfloat16())).all()


def test_rms_norm_gradients_float64():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 8, dtype=F64, requires_grad=True)
    gate = torch.randn_like(x, requires_grad=True)
    w = torch.randn(8, dtype=F64, requires_grad=True)
    w_heads = torch.randn(3, 8, dtype=F64, requires_grad=True)  # a scale per head and channel
    assert torch.autograd.gradcheck(lambda a, b, c: rms_norm(a, b, 1e-5, c), (x, w, gate))
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-5), (x, w_heads))
    ref = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-5) * w * F.silu(gate)
    torch.testing.assert_close(rms_norm(x, w, 1e-5, gate), ref, rtol=0, atol=1e-14)
    assert rms_norm(x, w, 1e-5).dtype == F64  # float64 is kept, not rounded through float32


def test_rms_norm_computes_in_float32_for_bf16():
    x = torch.randn(4, 16).bfloat16()
    w = torch.ones(16)
    y = rms_norm(x, w, 1e-5)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), F.rms_norm(x.float(), (16,), eps=1e-5).bfloat16().float())


def test_fused_ops_under_vmap_match_per_member():
    """Three members' gradients through vmap(grad(...)) equal each member's own."""
    torch.manual_seed(0)
    W, Bias, X = torch.randn(3, 5, 4), torch.randn(3, 5), torch.randn(3, 2, 6, 5)
    Wn, G = torch.randn(3, 5), torch.randn(3, 2, 6, 5)

    conv = ShortConvolution(5, 4, activation="silu")

    def loss(w, b, wn, x, g):
        h = torch.func.functional_call(conv, {"conv.weight": w[:, None], "conv.bias": b}, (x,))
        return rms_norm(h, wn, 1e-5, g).square().sum()

    args = (W, Bias, Wn, X, G)
    batched = vmap(grad(loss, argnums=(0, 1, 2, 3, 4)))(*args)
    for j in range(3):
        single = grad(loss, argnums=(0, 1, 2, 3, 4))(*(a[j] for a in args))
        for b, s in zip(batched, single):
            torch.testing.assert_close(b[j], s)


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_matches_nn_group_norm(affine):
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(3, 12, eps=64e-5, affine=affine).double()
    if affine:
        with torch.no_grad():
            norm.weight.normal_(), norm.bias.normal_()
    x = torch.randn(2, 5, 12, dtype=F64, requires_grad=True) * 3
    y, ref = group_norm(x, norm), norm(x.reshape(-1, 12)).reshape(x.shape)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    params, weight = [x, *norm.parameters()], torch.randn_like(y)
    for g, g_ref in zip(torch.autograd.grad((y * weight).sum(), params),
                        torch.autograd.grad((ref * weight).sum(), params)):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)


def test_group_norm_under_vmap_matches_per_member():
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(2, 8)
    W, Bias, X = torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 4, 8)

    def loss(w, b, x):
        return torch.func.functional_call(norm, {"weight": w, "bias": b}, (x,), strict=False).square().sum()

    def member_loss(w, b, x):
        return group_norm(x, _Affine(norm, w, b)).square().sum()

    batched = vmap(grad(member_loss, argnums=(0, 1, 2)))(W, Bias, X)
    for j in range(3):
        single = grad(loss, argnums=(0, 1, 2))(W[j], Bias[j], X[j])
        for b, s in zip(batched, single):
            torch.testing.assert_close(b[j], s)


class _Affine:
    """A stand-in for an nn.GroupNorm whose weight and bias are a packed member's."""

    def __init__(self, norm: torch.nn.GroupNorm, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.num_groups, self.eps, self.affine, self.weight, self.bias = norm.num_groups, norm.eps, True, weight, bias


def test_decay_matrix_is_the_masked_exponential_and_never_overflows():
    torch.manual_seed(0)
    G = (-torch.rand(2, 3, 8, dtype=F64) * 5).cumsum(-1)  # cumulative log decays, falling
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    ref = torch.where(causal, (G.unsqueeze(-1) - G.unsqueeze(-2)).exp(), 0.0)
    torch.testing.assert_close(decay_matrix(G, causal), ref, rtol=1e-13, atol=0)
    strict = causal.tril(-1)
    assert decay_matrix(G, strict).diagonal(dim1=-2, dim2=-1).eq(0).all()
    steep = torch.tensor([0.0, -200.0, -400.0])  # above the diagonal e^{+400}: masked before the exponential
    out = decay_matrix(steep, torch.ones(3, 3, dtype=torch.bool).tril())
    assert torch.isfinite(out).all() and out[0, 1] == 0 and out[2, 0] == 0  # e^-400 underflows to 0
    Gg = G.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda g: decay_matrix(g, causal), (Gg,))


@pytest.mark.parametrize(("sa", "sb"), [((3, 5, 4), (3, 6, 4)), ((2, 3, 5, 4), (2, 3, 5, 4))])
def test_matmul_nt_matches_autograd_and_returns_row_major_gradients(sa, sb):
    torch.manual_seed(0)
    a, b = (torch.randn(s, dtype=F64, requires_grad=True) for s in (sa, sb))
    g = torch.randn(*sa[:-1], sb[-2], dtype=F64)
    got = torch.autograd.grad(matmul_nt(a, b), (a, b), g)
    want = torch.autograd.grad(a @ b.transpose(-1, -2), (a, b), g)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)
        assert x.is_contiguous()  # the point of it: no transposed view handed back
    assert not want[1].is_contiguous()
    assert torch.autograd.gradcheck(matmul_nt, (a, b))
    # under autocast (bf16 on CPU): the same precision as autograd's own product
    a32, b32 = (t.detach().float().requires_grad_() for t in (a, b))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_ref = matmul_nt(a32, b32), a32 @ b32.transpose(-1, -2)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    got = torch.autograd.grad(y.float().sum(), (a32, b32))
    want = torch.autograd.grad(y_ref.float().sum(), (a32, b32))
    for x, w in zip(got, want):
        assert x.dtype == torch.float32
        torch.testing.assert_close(x, w)


def test_matmul_nt_under_vmap_matches_per_member():
    torch.manual_seed(0)
    a, b = torch.randn(4, 3, 5, 4, dtype=F64), torch.randn(4, 3, 6, 4, dtype=F64)
    got = vmap(grad(lambda a, b: matmul_nt(a, b).sin().sum(), argnums=(0, 1)))(a, b)
    for i in range(4):
        want = grad(lambda a, b: (a @ b.transpose(-1, -2)).sin().sum(), argnums=(0, 1))(a[i], b[i])
        for x, w in zip(got, want):
            torch.testing.assert_close(x[i], w, rtol=0, atol=1e-12)


@pytest.mark.parametrize("c", [1, 2, 5, 16])
def test_unit_lower_inverse_value_and_gradient_are_the_inverse(c):
    torch.manual_seed(0)
    L = (torch.randn(3, 2, c, c, dtype=F64) * 0.3).tril(-1).requires_grad_()
    T = unit_lower_inverse(L)
    ref = torch.linalg.inv(torch.eye(c, dtype=F64) + L)
    torch.testing.assert_close(T, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(T)
    got, want = torch.autograd.grad(T, L, g)[0], torch.autograd.grad(ref, L, g)[0]
    torch.testing.assert_close(got, want.tril(-1), rtol=0, atol=1e-12)  # L can only be strictly lower
    assert torch.autograd.gradcheck(lambda x: unit_lower_inverse(x.tril(-1)), (L.detach().clone().requires_grad_(),))


def test_unit_lower_inverse_under_vmap_matches_per_member():
    torch.manual_seed(0)
    L = torch.randn(4, 2, 6, 6, dtype=F64) * 0.3
    loss = lambda x: unit_lower_inverse(x.tril(-1)).sin().sum()  # noqa: E731
    got = vmap(grad(loss))(L)
    for i in range(4):
        torch.testing.assert_close(got[i], grad(loss)(L[i]), rtol=0, atol=1e-12)
