"""H3, "Hungry Hungry Hippos" (Fu et al. 2023, arXiv 2212.14052).

    q, k, v = projections of u
    k' = shift_ssm(k)               (a learned short filter: remembers recent tokens)
    y  = q ⊙ diag_ssm(k' ⊙ v)        (a diagonal S4D SSM: accumulates key-value products)

With head_dim > 1 the products are outer products per head (k'ᵀv, a head_dim² state per
SSM mode), read out by q as in linear attention. The diagonal SSM is an LTI system, so
training uses its convolution kernel (FFT) and inference its recurrence.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zoology.errors import FieldError
from zoology.mixers._ops import ShortConvolution, fft_causal_conv


class DiagonalSSM(nn.Module):
    """S4D diagonal state space model, one per channel, with n_modes complex modes (conjugate pairs).

        h_t = exp(Δ·A) h_{t-1} + B̄ u_t,   y_t = 2·Re(C·h_t) + D u_t   (B̄ = (exp(ΔA) - 1)/A, zero-order hold)

    S4D-Lin init: A_n = -1/2 + iπn, Δ log-uniform in [1e-3, 1e-1], C complex normal, B = 1.
    """

    def __init__(self, channels: int, n_modes: int, dt_min: float = 1e-3, dt_max: float = 1e-1) -> None:
        super().__init__()
        self.log_dt = nn.Parameter(torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.log_A_real = nn.Parameter(torch.full((channels, n_modes), math.log(0.5)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(n_modes).float().repeat(channels, 1))
        self.C = nn.Parameter(torch.randn(channels, n_modes, 2) * math.sqrt(0.5))  # complex as (re, im)
        self.D = nn.Parameter(torch.randn(channels))

    def _discrete(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ΔA, C·B̄), each [channels, modes] complex."""
        A = torch.complex(-self.log_A_real.exp(), self.A_imag)
        dtA = self.log_dt.exp()[:, None] * A
        return dtA, torch.view_as_complex(self.C) * (dtA.exp() - 1) / A

    def kernel(self, seq_len: int) -> torch.Tensor:
        """K[c, l] = 2·Re(Σ_n (C·B̄)_n exp(ΔA_n·l)), [channels, L] (a Vandermonde product)."""
        dtA, cb = self._discrete()
        powers = torch.exp(dtA[..., None] * torch.arange(seq_len, device=dtA.device))  # [C, N, L]
        return 2 * torch.einsum("cn,cnl->cl", cb, powers).real

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u [B, L, channels] → [B, L, channels] (convolution form)."""
        k = self.kernel(u.shape[1])
        return fft_causal_conv(u.transpose(1, 2), k.to(u.dtype)).transpose(1, 2) + u * self.D

    def step(self, u_t: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u_t [B, channels], h [B, channels, modes] complex → (y_t, new h)."""
        dtA, cb = self._discrete()
        h = dtA.exp() * h + cb * u_t[..., None]  # C folded into the input side (diagonal, so equivalent)
        return 2 * h.sum(-1).real + self.D * u_t, h


class H3(nn.Module):
    """H3: a shift SSM on keys and a diagonal SSM on key-value products, gated by queries.

    Args:
        d_state: state dimension of both SSMs (shift filter length; real scalars per channel of the diagonal SSM); even
        head_dim: key/value dimension per head; > 1 makes the products outer products per head
    """

    name = "h3"

    def __init__(self, d_model: int, d_state: int = 64, head_dim: int = 1) -> None:
        super().__init__()
        if d_state < 2 or d_state % 2:
            raise FieldError("d_state", f"must be even and >= 2, got {d_state}")
        if head_dim < 1 or d_model % head_dim:
            raise FieldError("head_dim", f"must be >= 1 and divide d_model={d_model}, got {head_dim}")
        self.d_model, self.d_state, self.head_dim = d_model, d_state, head_dim
        self.num_heads = d_model // head_dim
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.shift = ShortConvolution(d_model, d_state, bias=False)  # shift SSM ≡ FIR of d_state taps
        self.ssm = DiagonalSSM(self.num_heads * head_dim * head_dim, d_state // 2)

    def _kv(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """k, v [B, L, D] → per-head outer products flattened, [B, L, H·dh·dh]."""
        b, l, _ = k.shape
        k, v = k.view(b, l, self.num_heads, self.head_dim), v.view(b, l, self.num_heads, self.head_dim)
        return (k.unsqueeze(-1) * v.unsqueeze(-2)).reshape(b, l, -1)

    def _read(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """q [B, L, D], kv [B, L, H·dh·dh] → Σ_i q_i kv_ij per head, [B, L, D]."""
        b, l, _ = q.shape
        q = q.view(b, l, self.num_heads, self.head_dim, 1)
        kv = kv.view(b, l, self.num_heads, self.head_dim, self.head_dim)
        return (q * kv).sum(-2).reshape(b, l, self.d_model)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q_proj(u), self.k_proj(u), self.v_proj(u)
        k = self.shift(k)
        return self.out_proj(self._read(q, self.ssm(self._kv(k, v))))

    def recurrent(self, u: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Step by step. State: the shift filter's last d_state-1 keys [B, D, d_state-1] and the
        diagonal SSM's complex state [B, H·dh·dh, d_state/2]."""
        q, k, v = self.q_proj(u), self.k_proj(u), self.v_proj(u)
        shift_state = self.shift.init_state(k)
        h = torch.zeros(u.shape[0], self.ssm.D.shape[0], self.d_state // 2, dtype=torch.complex64, device=u.device)
        ys = []
        for t in range(u.shape[1]):
            k_t, shift_state = self.shift.step(k[:, t], shift_state)
            y_t, h = self.ssm.step(self._kv(k_t[:, None], v[:, t: t + 1])[:, 0], h)
            ys.append(y_t)
        return self.out_proj(self._read(q, torch.stack(ys, dim=1))), (shift_state, h)

    def state_size(self, seq_len: int) -> int:
        """Shift SSM: (d_state - 1) · d_model recent keys; diagonal SSM: d_state real scalars
        (d_state/2 complex modes) per key-value channel, d_state · d_model · head_dim.
        Independent of seq_len."""
        return (self.d_state - 1) * self.d_model + self.d_state * self.d_model * self.head_dim
