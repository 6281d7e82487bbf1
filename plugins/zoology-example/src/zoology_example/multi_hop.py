"""Multi-hop recall: follow a chain of key→value bindings ``hops`` steps from the query."""

from __future__ import annotations

import attrs
import torch

from zoology import (
    IGNORE_INDEX,
    FieldError,
    Segment,
    Task,
    at_least,
    distinct,
    generator,
    param,
    weighted_distinct,
)

PAD = 0  # filler token of unscored positions after the context; never a chain token


@attrs.frozen(kw_only=True)
class MultiHopRecall(Task):
    """Multi-hop recall: answer the token ``hops`` bindings away from each queried key.

    Each example holds ``num_chains`` chains ``t0 → t1 → … → t_hops`` of distinct tokens
    from ``[1, vocab_size)``. The context lists every binding ``t_i t_{i+1}`` of every
    chain as a (key, value) pair, pairs shuffled, so a value is itself the key of the next
    pair. After the context, the first token of each chain appears once, at a random
    position (the rest is token 0); the label there is the last token of its chain.
    ``hops = 1`` is plain associative recall (MQAR with shuffled pairs).

    A model that recalls nothing but learns which tokens end a chain (those never used as
    a key) scores ``1 / num_chains``: that, not ``1 / vocab_size``, is chance.
    """

    name = "example_multi_hop_recall"
    example = {"vocab_size": 32, "input_seq_len": 20, "num_chains": 3, "hops": 2}

    num_chains: int = param(4, "chains per example; the first token of each is queried once", at_least(1))
    hops: int = param(2, "bindings to follow from a queried key to its answer", at_least(1))

    def __attrs_post_init__(self) -> None:
        c, h = self.num_chains, self.hops
        need = c * (h + 1)
        if self.vocab_size - 1 < need:
            raise FieldError(
                "vocab_size",
                f"chain tokens come from [1, vocab_size), which must hold num_chains * (hops + 1) "
                f"= {need} distinct tokens (vocab_size={self.vocab_size} holds {self.vocab_size - 1})",
            )
        length = 2 * c * h + c
        if length > self.input_seq_len:
            raise FieldError(
                "input_seq_len",
                f"must be >= num_chains * hops * 2 (context) + num_chains (queries) = {length}, "
                f"got {self.input_seq_len}",
            )

    def slices(self) -> dict[str, int]:
        return {"hops": self.hops, "num_chains": self.num_chains}

    def generate(self, seed: int) -> Segment:
        gen = generator(seed)
        n, c, h, seq_len = self.num_examples, self.num_chains, self.hops, self.input_seq_len
        chains = distinct(n, c * (h + 1), 1, self.vocab_size, gen).view(n, c, h + 1)
        # every binding t_i → t_{i+1} as a (key, value) pair, pairs shuffled per example
        pairs = torch.stack([chains[:, :, :-1], chains[:, :, 1:]], dim=3).reshape(n, c * h, 2)
        order = torch.rand(n, c * h, generator=gen).argsort(dim=1)
        context = pairs.gather(1, order[:, :, None].expand(-1, -1, 2)).reshape(n, 2 * c * h)

        # queries: the chain starts, at distinct random positions after the context
        start = context.shape[1]
        slots = torch.full((seq_len - start,), 1.0 / (seq_len - start), dtype=torch.float64)
        positions = start + weighted_distinct(n, c, slots, gen)  # [n, c]
        inputs = torch.full((n, seq_len), PAD, dtype=torch.int64)
        inputs[:, :start] = context
        inputs.scatter_(1, positions, chains[:, :, 0])
        labels = torch.full((n, seq_len), IGNORE_INDEX, dtype=torch.int64)
        labels.scatter_(1, positions, chains[:, :, -1])
        return Segment(inputs, labels)

    def decode(self, token: int) -> str:
        return "_" if token == PAD else str(token)
