"""Mamba (Gu & Dao 2023, arXiv 2312.00752) and Mamba-2 / SSD (Dao & Gu 2024, arXiv 2405.21060).

Selective state space models: a diagonal linear recurrence whose step size Δ_t and
input/output maps B_t, C_t depend on the token, so the model chooses what to store.

    Mamba:    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t    (h: [d_inner, d_state], A diagonal per channel)
              y_t = C_t h_t + D x_t
    Mamba-2:  the same with a scalar A per head (state [headdim, d_state]), which makes the
              recurrence a decayed linear attention (q = C, k = B, v = Δ·x): chunked, matmul-heavy.

Mamba's decay differs per (channel, state) entry, so a chunked matmul form like Mamba-2's
would need decay-scaled copies of B and C of size d_inner · d_state per position: no fewer
numbers than the states themselves. Training runs the scan (:func:`selective_scan`) with a
hand-written backward that recomputes the states block by block instead of storing them.

Both wrap the SSM in: in_proj → causal depthwise conv + SiLU → SSM → gate with SiLU(z) → out_proj.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoology.errors import FieldError
from zoology.mixers._ops import (
    RMSNorm,
    ShortConvolution,
    decay_matrix,
    dt_bias_init,
    pad_to_multiple,
)


def _check_common(d_state: int, d_conv: int, expand: int) -> None:
    if d_state < 1:
        raise FieldError("d_state", f"must be >= 1, got {d_state}")
    if d_conv < 1:
        raise FieldError("d_conv", f"must be >= 1, got {d_conv}")
    if expand < 1:
        raise FieldError("expand", f"must be >= 1, got {expand}")


class _SelectiveScan(torch.autograd.Function):
    """Mamba's scan with a hand-written backward that never stores a [B, L, N, Di] tensor.

    Autograd through the step-by-step scan keeps every state h_t, every decay and every input
    term: several [B, L, N, Di] tensors (N times the activations), and on CPU writing that
    much fresh memory costs more than the arithmetic. Here the sequence runs in blocks of T
    positions; forward keeps only the state at each block's start, and backward redoes one
    block at a time from there (blocks in reverse), in buffers of [T, B, N, Di].

    States are stored channel-last ([N, Di] per example): every sum over the N state entries
    is then a sum of N contiguous rows or a [1, N] × [N, Di] product, where an innermost
    N = 16 reduction is several times slower.

    With a_t = exp(Δ_t A), h_t = a_t ⊙ h_{t-1} + B_t (Δ_t x_t)ᵀ and y_t = C_tᵀ h_t, the
    gradient g_t of the loss with respect to h_t is C_t gy_tᵀ + a_{t+1} ⊙ g_{t+1} (a reverse
    scan), and then
        gC_t = h_t gy_t,   gB_t = g_t (Δ_t x_t),   g(Δx)_t = g_tᵀ B_t,
        with u_t = g_t ⊙ a_t ⊙ h_{t-1}:   gΔ_t += Σ_n u_t ⊙ A,   gA = Σ_{b,t} u_t ⊙ Δ_t.

    Packing (``torch.func``): the forward returns what the backward needs (the time-major
    inputs and the block starts) as extra outputs, the backward is a Function of its own
    (:class:`_ScanGradient`), and both have a vmap rule that folds the members of a pack
    into the batch, with A one per example, so a pack runs one scan for all its members.
    """

    @staticmethod
    def _block(dt, A2, x, B, h0, a, hs):
        """One block, time-major: dt, x [T, B, Di]; A2 = A·log₂e [N, Di] (or [B, N, Di]); B [T, B, N];
        h0 [B, N, Di]. Fills the buffers a [T, B, N, Di] with the decays and hs [T, B, N, Di] with the states."""
        torch.mul(dt.unsqueeze(2), A2, out=a).exp2_()  # exp(Δ A) as 2^(Δ A log₂e): exp2 costs half of exp
        torch.mul(B.unsqueeze(-1), (dt * x).unsqueeze(2), out=hs)  # input terms, overwritten by the states
        # per-step views made once (an index per step costs more than the step at small batch)
        a_t, h_t = a.unbind(0), hs.unbind(0)
        h_t[0].addcmul_(a_t[0], h0)
        for t in range(1, a.shape[0]):
            h_t[t].addcmul_(a_t[t], h_t[t - 1])  # h_t = a_t ⊙ h_{t-1} + B_t (Δ_t x_t)ᵀ

    @staticmethod
    def _buffers(x, n, block):
        """Decays a [T, B, N, Di] and states hs [T, B, N, Di] for time-major x [L, B, Di], reused by every block."""
        shape = (block, x.shape[1], n, x.shape[2])
        return x.new_empty(shape), x.new_empty(shape)

    @staticmethod
    def forward(dt, A, x, B, C, block):
        # dt, x: [B, L, Di]; A: [Di, N] (or [B, Di, N], one per example); B, C: [B, L, N]
        # → y [B, L, Di], and for the backward: dt, x, B, C time-major ([L, B, *]) and the state
        # before each block [L / T, B, N, Di]
        dt, x, B, C = (t.transpose(0, 1).contiguous() for t in (dt, x, B, C))
        A2 = A.transpose(-1, -2).contiguous().mul_(math.log2(math.e))  # [(B,) N, Di]
        L, b, di = x.shape
        a_buf, h_buf = _SelectiveScan._buffers(x, A.shape[-1], block)
        y = x.new_empty(L * b, 1, di)
        starts = x.new_empty(-(-L // block), *h_buf.shape[1:])
        starts[0].zero_()
        for i, s in enumerate(range(0, L, block)):
            sl = slice(s, s + block)
            t = min(block, L - s)
            a, hs = a_buf[:t], h_buf[:t]
            _SelectiveScan._block(dt[sl], A2, x[sl], B[sl], starts[i], a, hs)
            # y_t = C_tᵀ h_t: [1, N] × [N, Di] per (t, b)
            torch.bmm(C[sl].reshape(t * b, 1, -1), hs.view(t * b, -1, di), out=y[s * b:(s + t) * b])
            if i + 1 < starts.shape[0]:
                starts[i + 1] = hs[-1]
        return y.view(L, b, di).transpose(0, 1), dt, x, B, C, starts

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)  # no zero gradients for those: starts alone is [L / T, B, N, Di]
        ctx.save_for_backward(inputs[1], *output[1:])
        ctx.block = inputs[-1]

    @staticmethod
    def backward(ctx, gy, *_):
        if gy is None:
            return None, None, None, None, None, None
        return *_ScanGradient.apply(gy, *ctx.saved_tensors, ctx.block), None

    @staticmethod
    def vmap(info, in_dims, dt, A, x, B, C, block):
        k = info.batch_size
        dt, x, B, C = (_fold(t, d, k, 0) for t, d in zip((dt, x, B, C), (in_dims[0], *in_dims[2:5])))
        A, _ = _per_example(A, in_dims[1], k, dt.shape[0] // k)
        # apply, not forward: the folded call may itself need autograd (vmap of a forward that
        # backward() differentiates afterwards) or another transform's rule (nested vmap)
        y, *saved = _SelectiveScan.apply(dt, A, x, B, C, _folded_block(block, k, dt))
        return (y.unflatten(0, (k, -1)), *(t.unflatten(1, (k, -1)) for t in saved)), (0, 1, 1, 1, 1, 1)


class _ScanGradient(torch.autograd.Function):
    """The gradients of :class:`_SelectiveScan` (a Function of its own so that it, too, has a vmap rule)."""

    @staticmethod
    def forward(gy, A, dt, x, B, C, starts, block):
        # gy [B, L, Di]; A [(B,) Di, N]; dt, x, B, C time-major; starts [L / T, B, N, Di]
        with torch.autocast(gy.device.type, enabled=False):  # as in forward: float32 at least throughout
            return _ScanGradient._gradients(gy, A, dt, x, B, C, starts, block)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("Mamba's selective scan can be differentiated once only")

    @staticmethod
    def vmap(info, in_dims, gy, A, dt, x, B, C, starts, block):
        k = info.batch_size
        gy = _fold(gy, in_dims[0], k, 0)
        dt, x, B, C, starts = (_fold(t, d, k, 1) for t, d in zip((dt, x, B, C, starts), in_dims[2:7]))
        A, shared = _per_example(A, in_dims[1], k, gy.shape[0] // k)
        g_dt, g_A, g_x, g_B, g_C = _ScanGradient.apply(gy, A, dt, x, B, C, starts, _folded_block(block, k, gy))
        g_A = g_A.unflatten(0, (k, -1))
        return (g_dt.unflatten(0, (k, -1)), g_A.sum(1) if shared else g_A, *(g.unflatten(0, (k, -1)) for g in
                (g_x, g_B, g_C))), (0, 0, 0, 0, 0)

    @staticmethod
    def _gradients(gy, A, dt, x, B, C, starts, block):
        gy = gy.to(x.dtype).transpose(0, 1).contiguous()  # [L, B, Di]
        A = A.transpose(-1, -2).contiguous()  # [(B,) N, Di]
        A2 = A * math.log2(math.e)
        L, b, di = x.shape
        n = A.shape[-2]
        g_dt, g_x, g_B, g_C = (torch.empty_like(t) for t in (dt, x, B, C))
        g_A = torch.zeros_like(A)
        per_example = (0,) if A.dim() == 3 else (0, 1)  # sum over positions (and examples, for a shared A)
        a_buf, h_buf = _SelectiveScan._buffers(x, n, block)
        g_buf = torch.empty_like(a_buf)
        g_h = x.new_zeros(b, n, di)  # gradient w.r.t. the state at the end of the block, from later blocks
        for i in reversed(range(starts.shape[0])):
            sl = slice(i * block, (i + 1) * block)
            t = min(block, L - i * block)
            a, hs, g = a_buf[:t], h_buf[:t], g_buf[:t]
            _SelectiveScan._block(dt[sl], A2, x[sl], B[sl], starts[i], a, hs)
            torch.mul(C[sl].unsqueeze(-1), gy[sl].unsqueeze(2), out=g)  # C_t gy_tᵀ
            a_j, g_j = a.unbind(0), g.unbind(0)
            g_j[-1].add_(g_h)
            for j in reversed(range(t - 1)):
                g_j[j].addcmul_(a_j[j + 1], g_j[j + 1])  # g_t = C_t gy_tᵀ + a_{t+1} ⊙ g_{t+1}
            g_h = a_j[0] * g_j[0]
            flat, gflat = (t * b, n, di), g.view(t * b, n, di)
            # as [1, Di] × [Di, N] products (the [N, Di] × [Di, 1] form takes a path ten times slower)
            torch.bmm(gy[sl].view(t * b, 1, di), hs.view(flat).transpose(1, 2), out=g_C[sl].view(t * b, 1, n))
            dtx = dt[sl] * x[sl]
            torch.bmm(dtx.view(t * b, 1, di), gflat.transpose(1, 2), out=g_B[sl].view(t * b, 1, n))
            g_dtx = torch.bmm(B[sl].reshape(t * b, 1, n), gflat).view(t, b, di)  # g_tᵀ B_t
            # u_t = g_t ⊙ a_t ⊙ h_{t-1}, the gradient w.r.t. Δ_t A (in place of g)
            u = g.mul_(a)
            u[1:].mul_(hs[:-1])
            u[0].mul_(starts[i])
            g_A += torch.mul(u, dt[sl].unsqueeze(2), out=a).sum(per_example)
            torch.sum(u.mul_(A), 2, out=g_dt[sl])
            g_dt[sl].addcmul_(g_dtx, x[sl])
            torch.mul(g_dtx, dt[sl], out=g_x[sl])
        g_dt, g_x, g_B, g_C = (t.transpose(0, 1) for t in (g_dt, g_x, g_B, g_C))
        return g_dt, g_A.transpose(-1, -2), g_x, g_B, g_C


def _fold(t: torch.Tensor, dim: int | None, k: int, at: int) -> torch.Tensor:
    """A vmapped tensor's member dimension (``dim``; None: not vmapped, shared by the members)
    folded into its batch dimension at ``at``: members one after another."""
    t = t.unsqueeze(at).expand(*t.shape[:at], k, *t.shape[at:]) if dim is None else t.movedim(dim, at)
    return t.flatten(at, at + 1)


def _per_example(A: torch.Tensor, dim: int | None, k: int, b: int) -> tuple[torch.Tensor, bool]:
    """A vmapped A ([K, Di, N] or [K, B, Di, N]) as one per example of the folded batch [K·B, Di, N],
    and whether it was one per member (its gradient is then summed over each member's examples)."""
    A = A.unsqueeze(0).expand(k, *A.shape) if dim is None else A.movedim(dim, 0)
    shared = A.dim() == 3
    if shared:
        A = A.unsqueeze(1).expand(k, b, *A.shape[1:])
    return A.reshape(k * b, *A.shape[2:]), shared


def _folded_block(block: int, k: int, like: torch.Tensor) -> int:
    """Positions per block when k members share the batch: on CPU as many fewer as keeps the
    buffers the size a solo run uses (cache), elsewhere the same (fewer kernel launches)."""
    return max(1, block // k) if like.device.type == "cpu" else block


def selective_scan(dt: torch.Tensor, A: torch.Tensor, x: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   block_elements: int | None = None, step_elements: int = 2**17) -> torch.Tensor:
    """y_t = Σ_n C_tn h_t[:, n] with h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t x_t) B_t, h_0 = 0.

    dt (Δ), x: [B, L, Di]; A: [Di, N]; B, C: [B, L, N] → y [B, L, Di]; computed in float32 at least.
    Blocks of T positions with T·b·Di·N ≈ block_elements (see :class:`_SelectiveScan`; None:
    2^19 on CPU, 2^20 elsewhere, where fewer blocks mean fewer kernel launches). On CPU
    the batch is also split into slices of b ≈ step_elements / (Di·N) examples, scanned one
    after another, so that a block's buffers stay in cache (2 MiB each by default; on the
    2-core dev VM blocks of 4 MiB and more ran 15-45% slower at L = 256, and at L = 64,
    batch 128, unsliced blocks of any size at least a third slower).
    """
    dtype = x.dtype
    wide = torch.promote_types(dtype, torch.float32)
    b, l, di = x.shape
    state = di * A.shape[1]
    cpu = x.device.type == "cpu"
    block_elements = block_elements or (2**19 if cpu else 2**20)
    b_step = max(1, step_elements // state) if cpu else b
    block = max(1, min(l, block_elements // (min(b, b_step) * state)))
    with torch.autocast(x.device.type, enabled=False):
        dt, A, x, B, C = (t.to(wide) for t in (dt, A, x, B, C))
        ys = [_SelectiveScan.apply(dt[i:i + b_step], A, x[i:i + b_step], B[i:i + b_step], C[i:i + b_step], block)[0]
              for i in range(0, b, b_step)]
        y = ys[0] if len(ys) == 1 else torch.cat(ys)
    return y.to(dtype)


class Mamba(nn.Module):
    """Mamba block: selective SSM with per-channel diagonal A, input-dependent Δ, B, C.

    Args:
        d_state: SSM state size per channel (N)
        d_conv: length of the causal depthwise convolution before the SSM
        expand: inner width as a multiple of d_model
        dt_rank: rank of the Δ projection; 0 means ceil(d_model / 16)
        dt_min: smallest initial step size Δ
        dt_max: largest initial step size Δ
    """

    name = "mamba"

    def __init__(
        self,
        d_model: int,
        n_layers: int = 2,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int = 0,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
    ) -> None:
        super().__init__()
        _check_common(d_state, d_conv, expand)
        if dt_rank < 0:
            raise FieldError("dt_rank", f"must be >= 0 (0 means ceil(d_model/16)), got {dt_rank}")
        if not 0 < dt_min <= dt_max:
            raise FieldError("dt_min", f"must satisfy 0 < dt_min <= dt_max={dt_max}, got {dt_min}")
        self.d_inner, self.d_state, self.d_conv, self.n_layers = expand * d_model, d_state, d_conv, n_layers
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.dt_min, self.dt_max = dt_min, dt_max
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)  # → x, z
        self.conv = ShortConvolution(self.d_inner, d_conv, bias=True, activation="silu")
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)  # → Δ (low rank), B, C
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference init (mamba_ssm): A = -[1..N] per channel (S4D-Real), D = 1, Δ's bias
        such that softplus(bias) is log-uniform in [dt_min, dt_max], Δ weights U(±dt_rank^-½),
        other projections PyTorch's default with out_proj scaled by 1/√(2·n_layers) (prenorm
        residual rescale, two residual branches per block)."""
        for m in (self.in_proj, self.x_proj, self.out_proj, self.conv.conv):
            m.reset_parameters()
        self.out_proj.weight /= math.sqrt(2 * self.n_layers)
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        self.dt_proj.bias.copy_(dt_bias_init(self.d_inner, self.dt_min, self.dt_max, 1e-4))
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D.fill_(1.0)

    def _selection(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, L, Di] (after conv) → Δ [B, L, Di], B, C [B, L, N], A [Di, N] (float32 at least)."""
        low, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # Δ = softplus(low Wᵀ + b) with Wᵀ made contiguous: autograd then forms W's gradient as
        # (lowᵀ g)ᵀ, which for a rank below 16 is 6-10× faster on CPU than nn.Linear's gᵀ low
        W, bias = self.dt_proj.weight, self.dt_proj.bias
        dt = F.softplus(torch.addmm(bias, low.reshape(-1, self.dt_rank), W.t().contiguous()).view(*low.shape[:-1], -1))
        A = -self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)).exp()
        return dt, B, C, A

    def _ssm_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, L, Di] (after conv) → decay exp(ΔA) [B, L, Di, N], input ΔBx [B, L, Di, N], C [B, L, N]."""
        dt, B, C, A = self._selection(x)
        decay = torch.exp(dt.unsqueeze(-1) * A)
        inp = (dt * x).unsqueeze(-1) * B.unsqueeze(2)
        return decay, inp, C

    def _scan(self, x: torch.Tensor) -> torch.Tensor:
        """The selective scan over the whole sequence (:func:`selective_scan`). x [B, L, Di] → y [B, L, Di]."""
        dt, B, C, A = self._selection(x)
        return torch.addcmul(selective_scan(dt, A, x, B, C), x, self.D)  # + D x

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(u).chunk(2, dim=-1)  # [B, L, Di] each
        y = self._scan(self.conv(x))
        return self.out_proj(y * F.silu(z))

    def recurrent(self, u: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Token by token. State: the convolution's last d_conv-1 inputs [B, Di, d_conv-1] and
        the SSM state h [B, Di, N]."""
        x, z = self.in_proj(u).chunk(2, dim=-1)
        conv_state = self.conv.init_state(x)
        h = x.new_zeros(x.shape[0], self.d_inner, self.d_state)
        ys = []
        for t in range(u.shape[1]):
            x_t, conv_state = self.conv.step(x[:, t], conv_state)  # [B, Di]
            decay, inp, C = self._ssm_inputs(x_t[:, None])
            h = decay[:, 0] * h + inp[:, 0]
            ys.append(torch.einsum("bdn,bn->bd", h, C[:, 0]) + self.D * x_t)
        return self.out_proj(torch.stack(ys, dim=1) * F.silu(z)), (conv_state, h)

    def state_size(self, seq_len: int) -> int:
        """SSM state d_inner · d_state plus the convolution's last inputs (d_conv - 1) · d_inner,
        with d_inner = expand · d_model. Independent of seq_len."""
        return self.d_inner * self.d_state + (self.d_conv - 1) * self.d_inner


def ssd_chunked(v: torch.Tensor, log_decay: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                chunk_size: int = 64) -> torch.Tensor:
    """Mamba-2's SSD, chunked: per head h_t = e^{log_decay_t} h_{t-1} + B_t v_tᵀ ([N, P]), y_t = h_tᵀ C_t.

    v (Δ·x): [b, L, H, P]; log_decay (Δ·A ≤ 0): [b, L, H]; B, C: [b, L, G, N], shared by the
    H/G heads of each group → y [b, L, H, P].

    As ``_ops.chunk_linear_attention`` with q = C, k = B, but B and C are never copied per
    head: the heads' decays are scalars per position, so they go on v (into the state) and on
    the outputs (out of it), and the heads of a group share every product with B or C:
    C_t·B_j once per group in a chunk, one [N, C] × [C, (H/G)·P] product per chunk for the
    states, one [C, N] × [N, (H/G)·P] for what they give the next chunk. Decays are exp() of
    differences of cumulative log decays with j ≤ t, so every factor is ≤ 1.
    """
    b, l, H, P = v.shape
    G, N = B.shape[2:]
    hg, c = H // G, chunk_size
    v, log_decay, B, C = (pad_to_multiple(t, c, 1) for t in (v, log_decay, B, C))  # padding: decay 1, no input
    n = v.shape[1] // c
    Bc, Cc = (t.view(b, n, c, G, N).transpose(2, 3) for t in (B, C))  # [b, n, G, c, N]
    V = v.view(b, n, c, G, hg, P).permute(0, 1, 3, 4, 2, 5)  # [b, n, G, hg, c, P]
    g = log_decay.to(torch.promote_types(log_decay.dtype, torch.float32))
    Gc = g.view(b, n, c, G, hg).permute(0, 1, 3, 4, 2).cumsum(-1)  # [b, n, G, hg, c]: through position t
    # within a chunk: y_t = Σ_{j≤t} (C_t·B_j) e^{G_t - G_j} v_j
    causal = torch.ones(c, c, dtype=torch.bool, device=v.device).tril()
    decay = decay_matrix(Gc, causal)  # [b, n, G, hg, c, c]
    CB = Cc @ Bc.transpose(-1, -2)  # [b, n, G, c, c], one per group
    y = (CB.unsqueeze(3) * decay.to(CB.dtype)) @ V  # [b, n, G, hg, c, P]
    # each chunk's own part of the state at its end: Σ_j B_j (e^{G_end - G_j} v_j)ᵀ, heads side by side
    v_end = V * (Gc[..., -1:] - Gc).exp().unsqueeze(-1).to(V.dtype)  # [b, n, G, hg, c, P]
    own = Bc.transpose(-1, -2) @ v_end.transpose(3, 4).reshape(b, n, G, c, hg * P)  # [b, n, G, N, hg·P]
    # carry the state S across chunks (S ← e^{G_end} S + own); what it gives the chunk: C_t · S
    chunk_decay = Gc[..., -1].exp().to(own.dtype)  # [b, n, G, hg]
    S = own.new_zeros(b, G, N, hg, P)
    y_in = []
    for C_i, own_i, d_i in zip(Cc.unbind(1), own.unbind(1), chunk_decay.unbind(1)):  # unbind: a linear-time backward
        y_in.append(C_i @ S.view(b, G, N, hg * P))  # [b, G, c, hg·P]
        S = S * d_i[:, :, None, :, None] + own_i.view(b, G, N, hg, P)
    # times the decay from the chunk start to t
    y_in = torch.stack(y_in, dim=1).view(b, n, G, c, hg, P) * Gc.exp().transpose(3, 4).unsqueeze(-1).to(y.dtype)
    y = y.transpose(3, 4) + y_in  # [b, n, G, c, hg, P]
    return y.transpose(2, 3).reshape(b, n * c, H, P)[:, :l]


class Mamba2(nn.Module):
    """Mamba-2 block: SSD, a selective SSM with one scalar decay per head, in chunked form.

    Args:
        d_state: SSM state size per head channel (N)
        d_conv: length of the causal depthwise convolution on x, B and C
        expand: inner width as a multiple of d_model
        headdim: channels per head (P); must divide expand · d_model
        ngroups: groups of heads sharing B and C (as key/value groups in attention)
        dt_min: smallest initial step size Δ
        dt_max: largest initial step size Δ
    """

    name = "mamba2"
    chunk_size = 64

    def __init__(
        self,
        d_model: int,
        n_layers: int = 2,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
    ) -> None:
        super().__init__()
        _check_common(d_state, d_conv, expand)
        self.d_inner = expand * d_model
        if headdim < 1 or self.d_inner % headdim:
            raise FieldError("headdim", f"must divide expand·d_model={self.d_inner}, got {headdim}")
        self.nheads = self.d_inner // headdim
        if ngroups < 1 or self.nheads % ngroups:
            raise FieldError("ngroups", f"must divide the number of heads {self.nheads}, got {ngroups}")
        if not 0 < dt_min <= dt_max:
            raise FieldError("dt_min", f"must satisfy 0 < dt_min <= dt_max={dt_max}, got {dt_min}")
        self.d_state, self.d_conv, self.headdim, self.ngroups, self.n_layers = d_state, d_conv, headdim, ngroups, n_layers
        self.dt_min, self.dt_max = dt_min, dt_max
        self.conv_dim = self.d_inner + 2 * ngroups * d_state  # x, B, C go through the conv
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.nheads, bias=False)  # → z, xBC, Δ
        self.conv = ShortConvolution(self.conv_dim, d_conv, bias=True, activation="silu")
        self.A_log = nn.Parameter(torch.empty(self.nheads))
        self.dt_bias = nn.Parameter(torch.empty(self.nheads))
        self.D = nn.Parameter(torch.empty(self.nheads))
        self.norm = RMSNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference init (mamba_ssm): A ~ U(1, 16) per head stored as A_log, D = 1,
        softplus(dt_bias) log-uniform in [dt_min, dt_max], projections PyTorch's default with
        out_proj scaled by 1/√(2·n_layers)."""
        for m in (self.in_proj, self.out_proj, self.conv.conv):
            m.reset_parameters()
        self.out_proj.weight /= math.sqrt(2 * self.n_layers)
        self.A_log.copy_(torch.empty(self.nheads).uniform_(1, 16).log())
        self.dt_bias.copy_(dt_bias_init(self.nheads, self.dt_min, self.dt_max, 1e-4))
        self.D.fill_(1.0)
        self.norm.weight.fill_(1.0)

    def _split(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """u [B, L, D] → z [B, L, Di], xBC [B, L, conv_dim], Δ (pre-softplus) [B, L, H]."""
        return self.in_proj(u).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _ssd_inputs(self, xBC: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """→ x [B, H, L, P], q = C and k = B [B, H, L, N], v = Δ·x [B, H, L, P], log decay ΔA [B, H, L]."""
        b, l, _ = xBC.shape
        x, B, C = xBC.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        x = x.view(b, l, self.nheads, self.headdim).transpose(1, 2)
        per_group = self.nheads // self.ngroups  # heads sharing one B, C
        B, C = (t.view(b, l, self.ngroups, self.d_state).transpose(1, 2).repeat_interleave(per_group, 1) for t in (B, C))
        dt = F.softplus(dt + self.dt_bias).transpose(1, 2)  # [B, H, L]
        log_decay = dt * -self.A_log.exp()[:, None]
        return x, C, B, x * dt.unsqueeze(-1), log_decay

    def _output(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y [B, L, H, P] + D skip → RMSNorm(y ⊙ SiLU(z)) → out_proj, [B, L, D]."""
        y = y + x * self.D[:, None]
        return self.out_proj(self.norm(y.flatten(2) * F.silu(z)))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        z, xBC, dt = self._split(u)
        b, l, _ = u.shape
        x, B, C = self.conv(xBC).split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        x = x.view(b, l, self.nheads, self.headdim)
        B, C = (t.view(b, l, self.ngroups, self.d_state) for t in (B, C))
        dt = F.softplus(dt + self.dt_bias)  # [B, L, H]
        y = ssd_chunked(x * dt.unsqueeze(-1), dt * -self.A_log.exp(), B, C, self.chunk_size)  # [B, L, H, P]
        return self._output(y, x, z)

    def recurrent(self, u: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Token by token. State: the convolution's last d_conv-1 inputs [B, conv_dim, d_conv-1]
        and the SSM state h [B, H, N, P]."""
        z, xBC, dt = self._split(u)
        conv_state = self.conv.init_state(xBC)
        h = u.new_zeros(u.shape[0], self.nheads, self.d_state, self.headdim)
        ys, xs = [], []
        for t in range(u.shape[1]):
            xBC_t, conv_state = self.conv.step(xBC[:, t], conv_state)
            x, q, k, v, log_decay = self._ssd_inputs(xBC_t[:, None], dt[:, t: t + 1])  # length-1 sequences
            h = log_decay[:, :, 0, None, None].exp() * h + k[:, :, 0, :, None] * v[:, :, 0, None, :]
            ys.append(torch.einsum("bhn,bhnp->bhp", q[:, :, 0], h))
            xs.append(x[:, :, 0])
        return self._output(torch.stack(ys, dim=1), torch.stack(xs, dim=1), z), (conv_state, h)

    def state_size(self, seq_len: int) -> int:
        """SSM state nheads · headdim · d_state = expand · d_model · d_state, plus the
        convolution's last inputs (d_conv - 1) · (expand · d_model + 2 · ngroups · d_state).
        Independent of seq_len."""
        return self.nheads * self.headdim * self.d_state + (self.d_conv - 1) * self.conv_dim
