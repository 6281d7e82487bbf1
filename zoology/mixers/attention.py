"""Causal softmax attention: full (multi-head, grouped/multi-query) and sliding-window."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoology.errors import FieldError


def _check_heads(d_model: int, num_heads: int, num_kv_heads: int) -> int:
    """Validate head counts; return the number of key/value heads (0 means num_heads)."""
    if num_heads < 1:
        raise FieldError("num_heads", f"must be >= 1, got {num_heads}")
    if d_model % num_heads:
        raise FieldError("num_heads", f"must divide d_model={d_model}, got {num_heads}")
    if num_kv_heads < 0:
        raise FieldError("num_kv_heads", f"must be >= 0 (0 means num_heads), got {num_kv_heads}")
    kv = num_kv_heads or num_heads
    if num_heads % kv:
        raise FieldError("num_kv_heads", f"must divide num_heads={num_heads}, got {num_kv_heads}")
    return kv


class _QKV(nn.Module):
    """Shared projections: queries on every head, keys/values on the (fewer) KV heads."""

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_kv_heads = _check_heads(d_model, num_heads, num_kv_heads)
        if not 0.0 <= dropout < 1.0:
            raise FieldError("dropout", f"must be in [0, 1), got {dropout}")
        self.d_model, self.num_heads, self.dropout = d_model, num_heads, dropout
        self.head_dim = d_model // num_heads
        self.kv_dim = self.num_kv_heads * self.head_dim
        self.Wqkv = nn.Linear(d_model, d_model + 2 * self.kv_dim)
        self.out_proj = nn.Linear(d_model, d_model)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, L, D] → q [B, H, L, Dh] and k, v [B, H, L, Dh] (KV heads repeated over their group)."""
        b, l, _ = x.shape
        q, k, v = self.Wqkv(x).split([self.d_model, self.kv_dim, self.kv_dim], dim=-1)
        q = q.view(b, l, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = (t.view(b, l, self.num_kv_heads, self.head_dim).transpose(1, 2) for t in (k, v))
        group = self.num_heads // self.num_kv_heads  # query heads sharing one KV head
        if group > 1:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return q, k, v

    def out(self, y: torch.Tensor) -> torch.Tensor:
        """y [B, H, L, Dh] → [B, L, D]."""
        b, _, l, _ = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(b, l, self.d_model))


class Attention(_QKV):
    """Multi-head causal softmax attention (scaled dot product), with optional grouped-query
    (num_kv_heads < num_heads) or multi-query (num_kv_heads = 1) key/value sharing.

    Args:
        num_heads: attention (query) heads; d_model must be divisible by it
        dropout: dropout on the attention weights while training
        num_kv_heads: key/value heads, shared by groups of query heads; must divide num_heads; 0 means num_heads
    """

    name = "attention"

    def __init__(self, d_model: int, num_heads: int = 1, dropout: float = 0.0, num_kv_heads: int = 0) -> None:
        super().__init__(d_model, num_heads, num_kv_heads, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)  # each [B, H, L, Dh]
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # [B, H, L, Dh]
        return self.out(y)

    def state_size(self, seq_len: int) -> int:
        """KV cache: a key and a value of num_kv_heads·head_dim scalars for every position
        (2·d_model·seq_len without grouping)."""
        return 2 * self.kv_dim * seq_len


class SlidingWindowAttention(_QKV):
    """Causal softmax attention over the last ``window`` positions only (local attention).

    Each query sees itself and the window-1 positions before it, so the KV cache never
    grows past the window. Training form is blocked: queries of block i (window long)
    attend to keys of blocks i-1 and i, time and memory linear in length.

    Args:
        window: positions each query attends to, itself included
        num_heads: attention (query) heads; d_model must be divisible by it
        num_kv_heads: key/value heads shared by groups of query heads; 0 means num_heads
        dropout: dropout on the attention weights while training
    """

    name = "sliding_window_attention"

    def __init__(
        self, d_model: int, window: int = 64, num_heads: int = 1, num_kv_heads: int = 0, dropout: float = 0.0
    ) -> None:
        if window < 1:
            raise FieldError("window", f"must be >= 1, got {window}")
        super().__init__(d_model, num_heads, num_kv_heads, dropout)
        self.window = window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)  # each [B, H, L, Dh]
        b, h, l, dh = q.shape
        w = self.window
        n = -(-l // w)  # blocks of `window` positions
        q, k, v = (F.pad(t, (0, 0, 0, n * w - l)).view(b, h, n, w, dh) for t in (q, k, v))
        # keys of block i: blocks i-1 and i (block -1 is zeros, masked below)
        k2, v2 = (torch.cat([F.pad(t, (0, 0, 0, 0, 1, 0))[:, :, :-1], t], dim=3) for t in (k, v))  # [B, H, N, 2w, Dh]
        qpos = torch.arange(n * w, device=x.device).view(n, w, 1)  # absolute query positions
        start = torch.arange(n, device=x.device).view(n, 1, 1) * w - w  # first key of each block
        kpos = start + torch.arange(2 * w, device=x.device)  # [N, 1, 2w] absolute key positions
        lag = qpos - kpos  # [N, w, 2w]: how far back each key is
        mask = (lag >= 0) & (lag < w) & (kpos >= 0)
        y = F.scaled_dot_product_attention(
            q, k2, v2, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # [B, H, N, w, Dh]
        return self.out(y.reshape(b, h, n * w, dh)[:, :, :l])

    def state_size(self, seq_len: int) -> int:
        """KV cache bounded by the window: a key and a value of num_kv_heads·head_dim scalars
        for each of the last min(window, seq_len) positions."""
        return 2 * self.kv_dim * min(self.window, seq_len)

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Token by token with a KV cache of the last ``window`` positions (the inference form).

        Returns the output and the final cache (keys, values), each [B, KV heads, min(window, L), Dh].
        """
        _b, l, _ = x.shape
        q, k, v = self.qkv(x)  # [B, H, L, Dh]
        group = self.num_heads // self.num_kv_heads
        ys = []
        for t in range(l):
            lo = max(0, t - self.window + 1)
            k_cache, v_cache = k[:, :, lo: t + 1], v[:, :, lo: t + 1]  # [B, H, ≤window, Dh]
            att = (q[:, :, t: t + 1] @ k_cache.transpose(-1, -2)) * self.head_dim**-0.5
            ys.append(att.softmax(-1) @ v_cache)  # [B, H, 1, Dh]
        lo = max(0, l - self.window)
        cache = (k[:, ::group, lo:], v[:, ::group, lo:])  # one copy per KV head
        return self.out(torch.cat(ys, dim=2)), cache
