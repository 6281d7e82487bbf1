"""Formal-language tasks of Delétang et al., "Neural Networks and the Chomsky Hierarchy"
(arXiv 2207.02098; google-deepmind/neural_networks_chomsky_hierarchy), as next-token
prediction.

An example is an input string of random length in ``[min_length, longest that fits]``,
then the separator ``=``, then the expected output fed back token by token (teacher
forcing); the answer tokens are scored at the separator and after it, the rest is
right-padded with ``_`` (label -100). Classification tasks answer with one token.
Delétang et al. score outputs from blank inputs of a non-autoregressive model; they train
on lengths 1…40 and test on 41…500, which ``min_length`` and ``input_seq_len`` express
here (train short, test long). Token layout: the input alphabet, then ``=`` and ``_``.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np
import torch

from zoology.errors import FieldError
from zoology.tasks.base import IGNORE_INDEX, Segment, Task, at_least, param, token_dtype
from zoology.tasks.fast_sampling import np_generator, np_token_buffer, np_uniform_ints_


@attrs.frozen(kw_only=True)
class _Formal(Task):
    alphabet: ClassVar[int] = 2  # input (and output) symbols [0, alphabet)
    out_factor: ClassVar[int] = 0  # output length = out_factor * n; 0: one answer token
    symbols: ClassVar[tuple[str, ...]] = ()
    version = 2  # v2: numpy (PCG64) sampler, compact dtype (other tensors per seed)
    example = {"input_seq_len": 16}
    bench_params = [{"input_seq_len": 256, "num_examples": 100_000}]

    vocab_size: int = param(4, "tokens are in [0, vocab_size): the alphabet, then = and _", at_least(2))
    min_length: int = param(1, "shortest input string; the longest is what fits in input_seq_len", at_least(1))

    def _max_length(self) -> int:
        return (self.input_seq_len - 1) if not self.out_factor else self.input_seq_len // (1 + self.out_factor)

    def __attrs_post_init__(self) -> None:
        need = self.alphabet + 2
        if self.vocab_size < need:
            raise FieldError("vocab_size", f"must be >= {need} (alphabet of {self.alphabet}, = and _), "
                                           f"got {self.vocab_size}")
        if self._max_length() < self.min_length:
            per = "n + 1" if not self.out_factor else f"{1 + self.out_factor} * n"
            raise FieldError("min_length", f"an input of min_length={self.min_length} needs input_seq_len "
                                           f">= {per} tokens (input_seq_len={self.input_seq_len})")

    def slices(self) -> dict[str, int]:
        return {"input_seq_len": self.input_seq_len, "min_length": self.min_length}

    def lengths(self, rng: np.random.Generator) -> torch.Tensor:
        """``[n]`` input lengths, uniform on ``[min_length, longest that fits]``."""
        return torch.from_numpy(rng.integers(self.min_length, self._max_length() + 1, self.num_examples))

    def uniform(self, rng: np.random.Generator, low: int, high: int) -> torch.Tensor:
        """``[n, max_length]`` tokens uniform on ``[low, high)``, in the segment's dtype."""
        buf = np_token_buffer(self.num_examples, self._max_length(), token_dtype(self.vocab_size))
        return torch.from_numpy(np_uniform_ints_(buf, low, high, rng))

    def strings(self, rng: np.random.Generator) -> torch.Tensor:
        """``[n, max_length]`` random symbols (entries past an example's length are unused)."""
        return self.uniform(rng, 0, self.alphabet)

    def answer(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Classification tasks: ``[n]`` answers; ``x`` holds ``_`` past each length."""
        raise NotImplementedError

    def answer_block(self, x: torch.Tensor, length: int) -> torch.Tensor:
        """Sequence tasks: ``[rows, out_factor * length]`` outputs of inputs ``x`` ``[rows, length]``."""
        raise NotImplementedError

    def generate(self, seed: int) -> Segment:
        rng = np_generator(seed)
        n, L, m = self.num_examples, self.input_seq_len, self._max_length()
        sep, pad = self.alphabet, self.alphabet + 1
        dtype = token_dtype(self.vocab_size)
        lengths = self.lengths(rng)  # [n]
        x = self.strings(rng).masked_fill_(torch.arange(m) >= lengths[:, None], pad)  # [n, m]
        inputs = torch.full((n, L), pad, dtype=dtype)
        labels = torch.full((n, L), IGNORE_INDEX, dtype=dtype)
        inputs[:, :m] = x
        rows = torch.arange(n)
        inputs[rows, lengths] = sep
        if not self.out_factor:  # one answer token, scored at the separator
            labels[rows, lengths] = self.answer(x, lengths).to(dtype)
            return Segment(inputs, labels)
        # the output, scored from the separator on and fed back after it: one block copy
        # per distinct input length
        order = lengths.argsort()
        sizes, counts = torch.unique_consecutive(lengths[order], return_counts=True)
        for ell, at in zip(sizes.tolist(), order.split(counts.tolist())):
            y = self.answer_block(x[at, :ell], ell).to(dtype)  # [rows, out]
            out = y.shape[1]
            labels[at, ell: ell + out] = y
            inputs[at, ell + 1: ell + out] = y[:, :-1]
        return Segment(inputs, labels)

    def decode(self, token: int) -> str:
        if token == self.alphabet:
            return "="
        if token == self.alphabet + 1:
            return "_"
        return self.symbols[token] if token < len(self.symbols) else str(token)


@attrs.frozen(kw_only=True)
class EvenPairs(_Formal):
    """Even pairs (regular): a string over {a, b}; answer 0 when the number of ``ab`` and
    ``ba`` pairs is even — exactly when the first and last symbols agree — else 1."""

    name = "even_pairs"
    symbols = ("a", "b")

    def answer(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        last = x[torch.arange(len(x)), lengths - 1]
        return (x[:, 0] != last).long()


@attrs.frozen(kw_only=True)
class ParityCheck(_Formal):
    """Parity check (regular): a string over {a, b}; answer the number of ``b`` mod 2
    (0: even, 1: odd)."""

    name = "parity_check"
    symbols = ("a", "b")

    def answer(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return (x == 1).sum(dim=1) % 2


@attrs.frozen(kw_only=True)
class CycleNavigation(_Formal):
    """Cycle navigation (regular): moves on a cycle of 5 from position 0; answer the final
    position (0…4). As the reference, move token ``t`` moves by ``t - 1``: 0 is -1, 1
    stays, 2 is +1."""

    name = "cycle_navigation"
    alphabet = 5  # moves use 0..2; answers 0..4
    symbols = ("-1", "0", "+1", "p3", "p4")
    vocab_size: int = param(7, "tokens are in [0, vocab_size): positions 0..4 (moves 0..2), = and _",
                            at_least(2))

    def strings(self, rng: np.random.Generator) -> torch.Tensor:
        return self.uniform(rng, 0, 3)

    def answer(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        moves = torch.where(x < 3, x - 1, 0)
        return moves.sum(dim=1) % 5

    def decode(self, token: int) -> str:
        return {5: "=", 6: "_"}.get(token, str(token))


@attrs.frozen(kw_only=True)
class ModularArithmetic(_Formal):
    """Modular arithmetic (regular, the reference's "simple" version): numbers 0…4
    alternating with ``+ - *`` (odd length); answer the value mod 5 with ``*`` binding
    tighter than ``+`` and ``-``, e.g. ``1 + 2 * 3 = 2``, ``1 - 1 - 1 = 4``."""

    name = "modular_arithmetic"
    alphabet = 8  # 0..4 numbers, 5 +, 6 -, 7 *
    symbols = ("0", "1", "2", "3", "4", "+", "-", "*")
    vocab_size: int = param(10, "tokens are in [0, vocab_size): 0..4, + - *, = and _", at_least(2))

    def lengths(self, rng: np.random.Generator) -> torch.Tensor:
        lo, hi = (self.min_length + 2) // 2, (self._max_length() + 1) // 2  # numbers per expression
        return torch.from_numpy(2 * rng.integers(lo, hi + 1, self.num_examples) - 1)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if (self.min_length + 2) // 2 > (self._max_length() + 1) // 2:
            raise FieldError("min_length", f"no odd length in [min_length, {self._max_length()}] "
                                           f"(min_length={self.min_length})")

    def strings(self, rng: np.random.Generator) -> torch.Tensor:
        nums, ops = self.uniform(rng, 0, 5), self.uniform(rng, 5, 8)
        return torch.where(torch.arange(self._max_length()) % 2 == 0, nums, ops)

    def answer(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        total = torch.zeros(n, dtype=torch.int64)
        term = x[:, 0].clone()
        for i in range(1, x.shape[1] - 1, 2):  # fixed number of positions, vectorized over examples
            op, num = x[:, i], x[:, i + 1]
            live = i < lengths
            mul = live & (op == 7)
            new_term = live & (op != 7)
            total = torch.where(new_term, total + term, total)
            sign = torch.where(op == 6, -1, 1)
            term = torch.where(mul, term * num % 5, torch.where(new_term, sign * num, term))
        return (total + term) % 5


@attrs.frozen(kw_only=True)
class ReverseString(_Formal):
    """Reverse string (deterministic context-free): a binary string; output it reversed."""

    name = "reverse_string"
    out_factor = 1
    symbols = ("0", "1")

    def answer_block(self, x: torch.Tensor, length: int) -> torch.Tensor:
        return x.flip(1)


@attrs.frozen(kw_only=True)
class DuplicateString(_Formal):
    """Duplicate string (context-sensitive): a binary string ``w``; output ``ww``."""

    name = "duplicate_string"
    out_factor = 2
    symbols = ("0", "1")

    def answer_block(self, x: torch.Tensor, length: int) -> torch.Tensor:
        return x.repeat(1, 2)


@attrs.frozen(kw_only=True)
class BucketSort(_Formal):
    """Bucket sort (context-sensitive): a string over 5 symbols; output it sorted."""

    name = "bucket_sort"
    alphabet = 5
    out_factor = 1
    symbols = ("0", "1", "2", "3", "4")
    vocab_size: int = param(7, "tokens are in [0, vocab_size): 0..4, = and _", at_least(2))

    def answer_block(self, x: torch.Tensor, length: int) -> torch.Tensor:
        return x.sort(dim=1).values
