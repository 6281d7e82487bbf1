"""RWKV-7 "Goose" time mixing (Peng et al. 2025, arXiv 2503.14456; BlinkDL/RWKV-LM x070).

    x_t^* = x_t + (x_{t-1} - x_t) ⊙ μ_*           token shift, one mix per projection *
    r, k, v = projections;  w_t = exp(-exp(ω_t)) ∈ (0.545, 1) per channel (data-dependent decay)
    v_t ← v_t + (v_first,t - v_t) ⊙ sigmoid(ν0 + x_v V1 V2)   value residual (all but the first layer)
    κ_t = normalize(k_t ⊙ ξ) per head;  a_t = sigmoid(...) (in-context learning rate)
    k_t ← k_t ⊙ (1 + (a_t - 1) ⊙ α)
    S_t = S_{t-1} (diag(w_t) - κ_t (a_t ⊙ κ_t)^T) + v_t k_t^T      per head, S: [head_dim, head_dim]
    o_t = GroupNorm(S_t r_t) + (r_t ⊙ k_t ⊙ ρ)·1 v_t,  y_t = out(o_t ⊙ g_t)

The state update is a generalized delta rule: decay per channel, then remove the part of
the state along κ_t (scaled by a_t), then write v_t k_t^T. Training runs it in chunks
(:func:`chunk_rwkv7`, linear in length); ``recurrent()`` runs it one position at a time, as
fla's naive reference.

Value residual: the first RWKV-7 layer of a model keeps its values v as v_first; every
later one moves its own values toward them by a learned, token-dependent gate. The layers
find each other through ``shared``, a context argument: one dict per model that the model
hands to every mixer it builds (layers are built in order, so the first RWKV-7 layer
registers first). The first layer puts its v there during forward, the last one takes it
out again. A layer built without ``shared`` (standalone) is its own first layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoology.errors import FieldError
from zoology.mixers._ops import group_norm, matmul_nt, unit_lower_inverse


def chunk_rwkv7(r: torch.Tensor, logw: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor,
                b: torch.Tensor, chunk_size: int = 16) -> torch.Tensor:
    """All outputs o_t = S_t r_t of S_t = S_{t-1}(diag(e^{logw_t}) + a_t b_t^T) + v_t k_t^T,
    S_0 = 0. Inputs [B, H, L, N] (float32); returns o [B, H, L, N].

    Within a chunk, with G_t the cumulative log decay from the chunk start and S_0 its
    incoming state, S_t = (S_0 + Σ_{i≤t} u_i b_i^T e^{-G_i} + v_i k_i^T e^{-G_i}) e^{G_t}
    where u_i = S_{i-1} a_i solves the unit lower-triangular system
    u_i = S_0 (e^{G_{i-1}} a_i) + Σ_{j<i} u_j (a_i e^{G_{i-1}})·(b_j e^{-G_j}) + v_j (...)·(k_j e^{-G_j}).
    The factors e^{-G} stay below 0.545^-chunk_size (RWKV-7's decay is at least 0.545 per
    step: 1.6e4 for 16), so the pairwise terms are plain [C, N] × [N, C] products; only the
    chunk-to-chunk state update runs in a Python loop.
    """
    B, H, L, N = r.shape
    pad = (-L) % chunk_size
    if pad:  # trailing steps that decay nothing and write nothing
        r, logw, k, v, a, b = (F.pad(t, (0, 0, 0, pad)) for t in (r, logw, k, v, a, b))
    n, C = (L + pad) // chunk_size, chunk_size
    # contiguous chunks: products and their gradients then share one layout (see matmul_nt)
    r, logw, k, v, a, b = (t.contiguous().reshape(B, H, n, C, N) for t in (r, logw, k, v, a, b))
    G = logw.cumsum(3)  # [B, H, n, C, N]: log decay through step t
    G_prev = G - logw  # through step t-1
    G_end = G[:, :, :, -1:]  # through the whole chunk
    a_in, r_in = a * G_prev.exp(), r * G.exp()  # what S_0 (and earlier steps) meet
    back = (-G).exp()
    b_back, k_back = b * back, k * back  # steps brought back to the chunk start
    i = torch.arange(C, device=r.device)
    strict, incl = i[:, None] > i, i[:, None] >= i  # j < i; i <= t
    # the four pairwise products as blocks of one [2C, 2C] product (larger products run faster)
    P = matmul_nt(torch.cat([a_in, r_in], 3), torch.cat([b_back, k_back], 3))  # [B, H, n, 2C, 2C]
    ab = P[..., :C, :C].masked_fill(~strict, 0)  # [B, H, n, C, C]
    ak = P[..., :C, C:].masked_fill(~strict, 0)
    rb = P[..., C:, :C].masked_fill(~incl, 0)
    rk = P[..., C:, C:].masked_fill(~incl, 0)
    solve = unit_lower_inverse(-ab)  # (I - ab)⁻¹
    # everything but the chunk's starting state S, for all chunks at once ([B, H, n, C, N]):
    # the rows u_i = S_{i-1} a_i are u = sa Sᵀ + u_local, the outputs o = r_eff Sᵀ + o_local
    sa = solve @ a_in
    u_local = solve @ (ak @ v)
    r_eff = r_in + rb @ sa
    o_local = rb @ u_local + rk @ v
    to_end = (G_end - G).exp()
    b_out, k_out = b * to_end, k * to_end  # what each step leaves in the chunk's final state
    # stacked along the chunk's rows, so that each chunk takes two products, not four:
    # [o; u] = [r_eff; sa] Sᵀ + [o_local; u_local],  S ← S e^{G_end} + [u; v]ᵀ [b_out; k_out]
    reads = torch.cat([r_eff, sa], dim=3)  # [B, H, n, 2C, N]
    locals_ = torch.cat([o_local, u_local], dim=3)
    writes = torch.cat([b_out, k_out], dim=3)
    S = r.new_zeros(B, H, N, N)  # [B, H, N(v), N(k)]
    outs = []
    # one chunk at a time: unbind, not indexing (an index's backward writes a zero tensor of
    # the whole input per chunk, which made the backward quadratic in length)
    chunks = (t.unbind(2) for t in (reads, locals_, G_end.exp(), writes, v))
    for read_c, local_c, decay_c, write_c, v_c in zip(*chunks):
        ou = read_c @ S.transpose(-1, -2) + local_c  # [B, H, 2C, N(v)]: the outputs, then u
        outs.append(ou[:, :, :C])
        S = S * decay_c + torch.cat([ou[:, :, C:], v_c], dim=2).transpose(-1, -2) @ write_c
    return torch.stack(outs, dim=2).reshape(B, H, n * C, N)[:, :, :L]


def _lora_rank(d_model: int, factor: float) -> int:
    """The reference's low-rank sizes: factor · √d_model, rounded to a multiple of 32, at least 32."""
    return max(32, int(round(factor * d_model**0.5 / 32) * 32))


def _ortho_(weight: torch.Tensor, scale: float) -> None:
    """The reference's ortho_init: orthogonal, gain scale · √(rows/cols) when rows > cols."""
    rows, cols = weight.shape
    nn.init.orthogonal_(weight, gain=(math.sqrt(rows / cols) if rows > cols else 1.0) * scale)


class RWKV7(nn.Module):
    """RWKV-7 time mixing: a per-channel-decayed, generalized delta-rule state per head,
    read by a receptance, with a per-head bonus for the current token, an output gate, and
    (after the first RWKV-7 layer) the value residual toward the first layer's values.

    Args:
        head_dim: channels per head (the reference uses 64; at most d_model); must divide d_model
        decay_lora: rank of the data-dependent decay's low-rank map (0: the reference's size)
        a_lora: rank of the in-context learning rate's low-rank map (0: the reference's size)
        value_lora: rank of the value-residual gate's low-rank map (0: the reference's size)
        gate_lora: rank of the output gate's low-rank map (0: the reference's size)
    """

    name = "rwkv7"
    chunk_size = 16

    def __init__(self, d_model: int, head_dim: int = 64, decay_lora: int = 0, a_lora: int = 0,
                 value_lora: int = 0, gate_lora: int = 0, layer_idx: int = 0, n_layers: int = 2,
                 shared: dict | None = None) -> None:
        super().__init__()
        if head_dim < 1:
            raise FieldError("head_dim", f"must be >= 1, got {head_dim}")
        head_dim = min(head_dim, d_model)
        if d_model % head_dim:
            raise FieldError("head_dim", f"must divide d_model={d_model}, got {head_dim}")
        for field, rank in (("decay_lora", decay_lora), ("a_lora", a_lora), ("value_lora", value_lora),
                            ("gate_lora", gate_lora)):
            if rank < 0:
                raise FieldError(field, f"must be >= 0 (0: the reference's size), got {rank}")
        self.d_model, self.head_dim, self.num_heads = d_model, head_dim, d_model // head_dim
        self.layer_idx, self.n_layers = layer_idx, n_layers
        self.shared = {} if shared is None else shared
        layers = self.shared.setdefault("rwkv7.layers", [])  # layer_idx of each RWKV-7 layer, in build order
        layers.append(layer_idx)
        self.first = len(layers) == 1
        d = d_model
        decay_lora = decay_lora or _lora_rank(d, 2.5)
        a_lora = a_lora or _lora_rank(d, 2.5)
        value_lora = value_lora or _lora_rank(d, 1.7)
        gate_lora = gate_lora or _lora_rank(d, 5.0)
        self.mix = nn.Parameter(torch.empty(6, d))  # token-shift mixes μ for r, w, k, v, a, g
        self.receptance = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.output = nn.Linear(d, d, bias=False)
        self.w0 = nn.Parameter(torch.empty(d))  # decay: ω = -softplus(-(w0 + tanh(x W1) W2)) - 0.5 = log σ(·) - 0.5
        self.w1, self.w2 = nn.Parameter(torch.empty(d, decay_lora)), nn.Parameter(torch.empty(decay_lora, d))
        self.a0 = nn.Parameter(torch.empty(d))  # a = sigmoid(a0 + x A1 A2)
        self.a1, self.a2 = nn.Parameter(torch.empty(d, a_lora)), nn.Parameter(torch.empty(a_lora, d))
        if not self.first:  # value residual gate ν = sigmoid(v0 + x V1 V2); the first layer has none
            self.v0 = nn.Parameter(torch.empty(d))
            self.v1, self.v2 = nn.Parameter(torch.empty(d, value_lora)), nn.Parameter(torch.empty(value_lora, d))
        self.g1, self.g2 = nn.Parameter(torch.empty(d, gate_lora)), nn.Parameter(torch.empty(gate_lora, d))
        self.k_k = nn.Parameter(torch.empty(d))  # ξ: which key directions are removed
        self.k_a = nn.Parameter(torch.empty(d))  # α: how much a scales the written key
        self.r_k = nn.Parameter(torch.empty(self.num_heads, head_dim))  # ρ: current-token bonus
        self.ln_x = nn.GroupNorm(self.num_heads, d, eps=64e-5)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference's init (RWKV_Tmix_x070.__init__ in RWKV-LM's RWKV-v7/train_temp/src/model.py):
        mixes and decay speeds vary across channels and depth, the zigzag varies them within
        each head; low-rank maps start at zero on one side; the output projection at zero.
        (Its trainer's generate_init_weight later redraws r, k, v orthogonally and scales
        ln_x by depth when it trains a whole LM; that step is not taken here.)"""
        d, n_head = self.d_model, self.head_dim
        r01 = self.layer_idx / max(self.n_layers - 1, 1)  # 0 → 1 across layers
        r10 = 1 - self.layer_idx / self.n_layers  # 1 → ~0
        ddd = torch.arange(d, dtype=torch.float64) / d
        n = torch.arange(d, dtype=torch.float64)
        linear = n / max(d - 1, 1) - 0.5  # -0.5 → 0.5 across channels
        half = (n_head - 1) / 2
        zigzag = (n % n_head - half) / half if n_head > 1 else torch.zeros_like(n)  # -1 → 1 within each head
        zigzag = zigzag * zigzag.abs()
        www = -6 + 6 * (n / max(d - 1, 1)) ** (1 + r01**0.3)
        with torch.no_grad():
            self.mix.copy_(torch.stack([1 - ddd ** (p * r10) for p in (0.2, 0.9, 0.7, 0.7, 0.9, 0.2)]))  # r w k v a g
            self.w0.copy_(www + 0.5 + zigzag * 2.5)
            self.a0.copy_(-0.19 + zigzag * 0.3 + linear * 0.4)
            lora = [(self.w1, self.w2), (self.a1, self.a2), (self.g1, self.g2)]
            if not self.first:
                self.v0.copy_(0.73 - linear * 0.4)
                lora.append((self.v1, self.v2))
            for first, second in lora:
                first.zero_()
                _ortho_(second, 0.1)
            self.k_k.copy_(0.71 - linear * 0.1)
            self.k_a.fill_(1.02)
            self.r_k.fill_(-0.04)
            for lin, bound in ((self.receptance, 0.5), (self.key, 0.05), (self.value, 0.5)):
                nn.init.uniform_(lin.weight, -bound / math.sqrt(d), bound / math.sqrt(d))
            self.output.weight.zero_()
            self.ln_x.reset_parameters()

    def _value_first(self, shape: torch.Size) -> torch.Tensor:
        """The first RWKV-7 layer's values for this input, [B, L, D]."""
        v_first = self.shared.get("rwkv7.v_first")
        if v_first is None or v_first.shape != shape:
            raise RuntimeError(f"RWKV-7 layer {self.layer_idx} needs the first RWKV-7 layer's values: run the "
                               "layers sharing its `shared` dict in order, first layer first")
        return v_first

    def _mixed(self, x: torch.Tensor, prev: torch.Tensor) -> list[torch.Tensor]:
        """x, prev = x_{t-1} [..., D] → the six token-shifted inputs (r, w, k, v, a, g)."""
        delta = prev - x
        return [x + delta * m for m in self.mix.unbind(0)]

    def _inputs(self, mixed: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Token-shifted inputs → r, log decay, k, removal direction -κ, its write weight κ ⊙ a,
        and gate g, each [..., D]."""
        xr, xw, xk, _, xa, xg = mixed
        r, k = self.receptance(xr), self.key(xk)
        # ω = -softplus(-z) - 0.5 = log σ(z) - 0.5, so the log decay -e^ω is -e^{-0.5} σ(z)
        z = self.w0 + torch.tanh(xw @ self.w1) @ self.w2
        logw = torch.sigmoid(z.float()) * -math.exp(-0.5)  # log decay per channel: decay in (0.545, 1)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kappa = F.normalize((k * self.k_k).unflatten(-1, (self.num_heads, self.head_dim)), dim=-1).flatten(-2)
        k = k * (1 + (a - 1) * self.k_a)
        return r, logw, k, -kappa, kappa * a, g

    def _values(self, mixed: list[torch.Tensor], v_first: torch.Tensor | None) -> torch.Tensor:
        """v = value(x_v), moved toward v_first by the value-residual gate after the first layer."""
        xv = mixed[3]
        v = self.value(xv)
        if v_first is None:
            return v
        return v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)

    def _hand_on(self, v: torch.Tensor) -> None:
        """First layer: share v (when other RWKV-7 layers follow); last layer: drop it."""
        layers = self.shared["rwkv7.layers"]
        if self.first and len(layers) > 1:
            self.shared["rwkv7.v_first"] = v
        elif not self.first and self.layer_idx == max(layers):
            self.shared.pop("rwkv7.v_first", None)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.float().unflatten(-1, (self.num_heads, self.head_dim))  # [..., H, N]

    def _step(self, S: torch.Tensor, r, logw, k, v, a, b) -> tuple[torch.Tensor, torch.Tensor]:
        """One position. S [B, H, N(v), N(k)]; the rest [B, H, N]. Returns (S r, new S)."""
        Sa = torch.einsum("bhvk,bhk->bhv", S, a)  # the state along the removal direction
        S = S * logw.exp()[:, :, None, :] + Sa[..., None] * b[:, :, None, :] + v[..., None] * k[:, :, None, :]
        return torch.einsum("bhvk,bhk->bhv", S, r), S

    def _finish(self, o: torch.Tensor, r, k, v, g) -> torch.Tensor:
        """o [..., D] (float) → y [..., D]: group norm, current-token bonus, gate, projection."""
        o = group_norm(o.to(r.dtype), self.ln_x)
        bonus = (self._heads(r) * self._heads(k) * self.r_k).sum(-1, keepdim=True) * self._heads(v)
        return self.output((o + bonus.flatten(-2).to(o.dtype)) * g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prev = F.pad(x, (0, 0, 1, -1))  # x_{t-1}, zeros at t = 0
        mixed = self._mixed(x, prev)
        v = self._values(mixed, None if self.first else self._value_first(x.shape))  # [B, L, D]
        self._hand_on(v)
        r, logw, k, a, b, g = self._inputs(mixed)  # [B, L, D]
        o = chunk_rwkv7(*(self._heads(t).transpose(1, 2) for t in (r, logw, k, v, a, b)), self.chunk_size)
        return self._finish(o.transpose(1, 2).flatten(-2), r, k, v, g)  # o: [B, H, L, N] → [B, L, D]

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Token by token. State: the previous input x_{t-1} [B, D] and S [B, H, N, N]. (The
        value residual reads the first layer's v at the same position: no state of its own.)"""
        v_first = None if self.first else self._value_first(x.shape)
        prev = x.new_zeros(x.shape[0], self.d_model)
        S = x.new_zeros(x.shape[0], self.num_heads, self.head_dim, self.head_dim, dtype=torch.float32)
        ys, vs = [], []
        for t in range(x.shape[1]):
            mixed = self._mixed(x[:, t], prev)
            v = self._values(mixed, None if v_first is None else v_first[:, t])
            vs.append(v)
            r, logw, k, a, b, g = self._inputs(mixed)
            o, S = self._step(S, *(self._heads(u) for u in (r, logw, k, v, a, b)))
            ys.append(self._finish(o.flatten(-2), r, k, v, g))
            prev = x[:, t]
        self._hand_on(torch.stack(vs, dim=1))
        return torch.stack(ys, dim=1), (prev, S)

    def state_size(self, seq_len: int) -> int:
        """d_model · (head_dim + 1): per head a head_dim × head_dim state, plus the previous
        token (token shift). Independent of seq_len."""
        return self.d_model * (self.head_dim + 1)
