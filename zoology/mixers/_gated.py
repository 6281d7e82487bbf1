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


def _intra_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, Gk: torch.Tensor | None,
                 Gv: torch.Tensor | None) -> torch.Tensor:
    """o_i = Σ_{j≤i} (Σ_d q_id k_jd e^{Gk_id - Gk_jd}) v_j ⊙ e^{Gv_i - Gv_j} within each chunk.

    q, k, Gk: [..., C, K]; v, Gv: [..., C, V] (Gk, Gv cumulative from the chunk start, or
    None for no decay). Returns [..., C, V].
    """
    c = q.shape[-2]
    o = (q * k).sum(-1, keepdim=True) * v  # j = i: nothing has decayed yet
    s = 1
    while s < c:  # pairs with j in the first and i in the second half of an aligned block of 2s
        def halves(t, s=s):
            return t.unflatten(-2, (c // (2 * s), 2, s)).unbind(-3)  # two [..., C/2s, s, X]
        (_, q2), (k1, _), (v1, _) = halves(q), halves(k), halves(v)
        if Gk is not None:
            G1, G2 = halves(Gk)
            Gm = G1[..., -1:, :]  # through the block's midpoint m
            q2, k1 = q2 * (G2 - Gm).exp(), k1 * (Gm - G1).exp()
        A = q2 @ k1.transpose(-1, -2)  # [..., C/2s, s(i), s(j)]
        if Gv is None:
            add = A @ v1
        else:
            G1, G2 = halves(Gv)
            Gm = G1[..., -1:, :]
            add = (A @ (v1 * (Gm - G1).exp())) * (G2 - Gm).exp()
        o = o + F.pad(add, (0, 0, s, 0)).flatten(-3, -2)  # zeros for the first halves, add to the second
        s *= 2
    return o


def chunk_gated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor | None = None,
    gv: torch.Tensor | None = None,
    chunk_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k: [B, H, L, K]; v: [B, H, L, V]; gk: None or [B, H, L, K]; gv: None or [B, H, L, V];
    chunk_size: a power of two.

    Returns (o [B, H, L, V] in v's dtype, final state S [B, H, K, V] in at least float32).
    """
    c = chunk_size
    if c < 1 or c & (c - 1):
        raise ValueError(f"chunk_size must be a power of two, got {c}")
    b, h, l, dk = q.shape
    dv = v.shape[-1]
    dtype = v.dtype
    acc = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for float64 inputs
    pad = -l % c

    def chunks(t: torch.Tensor) -> torch.Tensor:
        """[B, H, L, X] → [B, H, N, C, X], zero-padded at the end (a log decay of 0 is a no-op)."""
        return F.pad(t.to(acc), (0, 0, 0, pad)).unflatten(2, (-1, c))

    q, k, v = chunks(q), chunks(k), chunks(v)
    Gk = None if gk is None else chunks(gk).cumsum(3)  # [B, H, N, C, K]
    Gv = None if gv is None else chunks(gv).cumsum(3)  # [B, H, N, C, V]
    o = _intra_chunk(q, k, v, Gk, Gv)  # [B, H, N, C, V]

    n = q.shape[2]
    if Gk is None:
        q_in, k_out, decay_k = q, k, q.new_ones(b, h, n, dk)
    else:
        q_in = q * Gk.exp()  # the incoming state meets query i decayed this much
        k_out = k * (Gk[..., -1:, :] - Gk).exp()  # key j's write, decayed to the chunk's end
        decay_k = Gk[..., -1, :].exp()  # [B, H, N, K], over the whole chunk
    if Gv is None:
        read, v_out, decay_v = torch.ones_like(v), v, q.new_ones(b, h, n, dv)
    else:
        read = Gv.exp()  # the incoming state's columns, decayed to i
        v_out = v * (Gv[..., -1:, :] - Gv).exp()
        decay_v = Gv[..., -1, :].exp()  # [B, H, N, V]

    S = q.new_zeros(b, h, dk, dv)
    inter = []
    # carry the [K, V] state across chunks (unbind, not indexing: its backward stays linear)
    per_chunk = (t.unbind(2) for t in (q_in, read, k_out, v_out, decay_k, decay_v))
    for q_i, r_i, k_i, v_i, dk_i, dv_i in zip(*per_chunk):
        inter.append((q_i @ S) * r_i)  # [B, H, C, V]
        S = dk_i.unsqueeze(-1) * S * dv_i.unsqueeze(-2) + k_i.transpose(-1, -2) @ v_i
    o = o + torch.stack(inter, dim=2)
    return o.flatten(2, 3)[:, :, :l].to(dtype), S
