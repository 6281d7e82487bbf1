"""Based (Arora et al. 2024, arXiv 2402.18668): linear attention with a 2nd-order Taylor
feature map of exp(q·k/√d), optionally plus a small sliding-window softmax attention.

The Taylor map gives global recall with a fixed state; the window gives exact,
softmax-sharp attention to recent tokens. Their outputs are summed.
"""

from __future__ import annotations

import torch
from torch import nn

from zoology.errors import FieldError
from zoology.mixers.attention import SlidingWindowAttention
from zoology.mixers.linear_attention import LinearAttention


class Based(nn.Module):
    """Based: Taylor-exponential linear attention (+ optional local sliding-window attention).

    Args:
        feature_dim: query/key dimension per head before the Taylor map (state grows as its square)
        num_heads: linear-attention heads; d_model must be divisible by it
        window: sliding-window softmax attention over this many recent positions; 0 disables it
        window_heads: heads of the sliding-window attention
        eps: added to the linear-attention normaliser
    """

    name = "based"

    def __init__(
        self,
        d_model: int,
        max_seq_len: int = 2048,
        feature_dim: int = 16,
        num_heads: int = 1,
        window: int = 0,
        window_heads: int = 1,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if window < 0:
            raise FieldError("window", f"must be >= 0 (0 disables it), got {window}")
        self.linear = LinearAttention(
            d_model, max_seq_len, feature_map="taylor_exp", feature_dim=feature_dim, num_heads=num_heads, eps=eps
        )
        try:
            self.local = SlidingWindowAttention(d_model, window=window, num_heads=window_heads) if window else None
        except FieldError as exc:
            raise FieldError("window_heads" if exc.field == "num_heads" else exc.field, exc.message) from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return y if self.local is None else y + self.local(x)

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """Linear-attention state [B, H, F, V+1], plus the window's KV cache if any."""
        y, state = self.linear.recurrent(x)
        if self.local is None:
            return y, (state,)
        y_local, cache = self.local.recurrent(x)
        return y + y_local, (state, *cache)

    def state_size(self, seq_len: int) -> int:
        """Linear attention: num_heads · (1 + f + f²) · (d_model/num_heads + 1) with f = feature_dim
        (the Taylor-feature × value matrix and the normaliser), plus, with a window, its KV cache
        of 2 · d_model · min(window, seq_len)."""
        local = self.local.state_size(seq_len) if self.local is not None else 0
        return self.linear.state_size(seq_len) + local
