"""H3, "Hungry Hungry Hippos" (Fu et al. 2023, arXiv 2212.14052), as upstream Zoology runs it.

    q, k, v = projections of u
    k' = shift_ssm(k)                (a learned short filter with a skip: remembers recent tokens)
    y  = q ⊙ diag_ssm(k' ⊙ v)         (a diagonal S4D SSM per head: accumulates key-value products)

With head_dim > 1 the products are outer products per head (k'ᵀv, head_dim² entries), all
filtered by that head's one SSM and read out by q as in linear attention. Both SSMs are
linear time-invariant, so training convolves with their kernels (computed in closed form,
applied by FFT) and ``recurrent()`` runs their recurrences.

Upstream (zoology/mixers/h3: h3.py, ss_kernel.py, ss_kernel_diag.py, ss_kernel_shift.py)
gives the defaults kept here: S4D-Lin init ("diag-lin"), bilinear discretisation, Δ
log-uniform in [1e-3, 1e-1] per head, a shift SSM with B = e₁ and a skip D per channel. Its
output channels come out ordered (value index, head) rather than (head, value index), a
fixed permutation in front of a dense output layer that changes nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoology.errors import FieldError
from zoology.mixers._ops import fft_causal_conv


class ShiftSSM(nn.Module):
    """H3's shift SSM, one per channel: a shift register of N slots that the input enters
    through B, read out by C, plus a skip D:

        s_t = shift(s_{t-1}) + B u_t,    y_t = C·s_t + D u_t

    so y = K * u + D u with the N-tap kernel K[l] = Σ_n B[n] C[n+l]. Init as upstream:
    B = e₁ (so K = C at first), C ~ U(±1/√N) (a Conv1d's default), D ~ N(0, 1).
    """

    def __init__(self, channels: int, d_state: int) -> None:
        super().__init__()
        self.d_state = d_state
        self.B = nn.Parameter(F.one_hot(torch.zeros(channels, dtype=torch.long), d_state).float())  # [D, N]
        bound = 1 / math.sqrt(d_state)
        self.C = nn.Parameter(torch.empty(channels, d_state).uniform_(-bound, bound))  # [D, N]
        self.D = nn.Parameter(torch.randn(channels))

    def kernel(self, seq_len: int) -> torch.Tensor:
        """K[c, l] = Σ_n B[c, n] C[c, n+l] for l < min(N, seq_len), zero beyond, [D, seq_len]."""
        n = self.d_state
        B_f, C_f = torch.fft.rfft(self.B.float(), n=2 * n), torch.fft.rfft(self.C.float(), n=2 * n)
        k = torch.fft.irfft(B_f.conj() * C_f, n=2 * n)[:, : min(n, seq_len)]  # cross-correlation of B and C
        return F.pad(k, (0, seq_len - k.shape[-1]))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u [B, L, D] → [B, L, D]."""
        k = self.kernel(u.shape[1])
        return fft_causal_conv(u.transpose(1, 2), k).transpose(1, 2) + u * self.D

    def step(self, u_t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u_t [B, D], s [B, D, N-1] (register slots 0..N-2; slot N-1 is shifted out before it is
        read again, so it need not be kept) → (y_t, new s)."""
        full = F.pad(s, (1, 0)) + self.B * u_t[..., None]  # [B, D, N]
        return (self.C * full).sum(-1) + self.D * u_t, full[..., :-1]


class DiagonalSSM(nn.Module):
    """S4D diagonal SSM, one per head, with N/2 complex modes (conjugate pairs), bilinear:

        h_t = Ā h_{t-1} + B̄ u_t,   y_t = 2·Re(C·h_t) + D u_t,
        Ā = (1 + ΔA/2) / (1 - ΔA/2),   B̄ = Δ B / (1 - ΔA/2)

    so y = K * u + D u with K[l] = 2·Re(Σ_n C_n B̄_n Ā_n^l). S4D-Lin init as upstream:
    A_n = -1/2 + iπn, Δ log-uniform in [1e-3, 1e-1], B = 1, C complex normal (variance 1),
    D ~ N(0, 1); every one trainable (B and C only enter as their product, as upstream).
    """

    def __init__(self, heads: int, d_state: int, dt_min: float = 1e-3, dt_max: float = 1e-1) -> None:
        super().__init__()
        modes = d_state // 2
        self.log_dt = nn.Parameter(torch.rand(heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.log_A_real = nn.Parameter(torch.full((heads, modes), math.log(0.5)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(modes).float().repeat(heads, 1))
        self.B = nn.Parameter(torch.view_as_real(torch.ones(heads, modes, dtype=torch.cfloat)).clone())
        self.C = nn.Parameter(torch.view_as_real(torch.randn(heads, modes, dtype=torch.cfloat)).clone())
        self.D = nn.Parameter(torch.randn(heads))

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Ā, C·B̄), each [heads, modes] complex."""
        dt = self.log_dt.float().exp()[:, None]
        dtA = dt * torch.complex(-self.log_A_real.float().exp(), self.A_imag.float())
        B, C = torch.view_as_complex(self.B.float()), torch.view_as_complex(self.C.float())
        return (1 + dtA / 2) / (1 - dtA / 2), C * B * dt / (1 - dtA / 2)

    def kernel(self, seq_len: int) -> torch.Tensor:
        """K[h, l] = 2·Re(Σ_n (C·B̄)_n Ā_n^l), [heads, L] (a Vandermonde product).

        Split as l = a·c + b (c ≈ √L): Ā^l = Ā^{ac} Ā^b, so K[h, a, b] is one matrix product
        [L/c, N/2] @ [N/2, c] per head, never an [N/2, L] table of powers."""
        dA, cb = self.discrete()
        log_dA = dA.log()[..., None]  # [H, N/2, 1]
        c = math.isqrt(seq_len - 1) + 1  # c² ≥ seq_len
        steps = torch.arange(c, device=dA.device)
        inner = torch.exp(log_dA * steps)  # Ā^b, [H, N/2, c]
        outer = cb[..., None] * torch.exp(log_dA * (steps * c))  # (C·B̄) Ā^{ac}, [H, N/2, c]
        return 2 * (outer.transpose(-1, -2) @ inner).real.flatten(-2)[:, :seq_len]  # [H, c·c] → [H, L]

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u [..., H, L] → [..., H, L] (convolution form; leading dims share the head's SSM)."""
        return fft_causal_conv(u, self.kernel(u.shape[-1])) + u * self.D[:, None]

    def step(self, u_t: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u_t [..., H], h [..., H, N/2] complex → (y_t [..., H], new h)."""
        dA, cb = self.discrete()
        h = dA * h + cb * u_t[..., None]  # C folded into the input side (diagonal, so equivalent)
        return 2 * h.sum(-1).real + self.D * u_t, h


class H3(nn.Module):
    """H3: a shift SSM on keys and a diagonal SSM per head on key-value products, gated by queries.

    Projections are named as upstream's (q_proj, k_proj, v_proj, output_linear), so the
    model's init treats them alike (N(0, 0.02), the output projection not depth-scaled).

    Args:
        d_state: state dimension N of both SSMs (shift register length; real scalars, N/2
            complex modes, per head of the diagonal SSM); even. Upstream's Figure 2 uses d_model / 4
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
        self.shift = ShiftSSM(d_model, d_state)
        self.ssm = DiagonalSSM(self.num_heads, d_state)
        self.output_linear = nn.Linear(d_model, d_model)

    def _kv(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """k, v [..., D] → per-head outer products, [..., dh(k), dh(v), H]."""
        k = k.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-1, -2)  # [..., dh, H]
        v = v.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-1, -2)
        return k.unsqueeze(-2) * v.unsqueeze(-3)

    def _read(self, q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """q [..., D], y [..., dh(k), dh(v), H] → Σ_i q_i y_ij per head, [..., D] ordered (head, j)."""
        q = q.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-1, -2)  # [..., dh(k), H]
        return (q.unsqueeze(-2) * y).sum(-3).transpose(-1, -2).flatten(-2)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q_proj(u), self.k_proj(u), self.v_proj(u)  # [B, L, D]
        k = self.shift(k)
        kv = self._kv(k, v).permute(0, 2, 3, 4, 1)  # [B, dh, dh, H, L]
        y = self.ssm(kv).permute(0, 4, 1, 2, 3)  # [B, L, dh, dh, H]
        return self.output_linear(self._read(q, y))

    def recurrent(self, u: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Step by step. State: the shift register's slots [B, D, d_state-1] and the diagonal
        SSM's complex state [B, dh, dh, H, d_state/2]."""
        b = u.shape[0]
        q, k, v = self.q_proj(u), self.k_proj(u), self.v_proj(u)
        s = u.new_zeros(b, self.d_model, self.d_state - 1)
        h = torch.zeros(b, self.head_dim, self.head_dim, self.num_heads, self.d_state // 2,
                        dtype=torch.complex64, device=u.device)
        ys = []
        for t in range(u.shape[1]):
            k_t, s = self.shift.step(k[:, t], s)
            y_t, h = self.ssm.step(self._kv(k_t, v[:, t]), h)
            ys.append(self._read(q[:, t], y_t))
        return self.output_linear(torch.stack(ys, dim=1)), (s, h)

    def state_size(self, seq_len: int) -> int:
        """Shift SSM: d_state - 1 register slots per channel, (d_state - 1) · d_model; diagonal
        SSM: d_state real scalars (d_state/2 complex modes) per head and key-value entry,
        d_state · d_model · head_dim. Independent of seq_len."""
        return (self.d_state - 1) * self.d_model + self.d_state * self.d_model * self.head_dim
