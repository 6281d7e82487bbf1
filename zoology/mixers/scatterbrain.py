"""Scatterbrain (Chen et al. 2021, arXiv 2110.15343), causal: softmax attention approximated
as sparse + low-rank. Exact scores on a local window, Performer random features elsewhere.

With s = 1/√Dh and the Performer (FAVOR+) positive features φ, E[φ(q)·φ(k)] = exp(s q·k),
query i weighs key n ≤ i by

    w_in = exp(s q_i·k_n)    if i - n < window          (sparse part: exact)
    w_in = φ(q_i)·φ(k_n)     otherwise                  (low-rank part: Performer)

and outputs Σ_n w_in v_n / Σ_n w_in. This is the paper's estimator: low-rank everywhere,
plus a sparse correction (exact − low-rank) on the window's support, so the window is
exact and the rest is Performer. We add the low-rank part only outside the window instead
of adding everywhere and subtracting inside it: the same value, and every term stays ≥ 0.

φ(x) = exp(±w_r·x' - |x'|²/2) / √m over m/2 random directions w_r (both signs, the
"hyperbolic" positive features), x' = x·s^½; the directions are orthogonal in blocks
with Gaussian norms (Performer's orthogonal random features), drawn once (a buffer).
Inference keeps the window's KV cache and, for the keys that have left it, the Performer
state Σ φ(k) vᵀ and Σ φ(k): constant in length once the window is full.

Numerics: key features are kept in (0, 1] by moving exp(|w_r|²/2) to the query side
(φ_r(q)φ_r(k) is unchanged); each query then subtracts one shift c_i (the largest of its
window logits and query-feature logits) from all its logits, which cancels in the ratio.

Differences from upstream Zoology's ``mixers/scatterbrain`` (SBLocalAttention, the Based
paper's Figure 2):

* Upstream's window holds the query and the ``window_size`` positions before it; our
  ``window`` counts the query too (upstream window_size w = our window w + 1).
* Upstream normalises the window part with its own softmax (softmax(local − log Z) is
  softmax(local)) and scales the window's Performer scores by s a second time before
  subtracting them, so its weights do not sum to one and the double counting is only
  partly removed. Ours is the paper's normalised estimator above.
* Upstream draws its random projection on the first forward call; ours at construction.
* Dropout acts on the exact window weights only, as upstream's.
* The paper's sparse part may also come from LSH buckets (Reformer); here, as in upstream,
  it is the local window.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from zoology.errors import FieldError
from zoology.mixers._ops import chunk_linear_attention
from zoology.mixers.attention import _QKV


def orthogonal_gaussian(rows: int, cols: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[rows, cols]: blocks of `cols` orthonormal rows (QR of Gaussian matrices), each row then
    given the norm of a Gaussian vector, so every row is marginally N(0, I) (Performer's ORF)."""
    n_blocks = -(-rows // cols)
    g = torch.randn(n_blocks, cols, cols, generator=generator)
    qmat, r = torch.linalg.qr(g)
    qmat = qmat * torch.diagonal(r, dim1=-2, dim2=-1).sign()[:, None, :]  # Haar-uniform
    directions = qmat.transpose(-1, -2).reshape(n_blocks * cols, cols)[:rows]  # orthonormal rows
    norms = torch.randn(rows, cols, generator=generator).norm(dim=1, keepdim=True)
    return directions * norms


class Scatterbrain(_QKV):
    """Scatterbrain: exact softmax scores on a causal local window + Performer (random-feature
    low-rank) scores on all earlier keys, normalised together.

    Args:
        window: positions each query scores exactly, itself included (upstream window_size + 1)
        feature_dim: Performer random features per head (even: both signs of feature_dim/2 directions)
        num_heads: attention heads; d_model must be divisible by it
        dropout: dropout on the exact window weights while training
        seed: seeds the random feature directions
    """

    name = "scatterbrain"
    chunk_size = 64  # chunk of the Performer part's linear-time scan

    def __init__(
        self,
        d_model: int,
        window: int = 64,
        feature_dim: int = 24,
        num_heads: int = 1,
        dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        if window < 1:
            raise FieldError("window", f"must be >= 1, got {window}")
        if feature_dim < 2 or feature_dim % 2:
            raise FieldError("feature_dim", f"must be even and >= 2 (features come in ± pairs), got {feature_dim}")
        if seed < 0:
            raise FieldError("seed", f"must be >= 0, got {seed}")
        super().__init__(d_model, num_heads, 0, dropout)
        self.window, self.feature_dim = window, feature_dim
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("directions", orthogonal_gaussian(feature_dim // 2, self.head_dim, g))  # [m/2, Dh]

    def features(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-features: q, k [B, H, L, Dh] → lq, lk [B, H, L, m] with
        Σ_r exp(lq_r + lk_r) = φ(q)·φ(k) ≈ exp(s q·k), and lk ≤ 0."""
        s = self.head_dim**-0.5
        w = self.directions.to(q.dtype)  # [m/2, Dh]
        half_w2 = torch.cat([w.square().sum(-1), w.square().sum(-1)]) / 2  # [m] |w_r|²/2, per sign
        qs, ks = q * s**0.5, k * s**0.5  # x' = x·s^½, so q'·k' = s q·k
        qw, kw = qs @ w.t(), ks @ w.t()  # [B, H, L, m/2]
        lq = torch.cat([qw, -qw], -1) - qs.square().sum(-1, keepdim=True) / 2 + half_w2 - math.log(self.feature_dim)
        lk = torch.cat([kw, -kw], -1) - ks.square().sum(-1, keepdim=True) / 2 - half_w2  # = -|k' ∓ w_r|²/2
        return lq, lk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)  # [B, H, L, Dh]
        wide = torch.promote_types(q.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):  # exp-weighted sums in fp32 at least
            y = self._attend(q.to(wide), k.to(wide), v.to(wide))
        return self.out(y.to(q.dtype))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        bsz, h, l, dh = q.shape
        lq, lk = self.features(q, k)  # [B, H, L, m]
        # exact part, blocked as in SlidingWindowAttention: query block i sees key blocks i-1, i
        w, blk = self.window, min(self.window, l)
        n = -(-l // blk)
        qb, kb, vb = (F.pad(t, (0, 0, 0, n * blk - l)).view(bsz, h, n, blk, dh) for t in (q, k, v))
        k2, v2 = (torch.cat([F.pad(t, (0, 0, 0, 0, 1, 0))[:, :, :-1], t], dim=3) for t in (kb, vb))  # [B,H,N,2b,Dh]
        q_pos = torch.arange(n * blk, device=q.device).view(n, blk, 1)
        k_pos = torch.arange(n, device=q.device).view(n, 1, 1) * blk - blk + torch.arange(2 * blk, device=q.device)
        lag = q_pos - k_pos  # [N, b, 2b]
        in_window = (lag >= 0) & (lag < w) & (k_pos >= 0)
        logits = (qb @ k2.transpose(-1, -2)) * dh**-0.5  # [B, H, N, b, 2b]
        logits = logits.masked_fill(~in_window, float("-inf")).flatten(2, 3)[:, :, :l]  # [B, H, L, 2b]
        # one shift per query, cancelling in the ratio: keeps every exp ≤ 1 (key features are ≤ 1)
        shift = torch.maximum(logits.amax(-1), lq.amax(-1)).detach()  # [B, H, L]
        exact = (logits - shift[..., None]).exp()  # [B, H, L, 2b]
        fq = (lq - shift[..., None]).exp()  # [B, H, L, m]
        # low-rank part over keys n ≤ i - window: causal linear attention on keys/values delayed by window
        fk = F.pad(lk.exp(), (0, 0, w, 0))[:, :, :l]  # [B, H, L, m]: row t holds φ(k_{t-window}), zeros before
        v1 = F.pad(torch.cat([v, torch.ones_like(v[..., :1])], -1), (0, 0, w, 0))[:, :, :l]  # [v, 1] delayed
        low, _ = chunk_linear_attention(fq, fk, v1, chunk_size=self.chunk_size)  # [B, H, L, Dh+1]
        den = exact.sum(-1) + low[..., -1]  # [B, H, L]
        p = F.dropout(exact / den[..., None], self.dropout if self.training else 0.0)
        p_blocks = F.pad(p, (0, 0, 0, n * blk - l)).view(bsz, h, n, blk, 2 * blk)
        y = (p_blocks @ v2).flatten(2, 3)[:, :, :l]  # [B, H, L, Dh]
        return y + low[..., :-1] / den[..., None]

    def state_size(self, seq_len: int) -> int:
        """Window KV cache, 2·d_model·min(window, seq_len) (a key and a value per recent position),
        plus the Performer state of the keys before it: num_heads·feature_dim·(head_dim + 1)
        (Σ φ(k) vᵀ and Σ φ(k))."""
        return 2 * self.d_model * min(self.window, seq_len) + self.num_heads * self.feature_dim * (self.head_dim + 1)

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Token by token: a KV cache of the last `window` positions; a key leaving it is folded
        into the Performer state (S = Σ φ(k) vᵀ [B, H, m, Dh], z = Σ φ(k) [B, H, m]).

        Returns the output and (keys, values, S, z), the caches [B, H, min(window, L), Dh].
        """
        _b, l, _ = x.shape
        q, k, v = (t.to(torch.promote_types(t.dtype, torch.float32)) for t in self.qkv(x))  # [B, H, L, Dh]
        lq, lk = self.features(q, k)
        bsz, h, _, dh = q.shape
        S = q.new_zeros(bsz, h, self.feature_dim, dh)
        z = q.new_zeros(bsz, h, self.feature_dim)
        ys = []
        for t in range(l):
            if t >= self.window:  # key t - window leaves the window: into the Performer state
                old = t - self.window
                S = S + lk[:, :, old, :, None].exp() * v[:, :, old, None, :]
                z = z + lk[:, :, old].exp()
            lo = max(0, t - self.window + 1)
            logits = (q[:, :, t: t + 1] @ k[:, :, lo: t + 1].transpose(-1, -2)).squeeze(2) * dh**-0.5  # [B, H, ≤w]
            shift = torch.maximum(logits.amax(-1), lq[:, :, t].amax(-1))  # [B, H]
            exact = (logits - shift[..., None]).exp()
            fq = (lq[:, :, t] - shift[..., None]).exp()  # [B, H, m]
            den = exact.sum(-1) + (fq * z).sum(-1)
            num = (exact.unsqueeze(2) @ v[:, :, lo: t + 1]).squeeze(2) + (fq.unsqueeze(2) @ S).squeeze(2)
            ys.append(num / den[..., None])  # [B, H, Dh]
        lo = max(0, l - self.window)
        y = torch.stack(ys, dim=2).to(x.dtype)
        return self.out(y), (k[:, :, lo:], v[:, :, lo:], S, z)
