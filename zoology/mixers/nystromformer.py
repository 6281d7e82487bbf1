"""Nyströmformer attention (Xiong et al. 2021, arXiv 2102.03902), causal: softmax attention
approximated through landmarks (segment means of queries and keys).

With m landmarks Q̃, K̃ (means of m contiguous segments of Q and K) and s = 1/√Dh,

    softmax(s Q Kᵀ) V  ≈  softmax(s Q K̃ᵀ) · softmax(s Q̃ K̃ᵀ)⁺ · softmax(s Q̃ Kᵀ) V
                              F [L, m]        A⁺ [m, m]           B V [m, Dh]

Causal version (ours). The segment length is c = ceil(L / num_landmarks), L the length of
the input given (as upstream's pooling; so right-padding a batch changes c, though no
position ever sees a later one); landmark j is the mean over positions [j·c, (j+1)·c) and
exists once its segment is complete. Then

* B row j attends (softmax) to keys up to the end of segment j only;
* A is lower triangular: landmark j weighs landmarks j' ≤ j, so A⁺ = A⁻¹ is lower
  triangular too and W = A⁻¹ (B V) is found by forward substitution (a triangular
  solve): W_j depends on landmarks ≤ j only;
* F row i attends to the landmarks whose segment is complete at position i.

So query i only uses positions ≤ i, and with num_landmarks ≥ L (segments of one position)
F = A = B = the causal attention matrix and the output is exact causal attention, as
upstream's own "num_landmarks ≥ seq_len" branch. Queries before the end of the first
segment see no landmark and get zero from this part (only the optional convolution, the
output projection's bias and the residual). An optional causal depthwise convolution of V
per head (the paper's skip connection) adds local mixing. Cost O(L·m): no L×L matrix.

Differences from upstream Zoology's ``mixers/nystromformer`` (xformers' NystromAttention,
the Based paper's Figure 2):

* Upstream is not causal when L > num_landmarks: its landmarks average whole segments,
  and its triangular masks compare a position with a landmark *index*: query i sees
  landmarks 0..i, so query 0 already sees keys up to c-1 and query 1 keys up to 2c-1.
  It also approximates A⁺ with 6 iterations of Razavi et al.'s scheme started from
  Aᵀ/‖A‖₁ (upper triangular); the iterates are full matrices, which mixes later
  landmarks into earlier ones. Our landmarks are the completed segments above, and the
  inverse is exact (A is lower triangular with a positive diagonal, so invertible).
* Upstream splits nothing into heads (one head of width d_model; its ``num_heads`` only
  shapes the optional convolution); ours has ``num_heads`` heads (1 is upstream's).
* Upstream's convolution skip (off by default, as here) is centred, so not causal; ours
  looks back only.
* Upstream's ``state_size`` is 2·d_model·num_landmarks; ours counts the KV cache too, since
  a landmark completed later attends to every key before it (see state_size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoology.errors import FieldError


class Nystromformer(nn.Module):
    """Causal Nyström attention: landmarks are means of completed segments, the landmark
    kernel is inverted exactly (it is lower triangular), optional causal conv skip on V.

    Args:
        num_landmarks: landmarks (segments) per sequence; segment length is ceil(L / num_landmarks)
        num_heads: attention heads; d_model must be divisible by it
        conv_kernel_size: causal depthwise convolution of the values added to the output (one filter per head); 0 disables it
        dropout: dropout on the attention output while training (upstream's place)
    """

    name = "nystromformer"

    def __init__(
        self,
        d_model: int,
        num_landmarks: int = 64,
        num_heads: int = 1,
        conv_kernel_size: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_landmarks < 1:
            raise FieldError("num_landmarks", f"must be >= 1, got {num_landmarks}")
        if num_heads < 1 or d_model % num_heads:
            raise FieldError("num_heads", f"must be >= 1 and divide d_model={d_model}, got {num_heads}")
        if conv_kernel_size < 0:
            raise FieldError("conv_kernel_size", f"must be >= 0 (0 disables it), got {conv_kernel_size}")
        if not 0.0 <= dropout < 1.0:
            raise FieldError("dropout", f"must be in [0, 1), got {dropout}")
        self.d_model, self.num_landmarks, self.num_heads, self.dropout = d_model, num_landmarks, num_heads, dropout
        self.head_dim = d_model // num_heads
        self.Wqkv = nn.Linear(d_model, 3 * d_model, bias=False)  # upstream: no biases
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.conv = nn.Parameter(torch.randn(num_heads, conv_kernel_size) / conv_kernel_size**0.5) if conv_kernel_size else None

    def segment_len(self, seq_len: int) -> int:
        """Positions per landmark for a sequence of seq_len: ceil(seq_len / num_landmarks)."""
        return -(-seq_len // self.num_landmarks)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, L, D] → q, k, v [B, H, L, Dh]."""
        b, l, _ = x.shape
        return tuple(t.view(b, l, self.num_heads, self.head_dim).transpose(1, 2) for t in self.Wqkv(x).chunk(3, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)  # [B, H, L, Dh]
        wide = torch.promote_types(q.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):  # the triangular solve wants fp32 at least
            y = self._attend(q.to(wide), k.to(wide), v.to(wide))
        return self._finish(y.to(q.dtype), v)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        bsz, h, l, dh = q.shape
        scale = dh**-0.5
        c = self.segment_len(l)
        m = l // c  # completed segments (landmarks)
        q_land, k_land = (t[:, :, : m * c].reshape(bsz, h, m, c, dh).mean(3) for t in (q, k))  # [B, H, m, Dh]
        j = torch.arange(m, device=q.device)
        ends = (j + 1) * c - 1  # last position of each segment
        # B V: landmark j attends to keys up to the end of its segment
        bv = F.scaled_dot_product_attention(q_land, k, v, attn_mask=torch.arange(l, device=q.device) <= ends[:, None])
        # A: landmark j over landmarks j' ≤ j (lower triangular, positive diagonal)
        a = ((q_land @ k_land.transpose(-1, -2)) * scale).masked_fill(j[None, :] > j[:, None], float("-inf")).softmax(-1)
        w = torch.linalg.solve_triangular(a, bv, upper=False)  # W = A⁻¹ (B V), [B, H, m, Dh]
        # F: query i over the landmarks complete at i (segment end ≤ i)
        sees = ends[None, :] <= torch.arange(l, device=q.device)[:, None]  # [L, m]
        some = sees.any(-1, keepdim=True)  # [L, 1]: false before the first landmark completes
        logits = ((q @ k_land.transpose(-1, -2)) * scale).masked_fill(~sees, float("-inf"))
        f = logits.masked_fill(~some, 0.0).softmax(-1) * some  # rows without a landmark: weights 0
        return f @ w  # [B, H, L, Dh]

    def _finish(self, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Add the causal conv skip over v (if any), dropout, merge heads, project: [B, H, L, Dh] → [B, L, D]."""
        b, _, l, _ = y.shape
        if self.conv is not None:
            ksz = self.conv.shape[1]
            vp = F.pad(v, (0, 0, ksz - 1, 0))  # [B, H, K-1+L, Dh]: look back only
            y = y + sum(self.conv[:, i, None, None] * vp[:, :, ksz - 1 - i: ksz - 1 - i + l] for i in range(ksz))
        y = F.dropout(y, self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(b, l, self.d_model))

    def state_size(self, seq_len: int) -> int:
        """KV cache of every position, 2·d_model·seq_len (a landmark completed later attends to
        all keys before it), plus per completed landmark (floor(seq_len / c) of them, c =
        ceil(seq_len / num_landmarks)) its key and its row of A⁻¹·B·V, 2·d_model each, plus the
        running sums of the current segment's queries and keys, 2·d_model."""
        landmarks = seq_len // self.segment_len(seq_len)
        return 2 * self.d_model * (seq_len + landmarks + 1)

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Token by token, the segment length fixed by L = x.shape[1]. When a segment completes,
        its landmark attends to the cached keys (B row), weighs earlier landmarks (A row) and
        W_j = (B_j V - Σ_{j'<j} A_jj' W_j') / A_jj extends the forward substitution.

        Returns the output and (keys, values [B, H, L, Dh]; landmark keys, W [B, H, m, Dh];
        segment sums of q and k [B, H, Dh]).
        """
        _b, l, _ = x.shape
        q, k, v = self.qkv(x)
        qf, kf, vf = (t.to(torch.promote_types(t.dtype, torch.float32)) for t in (q, k, v))
        bsz, h, _, dh = q.shape
        scale, c = dh**-0.5, self.segment_len(l)
        q_sum, k_sum = qf.new_zeros(bsz, h, dh), qf.new_zeros(bsz, h, dh)
        k_land, w = qf.new_zeros(bsz, h, 0, dh), qf.new_zeros(bsz, h, 0, dh)
        ys = []
        for t in range(l):
            q_sum, k_sum = q_sum + qf[:, :, t], k_sum + kf[:, :, t]
            if (t + 1) % c == 0:  # segment complete: a new landmark
                ql, kl = q_sum / c, k_sum / c  # [B, H, Dh]
                q_sum, k_sum = torch.zeros_like(q_sum), torch.zeros_like(k_sum)
                k_land = torch.cat([k_land, kl[:, :, None]], 2)  # [B, H, j+1, Dh]
                bv = ((ql[:, :, None] @ kf[:, :, : t + 1].transpose(-1, -2)) * scale).softmax(-1) @ vf[:, :, : t + 1]
                a = ((ql[:, :, None] @ k_land.transpose(-1, -2)) * scale).softmax(-1)  # [B, H, 1, j+1]
                w_new = (bv - a[..., :-1] @ w) / a[..., -1:]  # [B, H, 1, Dh]
                w = torch.cat([w, w_new], 2)
            if w.shape[2]:
                f = ((qf[:, :, t, None] @ k_land.transpose(-1, -2)) * scale).softmax(-1)  # [B, H, 1, j]
                ys.append(f @ w)
            else:
                ys.append(qf.new_zeros(bsz, h, 1, dh))
        y = torch.cat(ys, 2).to(q.dtype)
        return self._finish(y, v), (k, v, k_land, w, q_sum, k_sum)
