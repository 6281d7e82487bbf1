"""A GRU sequence mixer: the classic fixed-state recurrent baseline."""

from __future__ import annotations

import torch
from torch import nn

from zoology import FieldError


class GRU(nn.Module):
    """Gated recurrent unit (Cho et al., 2014) over the sequence, then a linear map back
    to d_model. Causal by construction; its state is one hidden vector per layer,
    whatever the sequence length.

    Args:
        hidden_size: size of the recurrent state; 0 means d_model
        num_layers: stacked GRU layers inside this one mixer
        dropout: dropout between stacked GRU layers while training (needs num_layers > 1)
    """

    name = "example_gru"

    def __init__(self, d_model: int, hidden_size: int = 0, num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden_size < 0:
            raise FieldError("hidden_size", f"must be >= 0 (0 means d_model), got {hidden_size}")
        if num_layers < 1:
            raise FieldError("num_layers", f"must be >= 1, got {num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise FieldError("dropout", f"must be in [0, 1), got {dropout}")
        self.hidden_size = hidden_size or d_model
        self.num_layers = num_layers
        self.rnn = nn.GRU(d_model, self.hidden_size, num_layers=num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.out_proj = nn.Linear(self.hidden_size, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nn.GRU is not autocast-aware: run it in its weights' dtype, project back in x's
        h, _ = self.rnn(x.to(self.rnn.weight_ih_l0.dtype))  # [B, L, H], zero initial state
        return self.out_proj(h).to(x.dtype)  # [B, L, D]

    def state_size(self, seq_len: int) -> int:
        """The hidden vector of every layer: hidden_size·num_layers, independent of seq_len."""
        return self.hidden_size * self.num_layers
