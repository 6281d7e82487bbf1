"""RWKV-4 time mixing (Peng et al. 2023, arXiv 2305.13048).

    r, k, v = projections of a learned mix of x_t and x_{t-1}   (token shift)
    wkv_t = (Σ_{i<t} e^{(t-1-i)w + k_i} v_i + e^{u + k_t} v_t) / (same sums without v)
    y_t = out(sigmoid(r_t) ⊙ wkv_t)

Per channel, an exponentially decaying (w = -exp(time_decay) < 0), key-weighted average of
past values, with a bonus u for the current token. The sums are kept as (a, b) scaled by
a running exponent p so nothing overflows, as in the reference CUDA kernel. ``recurrent()``
scans the positions one at a time, as that kernel does; training (:func:`wkv_chunked`)
scans within chunks and across chunks: C + L/C sequential steps (chunk length C) instead of L.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zoology.mixers._ops import pad_to_multiple


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


def _wide(t: torch.Tensor) -> torch.Tensor:
    """At least float32 for the WKV sums (bf16 is widened, float64 kept)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _merge(a1: torch.Tensor, b1: torch.Tensor, p1: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor | None,
           p2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """e^p1·(a1, b1) + e^p2·(a2, b2) as e^p·(a, b) with p the larger exponent (b2 None: 1).

    p only sets the scale: the sums it represents do not depend on its value, so it is
    detached (no gradient through the max)."""
    p = torch.maximum(p1, p2).detach()
    e1, e2 = torch.exp(p1 - p), torch.exp(p2 - p)
    return e1 * a1 + e2 * a2, e1 * b1 + (e2 if b2 is None else e2 * b2), p


def wkv_chunked(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_size: int = 32) -> torch.Tensor:
    """All wkv_t of k, v [B, L, D] (float) with decay w and bonus u [D]: the same sums as
    :func:`wkv_step` applied L times, regrouped.

    1. Within every chunk of C positions at once, the sums over the chunk's earlier positions
       (C steps on [B, L/C, D]).
    2. Across chunks, the sums over all earlier chunks: the previous carry, C steps older
       (exponent + C·w), merged with that chunk's own total (L/C steps on [B, D]).
    3. Per position τ of a chunk: the carry, τ steps older, merged with the in-chunk past
       and the bonus term e^{u + k_t}·(v_t, 1); wkv_t is the ratio of the two sums.

    Every sum is kept as e^p·(a, b) and merged at the larger exponent, as in the reference
    kernel, so nothing overflows for any k or w.
    """
    B, L, D = k.shape
    C = chunk_size
    k, v = pad_to_multiple(k, C, 1), pad_to_multiple(v, C, 1)  # padded positions come last: never read
    n = k.shape[1] // C
    k, v = k.view(B, n, C, D), v.view(B, n, C, D)
    # 1. in-chunk past of each position τ: Σ_{i<τ} e^{(τ-1-i)w + k_i}·(v_i, 1) as e^p·(a, b)
    a, b, p = k.new_zeros(B, n, D), k.new_zeros(B, n, D), k.new_full((B, n, D), -1e38)
    past = []
    for k_t, v_t in zip(k.unbind(2), v.unbind(2)):  # unbind: a linear-time backward
        past.append((a, b, p))
        a, b, p = _merge(a, b, p + w, v_t, None, k_t)
    a_in, b_in, p_in = (torch.stack(t, dim=2) for t in zip(*past))  # [B, n, C, D]
    # 2. carry into each chunk: the sums over every earlier chunk, as seen from the chunk's start
    carry = (k.new_zeros(B, D), k.new_zeros(B, D), k.new_full((B, D), -1e38))
    carries = []
    for a_c, b_c, p_c in zip(a.unbind(1), b.unbind(1), p.unbind(1)):  # the chunks' own totals
        carries.append(carry)
        carry = _merge(carry[0], carry[1], carry[2] + C * w, a_c, b_c, p_c)
    a_x, b_x, p_x = (torch.stack(t, dim=1).unsqueeze(2) for t in zip(*carries))  # [B, n, 1, D]
    # 3. per position: carry (τ steps older) + in-chunk past + bonus for the current token
    age = torch.arange(C, device=k.device, dtype=k.dtype)[:, None] * w  # [C, D]: τ·w
    a, b, p = _merge(a_x, b_x, p_x + age, a_in, b_in, p_in)
    a, b, _ = _merge(a, b, p, v, None, u + k)
    return (a / b).view(B, n * C, D)[:, :L]


class RWKV4(nn.Module):
    """RWKV-4 time mixing: token shift, then a per-channel exponentially decayed WKV average
    gated by a receptance.

    No parameters of its own: the reference init depends on the layer's depth
    (layer_idx, n_layers), which the model supplies.
    """

    name = "rwkv"
    chunk_size = 32

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
        zeros = x.new_zeros(x.shape[0], self.d_model, dtype=torch.promote_types(x.dtype, torch.float32))
        return zeros, zeros.clone(), torch.full_like(zeros, -1e38)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prev = nn.functional.pad(x, (0, 0, 1, -1))  # x_{t-1}, zeros at t = 0
        r, k, v = self._rkv(x, prev)
        w, u = -_wide(self.time_decay).exp(), _wide(self.time_first)
        wkv = wkv_chunked(w, u, _wide(k), _wide(v), self.chunk_size)  # [B, L, D]
        return self.output(r * wkv.to(r.dtype))

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Token by token. State: the previous input x_{t-1} and the WKV numerator, denominator
        and their shared exponent, each [B, D]."""
        w, u = -_wide(self.time_decay).exp(), _wide(self.time_first)
        prev, state, ys = x.new_zeros(x.shape[0], self.d_model), self._init_state(x), []
        for t in range(x.shape[1]):
            r, k, v = self._rkv(x[:, t], prev)
            wkv, state = wkv_step(w, u, _wide(k), _wide(v), state)
            ys.append(self.output(r * wkv.to(r.dtype)))
            prev = x[:, t]
        return torch.stack(ys, dim=1), (prev, *state)

    def state_size(self, seq_len: int) -> int:
        """4 · d_model: the previous token (token shift) and, per channel, the WKV numerator,
        denominator and their shared exponent. Independent of seq_len."""
        return 4 * self.d_model
