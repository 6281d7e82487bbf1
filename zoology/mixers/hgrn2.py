"""HGRN2: gated linear RNN with state expansion (Qin et al. 2024, arXiv 2404.07904; fla's
``layers/hgrn2.py`` and ``models/hgrn2``).

HGRN's element-wise recurrence h_t = λ_t ⊙ h_{t-1} + (1 - λ_t) ⊙ i_t, with the state
expanded by an outer product: per head,

    λ_t = γ + (1 - γ) ⊙ sigmoid(W_f x_t)      forget gate ∈ (γ, 1), γ the layer's lower bound
    S_t = diag(λ_t) S_{t-1} + (1 - λ_t) i_tᵀ   S: [expand_ratio, d_model/num_heads]
    o_t = S_tᵀ swish(W_q x_t) / √expand_ratio
    y_t = out(RMSNorm(o_t))

i.e. gated linear attention whose key is 1 - forget gate (no key projection: the gate
ties forgetting and writing). Training: the chunked form (``_gated.chunk_gated_attention``,
linear in length).

Lower bound: the reference learns the bounds of all layers jointly, γ = cumsum(softmax(Γ)
over layers) minus its first entry, so they rise with depth and layer 0 has none. A mixer
cannot see its neighbours' parameters, so here each layer learns its own bound
γ = sigmoid(θ) per forget channel, starting at the reference's initial value
layer_idx / n_layers; layer 0 has none, as in the reference. Left out: the reference's
optional short convolutions (off by default there). The 1/√expand_ratio read scale is
fla's kernel default.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoology.errors import FieldError
from zoology.mixers._gated import chunk_gated_attention
from zoology.mixers._ops import RMSNorm


class HGRN2(nn.Module):
    """HGRN2: a forget-gated linear RNN whose state is expanded by an outer product with the
    input gate 1 - forget gate; forget gates have a learned per-layer lower bound.

    Args:
        expand_ratio: state expansion per head (the forget/key width of a head; the reference
            uses 128 at d_model 2048, so 16 heads)
        num_heads: heads, each with d_model/num_heads value channels; 0 means
            d_model // expand_ratio, as the reference
    """

    name = "hgrn2"
    chunk_size: int | None = None  # chunk_gated_attention's choice by length

    def __init__(self, d_model: int, expand_ratio: int = 32, num_heads: int = 0,
                 layer_idx: int = 0, n_layers: int = 2) -> None:
        super().__init__()
        if expand_ratio < 1:
            raise FieldError("expand_ratio", f"must be >= 1, got {expand_ratio}")
        if num_heads < 0:
            raise FieldError("num_heads", f"must be >= 0 (0: d_model // expand_ratio), got {num_heads}")
        num_heads = num_heads or max(d_model // expand_ratio, 1)
        if d_model % num_heads:
            raise FieldError("num_heads", f"must divide d_model={d_model}, got {num_heads}")
        self.d_model, self.num_heads, self.expand_ratio = d_model, num_heads, expand_ratio
        self.head_v = d_model // num_heads
        forget_dim = num_heads * expand_ratio
        self.q_proj = nn.Linear(d_model, forget_dim, bias=False)
        self.f_proj = nn.Linear(d_model, forget_dim, bias=False)
        self.i_proj = nn.Linear(d_model, d_model, bias=False)
        self.norm = RMSNorm(d_model)  # over all of d_model, as the reference
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        if layer_idx > 0:  # γ = sigmoid(θ), starting at layer_idx / n_layers
            start = min(layer_idx / n_layers, 1 - 1e-3)
            self.lower_bound_logit = nn.Parameter(torch.full((forget_dim,), math.log(start / (1 - start))))
        else:
            self.lower_bound_logit = None

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [B, L, D] → q, k = 1 - λ, log λ [B, H, L, E] and i [B, H, L, D/H]."""
        b, l, _ = x.shape
        def heads(t):
            return t.view(b, l, self.num_heads, -1).transpose(1, 2)
        q = F.silu(self.q_proj(x)) * self.expand_ratio**-0.5
        log_f = F.logsigmoid(self.f_proj(x))
        if self.lower_bound_logit is not None:  # log(γ + (1 - γ)·σ) computed in log space
            log_g = F.logsigmoid(self.lower_bound_logit)
            log_f = torch.logaddexp(log_g, F.logsigmoid(-self.lower_bound_logit) + log_f)
        k = -torch.expm1(log_f)  # 1 - λ
        return heads(q), heads(k), heads(log_f), heads(self.i_proj(x))

    def _output(self, o: torch.Tensor) -> torch.Tensor:
        """o [B, H, L, D/H] → RMSNorm over d_model → out_proj, [B, L, D]."""
        b, _, l, _ = o.shape
        return self.out_proj(self.norm(o.transpose(1, 2).reshape(b, l, self.d_model)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, log_f, i = self._inputs(x)
        o, _ = chunk_gated_attention(q, k, i, gk=log_f, chunk_size=self.chunk_size)
        return self._output(o)

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token by token: S = λ_t ⊙ S + (1 - λ_t) i_tᵀ; o_t = q_tᵀ S. State [B, H, E, D/H]."""
        q, k, log_f, i = self._inputs(x)
        S = x.new_zeros(x.shape[0], self.num_heads, self.expand_ratio, self.head_v)
        outs = []
        for t in range(x.shape[1]):
            S = log_f[:, :, t, :, None].exp() * S + k[:, :, t, :, None] * i[:, :, t, None, :]
            outs.append(torch.einsum("bhe,bhev->bhv", q[:, :, t], S))
        return self._output(torch.stack(outs, dim=2)), S

    def state_size(self, seq_len: int) -> int:
        """expand_ratio · d_model: per head an expand_ratio × (d_model/num_heads) state.
        Independent of seq_len."""
        return self.expand_ratio * self.d_model
