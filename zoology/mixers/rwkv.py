"""RWKV-4 time mixing (Peng et al. 2023, arXiv 2305.13048).

    r, k, v = projections of a learned mix of x_t and x_{t-1}   (token shift)
    wkv_t = (Σ_{i<t} e^{(t-1-i)w + k_i} v_i + e^{u + k_t} v_t) / (same sums without v)
    y_t = out(sigmoid(r_t) ⊙ wkv_t)

Per channel, an exponentially decaying (w = -exp(time_decay) < 0), key-weighted average of
past values, with a bonus u for the current token. The sums are kept as (a, b) scaled by
a running exponent p so nothing overflows, as in the reference CUDA kernel; like that
kernel, the reference scan runs over positions one at a time (linear in length).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def wkv_step(
    w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One WKV step, numerically stable. k, v [B, D]; state (a, b, p) [B, D] with the true sums
    being e^p·a (numerator) and e^p·b (denominator). Returns (wkv_t, new state)."""
    a, b, p = state
    bonus = u + k  # logit of the current token
    m = torch.maximum(p, bonus)
    e_past, e_now = torch.exp(p - m), torch.exp(bonus - m)
    wkv = (e_past * a + e_now * v) / (e_past * b + e_now)
    decayed = p + w  # the past, one step older
    m = torch.maximum(decayed, k)
    e_past, e_now = torch.exp(decayed - m), torch.exp(k - m)
    return wkv, (e_past * a + e_now * v, e_past * b + e_now, m)


class RWKV4(nn.Module):
    """RWKV-4 time mixing: token shift, then a per-channel exponentially decayed WKV average
    gated by a receptance.

    No parameters of its own: the reference init depends on the layer's depth
    (layer_idx, n_layers), which the model supplies.
    """

    name = "rwkv"

    def __init__(self, d_model: int, layer_idx: int = 0, n_layers: int = 2) -> None:
        super().__init__()
        self.d_model = d_model
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model, bias=False)
        self.receptance = nn.Linear(d_model, d_model, bias=False)
        self.output = nn.Linear(d_model, d_model, bias=False)
        # reference init: decay speeds from fast to slow across channels, deeper layers slower;
        # a zigzag bonus; token-shift mixes that shrink with depth
        r01 = layer_idx / max(n_layers - 1, 1)  # 0 → 1 across layers
        r10 = 1 - layer_idx / n_layers  # 1 → ~0
        h = torch.arange(d_model, dtype=torch.float32)
        self.time_decay = nn.Parameter(-5 + 8 * (h / max(d_model - 1, 1)) ** (0.7 + 1.3 * r01))
        zigzag = ((h + 1) % 3 - 1) * 0.5
        self.time_first = nn.Parameter(torch.full((d_model,), math.log(0.3)) + zigzag)
        ramp = h / d_model
        self.time_mix_k = nn.Parameter(ramp**r10)
        self.time_mix_v = nn.Parameter(ramp**r10 + 0.3 * r01)
        self.time_mix_r = nn.Parameter(ramp ** (0.5 * r10))

    def _rkv(self, x: torch.Tensor, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x, prev (x shifted by one) [..., D] → r (sigmoid), k, v."""
        def mix(m):
            return x * m + prev * (1 - m)
        r = torch.sigmoid(self.receptance(mix(self.time_mix_r)))
        return r, self.key(mix(self.time_mix_k)), self.value(mix(self.time_mix_v))

    def _init_state(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        zeros = x.new_zeros(x.shape[0], self.d_model, dtype=torch.float32)
        return zeros, zeros.clone(), torch.full_like(zeros, -1e38)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prev = nn.functional.pad(x, (0, 0, 1, -1))  # x_{t-1}, zeros at t = 0
        r, k, v = self._rkv(x, prev)
        w, u = -self.time_decay.float().exp(), self.time_first.float()
        state, outs = self._init_state(x), []
        for k_t, v_t in zip(k.float().unbind(1), v.float().unbind(1)):  # unbind: a linear-time backward
            wkv, state = wkv_step(w, u, k_t, v_t, state)
            outs.append(wkv)
        return self.output(r * torch.stack(outs, dim=1).to(r.dtype))

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Token by token. State: the previous input x_{t-1} and the WKV numerator, denominator
        and their shared exponent, each [B, D]."""
        w, u = -self.time_decay.float().exp(), self.time_first.float()
        prev, state, ys = x.new_zeros(x.shape[0], self.d_model), self._init_state(x), []
        for t in range(x.shape[1]):
            r, k, v = self._rkv(x[:, t], prev)
            wkv, state = wkv_step(w, u, k.float(), v.float(), state)
            ys.append(self.output(r * wkv.to(r.dtype)))
            prev = x[:, t]
        return torch.stack(ys, dim=1), (prev, *state)

    def state_size(self, seq_len: int) -> int:
        """4 · d_model: the previous token (token shift) and, per channel, the WKV numerator,
        denominator and their shared exponent. Independent of seq_len."""
        return 4 * self.d_model
