"""RWKV-5 "Eagle" and RWKV-6 "Finch" time mixing (Peng et al. 2024, arXiv 2404.05892;
BlinkDL/RWKV-LM, fla's ``layers/rwkv6.py`` and ``ops/rwkv6/naive.py``).

Per head, a matrix-valued state S [head_dim(k), head_dim(v)]:

    x_t^□ = x_t + (x_{t-1} - x_t) ⊙ μ_□             token shift, □ ∈ {r, k, v, g} (and w in RWKV-6)
    r, k, v, g = projections of x^r, x^k, x^v, x^g;    w_t = exp(-exp(d_t)) ∈ (0, 1) per channel
    o_t = r_tᵀ (S_{t-1} + diag(u) k_t v_tᵀ)          u: a per-channel bonus for the current token
    S_t = diag(w_t) S_{t-1} + k_t v_tᵀ
    y_t = out(GroupNorm(o_t) ⊙ silu(g_t))           GroupNorm: one group per head

RWKV-5: μ_□ and the decay d are learned constants (per channel). RWKV-6: both depend on
the data through low-rank maps ("ddlerp" and the decay LoRA):

    x̂ = x_t + (x_{t-1} - x_t) ⊙ μ_x
    μ_□(t) = μ_□ + tanh(x̂ A_□) B_□,       d_t = d + tanh(x_t^w A_d) B_d

Training runs the chunked form (``_gated.chunk_gated_attention``, linear in length): the
read of S_{t-1} before the write is the ordinary decayed linear attention on k, v and the
decay shifted one position later, plus the bonus term, which is local. ``recurrent()``
runs the recurrence one position at a time, as fla's naive reference.

Choices: key and value widths are d_model split into heads of ``head_dim`` (the paper's
layout; fla defaults to a key width of d_model/2); no receptance scaling (scale 1, as fla's
layer and the reference kernel); GroupNorm eps 64e-5 on o as is (the reference uses that
eps after dividing o by 8; fla uses 1e-5). The init follows the reference's (depth-dependent mixes,
decay speeds and bonus, LoRA maps starting at zero on one side; recalled from RWKV-LM,
not checked line by line); the projections take the model's generic init.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoology.errors import FieldError
from zoology.mixers._gated import chunk_gated_attention
from zoology.mixers._ops import group_norm


def _depth_ratios(layer_idx: int, n_layers: int) -> tuple[float, float]:
    """The reference's depth ratios: 0 → 1 across layers, and 1 → ~0."""
    return layer_idx / max(n_layers - 1, 1), 1 - layer_idx / n_layers


def _reference_mixes(d: int, layer_idx: int, n_layers: int) -> dict[str, torch.Tensor]:
    """Initial token-shift mixes μ [D] per branch: they vary across channels and shrink with depth."""
    r01, r10 = _depth_ratios(layer_idx, n_layers)
    ddd = torch.arange(d, dtype=torch.float32) / d
    return {
        "x": 1 - ddd**r10,
        "r": 1 - ddd ** (0.5 * r10),
        "w": 1 - ddd**r10,
        "k": 1 - ddd**r10,
        "v": 1 - (ddd**r10 + 0.3 * r01),
        "g": 1 - ddd ** (0.5 * r10),
    }


class RWKV5(nn.Module):
    """RWKV-5 (Eagle) time mixing: token shift with learned per-channel mixes, a matrix-valued
    state per head with a learned per-channel decay, a bonus for the current token, a per-head
    GroupNorm and a silu output gate.

    Args:
        head_dim: channels per head (the reference uses 64; capped at d_model); must divide d_model
    """

    name = "rwkv5"
    chunk_size: int | None = None  # chunk_gated_attention's choice by length
    branches = ("r", "k", "v", "g")  # token-shift mixes

    def __init__(self, d_model: int, head_dim: int = 64, layer_idx: int = 0, n_layers: int = 2) -> None:
        super().__init__()
        head_dim = min(head_dim, d_model)
        if head_dim < 1 or d_model % head_dim:
            raise FieldError("head_dim", f"must be >= 1 and divide d_model={d_model}, got {head_dim}")
        self.d_model, self.head_dim, self.num_heads = d_model, head_dim, d_model // head_dim
        d = d_model
        self.receptance = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.gate = nn.Linear(d, d, bias=False)
        self.output = nn.Linear(d, d, bias=False)
        self.ln_x = nn.GroupNorm(self.num_heads, d, eps=64e-5)
        # reference init: decay speeds run from fast (channel 0) to slow, slower in deeper
        # layers; a zigzag bonus
        r01, _ = _depth_ratios(layer_idx, n_layers)
        ramp = torch.arange(d, dtype=torch.float32) / max(d - 1, 1)
        mixes = _reference_mixes(d, layer_idx, n_layers)
        self.mix = nn.Parameter(torch.stack([mixes[b] for b in self.branches]))  # [n_branches, D]
        self.time_decay = nn.Parameter(-6 + 5 * ramp ** (0.7 + 1.3 * r01))  # d: log(-log w)
        zigzag = ((torch.arange(d) + 1) % 3 - 1) * 0.1
        self.bonus = nn.Parameter((r01 * (1 - ramp) + zigzag).view(self.num_heads, head_dim))  # u

    def _mixed(self, x: torch.Tensor, prev: torch.Tensor) -> dict[str, torch.Tensor]:
        """x, prev = x_{t-1} [..., D] → the token-shifted input of each branch [..., D]."""
        delta = prev - x
        return {b: x + delta * m for b, m in zip(self.branches, self.mix.unbind(0))}

    def _log_decay(self, xs: dict[str, torch.Tensor]) -> torch.Tensor:
        """log w = -exp(d) [D], the same at every position."""
        return -self.time_decay.exp()

    def _inputs(self, x: torch.Tensor, prev: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x, prev [..., D] → r, log w, k, v, g [..., D] (log w broadcastable)."""
        xs = self._mixed(x, prev)
        r, k, v, g = self.receptance(xs["r"]), self.key(xs["k"]), self.value(xs["v"]), self.gate(xs["g"])
        return r, self._log_decay(xs), k, v, g

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.num_heads, self.head_dim))  # [..., D] → [..., H, N]

    def _finish(self, o: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """o [..., D] → GroupNorm per head, silu gate, output projection."""
        return self.output(group_norm(o, self.ln_x) * F.silu(g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prev = F.pad(x, (0, 0, 1, -1))  # x_{t-1}, zeros at t = 0
        r, logw, k, v, g = self._inputs(x, prev)  # [B, L, D]
        logw = logw.expand_as(k)
        r, logw, k, v = (self._heads(t).transpose(1, 2) for t in (r, logw, k, v))  # [B, H, L, N]
        # o_t = r_tᵀ S_{t-1}: the inclusive scan over (k, v, log w) moved one step later
        def later(t):
            return F.pad(t, (0, 0, 1, -1))
        o, _ = chunk_gated_attention(r, later(k), later(v), later(logw), chunk_size=self.chunk_size)
        o = o + (r * self.bonus[:, None] * k).sum(-1, keepdim=True) * v  # the current token, weighted by u
        return self._finish(o.transpose(1, 2).flatten(-2), g)

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Token by token. State: the previous input x_{t-1} [B, D] and S [B, H, N, N]."""
        prev = x.new_zeros(x.shape[0], self.d_model)
        S = x.new_zeros(x.shape[0], self.num_heads, self.head_dim, self.head_dim)
        ys = []
        for t in range(x.shape[1]):
            r, logw, k, v, g = self._inputs(x[:, t], prev)
            r, logw, k, v = (self._heads(u) for u in (r, logw.expand_as(k), k, v))  # [B, H, N]
            kv = k.unsqueeze(-1) * v.unsqueeze(-2)  # [B, H, N, N]
            o = torch.einsum("bhk,bhkv->bhv", r, S + self.bonus.unsqueeze(-1) * kv)
            S = logw.exp().unsqueeze(-1) * S + kv
            ys.append(self._finish(o.flatten(-2), g))
            prev = x[:, t]
        return torch.stack(ys, dim=1), (prev, S)

    def state_size(self, seq_len: int) -> int:
        """d_model · (head_dim + 1): per head a head_dim × head_dim state (num_heads · head_dim² =
        d_model · head_dim), plus the previous token for the token shift. Independent of seq_len."""
        return self.d_model * (self.head_dim + 1)


class RWKV6(RWKV5):
    """RWKV-6 (Finch) time mixing: RWKV-5 with data-dependent token shift (ddlerp, low-rank)
    and a data-dependent per-channel decay (low-rank), per position.

    Args:
        head_dim: channels per head (the reference uses 64; capped at d_model); must divide d_model
        mix_lora: rank of each branch's token-shift LoRA (the reference: 32)
        decay_lora: rank of the decay LoRA (the reference: 64)
    """

    name = "rwkv6"
    branches = ("r", "w", "k", "v", "g")

    def __init__(self, d_model: int, head_dim: int = 64, mix_lora: int = 32, decay_lora: int = 64,
                 layer_idx: int = 0, n_layers: int = 2) -> None:
        if mix_lora < 1:
            raise FieldError("mix_lora", f"must be >= 1, got {mix_lora}")
        if decay_lora < 1:
            raise FieldError("decay_lora", f"must be >= 1, got {decay_lora}")
        super().__init__(d_model, head_dim, layer_idx, n_layers)
        d, nb = d_model, len(self.branches)
        self.mix_x = nn.Parameter(_reference_mixes(d, layer_idx, n_layers)["x"])  # μ_x of x̂
        self.mix_a = nn.Parameter(torch.zeros(d, nb * mix_lora))  # A_□ for all branches, side by side
        self.mix_b = nn.Parameter(torch.empty(nb, mix_lora, d).uniform_(-0.01, 0.01))  # B_□
        self.decay_a = nn.Parameter(torch.zeros(d, decay_lora))  # A_d
        self.decay_b = nn.Parameter(torch.empty(decay_lora, d).uniform_(-0.01, 0.01))  # B_d

    def _mixed(self, x: torch.Tensor, prev: torch.Tensor) -> dict[str, torch.Tensor]:
        """ddlerp: each branch's mix μ_□ + tanh(x̂ A_□) B_□ depends on x̂ = lerp(x_t, x_{t-1}, μ_x)."""
        delta = prev - x
        x_hat = x + delta * self.mix_x
        low = torch.tanh(x_hat @ self.mix_a).unflatten(-1, (len(self.branches), -1))  # [..., n_branches, R]
        mixes = self.mix + torch.einsum("...nr,nrd->...nd", low, self.mix_b)  # [..., n_branches, D]
        # unbind, not mixes[..., i, :]: indexing's backward writes a zero tensor of all branches per branch
        return {b: x + delta * mix for b, mix in zip(self.branches, mixes.unbind(-2))}

    def _log_decay(self, xs: dict[str, torch.Tensor]) -> torch.Tensor:
        """log w_t = -exp(d + tanh(x^w A_d) B_d) [..., D], per position."""
        return -(self.time_decay + torch.tanh(xs["w"] @ self.decay_a) @ self.decay_b).exp()
