"""Building blocks shared by several mixer families (pure PyTorch, CPU-friendly).

Shape letters: B batch, L length, H heads, K key/feature dim, V value dim, D channels,
C chunk length, N number of chunks.

The chunked scans below are the training-time forms of linear recurrences
``S_t = decay_t · S_{t-1} + k_t v_tᵀ,  o_t = q_tᵀ S_t``: within a chunk of C positions the
work is a masked C×C product (parallel), across chunks only a [K, V] state is carried,
so time and memory stay linear in L.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoology.errors import FieldError


def head_widths(d_model: int, num_heads: int, expand_k: float, expand_v: float) -> tuple[int, int, int, int]:
    """Key and value widths (d_model × expand) and their per-head parts, checked to split evenly."""
    key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
    if num_heads < 1 or key_dim % num_heads or value_dim % num_heads:
        raise FieldError("num_heads", f"must divide the key width {key_dim} and value width {value_dim}, got {num_heads}")
    return key_dim, value_dim, key_dim // num_heads, value_dim // num_heads


def pad_to_multiple(x: torch.Tensor, multiple: int, dim: int) -> torch.Tensor:
    """Zero-pad ``dim`` of x at the end up to a multiple of ``multiple``."""
    extra = -x.shape[dim] % multiple
    if not extra:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [0, extra]
    return F.pad(x, pad)


def decay_matrix(G: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """exp(G_i - G_j) where mask[i, j], else 0: cumulative log decays G [..., C] → [..., C, C].

    Masked before the exponential, so nothing overflows. Computed as 2^(log₂e (G_i - G_j)) through
    ``torch.where``: on CPU exp2 costs half of exp, PyTorch's exp takes a slow path for -inf
    (3× slower on half-masked input) and masked_fill with a broadcast mask is slower than where
    (fwd+bwd on [512, 64, 64]: 25 → 14 ms).
    """
    G2 = G * math.log2(math.e)
    return torch.where(mask, G2.unsqueeze(-1) - G2.unsqueeze(-2), float("-inf")).exp2()


class _MatmulNT(torch.autograd.Function):
    """a @ bᵀ, same batch shape; see :func:`matmul_nt`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b.transpose(-1, -2)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        a_, b_ = a.to(g.dtype), b.to(g.dtype)  # autocast may have run the forward in lower precision
        ga = (g @ b_).to(a.dtype) if ctx.needs_input_grad[0] else None
        gb = (g.transpose(-1, -2) @ a_).to(b.dtype) if ctx.needs_input_grad[1] else None
        return ga, gb


def matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ bᵀ (a [..., M, K], b [..., N, K], same batch shape) whose gradients come back in a's
    and b's own row-major layout. Autograd's ``a @ b.transpose(-1, -2)`` returns b's gradient
    as a transposed view, and every elementwise op that meets it later runs on mixed layouts:
    on CPU 1.2–1.6 ns per element instead of 0.2 (RWKV-7's chunked core fwd+bwd: 0.92×). For
    the batched products of whole tensors: in a loop over chunks the Python-level function
    costs more than it saves once the chunks are small (L = 4096, batch 2)."""
    return _MatmulNT.apply(a, b)


def chunk_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    chunk_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal (decayed) linear attention, chunked.

    q, k: [B, H, L, K]; v: [B, H, L, V]; log_decay: None, [B, H, L] (one decay per head,
    RetNet/Mamba-2) or [B, H, L, K] (one per key channel, GLA), each ≤ 0.
    Recurrence: S_t = diag(exp(log_decay_t)) S_{t-1} + k_t v_tᵀ;  o_t = q_tᵀ S_t.
    Returns (o [B, H, L, V], final state S [B, H, K, V]).
    """
    b, h, l, dk = q.shape
    dv = v.shape[-1]
    if log_decay is None:
        log_decay = q.new_zeros(b, h, l)
    per_key = log_decay.dim() == 4
    c = chunk_size
    q, k, v, g = (pad_to_multiple(t, c, 2) for t in (q, k, v, log_decay))  # pads decay with 0: no-op
    n = q.shape[2] // c
    q, k, v = (t.reshape(b, h, n, c, t.shape[-1]) for t in (q, k, v))  # [B, H, N, C, *]
    g = g.reshape(b, h, n, c, dk) if per_key else g.reshape(b, h, n, c)
    G = g.float().cumsum(3)  # cumulative log decay inside each chunk
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    if per_key:
        # A_ij = Σ_d q_id k_jd exp(G_id - G_jd), j ≤ i; masked before exp so nothing overflows
        diff = (G.unsqueeze(4) - G.unsqueeze(3)).masked_fill(~causal[:, :, None], float("-inf"))
        A = torch.einsum("bhnid,bhnjd,bhnijd->bhnij", q, k, diff.exp().to(q.dtype))
        q_in = q * G.exp().to(q.dtype)  # decay from chunk start to i
        k_out = k * (G[..., -1:, :] - G).exp().to(k.dtype)  # decay from j to chunk end
        chunk_decay = G[..., -1, :].exp()  # [B, H, N, K]
    else:
        A = matmul_nt(q, k) * decay_matrix(G, causal).to(q.dtype)  # [B, H, N, C, C]
        q_in = q * G.exp().unsqueeze(-1).to(q.dtype)
        k_out = k * (G[..., -1:] - G).exp().unsqueeze(-1).to(k.dtype)
        chunk_decay = G[..., -1].exp().unsqueeze(-1)  # [B, H, N, 1]
    o = A @ v  # intra-chunk part, [B, H, N, C, V]
    S = q.new_zeros(b, h, dk, dv)
    inter = []
    # carry the [K, V] state across chunks (unbind, not indexing: its backward stays linear)
    for q_i, k_i, v_i, d_i in zip(*(t.unbind(2) for t in (q_in, k_out, v, chunk_decay))):
        inter.append(q_i @ S)  # [B, H, C, V]
        S = d_i.unsqueeze(-1).to(S.dtype) * S + k_i.transpose(-1, -2) @ v_i
    o = o + torch.stack(inter, dim=2)
    return o.reshape(b, h, n * c, dv)[:, :, :l], S


class _UnitLowerInverse(torch.autograd.Function):
    """(I + L)⁻¹ by the doubling series, with the inverse's own gradient: for T = (I + L)⁻¹,
    dT = -T dL T, so the gradient w.r.t. L is -Tᵀ g Tᵀ (its strictly lower part) — two
    products instead of autograd's trip back through the 2·log2(C) products of the series."""

    generate_vmap_rule = True

    @staticmethod
    def forward(L: torch.Tensor) -> torch.Tensor:
        c = L.shape[-1]
        T = torch.eye(c, dtype=L.dtype, device=L.device) - L  # the terms m < 2
        P, s = L, 1
        while 2 * s < c:  # T holds the terms m < 2s
            P = P @ P  # L^(2s)
            T = T + T @ P
            s *= 2
        return T

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (T,) = ctx.saved_tensors
        Tt = T.transpose(-1, -2)
        return -(Tt @ g.to(T.dtype) @ Tt).tril(-1)


def unit_lower_inverse(L: torch.Tensor) -> torch.Tensor:
    """(I + L)⁻¹ for strictly lower-triangular L [..., C, C], as (I - L)(I + L²)(I + L⁴)⋯:
    L is nilpotent (L^C = 0), so the product is the whole series Σ (-L)^m, in log2(C) pairs of
    batched matrix products: on CPU far cheaper than a batched triangular solve. The gradient
    w.r.t. L is the strictly lower part of -Tᵀ g Tᵀ (what L can be)."""
    return _UnitLowerInverse.apply(L)


def chunk_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    chunk_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Gated) delta rule, chunked with the WY/UT form (DeltaNet, Gated DeltaNet).

    q, k: [B, H, L, K] (k L2-normalised); v: [B, H, L, V]; beta: [B, H, L] in (0, 1);
    log_decay: None or [B, H, L] (≤ 0, Gated DeltaNet's α_t = exp(log_decay_t)).
    Recurrence: S_t = α_t (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ;  o_t = q_tᵀ S_t.

    Within a chunk starting from S0, with Γ_j = Π_{s≤j} α_s, the "new values"
    u_j = v_j - α_j S_{j-1}ᵀ k_j satisfy the unit lower-triangular system
    u_j + Σ_{i<j} (Γ_j/Γ_i) β_i (k_j·k_i) u_i = v_j - Γ_j S0ᵀ k_j, solved once per chunk
    (in parallel, by :func:`unit_lower_inverse`); then S_end = Γ_C S0 + Σ_j (Γ_C/Γ_j) β_j k_j u_jᵀ.
    Chunks are laid out chunk-major, so the matrices the loop multiplies are contiguous.
    Returns (o [B, H, L, V], final state [B, H, K, V]).
    """
    b, h, l, dk = q.shape
    dv = v.shape[-1]
    dtype = v.dtype
    q, k, v, beta = q.float(), k.float(), v.float(), beta.float()  # the inverse wants fp32
    if log_decay is None:
        log_decay = q.new_zeros(b, h, l)
    c = chunk_size
    q, k, v, beta, g = (pad_to_multiple(t, c, 2) for t in (q, k, v, beta, log_decay))
    n = q.shape[2] // c
    q, k, v = (t.reshape(b, h, n, c, t.shape[-1]).permute(2, 0, 1, 3, 4).contiguous() for t in (q, k, v))  # [N, B, H, C, *]
    beta, G = beta.reshape(b, h, n, c).permute(2, 0, 1, 3), g.float().reshape(b, h, n, c).permute(2, 0, 1, 3).cumsum(-1)
    lower = torch.ones(c, c, dtype=torch.bool, device=q.device).tril(-1)
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    def ratio(mask):  # Γ_i/Γ_j for the pairs in mask, else 0: [N, B, H, C, C]
        return decay_matrix(G, mask).to(q.dtype)
    T = unit_lower_inverse(matmul_nt(k, k) * ratio(lower) * beta.unsqueeze(-2))
    U0 = T @ v  # [N, B, H, C, V]
    W = T @ (k * G.exp().unsqueeze(-1).to(k.dtype))  # [N, B, H, C, K]
    QK = matmul_nt(q, k) * ratio(causal) * beta.unsqueeze(-2)  # [N, B, H, C, C]
    q_in = q * G.exp().unsqueeze(-1).to(q.dtype)
    k_out = k * ((G[..., -1:] - G).exp() * beta).unsqueeze(-1).to(k.dtype)  # [N, B, H, C, K]
    S = q.new_zeros(b, h, dk, dv)
    out = []
    for U0_i, W_i, q_i, QK_i, k_i, decay_i in zip(U0, W, q_in, QK, k_out, G[..., -1].exp()):
        U = U0_i - W_i @ S  # [B, H, C, V]
        out.append(q_i @ S + QK_i @ U)
        S = decay_i[..., None, None] * S + k_i.transpose(-1, -2) @ U
    o = torch.stack(out).permute(1, 2, 0, 3, 4).reshape(b, h, n * c, dv)
    return o[:, :, :l].to(dtype), S


def delta_rule_step(
    S: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the (gated) delta rule. S [B, H, K, V]; q, k [B, H, K]; v [B, H, V]; beta, alpha [B, H]."""
    S = alpha[..., None, None] * S
    u = v - torch.einsum("bhkv,bhk->bhv", S, k)  # what S currently predicts for k, corrected
    S = S + beta[..., None, None] * k.unsqueeze(-1) * u.unsqueeze(-2)
    return torch.einsum("bhkv,bhk->bhv", S, q), S


class _ShortConv(torch.autograd.Function):
    """Depthwise causal convolution (+ SiLU) on [B, L, D] with a hand-written backward.

    y_t = bias + Σ_{i<k} w[:, k-1-i] ⊙ x_{t-i}: k shifted multiply-adds on the channels-last
    layout, so nothing is transposed or padded, and SiLU's backward reads a contiguous tensor.
    On CPU this is 2.2–2.7× faster (fwd+bwd, [32, 256, 512]) than ``nn.Conv1d`` with ``groups=D``, whose depthwise
    backward and the strided SiLU around it cost more than the arithmetic. vmap-able (packing):
    the vmap rule is generated from these ops.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, silu):  # x [B, L, D], weight [D, k], bias [D] or None
        k, l = weight.shape[1], x.shape[1]
        w = weight.to(x.dtype).t().contiguous()  # [k, D]: each tap's weights contiguous (a strided one costs 2-4x per product)
        y = x * w[k - 1]
        for i in range(1, min(k, l)):
            _add_product(y[:, i:], x[:, : l - i], w[k - 1 - i])
        if bias is not None:
            y += bias.to(x.dtype)
        return (F.silu(y), y) if silu else (y, y.new_empty(0))  # (output, pre-activation if SiLU)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, silu = inputs
        ctx.save_for_backward(x, weight, output[1] if silu else None)
        ctx.silu, ctx.has_bias = silu, bias is not None
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # else autograd writes a zero gradient for the pre-activation

    @staticmethod
    def backward(ctx, g, _):
        if g is None:
            return None, None, None, None
        x, weight, pre = ctx.saved_tensors
        k, l = weight.shape[1], x.shape[1]
        g = g.contiguous()
        if ctx.silu:
            g = torch.ops.aten.silu_backward(g, pre)
        w = weight.to(x.dtype).t().contiguous()  # [k, D]
        gx = g * w[k - 1]
        gw = [(g * x).sum((0, 1))] + [x.new_zeros(w.shape[1])] * (k - 1)  # gw[i]: for w[k-1-i]
        for i in range(1, min(k, l)):
            _add_product(gx[:, : l - i], g[:, i:], w[k - 1 - i])
            gw[i] = (g[:, i:] * x[:, : l - i]).sum((0, 1))
        gb = g.sum((0, 1)).to(weight.dtype) if ctx.has_bias else None
        return gx, torch.stack(gw[::-1], -1).to(weight.dtype), gb, None


def _add_product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out += a * b in place (``addcmul_`` has no vmap batching rule: the vmapped form multiplies first)."""
    if torch._C._functorch.is_functorch_wrapped_tensor(out):
        out += a * b
    else:
        out.addcmul_(a, b)


class ShortConvolution(nn.Module):
    """Depthwise causal 1-D convolution over the sequence, [B, L, D] → [B, L, D].

    The weights live in an ``nn.Conv1d`` (weight [D, 1, k]); training runs :class:`_ShortConv`.
    Its inference state is the last ``kernel_size - 1`` inputs of each channel.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = True, activation: str | None = None) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, padding=kernel_size - 1, bias=bias)
        self.activation = activation

    def _act(self, y: torch.Tensor) -> torch.Tensor:
        return F.silu(y) if self.activation == "silu" else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous: x is often a slice of a projection, and is read k times here, k + 1 times backward
        return _ShortConv.apply(x.contiguous(), self.conv.weight[:, 0], self.conv.bias, self.activation == "silu")[0]

    def init_state(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.conv.in_channels, self.kernel_size - 1)  # [B, D, k-1]

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t [B, D], state [B, D, k-1] (oldest first) → (y_t [B, D], new state)."""
        window = torch.cat([state, x_t.unsqueeze(-1)], dim=-1)  # [B, D, k]
        y = (window * self.conv.weight.squeeze(1)).sum(-1)
        if self.conv.bias is not None:
            y = y + self.conv.bias
        return self._act(y), window[..., 1:]


def fft_causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal long convolution y_t = Σ_{s≤t} k_{t-s} u_s via FFT, O(L log L).

    u: [..., D, L], k: [D, L] (one filter per channel).
    """
    l = u.shape[-1]
    n = 2 * l  # zero-pad so the circular convolution is a linear one
    y = torch.fft.irfft(torch.fft.rfft(u.float(), n=n) * torch.fft.rfft(k.float(), n=n), n=n)[..., :l]
    return y.to(u.dtype)


def filter_positions(max_seq_len: int, emb_dim: int) -> torch.Tensor:
    """Positional features of an implicit long filter (Hyena's and Zoology's), [max_seq_len, emb_dim]:
    normalised time t/(L-1), then Re and Im of exp(-i·f·2πt/L) for emb_dim // 2 frequencies f
    spaced evenly over [1e-4, emb_dim // 2 - 1] (with emb_dim 3: one frequency, 1e-4)."""
    bands = (emb_dim - 1) // 2
    t = torch.linspace(0, 1, max_seq_len)[:, None]  # [L, 1]
    w = 2 * math.pi * torch.arange(max_seq_len)[:, None] / max_seq_len  # [L, 1]
    f = torch.linspace(1e-4, bands - 1, bands)[None]  # [1, bands]
    return torch.cat([t, torch.cos(f * w), -torch.sin(f * w)], dim=-1)


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (RoPE, half-split layout). x [..., L, K], positions [L]."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angle = positions.float()[:, None] * freqs  # [L, K/2]
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half: 2 * half]
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return torch.cat([rotated, x[..., 2 * half:]], dim=-1)


class _RMSNorm(torch.autograd.Function):
    """RMSNorm with an optional SiLU gate and a hand-written backward (see :func:`rms_norm`).

    Autograd through the plain expression keeps five intermediates of the input's size and
    runs a dozen elementwise passes backward; this keeps the input, the gate and one scalar
    per row, and recomputes the normalised input. vmap-able (packing).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, gate, eps):
        acc = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(acc)
        # 1/rms from the norm (one pass; square-then-mean is two)
        r = torch.rsqrt(torch.linalg.vector_norm(xf, dim=-1, keepdim=True).pow(2) / x.shape[-1] + eps)  # [..., 1]
        y = (xf * r).mul_(weight.to(acc))
        if gate is not None:
            y.mul_(F.silu(gate.to(acc)))
        return y.to(x.dtype), r

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, gate, _ = inputs
        ctx.save_for_backward(x, weight, gate, output[1])
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # no zero gradient for the per-row scale

    @staticmethod
    def backward(ctx, gy, _):
        if gy is None:
            return None, None, None, None
        x, weight, gate, r = ctx.saved_tensors
        gy = gy.to(r.dtype)
        n = x.to(r.dtype) * r  # the normalised input
        w = weight.to(r.dtype)
        g_gate = None
        if gate is not None:
            gf = gate.to(r.dtype).contiguous()  # SiLU's backward is ~5× slower on a strided input
            g_gate = torch.ops.aten.silu_backward((gy * n).mul_(w), gf).to(gate.dtype)
            gy = gy * F.silu(gf)
        g_w = (gy * n).reshape(-1, *weight.shape).sum(0).to(weight.dtype)
        g_n = gy * w
        # through n = x / rms(x): r (g_n - n mean(g_n n)), in place
        dot = torch.linalg.vecdot(g_n, n).unsqueeze(-1) / -x.shape[-1]
        _add_product(g_n, n, dot)
        g_x = g_n.mul_(r)
        return g_x.to(x.dtype), g_w, g_gate, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, gate: torch.Tensor | None = None) -> torch.Tensor:
    """x / rms(x) · weight over the last dim, times SiLU(gate) if given; computed in at least
    float32 (float64 stays float64), returned in x's dtype. weight: the last dim's size, or
    the trailing dims of x (e.g. [heads, head_dim] for a scale per head and channel)."""
    # one copy of a strided x (heads transposed back: [B, H, L, V] → [B, L, H, V]) saves more:
    # against a row-major gate and gradient every elementwise op would run on mixed layouts
    return _RMSNorm.apply(x.contiguous(), weight, gate, eps)[0]


class RMSNorm(nn.Module):
    """RMSNorm over the last dim with a learned scale, optionally gated by SiLU(gate)
    (Mamba-2's and Gated DeltaNet's gated norm); per head when given [..., H, V]."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, gate)


def group_norm(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``norm`` (an nn.GroupNorm over D channels) applied to x [..., D], each group normalised
    over its own channels. Runs as a layer norm per group plus one multiply-add for the
    affine part: PyTorch's CPU GroupNorm on [rows, D] is 2× slower fwd+bwd ([8192, 128], 2 groups)."""
    y = F.layer_norm(x.unflatten(-1, (norm.num_groups, -1)), (x.shape[-1] // norm.num_groups,), eps=norm.eps)
    return torch.addcmul(norm.bias, y.flatten(-2), norm.weight) if norm.affine else y.flatten(-2)


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """softplus⁻¹(x) = x + log(1 - exp(-x)) (Mamba's dt-bias init)."""
    return x + torch.log(-torch.expm1(-x))


def dt_bias_init(n: int, dt_min: float, dt_max: float, dt_init_floor: float) -> torch.Tensor:
    """Mamba's time-step bias: softplus(bias) log-uniform in [dt_min, dt_max], floored."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return inverse_softplus(dt.clamp(min=dt_init_floor))
