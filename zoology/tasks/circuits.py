"""Circuit tasks from Zoology's ``zoology/data/circuits.py``: parity and majority, at the
end of the sequence or at every position, over bits or (vocab_majority) over a vocabulary.

Bits are tokens 0 and 1; ``2`` marks the end of the input where a single answer is
scored. Deviation from upstream, everywhere: examples are exactly ``input_seq_len`` long
(upstream's cumulative_parity returned ``input_seq_len - 1`` tokens).
"""

from __future__ import annotations

import attrs
import torch

from zoology.errors import FieldError
from zoology.tasks.base import IGNORE_INDEX, Segment, Task
from zoology.tasks.sampling import full_long, generator

END = 2  # end-of-input marker of the single-answer tasks


def _bits_then_end(task: Task, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, L-1]`` random bits and the ``[n, L]`` inputs: those bits followed by END."""
    gen = generator(seed)
    n, length = task.num_examples, task.input_seq_len
    bits = torch.randint(0, 2, (n, length - 1), generator=gen)
    inputs = torch.cat([bits, torch.full((n, 1), END, dtype=torch.int64)], dim=1)
    return bits, inputs


def _answer_at_end(inputs: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    labels = full_long(tuple(inputs.shape), IGNORE_INDEX)
    labels[:, -1] = answer
    return labels


@attrs.frozen(kw_only=True)
class _BitTask(Task):
    example = {"vocab_size": 3, "input_seq_len": 16}
    bench_params = [{"vocab_size": 3, "input_seq_len": 256, "num_examples": 100_000}]
    needs_vocab = 3
    min_len = 2

    def __attrs_post_init__(self) -> None:
        if self.vocab_size < self.needs_vocab:
            raise FieldError("vocab_size", f"must be >= {self.needs_vocab} (bits 0 and 1"
                             f"{' and the end marker 2' if self.needs_vocab > 2 else ''}), "
                             f"got {self.vocab_size}")
        if self.input_seq_len < self.min_len:
            raise FieldError("input_seq_len", f"must be >= {self.min_len}, got {self.input_seq_len}")

    def slices(self) -> dict[str, int]:
        return {"input_seq_len": self.input_seq_len}

    def decode(self, token: int) -> str:
        return "=" if token == END else str(token)


@attrs.frozen(kw_only=True)
class Parity(_BitTask):
    """Parity: ``input_seq_len - 1`` random bits, then the end marker ``2``; the label at the
    marker is the parity (sum mod 2) of the bits. Matches upstream ``parity``."""

    name = "parity"

    def generate(self, seed: int) -> Segment:
        bits, inputs = _bits_then_end(self, seed)
        return Segment(inputs, _answer_at_end(inputs, bits.sum(dim=1) % 2))


@attrs.frozen(kw_only=True)
class Majority(_BitTask):
    """Majority: ``input_seq_len - 1`` random bits, then the end marker ``2``; the label at the
    marker is 1 when strictly more than half the bits are 1 (a tie gives 0). Matches
    upstream ``majority``."""

    name = "majority"

    def generate(self, seed: int) -> Segment:
        bits, inputs = _bits_then_end(self, seed)
        answer = (2 * bits.sum(dim=1) > bits.shape[1]).long()
        return Segment(inputs, _answer_at_end(inputs, answer))


@attrs.frozen(kw_only=True)
class CumulativeParity(_BitTask):
    """Cumulative parity: ``input_seq_len`` random bits; the label at every position is the
    parity of the bits so far. Matches upstream ``cumulative_parity`` (one token longer)."""

    name = "cumulative_parity"
    needs_vocab = 2
    min_len = 1
    example = {"vocab_size": 2, "input_seq_len": 16}
    bench_params = [{"vocab_size": 2, "input_seq_len": 256, "num_examples": 100_000}]

    def generate(self, seed: int) -> Segment:
        gen = generator(seed)
        bits = torch.randint(0, 2, (self.num_examples, self.input_seq_len), generator=gen)
        return Segment(bits, bits.cumsum(dim=1) % 2)


@attrs.frozen(kw_only=True)
class CumulativeMajority(_BitTask):
    """Cumulative majority: ``input_seq_len`` random bits; the label at every position is 1
    when at least half the bits so far are 1 (ties give 1, unlike ``majority``, as in
    upstream's ``cumulative_majority``: ``cumsum(2b - 1) >= 0``)."""

    name = "cumulative_majority"
    needs_vocab = 2
    min_len = 1
    example = {"vocab_size": 2, "input_seq_len": 16}
    bench_params = [{"vocab_size": 2, "input_seq_len": 256, "num_examples": 100_000}]

    def generate(self, seed: int) -> Segment:
        gen = generator(seed)
        bits = torch.randint(0, 2, (self.num_examples, self.input_seq_len), generator=gen)
        return Segment(bits, ((2 * bits - 1).cumsum(dim=1) >= 0).long())


@attrs.frozen(kw_only=True)
class VocabMajority(Task):
    """Most frequent token: ``input_seq_len - 1`` tokens uniform on ``[1, vocab_size)``, then
    the end marker ``0``; the label at the marker is the most frequent token.

    As upstream ``vocab_majority``: when several tokens tie for most frequent, the answer is
    the smallest of them and the example is edited to make it unique — the first token of
    the sequence that differs from the answer is replaced by the answer.
    """

    name = "vocab_majority"
    example = {"vocab_size": 6, "input_seq_len": 16}
    bench_params = [{"vocab_size": 64, "input_seq_len": 256, "num_examples": 100_000}]

    def __attrs_post_init__(self) -> None:
        if self.vocab_size < 3:
            raise FieldError("vocab_size", f"must be >= 3 (end marker 0 and two tokens), got {self.vocab_size}")
        if self.input_seq_len < 3:
            raise FieldError("input_seq_len", f"must be >= 3, got {self.input_seq_len}")

    def slices(self) -> dict[str, int]:
        return {"vocab_size": self.vocab_size, "input_seq_len": self.input_seq_len}

    def generate(self, seed: int) -> Segment:
        gen = generator(seed)
        n, length, vocab = self.num_examples, self.input_seq_len, self.vocab_size
        seq = torch.randint(1, vocab, (n, length - 1), generator=gen)
        counts = torch.zeros(n, vocab, dtype=torch.int64).scatter_add_(1, seq, torch.ones_like(seq))
        top = counts.max(dim=1, keepdim=True).values
        answer = counts.argmax(dim=1)  # the first (smallest) of the tied tokens
        tied = (counts == top).sum(dim=1) > 1
        other = (seq != answer[:, None]).int().argmax(dim=1)  # first position not holding the answer
        rows = tied.nonzero().squeeze(1)
        seq[rows, other[rows]] = answer[rows]
        inputs = torch.cat([seq, torch.zeros(n, 1, dtype=torch.int64)], dim=1)
        return Segment(inputs, _answer_at_end(inputs, answer))

    def decode(self, token: int) -> str:
        return "=" if token == 0 else str(token)
