"""Linear attention: softmax(q·k) replaced by a feature-map kernel φ(q)·φ(k).

    S_t = S_{t-1} + φ(k_t) v_tᵀ,   z_t = z_{t-1} + φ(k_t),   y_t = φ(q_t)ᵀ S_t / φ(q_t)ᵀ z_t

so inference keeps a fixed [F, V] state (plus the normaliser z) per head instead of a KV
cache (Katharopoulos et al. 2020, arXiv 2006.16236). Training runs the chunked form in
``_ops.chunk_linear_attention``: linear in length.

The feature maps include those of the Based paper's feature-map ablation (Arora et al.
2024, arXiv 2402.18668, Figure 3; upstream zoology's ``mixers/feature_maps``): relu,
square, all_poly and exp_dim beside taylor_exp, performer, cosformer and elu (PosELU).
Differences from upstream: all_poly's two projections are fixed random draws (upstream's
ablation ran them both fixed and learned), and all_poly, which is not positive, must run
unnormalised (upstream's Based always divided by φ(q)·Σφ(k)); square is x² (upstream also
has x²/√2, the same map once normalised).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoology.errors import FieldError
from zoology.mixers._ops import chunk_linear_attention

FEATURE_MAPS = ("identity", "elu", "taylor_exp", "performer", "cosformer", "relu", "square", "all_poly", "exp_dim")
POSITIVE = frozenset(FEATURE_MAPS) - {"identity", "all_poly"}  # maps that may be normalised


class FeatureMap(nn.Module):
    """φ: [B, H, L, K] → [B, H, L, F]; ``positions`` [L] are needed by position-aware maps (cosformer)."""

    def __init__(self, kind: str, dim: int, num_random_features: int = 64, max_seq_len: int = 2048) -> None:
        super().__init__()
        self.kind, self.dim, self.max_seq_len = kind, dim, max_seq_len
        if kind == "performer":
            # FAVOR+ (Choromanski et al. 2020): fixed Gaussian projections, drawn once
            self.register_buffer("projection", torch.randn(num_random_features, dim))
        if kind == "all_poly":
            # two fixed random maps W1, W2 [m, dim] ~ N(0, 1/dim): upstream's randn init, not learned
            self.register_buffer("projection", torch.randn(2, num_random_features, dim) / math.sqrt(dim))

    @property
    def out_dim(self) -> int:
        return {
            "identity": self.dim,
            "elu": self.dim,
            "taylor_exp": 1 + self.dim + self.dim**2,
            "performer": getattr(self, "projection", torch.empty(0)).shape[0],
            "cosformer": 2 * self.dim,
            "relu": self.dim,
            "square": self.dim,
            "all_poly": getattr(self, "projection", torch.empty(0, 0)).shape[-2],
            "exp_dim": 2 * self.dim,
        }[self.kind]

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.kind == "identity":
            return x
        if self.kind == "elu":  # elu(x) + 1 > 0 (Katharopoulos et al.)
            return F.elu(x) + 1
        if self.kind == "taylor_exp":
            # 2nd-order Taylor of exp(q·k/√d): φ(q)·φ(k) = 1 + q·k/√d + (q·k)²/(2d)  (Based)
            x2 = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)  # [..., K²]
            return torch.cat(
                [torch.ones_like(x[..., :1]), x / self.dim**0.25, x2 / (math.sqrt(2) * math.sqrt(self.dim))], dim=-1
            )
        if self.kind == "performer":
            # φ(x) = exp(Wx' - |x'|²/2)/√m with x' = x/d^¼: unbiased for exp(q·k/√d), always
            # bounded by exp(|w|²/2), so it cannot overflow
            xs = x / self.dim**0.25
            proj = xs @ self.projection.to(x.dtype).t()  # [..., m]
            m = self.projection.shape[0]
            return torch.exp(proj - xs.square().sum(-1, keepdim=True) / 2) / math.sqrt(m)
        if self.kind == "relu":  # clamped just above 0 as upstream, so the normaliser stays positive
            return F.relu(x).clamp(min=1e-12)
        if self.kind == "square":  # φ(q)·φ(k) = Σ_d q_d² k_d²: the diagonal of Taylor's quadratic term
            return x.square()
        if self.kind == "all_poly":
            # ((W1 x)² + W2 (x²)) / √2: random degree-2 polynomial features (not positive)
            w1, w2 = self.projection.to(x.dtype)
            return ((x @ w1.t()).square() + x.square() @ w2.t()) / math.sqrt(2)
        if self.kind == "exp_dim":
            # exp of each coordinate and of its negation, floored at 0: exp(max(±x, 0)) ≥ 1
            return torch.cat([x, -x], dim=-1).clamp(min=1e-12).exp()
        # cosformer (Qin et al. 2022): relu features re-weighted by cos(π/2 · (i - j)/M)
        # = cos·cos + sin·sin, split into two halves so it stays a linear kernel
        angle = (math.pi / 2) * positions.float() / self.max_seq_len  # [L]
        r = F.relu(x)
        cos, sin = angle.cos()[:, None].to(x.dtype), angle.sin()[:, None].to(x.dtype)
        return torch.cat([r * cos, r * sin], dim=-1)


class LinearAttention(nn.Module):
    """Causal linear attention with a choice of feature map.

    Args:
        feature_map: φ applied to queries and keys: identity, elu, taylor_exp, performer, cosformer,
            relu, square, all_poly or exp_dim
        feature_dim: query/key dimension per head before the feature map
        num_heads: heads; d_model must be divisible by it (value dim per head = d_model / num_heads)
        normalize: divide by φ(q)·Σφ(k) (needs a positive feature map, so not with identity or all_poly)
        num_random_features: random features of the performer map and of the all_poly map (unused by the others)
        eps: added to the normaliser
    """

    name = "linear_attention"
    chunk_size = 64

    def __init__(
        self,
        d_model: int,
        max_seq_len: int = 2048,
        feature_map: str = "elu",
        feature_dim: int = 16,
        num_heads: int = 1,
        normalize: bool = True,
        num_random_features: int = 64,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if feature_map not in FEATURE_MAPS:
            raise FieldError("feature_map", f"must be one of {', '.join(FEATURE_MAPS)}, got {feature_map!r}")
        if feature_dim < 1:
            raise FieldError("feature_dim", f"must be >= 1, got {feature_dim}")
        if num_heads < 1 or d_model % num_heads:
            raise FieldError("num_heads", f"must be >= 1 and divide d_model={d_model}, got {num_heads}")
        if normalize and feature_map not in POSITIVE:
            raise FieldError("normalize", f"the {feature_map} feature map is not positive: set normalize = false")
        if num_random_features < 1:
            raise FieldError("num_random_features", f"must be >= 1, got {num_random_features}")
        self.num_heads, self.feature_dim, self.head_dim = num_heads, feature_dim, d_model // num_heads
        self.normalize, self.eps = normalize, eps
        self.feature_map = FeatureMap(feature_map, feature_dim, num_random_features, max_seq_len)
        self.proj_q = nn.Linear(d_model, num_heads * feature_dim, bias=False)
        self.proj_k = nn.Linear(d_model, num_heads * feature_dim, bias=False)
        self.proj_v = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, L, D] → φ(q), φ(k) [B, H, L, F] and v [B, H, L, V] (with a ones column if normalising)."""
        b, l, _ = x.shape
        def heads(t):
            return t.view(b, l, self.num_heads, -1).transpose(1, 2)
        q, k, v = heads(self.proj_q(x)), heads(self.proj_k(x)), heads(self.proj_v(x))
        pos = torch.arange(l, device=x.device)
        q, k = self.feature_map(q, pos), self.feature_map(k, pos)
        if self.normalize:  # the normaliser φ(q)·Σφ(k) is the same scan run on a column of ones
            v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
        return q, k, v

    def _output(self, y: torch.Tensor) -> torch.Tensor:
        """y [B, H, L, V(+1)] → [B, L, D]."""
        if self.normalize:
            y = y[..., :-1] / (y[..., -1:] + self.eps)
        b, h, l, dv = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(b, l, h * dv))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._features(x)
        y, _ = chunk_linear_attention(q, k, v, chunk_size=self.chunk_size)
        return self._output(y)

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token by token: S += φ(k_t) v_tᵀ; y_t = φ(q_t)ᵀ S. State [B, H, F, V(+1)]."""
        q, k, v = self._features(x)
        S = q.new_zeros(q.shape[0], self.num_heads, q.shape[-1], v.shape[-1])
        ys = []
        for t in range(x.shape[1]):
            S = S + k[:, :, t, :, None] * v[:, :, t, None, :]
            ys.append(torch.einsum("bhf,bhfv->bhv", q[:, :, t], S))
        return self._output(torch.stack(ys, dim=2)), S

    def state_size(self, seq_len: int) -> int:
        """Per head, a feature_map-dim × value-dim matrix, plus a feature_map-dim normaliser when
        normalize: num_heads · F · (d_model/num_heads + normalize), with F = feature_dim (identity,
        elu, relu, square), 1 + feature_dim + feature_dim² (taylor_exp), num_random_features
        (performer, all_poly), 2·feature_dim (cosformer, exp_dim). Independent of seq_len."""
        return self.num_heads * self.feature_map.out_dim * (self.head_dim + int(self.normalize))
