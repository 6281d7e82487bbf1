"""State mixers: per-position channel mixing (no state across positions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoology.errors import FieldError


def _check_mult(hidden_mult: float) -> None:
    if hidden_mult <= 0:
        raise FieldError("hidden_mult", f"must be > 0, got {hidden_mult}")


class MLP(nn.Module):
    """Two-layer feed-forward block with (exact) GELU: d_model → hidden_mult·d_model → d_model.

    Args:
        hidden_mult: hidden width as a multiple of d_model
    """

    name = "mlp"
    role = "state"

    def __init__(self, d_model: int, hidden_mult: float = 4.0) -> None:
        super().__init__()
        _check_mult(hidden_mult)
        hidden = int(hidden_mult * d_model)
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))

    def state_size(self, seq_len: int) -> int:
        return 0


class GLU(nn.Module):
    """Gated linear unit as in upstream Zoology: fc2(fc1(x) * gelu(gate(x))).

    Args:
        hidden_mult: hidden width as a multiple of d_model
    """

    name = "glu"
    role = "state"

    def __init__(self, d_model: int, hidden_mult: float = 4.0) -> None:
        super().__init__()
        _check_mult(hidden_mult)
        hidden = int(hidden_mult * d_model)
        self.fc1 = nn.Linear(d_model, hidden)
        self.gate = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * F.gelu(self.gate(x)))

    def state_size(self, seq_len: int) -> int:
        return 0


class Identity(nn.Module):
    """No state mixing: the block's second half adds its normalised input (upstream's "no MLP")."""

    name = "identity"
    role = "state"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def state_size(self, seq_len: int) -> int:
        return 0
