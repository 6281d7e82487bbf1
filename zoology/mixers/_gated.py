"""Pieces shared by RWKV-5/6, HGRN2 and Gated Slot Attention: their chunked training form
and an RMSNorm, both computed in at least float32 and keeping float64 as float64.

Chunked gated linear attention with a decay on the key side, the value side, or both:

    S_t = diag(e^{gk_t}) S_{t-1} diag(e^{gv_t}) + k_t v_tᵀ,    o_t = q_tᵀ S_t,    S: [K, V]

gk (≤ 0) decays the rows of the state (one decay per key channel: GLA, RWKV, HGRN2, GSA's
second pass); gv (≤ 0) decays its columns (GSA's first pass, whose "values" are slots).
Within a chunk of C positions every decay is taken relative to the chunk start in log
space (cumulative sums G), and each pairwise factor e^{G_i - G_j} is formed only after
masking j > i, so nothing overflows however strong the decay; only a [K, V] state
crosses chunk boundaries, so time and memory stay linear in length.

Unlike ``_ops.chunk_linear_attention`` (which accumulates its log decays in float32), this
keeps float64 inputs in float64, so tests can hold it to 1e-10 against the recurrence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def chunk_gated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor | None = None,
    gv: torch.Tensor | None = None,
    chunk_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k: [B, H, L, K]; v: [B, H, L, V]; gk: None or [B, H, L, K]; gv: None or [B, H, L, V].

    Returns (o [B, H, L, V] in v's dtype, final state S [B, H, K, V] in at least float32).
    """
    b, h, l, dk = q.shape
    dv = v.shape[-1]
    c = chunk_size
    dtype = v.dtype
    acc = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for float64 inputs
    pad = -l % c

    def chunks(t: torch.Tensor) -> torch.Tensor:
        """[B, H, L, X] → [B, H, N, C, X], zero-padded at the end (a log decay of 0 is a no-op)."""
        return F.pad(t.to(acc), (0, 0, 0, pad)).unflatten(2, (-1, c))

    q, k, v = chunks(q), chunks(k), chunks(v)
    n = q.shape[2]
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()  # j ≤ i
    ones_k, ones_v = q.new_ones(b, h, n, dk), q.new_ones(b, h, n, dv)

    # key side: A_ij = Σ_d q_id k_jd e^{Gk_id - Gk_jd} for j ≤ i
    if gk is None:
        A = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0)  # [B, H, N, C, C]
        q_in, k_out, decay_k = q, k, ones_k
    else:
        Gk = chunks(gk).cumsum(3)  # [B, H, N, C, K], log decay from the chunk start through i
        diff = (Gk.unsqueeze(4) - Gk.unsqueeze(3)).masked_fill(~causal[:, :, None], float("-inf"))
        A = torch.einsum("bhnid,bhnjd,bhnijd->bhnij", q, k, diff.exp())  # diff: [B, H, N, C, C, K]
        q_in = q * Gk.exp()  # what the incoming state meets at i
        k_out = k * (Gk[..., -1:, :] - Gk).exp()  # what j leaves in the chunk's final state
        decay_k = Gk[..., -1, :].exp()  # [B, H, N, K], decay over the whole chunk

    # value side: o_iv = Σ_j A_ij v_jv e^{Gv_iv - Gv_jv}
    if gv is None:
        o = A @ v  # [B, H, N, C, V]
        v_out, read_scale, decay_v = v, torch.ones_like(v), ones_v
    else:
        Gv = chunks(gv).cumsum(3)  # [B, H, N, C, V]
        diff = (Gv.unsqueeze(4) - Gv.unsqueeze(3)).masked_fill(~causal[:, :, None], float("-inf"))
        o = torch.einsum("bhnij,bhnjv,bhnijv->bhniv", A, v, diff.exp())
        v_out = v * (Gv[..., -1:, :] - Gv).exp()
        read_scale = Gv.exp()  # the incoming state's columns, decayed to i
        decay_v = Gv[..., -1, :].exp()

    S = q.new_zeros(b, h, dk, dv)
    inter = []
    # carry the [K, V] state across chunks (unbind, not indexing: its backward stays linear)
    per_chunk = (t.unbind(2) for t in (q_in, read_scale, k_out, v_out, decay_k, decay_v))
    for q_i, r_i, k_i, v_i, dk_i, dv_i in zip(*per_chunk):
        inter.append((q_i @ S) * r_i)  # [B, H, C, V]
        S = dk_i.unsqueeze(-1) * S * dv_i.unsqueeze(-2) + k_i.transpose(-1, -2) @ v_i
    o = o + torch.stack(inter, dim=2)
    return o.flatten(2, 3)[:, :, :l].to(dtype), S


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, computed in at least float32 (float64 stays float64), with a
    learned scale; returns the input's dtype."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        return (y * self.weight).to(x.dtype)
