"""The chunked training form shared by RWKV-5/6, HGRN2 and Gated Slot Attention, computed in
at least float32 and keeping float64 as float64.

Chunked gated linear attention with a decay on the key side, the value side, or both:

    S_t = diag(e^{gk_t}) S_{t-1} diag(e^{gv_t}) + k_t v_tᵀ,    o_t = q_tᵀ S_t,    S: [K, V]

gk (≤ 0) decays the rows of the state (one decay per key channel: GLA, RWKV, HGRN2, GSA's
second pass); gv (≤ 0) decays its columns (GSA's first pass, whose "values" are slots).
Only a [K, V] state crosses chunk boundaries, so time and memory stay linear in length.

Numerics: all decays are cumulative log decays G measured from the chunk start. Within a
chunk (C a power of two), a pair j < i is split at the midpoint m of the smallest aligned
block holding both (j ≤ m < i) and its decay factored there,

    e^{G_i - G_j} = e^{G_i - G_m} · e^{G_m - G_j},    both factors ≤ 1,

so each of the log2(C) levels of blocks is a plain matrix product of rescaled queries
and keys (or values), no exponent is ever positive, and nothing overflows however strong
the decay; no [C, C, K] tensor is formed. (Factoring every pair at the chunk start
instead, q_i e^{G_i} · k_j e^{-G_j}, overflows once the decay over a chunk passes e^{-88}.)

Unlike ``_ops.chunk_linear_attention`` (which accumulates its log decays in float32), this
keeps float64 inputs in float64, so tests can hold it to 1e-10 against the recurrence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _halves(t: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., C, X] → the first and second halves of its aligned blocks of 2s rows, two views
    [..., C/2s, s, X] (single views, so they may be written in place, under vmap too)."""
    blocks = t.unflatten(-2, (t.shape[-2] // (2 * s), 2, s))
    return blocks.select(-3, 0), blocks.select(-3, 1)


def _decays(G: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cumulative log decays [..., C, X] → (e^{G_i - G_m} for the second halves, e^{G_m - G_j}
    for the first halves), m the last row of the first half: both ≤ 1."""
    G1, G2 = _halves(G, s)
    Gm = G1[..., -1:, :]
    return (G2 - Gm).exp(), (Gm - G1).exp()


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b. A contraction over one or two terms runs as broadcast products: PyTorch's CPU
    batched matmul sends products that small to a generic kernel ~8× slower than these."""
    if a.shape[-1] == 1:
        return a * b
    if a.shape[-1] == 2:
        return a[..., :1] * b[..., :1, :] + a[..., 1:] * b[..., 1:, :]
    return a @ b


def _level_log_grads(gG: torch.Tensor | None, s: int, to_i: torch.Tensor, from_j: torch.Tensor) -> torch.Tensor:
    """Add a level's gradients w.r.t. its log decays into gG (in place; None: start it): to_i
    is the gradient of the exponents G_i - G_m (second halves), from_j of G_m - G_j (first
    halves; the midpoint m is the last row of a first half)."""
    first = -from_j
    first[..., -1:, :] += from_j.sum(-2, keepdim=True) - to_i.sum(-2, keepdim=True)
    if gG is None:  # computed, not zeros written in place: under vmap(grad(...)) that is refused
        return torch.stack([first, to_i], dim=-3).flatten(-4, -2)
    g1, g2 = _halves(gG, s)
    g1 += first
    g2 += to_i
    return gG


class _IntraChunk(torch.autograd.Function):
    """o_i = Σ_{j≤i} (Σ_d q_id k_jd e^{Gk_id - Gk_jd}) v_j ⊙ e^{Gv_i - Gv_j} within each chunk.

    q, k, Gk: [..., C, K]; v, Gv: [..., C, V] (Gk, Gv cumulative from the chunk start, or
    None for no decay). Returns (o [..., C, V], then each level's decay factors, which the
    backward reuses: callers take [0]). Level s (s = 1, 2, 4, …) adds the pairs with j in
    the first and i in the second half of an aligned block of 2s rows, as matrix products of
    rescaled queries and keys (module docstring). The backward is written out: it adds each
    level's gradients into the halves of whole-size gradient tensors in place, where autograd
    would build zero-padded whole-size tensors for every half of every level. vmap-able (packing).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(q, k, v, Gk, Gv):
        o = (q * k).sum(-1, keepdim=True) * v  # j = i: nothing has decayed yet
        decays = []  # each level's factors, kept for the backward (exp is the costly op here)
        s = 1
        while s < q.shape[-2]:
            (_, q2), (k1, _), (v1, _) = _halves(q, s), _halves(k, s), _halves(v, s)
            if Gk is not None:
                to_i, from_j = _decays(Gk, s)
                decays += [to_i, from_j]
                q2, k1 = q2 * to_i, k1 * from_j
            A = q2 @ k1.transpose(-1, -2)  # [..., C/2s, s(i), s(j)]
            if Gv is None:
                add = _mm(A, v1)
            else:
                to_i, from_j = _decays(Gv, s)
                decays += [to_i, from_j]
                add = _mm(A, v1 * from_j) * to_i
            _halves(o, s)[1].add_(add)
            s *= 2
        return (o, *decays)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs, *output[1:])
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, go, *_):
        q, k, v, Gk, Gv, *saved = ctx.saved_tensors
        decays = iter(saved)
        if go is None:
            return None, None, None, None, None
        go = go.contiguous()
        d = (q * k).sum(-1, keepdim=True)
        gd = (go * v).sum(-1, keepdim=True)
        gq, gk, gv = gd * k, gd * q, go * d
        gGk = gGv = None
        s = 1
        while s < q.shape[-2]:
            (_, q2), (k1, _), (v1, _), (_, go2) = _halves(q, s), _halves(k, s), _halves(v, s), _halves(go, s)
            (_, gq2), (gk1, _), (gv1, _) = _halves(gq, s), _halves(gk, s), _halves(gv, s)
            if Gk is not None:
                k_to_i, k_from_j = next(decays), next(decays)
                q2, k1 = q2 * k_to_i, k1 * k_from_j
            A = q2 @ k1.transpose(-1, -2)
            if Gv is None:
                gA = go2 @ v1.transpose(-1, -2)
                gv1 += _mm(A.transpose(-1, -2), go2)
            else:  # add = P ⊙ to_i with P = A (v1 ⊙ from_j)
                to_i, from_j = next(decays), next(decays)
                v1 = v1 * from_j
                gP = go2 * to_i
                gv1_scaled = _mm(A.transpose(-1, -2), gP)
                gA = gP @ v1.transpose(-1, -2)
                gv1 += gv1_scaled * from_j
                gGv = _level_log_grads(gGv, s, gP * _mm(A, v1), gv1_scaled * v1)
            gq2_scaled, gk1_scaled = _mm(gA, k1), _mm(gA.transpose(-1, -2), q2)
            if Gk is None:
                gq2 += gq2_scaled
                gk1 += gk1_scaled
            else:
                gq2 += gq2_scaled * k_to_i
                gk1 += gk1_scaled * k_from_j
                gGk = _level_log_grads(gGk, s, gq2_scaled * q2, gk1_scaled * k1)
            s *= 2
        if q.shape[-2] == 1:  # chunks of one: no pairs, no decay inside a chunk
            gGk, gGv = (None if G is None else torch.zeros_like(G) for G in (Gk, Gv))
        return gq, gk, gv, gGk, gGv


def chunk_gated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor | None = None,
    gv: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k: [B, H, L, K]; v: [B, H, L, V]; gk: None or [B, H, L, K]; gv: None or [B, H, L, V];
    chunk_size: a power of two, or None for 16 up to 1,024 positions and 32 beyond (long
    sequences come in small batches, where the loop over chunks costs more than the
    larger chunks' extra arithmetic).

    Returns (o [B, H, L, V] in v's dtype, final state S [B, H, K, V] in at least float32).
    """
    c = (16 if q.shape[2] <= 1024 else 32) if chunk_size is None else chunk_size
    if c < 1 or c & (c - 1):
        raise ValueError(f"chunk_size must be a power of two, got {c}")
    b, h, l, dk = q.shape
    dv = v.shape[-1]
    dtype = v.dtype
    acc = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for float64 inputs
    pad = -l % c

    def chunks(t: torch.Tensor) -> torch.Tensor:
        """[B, H, L, X] → [B, H, N, C, X], contiguous, zero-padded at the end (a log decay of 0
        is a no-op)."""
        t = F.pad(t.to(acc), (0, 0, 0, pad)) if pad else t.to(acc).contiguous()
        return t.unflatten(2, (-1, c))

    q, k, v = chunks(q), chunks(k), chunks(v)
    Gk = None if gk is None else chunks(gk).cumsum(3)  # [B, H, N, C, K]
    Gv = None if gv is None else chunks(gv).cumsum(3)  # [B, H, N, C, V]
    o = _IntraChunk.apply(q, k, v, Gk, Gv)[0]  # [B, H, N, C, V]

    n = q.shape[2]
    if Gk is None:
        q_in, k_out, decay_k = q, k, q.new_ones(b, h, n, dk)
    else:
        q_in = q * Gk.exp()  # the incoming state meets query i decayed this much
        k_out = k * (Gk[..., -1:, :] - Gk).exp()  # key j's write, decayed to the chunk's end
        decay_k = Gk[..., -1, :].exp()  # [B, H, N, K], over the whole chunk
    if Gv is None:  # nothing decays the state's columns
        read, v_out, decay_v = None, v, None
    else:
        read = Gv.exp()  # the incoming state's columns, decayed to i
        v_out = v * (Gv[..., -1:, :] - Gv).exp()
        decay_v = Gv[..., -1, :].exp()  # [B, H, N, V]

    S = q.new_zeros(b, h, dk, dv)
    inter = []
    # carry the [K, V] state across chunks (unbind, not indexing: its backward stays linear)
    per_chunk = (t.unbind(2) if t is not None else [None] * n for t in (q_in, read, k_out, v_out, decay_k, decay_v))
    for q_i, r_i, k_i, v_i, dk_i, dv_i in zip(*per_chunk):
        inter.append(q_i @ S if r_i is None else (q_i @ S) * r_i)  # [B, H, C, V]
        S = dk_i.unsqueeze(-1) * S if dv_i is None else dk_i.unsqueeze(-1) * S * dv_i.unsqueeze(-2)
        S = S + k_i.transpose(-1, -2) @ v_i
    o = o + torch.stack(inter, dim=2)
    return o.flatten(2, 3)[:, :, :l].to(dtype), S
