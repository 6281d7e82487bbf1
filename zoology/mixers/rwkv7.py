"""RWKV-7 "Goose" time mixing (Peng et al. 2025, arXiv 2503.14456; BlinkDL/RWKV-LM x070).

    x_t^* = x_t + (x_{t-1} - x_t) ⊙ μ_*           token shift, one mix per projection *
    r, k, v = projections;  w_t = exp(-exp(ω_t)) ∈ (0.545, 1) per channel (data-dependent decay)
    κ_t = normalize(k_t ⊙ ξ) per head;  a_t = sigmoid(...) (in-context learning rate)
    k_t ← k_t ⊙ (1 + (a_t - 1) ⊙ α)
    S_t = S_{t-1} (diag(w_t) - κ_t (a_t ⊙ κ_t)^T) + v_t k_t^T      per head, S: [head_dim, head_dim]
    o_t = GroupNorm(S_t r_t) + (r_t ⊙ k_t ⊙ ρ)·1 v_t,  y_t = out(o_t ⊙ g_t)

The state update is a generalized delta rule: decay per channel, then remove the part of
the state along κ_t (scaled by a_t), then write v_t k_t^T. The scan runs over positions one
at a time, as fla's naive reference (linear in length). Left out: the value residual
("v_first" mixing of the first layer's values into later layers), which needs state passed
between layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _lora_rank(d_model: int, factor: float, power: float = 0.5) -> int:
    """The reference's low-rank sizes: factor · d_model^power, rounded to 32, at least 32."""
    return max(32, int(round(factor * d_model**power / 32) * 32))


class RWKV7(nn.Module):
    """RWKV-7 time mixing: a per-channel-decayed, generalized delta-rule state per head,
    read by a receptance, with a per-head bonus for the current token and an output gate.

    Args:
        head_dim: channels per head (the reference uses 64); must divide d_model
        decay_lora: rank of the data-dependent decay's low-rank map (0: the reference's size)
        a_lora: rank of the in-context learning rate's low-rank map (0: the reference's size)
        gate_lora: rank of the output gate's low-rank map (0: the reference's size)
    """

    name = "rwkv7"

    def __init__(self, d_model: int, head_dim: int = 64, decay_lora: int = 0, a_lora: int = 0,
                 gate_lora: int = 0, layer_idx: int = 0, n_layers: int = 2) -> None:
        super().__init__()
        head_dim = min(head_dim, d_model)
        if d_model % head_dim:
            raise ValueError(f"head_dim={head_dim} must divide d_model={d_model}")
        self.d_model, self.head_dim, self.num_heads = d_model, head_dim, d_model // head_dim
        self.layer_idx, self.n_layers = layer_idx, n_layers
        d = d_model
        decay_lora = decay_lora or _lora_rank(d, 1.8)
        a_lora = a_lora or _lora_rank(d, 1.8)
        gate_lora = gate_lora or _lora_rank(d, 0.6, 0.8)
        self.mix = nn.Parameter(torch.empty(6, d))  # token-shift mixes μ for r, w, k, v, a, g
        self.receptance = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.output = nn.Linear(d, d, bias=False)
        self.w0 = nn.Parameter(torch.empty(d))  # decay: ω = -softplus(-(w0 + tanh(x W1) W2)) - 0.5
        self.w1, self.w2 = nn.Parameter(torch.empty(d, decay_lora)), nn.Parameter(torch.empty(decay_lora, d))
        self.a0 = nn.Parameter(torch.empty(d))  # a = sigmoid(a0 + x A1 A2)
        self.a1, self.a2 = nn.Parameter(torch.empty(d, a_lora)), nn.Parameter(torch.empty(a_lora, d))
        self.g1, self.g2 = nn.Parameter(torch.empty(d, gate_lora)), nn.Parameter(torch.empty(gate_lora, d))
        self.k_k = nn.Parameter(torch.empty(d))  # ξ: which key directions are removed
        self.k_a = nn.Parameter(torch.empty(d))  # α: how much a scales the written key
        self.r_k = nn.Parameter(torch.empty(self.num_heads, head_dim))  # ρ: current-token bonus
        self.ln_x = nn.GroupNorm(self.num_heads, d, eps=64e-5)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference (x070) init: mixes and decay speeds vary across channels and depth;
        low-rank maps start at zero on one side; the output projection starts at zero."""
        d = self.d_model
        r01 = self.layer_idx / max(self.n_layers - 1, 1)  # 0 → 1 across layers
        r10 = 1 - self.layer_idx / self.n_layers  # 1 → ~0
        ddd = torch.arange(d, dtype=torch.float32) / d
        with torch.no_grad():
            self.mix.copy_(torch.stack([
                1 - ddd ** (0.2 * r10),  # r
                1 - ddd ** (0.9 * r10),  # w
                1 - (ddd ** (0.9 * r10) + 0.4 * r01),  # k
                1 - (ddd ** (0.4 * r10) + 0.6 * r01),  # v
                1 - ddd ** (0.9 * r10),  # a
                1 - ddd ** (0.2 * r10),  # g
            ]))
            n = torch.arange(d, dtype=torch.float32) / max(d - 1, 1)
            self.w0.copy_(-7 + 5 * n ** (0.85 + 1.0 * r01**0.5) + 0.5)
            self.a0.zero_()
            for first, second in ((self.w1, self.w2), (self.a1, self.a2), (self.g1, self.g2)):
                first.zero_()
                nn.init.orthogonal_(second, gain=0.1)
            self.k_k.fill_(0.85)
            self.k_a.fill_(1.0)
            self.r_k.fill_(-0.04)
            bound = 0.5 / math.sqrt(d)
            for lin in (self.receptance, self.key, self.value):
                nn.init.uniform_(lin.weight, -bound, bound)
            self.output.weight.zero_()
            self.ln_x.reset_parameters()

    def _inputs(self, x: torch.Tensor, prev: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x, prev = x_{t-1} [..., D] → r, decay w, k, v, removal direction -κ, its write
        weight κ ⊙ a, and gate g, each [..., D]."""
        xr, xw, xk, xv, xa, xg = (x + (prev - x) * m for m in self.mix)
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        omega = -F.softplus(-(self.w0 + torch.tanh(xw @ self.w1) @ self.w2)) - 0.5
        w = torch.exp(-torch.exp(omega.float()))  # decay per channel, in (0.545, 1)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kappa = F.normalize((k * self.k_k).unflatten(-1, (self.num_heads, self.head_dim)), dim=-1).flatten(-2)
        k = k * (1 + (a - 1) * self.k_a)
        return r, w, k, v, -kappa, kappa * a, g

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.float().unflatten(-1, (self.num_heads, self.head_dim))  # [..., H, N]

    def _step(self, S: torch.Tensor, r, w, k, v, a, b) -> tuple[torch.Tensor, torch.Tensor]:
        """One position. S [B, H, N(v), N(k)]; the rest [B, H, N]. Returns (S r, new S)."""
        Sa = torch.einsum("bhvk,bhk->bhv", S, a)  # the state along the removal direction
        S = S * w[:, :, None, :] + Sa[..., None] * b[:, :, None, :] + v[..., None] * k[:, :, None, :]
        return torch.einsum("bhvk,bhk->bhv", S, r), S

    def _finish(self, o: torch.Tensor, r, k, v, g) -> torch.Tensor:
        """o [..., D] (float) → y [..., D]: group norm, current-token bonus, gate, projection."""
        shape = o.shape
        o = self.ln_x(o.reshape(-1, self.d_model).to(r.dtype)).reshape(shape)
        bonus = (self._heads(r) * self._heads(k) * self.r_k).sum(-1, keepdim=True) * self._heads(v)
        return self.output((o + bonus.flatten(-2).to(o.dtype)) * g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prev = F.pad(x, (0, 0, 1, -1))  # x_{t-1}, zeros at t = 0
        r, w, k, v, a, b, g = self._inputs(x, prev)  # [B, L, D]
        S = x.new_zeros(x.shape[0], self.num_heads, self.head_dim, self.head_dim, dtype=torch.float32)
        outs = []
        steps = zip(*(self._heads(t).unbind(1) for t in (r, w, k, v, a, b)))  # unbind: linear backward
        for r_t, w_t, k_t, v_t, a_t, b_t in steps:
            o_t, S = self._step(S, r_t, w_t, k_t, v_t, a_t, b_t)
            outs.append(o_t)
        o = torch.stack(outs, dim=1).flatten(-2)  # [B, L, D]
        return self._finish(o, r, k, v, g)

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Token by token. State: the previous input x_{t-1} [B, D] and S [B, H, N, N]."""
        prev = x.new_zeros(x.shape[0], self.d_model)
        S = x.new_zeros(x.shape[0], self.num_heads, self.head_dim, self.head_dim, dtype=torch.float32)
        ys = []
        for t in range(x.shape[1]):
            r, w, k, v, a, b, g = self._inputs(x[:, t], prev)
            o, S = self._step(S, *(self._heads(u) for u in (r, w, k, v, a, b)))
            ys.append(self._finish(o.flatten(-2), r, k, v, g))
            prev = x[:, t]
        return torch.stack(ys, dim=1), (prev, S)

    def state_size(self, seq_len: int) -> int:
        """d_model · (head_dim + 1): per head a head_dim × head_dim state, plus the previous
        token (token shift). Independent of seq_len."""
        return self.d_model * (self.head_dim + 1)
