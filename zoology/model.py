"""The language model every experiment trains: a stack of mixer blocks with a tied head.

    tokens [B, L] → embed (+ learned positions) → n_layers × Block → LayerNorm → logits [B, L, V]
    Block: x = x + mixer(norm1(x)); x = x + state_mixer(norm2(x))        (pre-norm residual)

Synthetic tasks score a few positions per sequence (MQAR: one in sixteen). Given
``where`` (a [B, L] bool mask, or the flat indices [M] of the positions in ``B·L``), the
model computes the last block's state mixer, the final norm and the head only at those
positions and returns their logits [M, V]: the same numbers, a third fewer FLOPs. This is
exact because state mixers act per position. Indices, unlike a mask, keep the shape fixed,
so the forward can run under ``torch.func.vmap`` (packed training, :mod:`zoology.pack`).

Mixer tables cycle over layers, so `[a, b]` with 4 layers gives a, b, a, b.

``readout = "autoencoder"`` (MAD's compression protocol) replaces the head: the last
position's vector z [B, D], plus a fixed sinusoidal embedding of each output position, goes
through a two-layer MLP decoder to logits for every position [B, L, V]; nothing but z
carries information about the sequence.

Mixers may define ``auxiliary_loss()`` (see the contract in ``zoology.mixers``);
:meth:`LanguageModel.auxiliary_loss` sums them for the trainer, which adds the sum to the
training loss only.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import nn

from zoology.config import Experiment, MixerSpec, mixer_context


def select(x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """x [B, L, D] at the positions ``where`` names (a [B, L] bool mask or flat indices [M]) → [M, D]."""
    return x[where] if where.dtype == torch.bool else x.flatten(0, 1)[where]


class Block(nn.Module):
    def __init__(self, d_model: int, sequence_mixer: nn.Module, state_mixer: nn.Module, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.sequence_mixer = sequence_mixer
        self.norm2 = nn.LayerNorm(d_model)
        self.state_mixer = state_mixer
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.dropout(self.sequence_mixer(self.norm1(x)))  # [B, L, D]
        if where is not None:
            x = select(x, where)  # [M, D]: only the positions asked for
        return x + self.dropout(self.state_mixer(self.norm2(x)))


class Decoder(nn.Module):
    """MAD's autoencoder decoder: z [B, D] + sinusoidal position [L, D] → MLP → [B, L, D]."""

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        pos = torch.arange(max_len, dtype=torch.float32)[:, None]  # [L, 1]
        freq = 1.0 / 10000 ** (torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)  # [D/2]
        table = torch.zeros(max_len, d_model)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
        self.register_buffer("positions", table, persistent=False)
        self.mlp = nn.Sequential(
            nn.LayerNorm(d_model), nn.Linear(d_model, d_model), nn.GELU(),
            nn.LayerNorm(d_model), nn.Linear(d_model, d_model), nn.GELU(),
            nn.LayerNorm(d_model),
        )

    def forward(self, z: torch.Tensor, length: int) -> torch.Tensor:
        return self.mlp(z[:, None, :] + self.positions[:length])  # [B, L, D]


class LanguageModel(nn.Module):
    def __init__(self, exp: Experiment) -> None:
        super().__init__()
        cfg = exp.model
        vocab_size = cfg.vocab_size or exp.vocab_size
        self.token_embedding = nn.Embedding(vocab_size, cfg.d_model)
        self.position_embedding = (
            nn.Embedding(cfg.max_position_embeddings, cfg.d_model) if cfg.max_position_embeddings else None
        )
        self.embed_dropout = nn.Dropout(cfg.embed_dropout)

        shared: dict = {}  # one per model, handed to every mixer (layers built in order)

        def pick(specs: list[MixerSpec], i: int) -> nn.Module:
            return specs[i % len(specs)].build(attrs.evolve(mixer_context(exp, layer_idx=i), shared=shared))

        self.blocks = nn.ModuleList(
            Block(cfg.d_model, pick(cfg.sequence_mixer, i), pick(cfg.state_mixer, i), cfg.resid_dropout)
            for i in range(cfg.n_layers)
        )
        self.norm_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.decoder = Decoder(cfg.d_model, exp.max_seq_len) if cfg.readout == "autoencoder" else None
        if self.decoder is None:
            self.lm_head.weight = self.token_embedding.weight  # tied
        self._init_weights(cfg.n_layers)
        # the mixers with an auxiliary loss, found once so that models without one pay nothing per step
        self.aux_mixers: tuple[nn.Module, ...] = tuple(
            m for block in self.blocks for m in (block.sequence_mixer, block.state_mixer)
            if callable(getattr(m, "auxiliary_loss", None))
        )

    def _init_weights(self, n_layers: int, std: float = 0.02) -> None:
        """GPT-2 init, output projections scaled by 1/sqrt(2·n_layers); mixers that define
        ``reset_parameters()`` keep their own init."""
        own = [m for m in self.modules() if m is not self and hasattr(m, "reset_parameters")
               and not isinstance(m, (nn.Linear, nn.Embedding, nn.LayerNorm, nn.Conv1d))]
        skip = {id(p) for m in own for p in m.parameters()}
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and id(module.weight) not in skip:
                scaled = name.endswith(("out_proj", "fc2"))
                nn.init.normal_(module.weight, std=std / math.sqrt(2 * n_layers) if scaled else std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for m in own:
            m.reset_parameters()

    def forward(self, tokens: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, L] → logits [B, L, V], or [M, V] at the M positions ``where`` names."""
        x = self.token_embedding(tokens)  # [B, L, D]
        if self.position_embedding is not None:
            x = x + self.position_embedding(torch.arange(tokens.shape[1], device=tokens.device))
        x = self.embed_dropout(x)
        if self.decoder is not None:  # autoencoder: decode every position from the last one
            for block in self.blocks:
                x = block(x)
            x = self.decoder(self.norm_f(x[:, -1]), tokens.shape[1])  # [B, L, D]
            return self.lm_head(x if where is None else select(x, where))
        for block in self.blocks[:-1]:
            x = block(x)
        x = self.blocks[-1](x, where)
        return self.lm_head(self.norm_f(x))

    @property
    def has_auxiliary_loss(self) -> bool:
        """Whether any mixer defines ``auxiliary_loss()``."""
        return bool(self.aux_mixers)

    def auxiliary_loss(self) -> torch.Tensor | None:
        """Sum of the auxiliary losses of the mixers that define one, from the most recent
        forward (each already weighted by its mixer); None when no mixer defines one."""
        if not self.aux_mixers:
            return None
        return torch.stack([m.auxiliary_loss().float() for m in self.aux_mixers]).sum()

    def state_size(self, seq_len: int) -> int:
        """Scalars of inference-time state per sequence, summed over every mixer."""
        return sum(
            m.state_size(seq_len)
            for block in self.blocks
            for m in (block.sequence_mixer, block.state_mixer)
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
