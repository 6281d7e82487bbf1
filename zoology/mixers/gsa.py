"""Gated Slot Attention (Zhang et al. 2024, arXiv 2409.07146; fla's ``layers/gsa.py`` and
``ops/gsa/naive.py``).

A bounded memory of ``num_slots`` slots per head, written and read like softmax attention
over the slots (ABC) with GLA-style forgetting. Per head, with α_t ∈ (0, 1)^M a
data-dependent forget gate per slot:

    α_t = exp(logsigmoid(W_f x_t) / τ),    s_t = 1 - α_t              (how much each slot takes in)
    K̃_t = K̃_{t-1} diag(α_t) + k_t s_tᵀ      K̃: [K, M]                 pass 1: slot keys
    Ṽ_t = diag(α_t) Ṽ_{t-1} + s_t v_tᵀ      Ṽ: [M, V]                 pass 2: slot values
    o_t = Ṽ_tᵀ softmax(K̃_tᵀ q_t)
    y_t = out(RMSNorm(silu(o_t)))

with q, k = swish(projections), v = silu(projection). Both passes are gated linear
attention (the first decays the columns of its state, the second the rows), so training
runs each as the chunked form (``_gated.chunk_gated_attention``, linear in length), with
the softmax over slots in between.

Follows fla's layer: no query scaling (its scale = 1), τ = 8, slots default to the key
width of a head; the RMSNorm spans the value width (fla sizes it by d_model, the same at
its default expand_v = 1). Left out: fla's optional short convolutions and key/value head
sharing (both off by default there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoology.errors import FieldError
from zoology.mixers._gated import chunk_gated_attention
from zoology.mixers._ops import RMSNorm, head_widths


class GatedSlotAttention(nn.Module):
    """Gated Slot Attention: two-pass gated linear attention over a bounded set of memory slots
    per head, read through a softmax over the slots.

    Args:
        num_heads: heads; key and value widths must be divisible by it
        num_slots: memory slots per head; 0 means the key width of a head (fla's default; the paper uses 64)
        expand_k: key width as a multiple of d_model
        expand_v: value width as a multiple of d_model
        gate_logit_normalizer: τ in log α = logsigmoid(·)/τ; larger means slower forgetting
    """

    name = "gsa"
    chunk_size: int | None = None  # chunk_gated_attention's choice by length

    def __init__(self, d_model: int, num_heads: int = 4, num_slots: int = 0, expand_k: float = 1.0,
                 expand_v: float = 1.0, gate_logit_normalizer: float = 8.0) -> None:
        super().__init__()
        self.key_dim, self.value_dim, self.head_k, self.head_v = head_widths(d_model, num_heads, expand_k, expand_v)
        if num_slots < 0:
            raise FieldError("num_slots", f"must be >= 0 (0: the key width of a head), got {num_slots}")
        if gate_logit_normalizer <= 0:
            raise FieldError("gate_logit_normalizer", f"must be > 0, got {gate_logit_normalizer}")
        self.num_heads, self.num_slots = num_heads, num_slots or self.head_k
        self.gate_logit_normalizer = gate_logit_normalizer
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.f_proj = nn.Linear(d_model, num_heads * self.num_slots, bias=False)
        self.norm = RMSNorm(self.value_dim)
        self.out_proj = nn.Linear(self.value_dim, d_model, bias=False)

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [B, L, D] → q, k [B, H, L, K], v [B, H, L, V], s = 1 - α and log α [B, H, L, M]."""
        b, l, _ = x.shape
        def heads(t):
            return t.view(b, l, self.num_heads, -1).transpose(1, 2)
        q, k, v = F.silu(self.q_proj(x)), F.silu(self.k_proj(x)), F.silu(self.v_proj(x))
        log_alpha = F.logsigmoid(self.f_proj(x)) / self.gate_logit_normalizer
        s = -torch.expm1(log_alpha)  # 1 - α
        return heads(q), heads(k), heads(v), heads(s), heads(log_alpha)

    def _output(self, o: torch.Tensor) -> torch.Tensor:
        """o [B, H, L, V] → silu, RMSNorm over the value width, out_proj → [B, L, D]."""
        b, _, l, _ = o.shape
        return self.out_proj(self.norm(F.silu(o).transpose(1, 2).reshape(b, l, self.value_dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, s, log_alpha = self._inputs(x)
        scores, _ = chunk_gated_attention(q, k, s, gv=log_alpha, chunk_size=self.chunk_size)  # K̃_tᵀ q_t, [B, H, L, M]
        p = scores.softmax(-1)  # attention over the slots
        o, _ = chunk_gated_attention(p, s, v, gk=log_alpha, chunk_size=self.chunk_size)  # [B, H, L, V]
        return self._output(o)

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Token by token. State: slot keys K̃ [B, H, K, M] and slot values Ṽ [B, H, M, V]."""
        q, k, v, s, log_alpha = self._inputs(x)
        b = x.shape[0]
        K_slots = x.new_zeros(b, self.num_heads, self.head_k, self.num_slots)
        V_slots = x.new_zeros(b, self.num_heads, self.num_slots, self.head_v)
        outs = []
        for t in range(x.shape[1]):
            alpha, s_t = log_alpha[:, :, t].exp(), s[:, :, t]  # [B, H, M]
            K_slots = K_slots * alpha[:, :, None, :] + k[:, :, t, :, None] * s_t[:, :, None, :]
            V_slots = alpha[..., None] * V_slots + s_t[..., None] * v[:, :, t, None, :]
            p = torch.einsum("bhk,bhkm->bhm", q[:, :, t], K_slots).softmax(-1)
            outs.append(torch.einsum("bhm,bhmv->bhv", p, V_slots))
        return self._output(torch.stack(outs, dim=2)), (K_slots, V_slots)

    def state_size(self, seq_len: int) -> int:
        """num_heads · num_slots · (key width + value width)/num_heads: per head, a key and a value
        for every slot. Independent of seq_len."""
        return self.num_heads * self.num_slots * (self.head_k + self.head_v)
