"""Forgetting Attention, the mixer of the Forgetting Transformer (FoX; Lin et al. 2025,
arXiv 2503.02130; zhixuan-lin/forgetting-transformer, fla's ``layers/forgetting_attn.py``
and ``ops/forgetting_attn/naive.py``).

Causal softmax attention whose logits carry a data-dependent, cumulative log forget gate:

    f_t = sigmoid(w_fᵀ x_t + b_f) ∈ (0, 1)      one forget gate per head and position
    c_t = Σ_{l≤t} log f_l
    o_i = Σ_{j≤i} softmax_j(q_i·k_j/√d + c_i - c_j) v_j

so key j is down-weighted by Π_{j<l≤i} f_l: a learned, input-dependent recency bias in
place of positional embeddings (FoX uses none). c_i is the same for every j of query i
and cancels in the softmax, so inference keeps, per cached key, the bias -c_j measured
from the newest position: the KV cache plus one scalar per head and position, each
step adding log f_t to every cached bias. Training is quadratic in length, like attention.

Follows fla's layer (the paper's basic FoX): no bias on q, k, v; optional QK-RMSNorm per
head and sigmoid output gate (parts of the paper's "Pro" block; its output norm and key/value
shift are left out). The forget-gate bias b_f starts at ``forget_bias_init``: 0 by default,
as the reference's data-dependent gate (f ≈ 0.5 at the start, so a key 20 positions back
is down-weighted by ≈ e^-14; the reference's special bias init is for its data-independent
gates only). On a small MQAR cell (vocab 32, length 32, 4 pairs, d_model 64, 4,000
examples, 12 epochs at lr 1e-3, three seeds) that start stayed on the plateau (0.24–0.29)
while forget_bias_init = 4 (f ≈ 0.98) left it (0.31–0.46).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoology.errors import FieldError
from zoology.mixers._ops import RMSNorm, rms_norm


class ForgettingAttention(nn.Module):
    """Forgetting Attention (FoX): softmax attention plus a data-dependent forget gate per head,
    added to the logits as a cumulative log decay.

    Args:
        num_heads: attention (query) heads; d_model must be divisible by it
        num_kv_heads: key/value heads shared by groups of query heads; 0 means num_heads
        qk_norm: RMS-normalise queries and keys per head (learned scale) before the dot product
        use_output_gate: multiply the attention output by sigmoid(W_g x) before the projection
        forget_bias_init: initial forget-gate bias b_f (f starts near sigmoid(b_f); 0 is the reference's)
    """

    name = "forgetting_attention"

    def __init__(self, d_model: int, num_heads: int = 1, num_kv_heads: int = 0, qk_norm: bool = False,
                 use_output_gate: bool = False, forget_bias_init: float = 0.0) -> None:
        super().__init__()
        if num_heads < 1 or d_model % num_heads:
            raise FieldError("num_heads", f"must be >= 1 and divide d_model={d_model}, got {num_heads}")
        kv_heads = num_kv_heads or num_heads
        if num_kv_heads < 0 or num_heads % kv_heads:
            raise FieldError("num_kv_heads", f"must be >= 0 and divide num_heads={num_heads}, got {num_kv_heads}")
        self.d_model, self.num_heads, self.num_kv_heads = d_model, num_heads, kv_heads
        self.head_dim = d_model // num_heads
        self.kv_dim = kv_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, self.kv_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.kv_dim, bias=False)
        self.f_proj = nn.Linear(d_model, num_heads, bias=False)  # forget-gate logits: W_f x + b_f
        # b_f: a plain parameter, not a Linear's bias (which the model's generic init zeroes)
        self.f_bias = nn.Parameter(torch.full((num_heads,), forget_bias_init))
        self.q_norm = RMSNorm(d_model) if qk_norm else None  # weights for every head, applied per head
        self.k_norm = RMSNorm(self.kv_dim) if qk_norm else None
        self.g_proj = nn.Linear(d_model, d_model, bias=False) if use_output_gate else None
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [B, L, D] → q [B, H, L, Dh], k, v [B, KV heads, L, Dh], log f [B, H, L] (float)."""
        b, l, _ = x.shape
        q = self.q_proj(x).view(b, l, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, l, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, l, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:  # per head: normalise each head_dim slice, then the per-channel scale
            q = self._norm_heads(q, self.q_norm)
            k = self._norm_heads(k, self.k_norm)
        logits = self.f_proj(x) + self.f_bias
        log_f = F.logsigmoid(logits.to(torch.promote_types(x.dtype, torch.float32)))
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), log_f.transpose(1, 2)

    @staticmethod
    def _norm_heads(t: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
        """RMS-normalise each head of t [B, L, heads, Dh]; norm holds heads·Dh scales."""
        return rms_norm(t, norm.weight.view(t.shape[-2:]), norm.eps)

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o [B, H, L, Dh] → (gate) → out_proj, [B, L, D]."""
        b, _, l, _ = o.shape
        o = o.transpose(1, 2).reshape(b, l, self.d_model)
        if self.g_proj is not None:
            o = o * torch.sigmoid(self.g_proj(x))
        return self.out_proj(o)

    def _repeat_kv(self, t: torch.Tensor) -> torch.Tensor:
        """[B, KV heads, ...] → [B, H, ...], each key/value head serving its group of query heads."""
        group = self.num_heads // self.num_kv_heads
        return t.repeat_interleave(group, dim=1) if group > 1 else t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, log_f = self._inputs(x)
        l = x.shape[1]
        c = log_f.cumsum(-1)  # [B, H, L]
        bias = c.unsqueeze(-1) - c.unsqueeze(-2)  # c_i - c_j, [B, H, L(i), L(j)]
        causal = torch.ones(l, l, dtype=torch.bool, device=x.device).tril()
        bias = bias.masked_fill(~causal, float("-inf")).to(q.dtype)
        o = F.scaled_dot_product_attention(q, self._repeat_kv(k), self._repeat_kv(v), attn_mask=bias)
        return self._output(o, x)

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Token by token with a KV cache and, per cached key and head, its forget bias
        c_t - c_j (decayed by log f_t each step). Returns the output and the final cache
        (keys, values [B, KV heads, L, Dh], biases [B, H, L])."""
        q, k, v, log_f = self._inputs(x)
        b, l = x.shape[:2]
        keys, values = k[:, :, :0], v[:, :, :0]
        bias = log_f.new_zeros(b, self.num_heads, 0)
        outs = []
        for t in range(l):
            keys = torch.cat([keys, k[:, :, t: t + 1]], dim=2)  # [B, KV heads, t+1, Dh]
            values = torch.cat([values, v[:, :, t: t + 1]], dim=2)
            # every older key is one forget gate further away; the new key starts at 0
            bias = torch.cat([bias + log_f[:, :, t: t + 1], log_f.new_zeros(b, self.num_heads, 1)], dim=2)
            logits = (q[:, :, t: t + 1] @ self._repeat_kv(keys).transpose(-1, -2)) * self.head_dim**-0.5
            att = (logits + bias.unsqueeze(2).to(logits.dtype)).softmax(-1)  # [B, H, 1, t+1]
            outs.append(att @ self._repeat_kv(values))
        return self._output(torch.cat(outs, dim=2), x), (keys, values, bias)

    def state_size(self, seq_len: int) -> int:
        """(2·num_kv_heads·head_dim + num_heads) · seq_len: a key and a value per key/value head
        and one forget bias per query head, for every position (2·d_model + num_heads per
        position without key/value sharing)."""
        return (2 * self.kv_dim + self.num_heads) * seq_len
