"""Multi-head causal softmax attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoology.errors import FieldError


class Attention(nn.Module):
    """Multi-head causal softmax attention (scaled dot product).

    Args:
        num_heads: attention heads; d_model must be divisible by it
        dropout: dropout on the attention weights while training
    """

    name = "attention"

    def __init__(self, d_model: int, num_heads: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if num_heads < 1:
            raise FieldError("num_heads", f"must be >= 1, got {num_heads}")
        if d_model % num_heads:
            raise FieldError("num_heads", f"must divide d_model={d_model}, got {num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise FieldError("dropout", f"must be in [0, 1), got {dropout}")
        self.d_model, self.num_heads, self.dropout = d_model, num_heads, dropout
        self.Wqkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, l, d = x.shape
        qkv = self.Wqkv(x).view(b, l, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, L, Dh]
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # [B, H, L, Dh]
        return self.out_proj(y.transpose(1, 2).reshape(b, l, d))

    def state_size(self, seq_len: int) -> int:
        """KV cache: a key and a value of d_model scalars for every position."""
        return 2 * self.d_model * seq_len
