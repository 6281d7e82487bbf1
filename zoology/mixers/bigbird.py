"""BigBird attention (Zaheer et al. 2020, arXiv 2007.14062), causal: block-sparse softmax
attention in which every query block sees a few key blocks only.

The sequence is cut into blocks of ``block_size`` positions. Query block i attends to

* global:  the first ``global_blocks`` blocks (the paper's "ITC" global tokens),
* window:  its own block and the ``window_blocks - 1`` blocks before it,
* random:  ``random_blocks`` earlier blocks drawn from those before the window and after
  the global blocks,

and, inside that set, only to keys at or before the query (causal). Softmax runs over the
allowed keys only. Time and memory are linear in length for a fixed block budget:
each query block gathers at most global + window + random key blocks.

Differences from upstream Zoology's ``mixers/bigbird.py`` (the Based paper's Figure 2):

* Upstream masks a dense L×L score matrix token by token: a window of the 3·block_size
  positions before the query (plus the query), the first 2·block_size positions as global
  keys, and 3·block_size random (query, key) pairs, each widened to a 2×2 patch. We keep
  BigBird's block structure (the paper's) with the paper's defaults of 3 random, 2 global
  and 3 window blocks; causality removes the paper's "next" window block, so the window
  is the query's block and the 2 before it (between 2·block_size + 1 and 3·block_size keys,
  close to upstream's 3·block_size + 1).
* Upstream draws new random pairs on every forward call (training and evaluation alike).
  Ours are drawn once per (seed, layer_idx, query block), so a layer's pattern is fixed:
  needed for a reproducible evaluation and for the step-by-step form to equal forward.
  The pattern is shared by all heads (the paper draws one per head).
* Upstream's ``state_size`` is 2·7·block_size·d_model (a fixed budget of 7 blocks); ours is
  the KV cache an inference loop must keep, which with random blocks is all of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoology.errors import FieldError
from zoology.mixers.attention import _QKV


class BigBird(_QKV):
    """BigBird block-sparse causal attention: global + sliding-window + random key blocks.

    Args:
        block_size: positions per block; queries and keys are grouped into blocks of this size
        window_blocks: key blocks of the sliding window: the query's own block and the ones just before it
        global_blocks: leading key blocks every query sees
        random_blocks: extra earlier key blocks per query block, drawn once per layer (fixed pattern)
        num_heads: attention heads; d_model must be divisible by it
        dropout: dropout on the attention weights while training
        seed: seeds the random blocks (with the layer index and the query block)
    """

    name = "bigbird"

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        max_seq_len: int = 2048,
        block_size: int = 128,
        window_blocks: int = 3,
        global_blocks: int = 2,
        random_blocks: int = 3,
        num_heads: int = 1,
        dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        for field, value, low in (("block_size", block_size, 1), ("window_blocks", window_blocks, 1),
                                  ("global_blocks", global_blocks, 0), ("random_blocks", random_blocks, 0),
                                  ("seed", seed, 0)):
            if value < low:
                raise FieldError(field, f"must be >= {low}, got {value}")
        super().__init__(d_model, num_heads, 0, dropout)
        self.layer_idx, self.block_size, self.seed = layer_idx, block_size, seed
        self.window_blocks, self.global_blocks, self.random_blocks = window_blocks, global_blocks, random_blocks
        # row i: the key blocks of query block i, the same for every length: drawn once, up to the
        # model's length here, so that a vmapped forward (packed training) only reads them; host
        # data, on the CPU even when the model is built on the meta device
        self._blocks = torch.zeros(0, window_blocks + global_blocks + random_blocks, dtype=torch.long, device="cpu")
        self._valid = torch.zeros(0, self._blocks.shape[1], dtype=torch.bool, device="cpu")
        self._grow(-(-max_seq_len // block_size))

    def key_blocks(self, i: int) -> list[int]:
        """The key blocks query block i attends to (global, window, random), sorted, no repeats."""
        window = range(max(0, i - self.window_blocks + 1), i + 1)
        glob = range(min(self.global_blocks, i + 1))
        candidates = list(range(self.global_blocks, i - self.window_blocks + 1))  # before the window, after global
        g = torch.Generator().manual_seed(1_000_003 * self.seed + 7919 * self.layer_idx + i)
        picks = torch.randperm(len(candidates), generator=g, device="cpu")[: self.random_blocks].tolist()
        return sorted({*window, *glob, *(candidates[p] for p in picks)})

    def _grow(self, n_blocks: int) -> None:
        first = self._blocks.shape[0]
        if n_blocks <= first:
            return
        blocks = torch.zeros(n_blocks - first, self._blocks.shape[1], dtype=torch.long, device="cpu")
        valid = torch.zeros_like(blocks, dtype=torch.bool)
        for row, i in enumerate(range(first, n_blocks)):
            ks = self.key_blocks(i)
            blocks[row, : len(ks)], valid[row, : len(ks)] = torch.tensor(ks, device="cpu"), True
        self._blocks, self._valid = torch.cat([self._blocks, blocks]), torch.cat([self._valid, valid])

    def table(self, n_blocks: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """blocks [N, S] (key block indices per query block, padded with 0) and valid [N, S];
        S = window_blocks + global_blocks + random_blocks."""
        self._grow(n_blocks)
        return self._blocks[:n_blocks].to(device), self._valid[:n_blocks].to(device)

    def pattern(self, seq_len: int) -> torch.Tensor:
        """[L, L] bool: which keys (columns) each query (row) attends to."""
        b = self.block_size
        n = -(-seq_len // b)
        blocks, valid = self.table(n, torch.device("cpu"))
        block_seen = torch.zeros(n, n, dtype=torch.bool)
        block_seen[torch.arange(n)[:, None].expand_as(blocks)[valid], blocks[valid]] = True
        pos = torch.arange(seq_len)
        seen = block_seen[pos[:, None] // b, pos[None, :] // b]
        return seen & (pos[None, :] <= pos[:, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)  # each [B, H, L, Dh]
        bsz, h, l, dh = q.shape
        b = self.block_size
        n = -(-l // b)
        q, k, v = (F.pad(t, (0, 0, 0, n * b - l)).view(bsz, h, n, b, dh) for t in (q, k, v))
        blocks, valid = self.table(n, x.device)  # [N, S]
        s = blocks.shape[1]
        # gather each query block's key blocks: [B, H, N, S, b, Dh] → [B, H, N, S·b, Dh]
        k_sel, v_sel = (t[:, :, blocks].reshape(bsz, h, n, s * b, dh) for t in (k, v))
        q_pos = torch.arange(n * b, device=x.device).view(n, b, 1)  # [N, b, 1] absolute positions
        k_pos = (blocks[:, :, None] * b + torch.arange(b, device=x.device)).view(n, 1, s * b)  # [N, 1, S·b]
        mask = valid.repeat_interleave(b, dim=1)[:, None, :] & (k_pos <= q_pos)  # [N, b, S·b]
        y = F.scaled_dot_product_attention(
            q, k_sel, v_sel, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # [B, H, N, b, Dh]
        return self.out(y.reshape(bsz, h, n * b, dh)[:, :, :l])

    def _kept(self, seq_len: int) -> torch.Tensor:
        """Positions < seq_len that a query at position ≥ seq_len may still attend to."""
        pos = torch.arange(seq_len)
        if self.random_blocks:
            return pos  # a later query block may draw any block after the global ones
        b = self.block_size
        first_window_block = seq_len // b - self.window_blocks + 1  # window of the next query's block
        return pos[(pos < self.global_blocks * b) | (pos // b >= first_window_block)]

    def state_size(self, seq_len: int) -> int:
        """KV cache of the positions a later query can still attend: with random_blocks > 0 every
        position, since a later query block may draw any block after the global ones
        (2·d_model·seq_len); without random blocks, the global blocks' positions and those of the
        next query's window blocks (2·d_model per kept position)."""
        return 2 * self.d_model * len(self._kept(seq_len))

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Token by token over a KV cache, each query attending to its allowed keys.

        Returns the output and the cache of keys and values a later query may use, each
        [B, H, kept positions, Dh] (see state_size).
        """
        _b, l, _ = x.shape
        q, k, v = self.qkv(x)  # [B, H, L, Dh]
        allowed = self.pattern(l).to(x.device)  # [L, L]
        ys = []
        for t in range(l):
            keys = allowed[t, : t + 1].nonzero().squeeze(1)  # cached positions this query sees
            att = (q[:, :, t: t + 1] @ k[:, :, keys].transpose(-1, -2)) * self.head_dim**-0.5
            ys.append(att.softmax(-1) @ v[:, :, keys])  # [B, H, 1, Dh]
        kept = self._kept(l).to(x.device)
        return self.out(torch.cat(ys, dim=2)), (k[:, :, kept], v[:, :, kept])
