"""Hyena (Poli et al. 2023, arXiv 2302.10866): order-2 Hyena operator.

    x1, x2, v = short_conv(in_proj(u))          (three projections, each locally mixed)
    y = x2 ⊙ (h * (x1 ⊙ v) + b ⊙ (x1 ⊙ v))       (h: implicit long filter, * causal convolution)

Data-controlled gating around a long convolution whose filter is an MLP of position.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zoology.errors import FieldError
from zoology.mixers._ops import ShortConvolution, fft_causal_conv, filter_positions


class Sin(nn.Module):
    """sin(freq · x) with a learnable frequency per unit (Hyena's filter activation)."""

    def __init__(self, dim: int, w: float = 1.0) -> None:
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class ImplicitFilter(nn.Module):
    """Hyena's implicit long filter: h(t) = MLP(positional features of t) · exp(-α·t).

    The filter is a function of position evaluated at every t < max_seq_len, so its
    parameter count does not depend on length; the exponential window (one fixed decay rate
    per channel, from fast to slow) biases channels towards different time scales.
    """

    def __init__(
        self,
        channels: int,
        max_seq_len: int,
        emb_dim: int = 3,
        order: int = 16,
        num_inner_mlps: int = 2,
        frequency: float = 1.0,
        fast_decay_pct: float = 0.3,
        slow_decay_pct: float = 1.5,
        target: float = 1e-2,
    ) -> None:
        super().__init__()
        z = filter_positions(max_seq_len, emb_dim)  # [L, emb_dim]: t, Re/Im e^{-ifw}
        self.register_buffer("z", z)
        self.register_buffer("t", z[:, :1].clone())  # [L, 1] normalised time
        layers: list[nn.Module] = [nn.Linear(emb_dim, order), Sin(order, frequency)]
        for _ in range(num_inner_mlps):
            layers += [nn.Linear(order, order), Sin(order, frequency)]
        layers.append(nn.Linear(order, channels, bias=False))
        self.mlp = nn.Sequential(*layers)
        max_decay, min_decay = math.log(target) / fast_decay_pct, math.log(target) / slow_decay_pct
        self.register_buffer("deltas", torch.linspace(min_decay, max_decay, channels)[None])  # [1, D]

    def forward(self, seq_len: int) -> torch.Tensor:
        """The filter taps for lags 0..seq_len-1, [D, seq_len]."""
        h = self.mlp(self.z[:seq_len])  # [L, D]
        h = h * torch.exp(-self.t[:seq_len] * self.deltas.abs())  # exponential modulation
        return h.t()


class Hyena(nn.Module):
    """Hyena operator (order 2) with an implicit, exponentially modulated long filter.

    Args:
        filter_order: width of the MLP that parametrises the long filter
        short_filter_order: length of the short convolution on the three projections
        emb_dim: positional features fed to the filter MLP (odd, >= 3: time plus sine/cosine bands)
        dropout: dropout after the first gate while training
    """

    name = "hyena"

    def __init__(
        self,
        d_model: int,
        max_seq_len: int = 2048,
        filter_order: int = 64,
        short_filter_order: int = 3,
        emb_dim: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if filter_order < 1:
            raise FieldError("filter_order", f"must be >= 1, got {filter_order}")
        if short_filter_order < 1:
            raise FieldError("short_filter_order", f"must be >= 1, got {short_filter_order}")
        if emb_dim < 3 or emb_dim % 2 == 0:
            raise FieldError("emb_dim", f"must be odd and >= 3 (time, cosine, sine), got {emb_dim}")
        if not 0.0 <= dropout < 1.0:
            raise FieldError("dropout", f"must be in [0, 1), got {dropout}")
        self.d_model, self.max_seq_len, self.short_filter_order = d_model, max_seq_len, short_filter_order
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.short_filter = ShortConvolution(3 * d_model, short_filter_order)
        self.filter = ImplicitFilter(d_model, max_seq_len, emb_dim=emb_dim, order=filter_order)
        self.bias = nn.Parameter(torch.randn(d_model))  # skip term of the long convolution
        self.dropout = nn.Dropout(dropout)

    def _taps(self, seq_len: int) -> torch.Tensor:
        if seq_len > self.max_seq_len:
            raise ValueError(f"sequence length {seq_len} exceeds max_seq_len={self.max_seq_len}")
        return self.filter(seq_len)  # [D, L]

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        uc = self.short_filter(self.in_proj(u))  # [B, L, 3D]
        x1, x2, v = uc.split(self.d_model, dim=-1)
        v = self.dropout(v * x1)  # first gate
        k = self._taps(u.shape[1])
        v = fft_causal_conv(v.transpose(1, 2), k).transpose(1, 2) + v * self.bias  # long conv + skip
        return self.out_proj(v * x2)  # second gate

    def recurrent(self, u: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Step by step. State: the short filter's last inputs [B, 3D, short_filter_order-1] and
        every gated value seen so far [B, D, L] (the long filter spans the whole sequence)."""
        b, l, _ = u.shape
        k = self._taps(l)
        proj = self.in_proj(u)
        conv_state = self.short_filter.init_state(proj)
        history = u.new_zeros(b, self.d_model, 0)
        ys = []
        for t in range(l):
            uc, conv_state = self.short_filter.step(proj[:, t], conv_state)
            x1, x2, v = uc.split(self.d_model, dim=-1)
            v = v * x1
            history = torch.cat([history, v[..., None]], dim=-1)  # [B, D, t+1]
            y = (history * k[:, : t + 1].flip(-1)).sum(-1) + v * self.bias
            ys.append(y * x2)
        return self.out_proj(torch.stack(ys, dim=1)), (conv_state, history)

    def state_size(self, seq_len: int) -> int:
        """Short filter: (short_filter_order - 1) · 3 · d_model; long filter: every gated input so
        far, seq_len · d_model."""
        return (self.short_filter_order - 1) * 3 * self.d_model + seq_len * self.d_model
