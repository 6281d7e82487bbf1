"""Mamba (Gu & Dao 2023, arXiv 2312.00752) and Mamba-2 / SSD (Dao & Gu 2024, arXiv 2405.21060).

Selective state space models: a diagonal linear recurrence whose step size Δ_t and
input/output maps B_t, C_t depend on the token, so the model chooses what to store.

    Mamba:    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t    (h: [d_inner, d_state], A diagonal per channel)
              y_t = C_t h_t + D x_t
    Mamba-2:  the same with a scalar A per head (state [headdim, d_state]), which makes the
              recurrence a decayed linear attention (q = C, k = B, v = Δ·x): chunked, matmul-heavy.

Both wrap the SSM in: in_proj → causal depthwise conv + SiLU → SSM → gate with SiLU(z) → out_proj.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoology.errors import FieldError
from zoology.mixers._ops import HeadRMSNorm, ShortConvolution, chunk_linear_attention, dt_bias_init


def _check_common(d_state: int, d_conv: int, expand: int) -> None:
    if d_state < 1:
        raise FieldError("d_state", f"must be >= 1, got {d_state}")
    if d_conv < 1:
        raise FieldError("d_conv", f"must be >= 1, got {d_conv}")
    if expand < 1:
        raise FieldError("expand", f"must be >= 1, got {expand}")


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

    def _ssm_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, L, Di] (after conv) → decay exp(ΔA) [B, L, Di, N], input ΔBx [B, L, Di, N], C [B, L, N]."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))  # [B, L, Di]
        A = -self.A_log.float().exp()  # [Di, N]
        decay = torch.exp(dt.unsqueeze(-1) * A)
        inp = (dt * x).unsqueeze(-1) * B.unsqueeze(2)
        return decay, inp, C

    def _scan(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The selective scan, one position at a time (linear in length; as mamba_ssm's reference).
        x [B, L, Di] → y [B, L, Di], final h [B, Di, N]."""
        decay, inp, C = self._ssm_inputs(x)
        h = x.new_zeros(x.shape[0], self.d_inner, self.d_state)
        hs = []
        for decay_t, inp_t in zip(decay.unbind(1), inp.unbind(1)):  # unbind: a linear-time backward
            h = decay_t * h + inp_t
            hs.append(h)
        y = torch.einsum("bldn,bln->bld", torch.stack(hs, dim=1), C)
        return y + x * self.D, h

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(u).chunk(2, dim=-1)  # [B, L, Di] each
        y, _ = self._scan(self.conv(x))
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
        self.norm = HeadRMSNorm(self.d_inner)
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
        """y [B, H, L, P] + D skip → RMSNorm(y ⊙ SiLU(z)) → out_proj, [B, L, D]."""
        y = y + x * self.D[:, None, None]
        b, h, l, p = y.shape
        y = y.transpose(1, 2).reshape(b, l, h * p)
        return self.out_proj(self.norm(y * F.silu(z)))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        z, xBC, dt = self._split(u)
        x, q, k, v, log_decay = self._ssd_inputs(self.conv(xBC), dt)
        y, _ = chunk_linear_attention(q, k, v, log_decay, chunk_size=self.chunk_size)
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
        return self._output(torch.stack(ys, dim=2), torch.stack(xs, dim=2), z), (conv_state, h)

    def state_size(self, seq_len: int) -> int:
        """SSM state nheads · headdim · d_state = expand · d_model · d_state, plus the
        convolution's last inputs (d_conv - 1) · (expand · d_model + 2 · ngroups · d_state).
        Independent of seq_len."""
        return self.nheads * self.headdim * self.d_state + (self.d_conv - 1) * self.conv_dim
