"""RetNet's multi-scale retention (Sun et al. 2023, arXiv 2307.08621).

    S_t = γ_h S_{t-1} + k_t v_tᵀ,   o_t = q_tᵀ S_t       (γ_h = 1 - 2^(-5-h), fixed per head)

Linear attention with a fixed exponential decay per head (several time scales at once),
rotary positions on q and k, per-head normalisation and a swish output gate. Training
uses the chunked form (``_ops.chunk_linear_attention``), linear in length.
"""

from __future__ import annotations

import torch
from torch import nn

from zoology.errors import FieldError
from zoology.mixers._ops import RMSNorm, chunk_linear_attention, head_widths, rotary


class MultiScaleRetention(nn.Module):
    """Multi-scale retention: per-head fixed decays 1 - 2^(-5-h), rotary q/k, swish gate.

    Args:
        num_heads: heads; key and value widths must be divisible by it
        expand_k: key width as a multiple of d_model
        expand_v: value width as a multiple of d_model
    """

    name = "retnet"
    chunk_size = 32

    def __init__(self, d_model: int, num_heads: int = 8, expand_k: float = 1.0, expand_v: float = 2.0) -> None:
        super().__init__()
        self.key_dim, self.value_dim, self.head_k, self.head_v = head_widths(d_model, num_heads, expand_k, expand_v)
        self.num_heads = num_heads
        if self.head_k % 2:
            raise FieldError("expand_k", f"key width per head must be even for rotary positions, got {self.head_k}")
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.norm = RMSNorm(self.head_v)
        self.out_proj = nn.Linear(self.value_dim, d_model, bias=False)
        # log γ_h for γ_h = 1 - 2^(-5-h): head 0 forgets fastest (~32 tokens)
        self.register_buffer("log_gamma", torch.log(1 - torch.pow(2.0, -5.0 - torch.arange(num_heads))))

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, l, _ = x.shape
        def heads(t):
            return t.view(b, l, self.num_heads, -1).transpose(1, 2)
        pos = torch.arange(l, device=x.device)
        q = rotary(heads(self.q_proj(x)), pos) * self.head_k**-0.5  # [B, H, L, K]
        k = rotary(heads(self.k_proj(x)), pos)
        return q, k, heads(self.v_proj(x))

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        b, l, _ = x.shape
        gate = self.g_proj(x).view(b, l, self.num_heads, self.head_v)
        return self.out_proj(self.norm(o.transpose(1, 2), gate).reshape(b, l, self.value_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._inputs(x)
        b, h, l, _ = q.shape
        log_decay = self.log_gamma.view(1, h, 1).expand(b, h, l)
        o, _ = chunk_linear_attention(q, k, v, log_decay, chunk_size=self.chunk_size)
        return self._output(o, x)

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token by token: S = γ S + k_t v_tᵀ; o_t = q_tᵀ S. State [B, H, K/H, V/H]."""
        q, k, v = self._inputs(x)
        gamma = self.log_gamma.exp().view(1, -1, 1, 1)
        S = q.new_zeros(x.shape[0], self.num_heads, self.head_k, self.head_v)
        outs = []
        for t in range(x.shape[1]):
            S = gamma * S + k[:, :, t, :, None] * v[:, :, t, None, :]
            outs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], S))
        return self._output(torch.stack(outs, dim=2), x), S

    def state_size(self, seq_len: int) -> int:
        """One (key width/num_heads) × (value width/num_heads) matrix per head:
        expand_k·d_model · expand_v·d_model / num_heads. Independent of seq_len (the rotary
        position is a counter, not counted)."""
        return self.num_heads * self.head_k * self.head_v

