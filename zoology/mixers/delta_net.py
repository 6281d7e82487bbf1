"""DeltaNet (Schlag et al. 2021; Yang et al. 2024, arXiv 2406.06484) and Gated DeltaNet
(Yang et al. 2025, arXiv 2412.06464): linear attention whose state is *corrected* rather
than only accumulated.

    DeltaNet:        S_t = (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ
    Gated DeltaNet:  S_t = α_t (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ
    o_t = q_tᵀ S_t

Each step moves S's prediction for key k_t towards v_t by a step β_t (the delta rule:
one step of online regression), so an old value stored under the same key is replaced.
α_t (Mamba-2-style data-dependent decay) lets the state forget. Training uses the chunked
WY form (``_ops.chunk_delta_rule``), linear in length. Both use short convolutions on q,
k, v (with SiLU) and L2-normalised q and k, as the reference implementations do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoology.errors import FieldError
from zoology.mixers._ops import (
    RMSNorm,
    ShortConvolution,
    chunk_delta_rule,
    delta_rule_step,
    dt_bias_init,
    head_widths,
)


class DeltaNet(nn.Module):
    """DeltaNet: linear attention updated by the delta rule (β-weighted key-value correction).

    Args:
        num_heads: heads; key and value widths must be divisible by it
        expand_k: key width as a multiple of d_model
        expand_v: value width as a multiple of d_model
        use_short_conv: causal short convolutions (with SiLU) on q, k and v
        conv_size: length of those convolutions
    """

    name = "delta_net"
    gated = False
    chunk_size = 16

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        use_short_conv: bool = True,
        conv_size: int = 4,
    ) -> None:
        super().__init__()
        self.key_dim, self.value_dim, self.head_k, self.head_v = head_widths(d_model, num_heads, expand_k, expand_v)
        if conv_size < 1:
            raise FieldError("conv_size", f"must be >= 1, got {conv_size}")
        self.num_heads, self.use_short_conv, self.conv_size = num_heads, use_short_conv, conv_size
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.b_proj = nn.Linear(d_model, num_heads, bias=False)  # β_t = sigmoid(b_proj x_t)
        if use_short_conv:
            self.q_conv = ShortConvolution(self.key_dim, conv_size, bias=False, activation="silu")
            self.k_conv = ShortConvolution(self.key_dim, conv_size, bias=False, activation="silu")
            self.v_conv = ShortConvolution(self.value_dim, conv_size, bias=False, activation="silu")
        if self.gated:
            self.a_proj = nn.Linear(d_model, num_heads, bias=False)  # α_t's data-dependent part
            # reference init: A ~ U(0, 16) stored as log; softplus(dt_bias) log-uniform in [1e-3, 1e-1]
            # (plain parameters, so the model's generic init of Linear weights leaves them alone)
            self.A_log = nn.Parameter(torch.empty(num_heads).uniform_(0, 16).clamp(min=1e-4).log())
            self.dt_bias = nn.Parameter(dt_bias_init(num_heads, 1e-3, 1e-1, 1e-4))
            self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)  # output gate
        self.norm = RMSNorm(self.head_v)
        self.out_proj = nn.Linear(self.value_dim, d_model, bias=False)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, L, D] → q, k [B, L, key width], v [B, L, value width] (before the short convs)."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if not self.use_short_conv:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        return q, k, v

    def _heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """[B, L, ·] → q, k [B, H, L, K] (L2-normalised, q scaled), v [B, H, L, V], β, log α [B, H, L]."""
        b, l, _ = x.shape
        def heads(t):
            return t.view(b, l, self.num_heads, -1).transpose(1, 2)
        q = F.normalize(heads(q), dim=-1) * self.head_k**-0.5
        k = F.normalize(heads(k), dim=-1)
        beta = torch.sigmoid(self.b_proj(x)).transpose(1, 2)
        if self.gated:  # log α = -exp(A_log)·softplus(a_proj x + dt_bias) ≤ 0
            log_alpha = -self.A_log.exp() * F.softplus(self.a_proj(x) + self.dt_bias)
            log_alpha = log_alpha.transpose(1, 2)
        else:
            log_alpha = torch.zeros_like(beta)
        return q, k, heads(v), beta, log_alpha

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o [B, H, L, V] → per-head RMSNorm (swish-gated when gated) → out_proj, [B, L, D]."""
        b, l, _ = x.shape
        gate = self.g_proj(x).view(b, l, self.num_heads, self.head_v) if self.gated else None
        return self.out_proj(self.norm(o.transpose(1, 2), gate).reshape(b, l, self.value_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._project(x)
        if self.use_short_conv:
            q, k, v = self.q_conv(q), self.k_conv(k), self.v_conv(v)
        q, k, v, beta, log_alpha = self._heads(q, k, v, x)
        o, _ = chunk_delta_rule(q, k, v, beta, log_alpha if self.gated else None, chunk_size=self.chunk_size)
        return self._output(o, x)

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Token by token. State: S [B, H, K/H, V/H], plus the three short convolutions' last
        conv_size-1 inputs when use_short_conv."""
        q, k, v = self._project(x)
        if self.use_short_conv:
            convs = (self.q_conv, self.k_conv, self.v_conv)
            conv_states = [c.init_state(t) for c, t in zip(convs, (q, k, v))]
            cols: list[list[torch.Tensor]] = [[], [], []]
            for t in range(x.shape[1]):  # the short convolutions, one step at a time
                for i, (c, src) in enumerate(zip(convs, (q, k, v))):
                    y, conv_states[i] = c.step(src[:, t], conv_states[i])
                    cols[i].append(y)
            q, k, v = (torch.stack(c, dim=1) for c in cols)
        q, k, v, beta, log_alpha = self._heads(q, k, v, x)
        S = q.new_zeros(x.shape[0], self.num_heads, self.head_k, self.head_v)
        outs = []
        for t in range(x.shape[1]):
            o, S = delta_rule_step(S, q[:, :, t], k[:, :, t], v[:, :, t], beta[:, :, t], log_alpha[:, :, t].exp())
            outs.append(o)
        state = (S, *conv_states) if self.use_short_conv else (S,)
        return self._output(torch.stack(outs, dim=2), x), state

    def state_size(self, seq_len: int) -> int:
        """One (key width/num_heads) × (value width/num_heads) matrix per head,
        key_width · value_width / num_heads, plus (conv_size - 1) · (2·key_width + value_width)
        for the short convolutions' last inputs when use_short_conv (key_width = expand_k·d_model,
        value_width = expand_v·d_model). Independent of seq_len."""
        conv = (self.conv_size - 1) * (2 * self.key_dim + self.value_dim) if self.use_short_conv else 0
        return self.num_heads * self.head_k * self.head_v + conv


class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet: the delta rule plus a Mamba-2-style data-dependent decay α_t per head.

    Same arguments as DeltaNet (documented there), with Gated DeltaNet's defaults.
    """

    name = "gated_delta_net"
    gated = True

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        expand_k: float = 1.0,
        expand_v: float = 2.0,
        use_short_conv: bool = True,
        conv_size: int = 4,
    ) -> None:
        super().__init__(d_model, num_heads, expand_k, expand_v, use_short_conv, conv_size)
