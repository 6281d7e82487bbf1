"""Convolutional mixers: a depthwise short convolution, and Zoology's BaseConv (gated short
or long convolution, Arora et al. 2023, arXiv 2312.04927).

Convolutions have a recurrent view too: a causal filter of length W only needs the last
W-1 inputs of each channel (a short conv's state); a long filter spanning the whole
sequence needs every input seen so far (a state growing with length, like a KV cache).
"""

from __future__ import annotations

import torch
from torch import nn

from zoology.errors import FieldError
from zoology.mixers._ops import ShortConvolution, fft_causal_conv, filter_positions


class ImplicitLongFilter(nn.Module):
    """Zoology's implicit long filter (upstream's ImplicitLongConvolution):

        h(t) = Linear(hidden → D)(ReLU(Linear(emb_dim → hidden)(z_t)))      t = 0..L-1

    with z_t the positional features of lag t (normalised time, then cosine/sine bands:
    :func:`filter_positions`). Unlike Hyena's filter there is no window: at init the long
    lags are as large as the short ones, and training alone decides which lags matter.
    Its (emb_dim + 1)·hidden + (hidden + 1)·D parameters (64 + 17·D at the defaults) do not
    depend on the length.
    """

    def __init__(self, channels: int, max_seq_len: int, emb_dim: int = 3, hidden: int = 16) -> None:
        super().__init__()
        self.register_buffer("z", filter_positions(max_seq_len, emb_dim), persistent=False)  # [L, emb_dim]
        self.mlp = nn.Sequential(nn.Linear(emb_dim, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, seq_len: int) -> torch.Tensor:
        """The filter taps for lags 0..seq_len-1, [D, seq_len]."""
        return self.mlp(self.z[:seq_len]).t()


class LongConvolution(nn.Module):
    """Depthwise causal convolution with a filter as long as the sequence, via FFT, plus a skip.

    Explicit: one free tap per (channel, lag), N(0, 1) at init. Implicit: taps from
    :class:`ImplicitLongFilter`. Both as upstream, with one difference: upstream's explicit
    filter enters its FFT with all max_seq_len taps, so on a sequence shorter than
    max_seq_len the taps past its length wrap around onto future inputs; here only lags
    below the sequence length are used, which keeps it causal.
    """

    def __init__(self, channels: int, max_seq_len: int, implicit: bool) -> None:
        super().__init__()
        self.max_seq_len = max_seq_len
        if implicit:
            self.implicit = ImplicitLongFilter(channels, max_seq_len)
        else:
            self.filter = nn.Parameter(torch.randn(channels, max_seq_len))

    def taps(self, seq_len: int) -> torch.Tensor:
        if seq_len > self.max_seq_len:
            raise ValueError(f"sequence length {seq_len} exceeds the filter length max_seq_len={self.max_seq_len}")
        return self.implicit(seq_len) if hasattr(self, "implicit") else self.filter[:, :seq_len]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, D] → Σ_s k[t-s] x_s + x_t, [B, L, D]."""
        k = self.taps(x.shape[1])  # [D, L]
        return fft_causal_conv(x.transpose(1, 2), k).transpose(1, 2) + x

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step by step, keeping every input seen so far (state [B, D, L])."""
        k = self.taps(x.shape[1])  # [D, L]
        history = x.new_zeros(x.shape[0], x.shape[2], 0)
        ys = []
        for t in range(x.shape[1]):
            history = torch.cat([history, x[:, t, :, None]], dim=-1)  # [B, D, t+1]
            ys.append((history * k[:, : t + 1].flip(-1)).sum(-1) + x[:, t])  # lag 0 pairs with the newest input
        return torch.stack(ys, dim=1), history


class ShortConv(nn.Module):
    """Depthwise causal short convolution: each channel mixes its last kernel_size positions.

    Args:
        kernel_size: filter length (positions looked at, the current one included)
    """

    name = "short_conv"

    def __init__(self, d_model: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size < 1:
            raise FieldError("kernel_size", f"must be >= 1, got {kernel_size}")
        self.d_model, self.kernel_size = d_model, kernel_size
        self.conv = ShortConvolution(d_model, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step by step with the last kernel_size-1 inputs as state, [B, D, kernel_size-1]."""
        state = self.conv.init_state(x)
        ys = []
        for t in range(x.shape[1]):
            y, state = self.conv.step(x[:, t], state)
            ys.append(y)
        return torch.stack(ys, dim=1), state

    def state_size(self, seq_len: int) -> int:
        """The last kernel_size - 1 inputs of each channel: (kernel_size - 1) · d_model."""
        return (self.kernel_size - 1) * self.d_model


class BaseConv(nn.Module):
    """BaseConv: y = conv(u) ⊙ linear(u) + u, a gated convolution (Zoology, arXiv 2312.04927).

    A short filter gives local mixing; kernel_size = -1 gives a filter as long as the
    sequence (implicit: a small MLP of position, no window; explicit: one free tap per
    position), with a skip around it. The gate (a projection) is what lets convolutions do
    associative recall at all. Short, explicit and implicit paths follow upstream's BaseConv.

    Args:
        kernel_size: short filter length, or -1 for a long filter spanning max_seq_len
        implicit_long_conv: long filter parametrised implicitly (an MLP of position) rather than explicitly
        use_act: apply SiLU to both the convolution and the projection before gating
    """

    name = "base_conv"

    def __init__(
        self,
        d_model: int,
        max_seq_len: int = 2048,
        kernel_size: int = 3,
        implicit_long_conv: bool = True,
        use_act: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size == 0 or kernel_size < -1:
            raise FieldError("kernel_size", f"must be >= 1, or -1 for a long convolution, got {kernel_size}")
        self.d_model, self.kernel_size, self.use_act = d_model, kernel_size, use_act
        self.projection = nn.Linear(d_model, d_model)
        if kernel_size == -1:
            self.conv = LongConvolution(d_model, max_seq_len, implicit=implicit_long_conv)
        else:
            self.conv = ShortConvolution(d_model, kernel_size)

    def _gate(self, u: torch.Tensor, u_conv: torch.Tensor) -> torch.Tensor:
        u_proj = self.projection(u)
        if self.use_act:
            u_conv, u_proj = nn.functional.silu(u_conv), nn.functional.silu(u_proj)
        return u_conv * u_proj + u

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self._gate(u, self.conv(u))

    def recurrent(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step by step: the convolution's input history (long) or last kernel_size-1 inputs (short)."""
        if self.kernel_size == -1:
            u_conv, state = self.conv.recurrent(u)
        else:
            state, ys = self.conv.init_state(u), []
            for t in range(u.shape[1]):
                y, state = self.conv.step(u[:, t], state)
                ys.append(y)
            u_conv = torch.stack(ys, dim=1)
        return self._gate(u, u_conv), state

    def state_size(self, seq_len: int) -> int:
        """Short filter: (kernel_size - 1) · d_model (the last inputs); long filter (kernel_size = -1):
        seq_len · d_model, every input seen so far."""
        if self.kernel_size == -1:
            return seq_len * self.d_model
        return (self.kernel_size - 1) * self.d_model
