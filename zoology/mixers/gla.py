"""Gated Linear Attention (Yang et al. 2024, arXiv 2312.06635).

    S_t = diag(α_t) S_{t-1} + k_t v_tᵀ,   o_t = q_tᵀ S_t,   α_t = exp(logsigmoid(W_α x_t) / τ)

A data-dependent forget gate per key channel; output RMS-normalised per head and gated
by swish(W_g x). Training: chunked form (``_gated.chunk_gated_attention``), linear in length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoology.errors import FieldError
from zoology.mixers._gated import chunk_gated_attention
from zoology.mixers._ops import RMSNorm, head_widths


class GatedLinearAttention(nn.Module):
    """GLA: linear attention with a data-dependent, per-key-channel decay.

    Args:
        num_heads: heads; key and value widths must be divisible by it
        expand_k: key width as a multiple of d_model
        expand_v: value width as a multiple of d_model
        gate_low_rank_dim: rank of the forget-gate projection
        gate_logit_normalizer: τ in log α = logsigmoid(·)/τ; larger means slower forgetting
    """

    name = "gla"
    chunk_size: int | None = None  # chunk_gated_attention's choice by length

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = 16.0,
    ) -> None:
        super().__init__()
        self.key_dim, self.value_dim, self.head_k, self.head_v = head_widths(d_model, num_heads, expand_k, expand_v)
        if gate_low_rank_dim < 1:
            raise FieldError("gate_low_rank_dim", f"must be >= 1, got {gate_low_rank_dim}")
        if gate_logit_normalizer <= 0:
            raise FieldError("gate_logit_normalizer", f"must be > 0, got {gate_logit_normalizer}")
        self.num_heads, self.gate_logit_normalizer = num_heads, gate_logit_normalizer
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)  # output gate
        self.gk_proj = nn.Sequential(  # low-rank forget gate
            nn.Linear(d_model, gate_low_rank_dim, bias=False), nn.Linear(gate_low_rank_dim, self.key_dim, bias=True)
        )
        self.norm = RMSNorm(self.head_v)
        self.out_proj = nn.Linear(self.value_dim, d_model, bias=False)

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [B, L, D] → q, k [B, H, L, K], v [B, H, L, V], log α [B, H, L, K] (≤ 0)."""
        b, l, _ = x.shape
        def heads(t):
            return t.view(b, l, self.num_heads, -1).transpose(1, 2)
        q = heads(self.q_proj(x)) * self.head_k**-0.5
        k, v = heads(self.k_proj(x)), heads(self.v_proj(x))
        log_alpha = heads(F.logsigmoid(self.gk_proj(x)) / self.gate_logit_normalizer)
        return q, k, v, log_alpha

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o [B, H, L, V] → norm, swish gate, projection → [B, L, D]."""
        b, l, _ = x.shape
        gate = self.g_proj(x).view(b, l, self.num_heads, self.head_v)
        o = self.norm(o.transpose(1, 2), gate)  # [B, L, H, V]
        return self.out_proj(o.reshape(b, l, self.value_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, log_alpha = self._inputs(x)
        o, _ = chunk_gated_attention(q, k, v, gk=log_alpha, chunk_size=self.chunk_size)
        return self._output(o, x)

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token by token: S = α_t ⊙ S + k_t v_tᵀ; o_t = q_tᵀ S. State [B, H, K/H, V/H]."""
        q, k, v, log_alpha = self._inputs(x)
        S = q.new_zeros(x.shape[0], self.num_heads, self.head_k, self.head_v)
        outs = []
        for t in range(x.shape[1]):
            S = log_alpha[:, :, t, :, None].exp() * S + k[:, :, t, :, None] * v[:, :, t, None, :]
            outs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], S))
        return self._output(torch.stack(outs, dim=2), x), S

    def state_size(self, seq_len: int) -> int:
        """One (key width/num_heads) × (value width/num_heads) matrix per head:
        key_width · value_width / num_heads, with key_width = expand_k·d_model and
        value_width = expand_v·d_model. Independent of seq_len."""
        return self.num_heads * self.head_k * self.head_v
